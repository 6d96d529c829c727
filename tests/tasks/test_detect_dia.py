"""Tests of tasks/detect_dia.py (DetectAndMeasureTask): detection, signed fluxes and dipoles on difference images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.table import Table
from scipy import stats
from scipy.spatial import cKDTree

from tasks.characterize import ExposureIdInfo
from tasks.detect_dia import DetectAndMeasureConfig, DetectAndMeasureTask
from tasks.errors import ImageError
from tasks.image import Box2I, Exposure, GaussianPsf, MaskedImage, PcaPsf

SIGMA = 2.0  # PSF sigma [pixels]
FWHM = 2.3548 * SIGMA
NOISE = 10.0  # per-pixel noise [counts]
PSF_FLUX_ERR = NOISE * math.sqrt(4 * math.pi) * SIGMA  # PSF-flux error of a point source on flat noise


def _noise_exposure(rng: np.random.Generator, shape=(1024, 1024), noise: float = NOISE, xy0=(0, 0)) -> Exposure:
    image = rng.normal(0.0, noise, shape).astype(np.float32)
    variance = np.full(shape, noise**2, dtype=np.float32)
    return Exposure(MaskedImage(image, variance=variance, xy0=xy0), psf=GaussianPsf(31, 31, SIGMA))


def _add_point_source(exposure: Exposure, x: float, y: float, flux: float) -> None:
    """Add ``flux`` times the exposure's PSF at parent position (x, y)."""
    image, box = exposure.psf.compute_image(x, y)
    inter = box.intersection(exposure.bbox)
    exposure.image[inter.slices(exposure.bbox)] += (flux * image[inter.slices(box)]).astype(np.float32)


def _task(**overrides) -> DetectAndMeasureTask:
    config = DetectAndMeasureConfig()
    for key, value in overrides.items():
        config.override(key, value)
    return DetectAndMeasureTask(config=config)


def _run(difference: Exposure, task: DetectAndMeasureTask | None = None, **kwargs):
    task = task or _task()
    return task, task.run(difference, difference, difference, **kwargs).diaSources


def _nearest(catalog: Table, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tree = cKDTree(np.column_stack([catalog["centroid_x"], catalog["centroid_y"]]))
    return tree.query(np.column_stack([x, y]))


def _dipole_field(rng: np.random.Generator, separations_fwhm, *, pos_snr=30.0, neg_snr=-25.0, shape=(400, 1024)):
    """Dipoles (positive + negative PSF) along y = 200 with random orientations; returns the truth rows."""
    difference = _noise_exposure(rng, shape)
    truth = []
    for k, sep in enumerate(separations_fwhm):
        xc, yc = 80.0 + 90.0 * k + rng.uniform(-0.5, 0.5), 200.0 + rng.uniform(-0.5, 0.5)
        angle = rng.uniform(0.0, 2 * math.pi)
        dx, dy = 0.5 * sep * FWHM * math.cos(angle), 0.5 * sep * FWHM * math.sin(angle)
        fp, fn = pos_snr * PSF_FLUX_ERR, neg_snr * PSF_FLUX_ERR
        _add_point_source(difference, xc + dx, yc + dy, fp)
        _add_point_source(difference, xc - dx, yc - dy, fn)
        truth.append((xc, yc, sep * FWHM, math.degrees(angle), fp, fn))
    return difference, np.array(truth)


# Detection and signed PSF fluxes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def point_sources():
    """100 isolated point sources, half positive and half negative, |S/N| 10-40, on a noise image."""
    rng = np.random.default_rng(3)
    difference = _noise_exposure(rng, xy0=(100, 200))
    grid = np.arange(60, 1000, 100)
    gx, gy = np.meshgrid(grid, grid)
    x = gx.ravel() + 100 + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + 200 + rng.uniform(-0.5, 0.5, gx.size)
    flux = rng.uniform(10.0, 40.0, x.size) * np.where(np.arange(x.size) % 2 == 0, 1.0, -1.0) * PSF_FLUX_ERR
    for xi, yi, fi in zip(x, y, flux, strict=True):
        _add_point_source(difference, xi, yi, fi)
    task, catalog = _run(difference)
    return difference, x, y, flux, task, catalog


def test_every_injected_source_is_detected_with_its_sign(point_sources):
    _, x, y, flux, _, catalog = point_sources
    distance, index = _nearest(catalog, x, y)
    assert distance.max() < 1.0  # completeness 100% at |S/N| >= 10, centroids within a pixel
    assert len(np.unique(index)) == len(x)
    assert len(catalog) <= len(x) + 1  # at most one noise peak above 5 sigma on 1 Mpix (expected 0.3)
    matched = catalog[index]
    assert np.array_equal(np.asarray(matched["is_negative"]), flux < 0)
    assert np.all(np.sign(matched["psfFlux"]) == np.sign(flux))
    assert not np.any(matched["isDipole"])


def test_psf_fluxes_are_signed_and_within_their_errors(point_sources):
    _, x, y, flux, _, catalog = point_sources
    _, index = _nearest(catalog, x, y)
    matched = catalog[index]
    assert np.median(matched["psfFluxErr"]) == pytest.approx(PSF_FLUX_ERR, rel=0.02)
    pull = (np.asarray(matched["psfFlux"]) - flux) / np.asarray(matched["psfFluxErr"])
    assert np.all(np.abs(pull) < 4.0)
    assert np.mean(np.abs(pull) < 3.0) >= 0.98
    assert abs(pull.mean()) < 0.3 and 0.8 < pull.std() < 1.25
    assert np.allclose(matched["snr"], matched["psfFlux"] / matched["psfFluxErr"])
    assert "signed" in catalog["psfFlux"].description and "negative" in catalog["psfFlux"].description


def test_subtracted_exposure_has_positive_and_negative_detection_planes(point_sources):
    difference, x, y, flux, _, _ = point_sources
    ix = np.round(x).astype(int) - difference.xy0[0]
    iy = np.round(y).astype(int) - difference.xy0[1]
    detected = difference.mask.get_plane("DETECTED")[iy, ix]
    negative = difference.mask.get_plane("DETECTED_NEGATIVE")[iy, ix]
    assert np.array_equal(detected, flux > 0) and np.array_equal(negative, flux < 0)


def test_metadata_counts_match_the_catalogue(point_sources):
    _, _, _, flux, task, catalog = point_sources
    md = task.metadata
    assert md["numPositive"] == int((~catalog["is_negative"] & ~catalog["isDipole"]).sum()) >= 50
    assert md["numNegative"] == int((catalog["is_negative"] & ~catalog["isDipole"]).sum()) >= 50
    assert md["numDipoles"] == 0 and md["numBadDiaSources"] == 0
    assert md["numDiaSources"] == len(catalog) == md["numPositive"] + md["numNegative"]
    assert md["NFalsePositivesTotal"] == len(catalog)
    assert md["NFalsePositivesSrcAssociated"] == 0 and md["NFalsePositivesUnassociated"] == len(catalog)


def test_pure_noise_false_detections_follow_gaussian_statistics():
    rng = np.random.default_rng(7)
    n_images, shape = 4, (1024, 1024)
    # Expected number of peaks above u of the PSF-smoothed white noise (both signs): the Euler
    # characteristic density lambda2 u exp(-u^2 / 2) / (2 pi)^(3/2) with lambda2 = 1 / (2 sigma^2)
    # (Adler 1981); an upper bound for the components found on the pixel grid.
    border = math.ceil(4 * SIGMA)
    area = n_images * (shape[0] - 2 * border) * (shape[1] - 2 * border)
    expected_5 = 2 * area / (2 * SIGMA**2) * 5.0 * math.exp(-12.5) / (2 * math.pi) ** 1.5
    n_false = 0
    fractions = []
    for _ in range(n_images):
        task, catalog = _run(_noise_exposure(rng, shape))
        n_false += task.detection.metadata["numPos"] + task.detection.metadata["numNeg"]
        # At 3 sigma without growing, the fraction of pixels detected is the Gaussian tail probability.
        low = _noise_exposure(rng, shape)
        _run(low, _task(**{"detection.thresholdValue": 3.0, "detection.nSigmaToGrow": 0.0,
                           "detection.minPixels": 1}))
        interior = (slice(border, -border), slice(border, -border))
        fractions.append([low.mask.get_plane(p)[interior].mean() for p in ("DETECTED", "DETECTED_NEGATIVE")])
    assert n_false <= stats.poisson.ppf(0.999, expected_5)
    fractions = np.array(fractions)
    assert fractions.mean(axis=0) == pytest.approx([stats.norm.sf(3.0)] * 2, rel=0.12)


# Dipoles ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dipoles():
    rng = np.random.default_rng(5)
    difference, truth = _dipole_field(rng, np.linspace(1.0, 1.9, 10))
    # A positive and a negative source 4 FWHM apart: two separate sources.
    _add_point_source(difference, 500.0, 330.0, 30 * PSF_FLUX_ERR)
    _add_point_source(difference, 500.0 + 4 * FWHM, 330.0, -30 * PSF_FLUX_ERR)
    task, catalog = _run(difference)
    return difference, truth, task, catalog


def test_close_positive_and_negative_lobes_merge_into_one_dipole(dipoles):
    _, truth, task, catalog = dipoles
    distance, index = _nearest(catalog, truth[:, 0], truth[:, 1])
    assert distance.max() < 0.5  # the dipole centroid is the midpoint of the lobes
    rows = catalog[index]
    assert np.all(rows["isDipole"]) and not np.any(rows["dipoleFit_flag"]) and not np.any(rows["is_negative"])
    assert np.allclose(rows["dipoleLength"], truth[:, 2], atol=0.5)
    angle_error = (np.asarray(rows["dipoleAngle"]) - truth[:, 3] + 180.0) % 360.0 - 180.0
    assert np.all(np.abs(angle_error) < 10.0)
    far = catalog[~catalog["isDipole"]]
    assert len(far) == 2 and sorted(far["is_negative"]) == [False, True]
    assert task.metadata["numDipoles"] == 10 and task.metadata["numPositive"] == task.metadata["numNegative"] == 1


def test_dipole_lobe_fluxes_are_within_their_errors(dipoles):
    _, truth, _, catalog = dipoles
    _, index = _nearest(catalog, truth[:, 0], truth[:, 1])
    rows = catalog[index]
    pos_pull = (np.asarray(rows["dipolePosFlux"]) - truth[:, 4]) / np.asarray(rows["dipolePosFluxErr"])
    neg_pull = (np.asarray(rows["dipoleNegFlux"]) - truth[:, 5]) / np.asarray(rows["dipoleNegFluxErr"])
    assert np.all(np.abs(pos_pull) < 3.0) and np.all(np.abs(neg_pull) < 3.0)
    assert np.all(rows["dipoleNegFlux"] < 0) and np.all(rows["dipolePosFlux"] > 0)
    # The lobes overlap: the errors of a joint fit exceed those of an isolated source.
    assert np.all(rows["dipolePosFluxErr"] > PSF_FLUX_ERR)
    net = truth[:, 4] + truth[:, 5]
    assert np.allclose(rows["psfFlux"], rows["dipolePosFlux"] + rows["dipoleNegFlux"])
    assert np.all(np.abs(np.asarray(rows["psfFlux"]) - net) < 3.5 * np.asarray(rows["psfFluxErr"]))
    assert np.all(rows["shape_flag"]) and np.all(rows["apFlux_flag"])
    singles = catalog[~catalog["isDipole"]]
    assert np.all(np.isnan(singles["dipolePosFlux"])) and not np.any(singles["dipoleFit_flag"])


def test_without_merging_each_lobe_is_its_own_source():
    difference, truth = _dipole_field(np.random.default_rng(5), np.linspace(1.0, 1.9, 10))
    task, catalog = _run(difference, _task(doMerge=False))
    assert len(catalog) == 20 and not np.any(catalog["isDipole"])
    assert task.metadata["numPositive"] == task.metadata["numNegative"] == 10


def test_lobes_merge_only_when_their_grown_footprints_touch():
    # Lobes 2.5 FWHM apart at S/N 12, footprints not grown by detection: a gap of ~4 pixels between them.
    overrides = {"detection.nSigmaToGrow": 0.0, "dipoleMaxSeparation": 3.0}
    separations = [2.5] * 6
    difference, _ = _dipole_field(np.random.default_rng(9), separations, pos_snr=12.0, neg_snr=-12.0)
    apart, catalog = _run(difference, _task(growFootprint=0, **overrides))
    assert apart.metadata["numDipoles"] == 0 and len(catalog) == 12
    difference, _ = _dipole_field(np.random.default_rng(9), separations, pos_snr=12.0, neg_snr=-12.0)
    merged, catalog = _run(difference, _task(growFootprint=3, **overrides))
    assert merged.metadata["numDipoles"] == 6 and len(catalog) == 6
    # Peaks further apart than dipoleMaxSeparation never merge, however much the footprints grow.
    difference, _ = _dipole_field(np.random.default_rng(9), separations, pos_snr=12.0, neg_snr=-12.0)
    far, catalog = _run(difference, _task(growFootprint=3, **{**overrides, "dipoleMaxSeparation": 1.5}))
    assert far.metadata["numDipoles"] == 0 and len(catalog) == 12


# Blends -----------------------------------------------------------------------------------------------------------

# (separation [FWHM], flux ratio of the brighter to the fainter source) of the blended pairs; closer pairs of unequal
# sources are not resolved (the fainter one is a shoulder of the brighter's smoothed profile, not a peak).
_BLENDS = [(2.0, 1.0), (2.5, 1.0), (2.5, 3.0), (3.0, 1.0), (3.0, 3.0)]


def _moffat_psf(shape: tuple[int, int], beta: float = 2.5, size: int = 41) -> PcaPsf:
    """A constant Moffat PSF of FWHM ``FWHM``: its wings reach far beyond a Gaussian's."""
    alpha = FWHM / (2 * math.sqrt(2 ** (1 / beta) - 1))
    yy, xx = np.mgrid[-(size // 2) : size // 2 + 1, -(size // 2) : size // 2 + 1]
    image = (1 + (xx**2 + yy**2) / alpha**2) ** -beta
    return PcaPsf(image[None] / image.sum(), np.ones((1, 1)), 0, Box2I(0, 0, shape[1], shape[0]))


def _blend_field(seed: int = 11):
    """Pairs of same-sign point sources (S/N about 200 and 200 / ratio) with a Moffat PSF, in one footprint each,
    positive and negative; returns the difference and the truth rows (x, y, flux, pair)."""
    rng = np.random.default_rng(seed)
    difference = _noise_exposure(rng, (400, 1024))
    difference.psf = _moffat_psf(difference.shape)
    truth = []
    for k, ((sep, ratio), sign) in enumerate((blend, sign) for blend in _BLENDS for sign in (1, -1)):
        xc, yc = 100.0 + 160.0 * (k % 6) + rng.uniform(-0.5, 0.5), 120.0 + 160.0 * (k // 6) + rng.uniform(-0.5, 0.5)
        angle = rng.uniform(0.0, 2 * math.pi)
        dx, dy = 0.5 * sep * FWHM * math.cos(angle), 0.5 * sep * FWHM * math.sin(angle)
        bright = sign * 200 * PSF_FLUX_ERR
        for x, y, flux in ((xc + dx, yc + dy, bright), (xc - dx, yc - dy, bright / ratio)):
            _add_point_source(difference, x, y, flux)
            truth.append((x, y, flux, k))
    return difference, np.array(truth)


def test_blended_sources_are_deblended_and_fitted_jointly():
    difference, truth = _blend_field()
    task, catalog = _run(difference)
    distance, index = _nearest(catalog, truth[:, 0], truth[:, 1])
    rows = catalog[index]
    assert len(catalog) == len(truth) and distance.max() < 0.5 and len(set(index)) == len(truth)
    assert np.all(rows["isBlended"]) and not np.any(rows["blendFit_flag"]) and not np.any(rows["isDipole"])
    assert np.array_equal(np.asarray(rows["is_negative"]), truth[:, 2] < 0)
    pull = (np.asarray(rows["psfFlux"]) - truth[:, 2]) / np.asarray(rows["psfFluxErr"])
    assert np.all(np.abs(pull) < 3.5), pull
    # Unbiased: each child measured on its own segment keeps its siblings' wings (mean signed pull +1.5 then).
    assert abs(np.mean(pull * np.sign(truth[:, 2]))) < 0.75, pull
    # The errors of the joint fit: at least an isolated source's (up to the PSF's sub-pixel interpolation), larger
    # for the closest pairs, whose amplitudes are correlated.
    psf_image = difference.psf.compute_image(500.0, 200.0)[0]
    ratio = np.asarray(rows["psfFluxErr"]) / (NOISE / math.sqrt(np.sum(psf_image**2)))
    assert np.all((ratio > 0.99) & (ratio < 1.5)) and ratio[:4].min() > 1.002, ratio
    assert task.metadata["numBlended"] == len(truth) and task.metadata["numBlendFitFailed"] == 0
    assert task.deblend.metadata["numParents"] == len(_BLENDS) * 2


def test_without_deblending_each_blend_is_one_source_and_the_fainter_is_lost():
    difference, truth = _blend_field()
    task, catalog = _run(difference, _task(doDeblend=False))
    assert len(catalog) == len(_BLENDS) * 2 and not np.any(catalog["isBlended"])
    distance, _ = _nearest(catalog, truth[:, 0], truth[:, 1])
    assert (distance > 2.0).sum() == len(_BLENDS) * 2  # one source of every pair has no row of its own


def test_negative_footprints_are_deblended_only_with_do_negative():
    difference, truth = _blend_field()
    task, catalog = _run(difference, _task(**{"deblend.doNegative": False}))
    negative = np.asarray(catalog["is_negative"], dtype=bool)
    assert (~negative).sum() == (truth[:, 2] > 0).sum() and np.all(catalog["isBlended"][~negative])
    assert negative.sum() == len(_BLENDS) and not np.any(catalog["isBlended"][negative])


# Science and template fluxes, false positives, bad sources ---------------------------------------------------------


@pytest.fixture(scope="module")
def triplet():
    """Template and science exposures of a few stars, one brightening, one fading, and a new transient."""
    rng = np.random.default_rng(11)
    shape = (300, 300)
    template = _noise_exposure(rng, shape)
    science = _noise_exposure(rng, shape)
    stars = {  # (x, y): (template flux, science flux)
        (60.3, 70.6): (5000.0, 5000.0),
        (150.2, 80.1): (4000.0, 7000.0),
        (220.7, 200.4): (6000.0, 3000.0),
        (90.5, 220.8): (0.0, 2500.0),
    }
    for (x, y), (ft, fs) in stars.items():
        _add_point_source(template, x, y, ft)
        _add_point_source(science, x, y, fs)
    difference = Exposure(
        MaskedImage(science.image - template.image, variance=science.variance + template.variance),
        psf=GaussianPsf(31, 31, SIGMA),
    )
    return science, template, difference, stars


def test_science_and_template_fluxes_are_measured_at_the_dia_positions(triplet):
    science, template, difference, stars = triplet
    catalog = DetectAndMeasureTask().run(science, template, difference.copy()).diaSources
    changed = {xy: f for xy, f in stars.items() if f[0] != f[1]}
    xy = np.array(list(changed))
    distance, index = _nearest(catalog, xy[:, 0], xy[:, 1])
    assert len(catalog) == 3 and distance.max() < 1.0
    rows = catalog[index]
    ft, fs = np.array(list(changed.values())).T
    for name, truth in (("scienceFlux", fs), ("templateFlux", ft), ("psfFlux", fs - ft)):
        pull = (np.asarray(rows[name]) - truth) / np.asarray(rows[name + "Err"])
        assert np.all(np.abs(pull) < 3.0), name
    assert not np.any(rows["scienceFlux_flag"]) and not np.any(rows["templateFlux_flag"])
    assert list(rows["is_negative"]) == [False, True, False]


def test_false_positive_metadata_counts_dia_sources_near_science_sources(triplet):
    science, template, difference, stars = triplet
    src = Table({"centroid_x": [150.9, 220.0, 10.0], "centroid_y": [80.5, 201.0, 10.0]})  # two variables + one far
    task = DetectAndMeasureTask()
    task.run(science, template, difference.copy(), src)
    md = task.metadata
    assert md["NFalsePositivesTotal"] == 3
    assert md["NFalsePositivesSrcAssociated"] == 2 and md["NFalsePositivesUnassociated"] == 1
    assert md["NFalsePositivesRefAssociated"] == 0


def test_sources_touching_no_data_are_dropped_by_bad_source_flags(triplet):
    science, template, difference, _ = triplet
    flagged = difference.copy()
    flagged.mask.set_plane("NO_DATA", Box2I(223, 196, 4, 9))  # beside the fading star at (220.7, 200.4)
    task = DetectAndMeasureTask()
    catalog = task.run(science, template, flagged).diaSources
    assert len(catalog) == 2 and task.metadata["numBadDiaSources"] == 1
    assert not np.any(catalog["is_negative"])
    keep = _task(badSourceFlags=[])
    catalog = keep.run(science, template, difference.copy()).diaSources
    flagged = difference.copy()
    flagged.mask.set_plane("NO_DATA", Box2I(223, 196, 4, 9))
    catalog = keep.run(science, template, flagged).diaSources
    assert len(catalog) == 3 and list(catalog["flag_edge"][catalog["is_negative"]]) == [True]


def test_ids_are_unique_to_the_exposure_with_exposure_id_info(triplet):
    science, template, difference, _ = triplet
    info = ExposureIdInfo(expId=2000 * 1024 + 4, expBits=42)
    catalog = DetectAndMeasureTask().run(science, template, difference.copy(), exposureIdInfo=info).diaSources
    assert list(catalog["id"]) == list(info.make_source_ids(np.arange(1, len(catalog) + 1)))
    assert catalog.meta["exposure_id"] == info.expId


# Configuration and errors -------------------------------------------------------------------------------------------


def test_default_config_detects_both_polarities_at_five_sigma_without_background():
    config = DetectAndMeasureConfig()
    assert config.detection.thresholdPolarity == "both" and config.detection.thresholdValue == 5.0
    assert config.detection.reEstimateBackground is False
    assert DetectAndMeasureTask._DefaultName == "detectAndMeasure"


def test_unknown_bad_source_flag_is_rejected():
    config = DetectAndMeasureConfig(badSourceFlags=["flag_nonsense"])
    with pytest.raises(ValueError, match="flag_nonsense.*choose among"):
        config.validate()


def test_difference_without_psf_is_an_actionable_error():
    difference = _noise_exposure(np.random.default_rng(0), (64, 64))
    difference.psf = None
    with pytest.raises(ImageError, match="no PSF"):
        DetectAndMeasureTask().run(difference, difference, difference)
