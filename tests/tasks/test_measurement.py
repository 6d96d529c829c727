"""Tests of tasks/measurement.py (SingleFrameMeasurementTask)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from tasks.background import SubtractBackgroundTask
from tasks.detection import SourceDetectionTask
from tasks.image import Box2I, Exposure, GaussianPsf, MaskedImage
from tasks.measurement import SingleFrameMeasurementTask, aperture_flux_name

SIGMA = 1.6  # PSF sigma [pixels]
SKY_VAR = 100.0  # sky variance [counts^2]
RADII = [3.0, 4.5, 6.0, 9.0, 12.0]

SPEC_COLUMNS = [
    "id", "parent", "centroid_x", "centroid_y", "centroid_xErr", "centroid_yErr", "centroid_flag",
    "shape_xx", "shape_yy", "shape_xy", "shape_flag", "psfFlux", "psfFluxErr", "psfFlux_flag",
    *[name for r in RADII for name in (aperture_flux_name(r), aperture_flux_name(r) + "Err")],
    "apFlux_flag", "footprint_npix", "peak_value", "is_negative", "flag_edge", "flag_saturated",
    "flag_interpolated", "flag_cr", "flag_bad", "calib_psf_candidate", "calib_psf_used", "calib_psf_reserved",
    "coord_ra", "coord_dec",
]


def _gaussian_stamp(box: Box2I, x: float, y: float, xx: float, yy: float, xy: float) -> np.ndarray:
    """Unit-flux elliptical Gaussian sampled at the pixel centres of ``box``."""
    gy, gx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1]
    dx, dy = gx - x, gy - y
    det = xx * yy - xy * xy
    r2 = (yy * dx * dx + xx * dy * dy - 2 * xy * dx * dy) / det
    return np.exp(-0.5 * r2) / (2 * math.pi * math.sqrt(det))


def _star_field(
    rng: np.random.Generator,
    *,
    n: int = 400,
    flux_range: tuple[float, float] = (1500.0, 30000.0),
    shape: tuple[int, int] = (1000, 1000),
    xy0: tuple[int, int] = (0, 0),
    moments: tuple[float, float, float] = (SIGMA**2, SIGMA**2, 0.0),
    spacing: int = 45,
) -> tuple[Exposure, np.ndarray, np.ndarray, np.ndarray]:
    """Isolated Gaussian stars on a noisy sky (variance = sky + Poisson); returns the noiseless model too."""
    ny, nx = shape
    gy, gx = np.mgrid[spacing : ny - spacing + 1 : spacing, spacing : nx - spacing + 1 : spacing]
    pos = np.column_stack([gx.ravel(), gy.ravel()]).astype(float)[:n]
    pos += rng.uniform(-0.5, 0.5, pos.shape) + np.array(xy0)
    flux = np.exp(rng.uniform(*np.log(flux_range), len(pos)))
    bbox = Box2I(xy0[0], xy0[1], nx, ny)
    model = np.zeros(shape)
    h = 15
    for (x, y), f in zip(pos, flux, strict=True):
        box = Box2I(int(round(x)) - h, int(round(y)) - h, 2 * h + 1, 2 * h + 1).intersection(bbox)
        model[box.slices(bbox)] += f * _gaussian_stamp(box, x, y, *moments)
    variance = SKY_VAR + model
    image = model + rng.normal(0.0, 1.0, shape) * np.sqrt(variance)
    mi = MaskedImage(image.astype(np.float32), variance=variance.astype(np.float32), xy0=xy0)
    return Exposure(mi, psf=GaussianPsf(31, 31, SIGMA)), pos, flux, model


def _detect_and_measure(exposure: Exposure, detection: dict | None = None, **config):
    det_config = SourceDetectionTask.ConfigClass()
    det_config.reEstimateBackground = False
    for key, value in (detection or {}).items():
        setattr(det_config, key, value)
    detections = SourceDetectionTask(config=det_config).run(exposure)
    meas_config = SingleFrameMeasurementTask.ConfigClass()
    for key, value in config.items():
        setattr(meas_config, key, value)
    catalog = SingleFrameMeasurementTask(config=meas_config).run(exposure, detections.sources, detections.footprints)
    return catalog, detections


def _match(catalog, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distance, index = cKDTree(pos).query(np.column_stack([catalog["centroid_x"], catalog["centroid_y"]]))
    return distance < 1.0, index


@pytest.fixture(scope="module")
def stars():
    rng = np.random.default_rng(2024)
    exposure, pos, flux, model = _star_field(rng, xy0=(50, 80))
    catalog, detections = _detect_and_measure(exposure)
    return exposure, pos, flux, model, catalog, detections


def test_catalog_has_the_spec_columns(stars):
    *_, catalog, detections = stars
    assert catalog.colnames == SPEC_COLUMNS
    assert len(catalog) == len(detections.sources)
    assert list(catalog["id"]) == list(detections.sources["id"])
    assert catalog["id"].dtype == np.int64 and catalog["footprint_npix"].dtype == np.int64
    assert catalog["centroid_x"].unit == "pix" and catalog["psfFlux"].unit == "ct"


def test_centroids_are_unbiased_with_consistent_errors(stars):
    _, pos, _, _, catalog, _ = stars
    matched, index = _match(catalog, pos)
    assert matched.sum() == len(pos) and not catalog["centroid_flag"].any()
    dx = catalog["centroid_x"] - pos[index, 0]
    dy = catalog["centroid_y"] - pos[index, 1]
    assert abs(np.mean(dx)) < 0.02 and abs(np.mean(dy)) < 0.02
    for delta, err in ((dx, catalog["centroid_xErr"]), (dy, catalog["centroid_yErr"])):
        assert 0.7 <= np.std(delta / err) <= 1.3


def test_centroid_errors_are_close_to_the_cramer_rao_bound(stars):
    """The PSF-weighted centroid is nearly optimal: its error is close to the Fisher bound
    ``1 / sqrt(sum((F dP/dx)^2 / V))`` of each star (V = sky + the star's own Poisson variance)."""
    exposure, pos, flux, _, catalog, _ = stars
    _, index = _match(catalog, pos)
    bound = np.empty(len(catalog))
    for row, k in enumerate(index):
        box = Box2I(int(round(pos[k, 0])) - 12, int(round(pos[k, 1])) - 12, 25, 25)
        gy, gx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1]
        star = flux[k] * _gaussian_stamp(box, pos[k, 0], pos[k, 1], SIGMA**2, SIGMA**2, 0.0)
        derivative = star * (gx - pos[k, 0]) / SIGMA**2
        bound[row] = 1.0 / np.sqrt(np.sum(derivative**2 / (SKY_VAR + star)))
    ratio = np.asarray(catalog["centroid_xErr"]) / bound
    assert 1.0 <= np.median(ratio) <= 1.15, np.median(ratio)


def test_adaptive_moments_are_exact_on_noiseless_gaussians(stars):
    exposure, pos, _, model, catalog, detections = stars
    noiseless = Exposure(MaskedImage(model.astype(np.float32), variance=exposure.variance, xy0=exposure.xy0))
    measured = SingleFrameMeasurementTask().run(noiseless, detections.sources, detections.footprints)
    assert not measured["shape_flag"].any()
    for column, truth in (("shape_xx", SIGMA**2), ("shape_yy", SIGMA**2), ("shape_xy", 0.0)):
        assert np.abs(measured[column] - truth).max() < 1e-4 * SIGMA**2


def test_adaptive_moments_recover_the_psf_sigma_squared(stars):
    """Within 2% star by star at high S/N, and without bias (median within 0.5%) over all stars."""
    _, pos, flux, _, catalog, _ = stars
    _, index = _match(catalog, pos)
    assert not catalog["shape_flag"].any()
    bright = flux[index] > 20000
    assert bright.sum() > 40
    for column in ("shape_xx", "shape_yy"):
        ratio = np.asarray(catalog[column]) / SIGMA**2
        assert np.std(ratio[bright]) < 0.02
        assert abs(np.median(ratio) - 1) < 0.005
    assert np.std(np.asarray(catalog["shape_xy"])[bright]) < 0.02 * SIGMA**2


def test_adaptive_moments_of_elliptical_sources():
    rng = np.random.default_rng(7)
    moments = (4.0, 2.25, 0.8)
    exposure, pos, flux, _ = _star_field(rng, n=60, flux_range=(20000, 40000), moments=moments, shape=(500, 500))
    catalog, _ = _detect_and_measure(exposure)
    assert not catalog["shape_flag"].any()
    for column, truth in zip(("shape_xx", "shape_yy", "shape_xy"), moments, strict=True):
        assert np.median(catalog[column]) == pytest.approx(truth, rel=0.02)


def test_psf_flux_pulls_are_unit_normal(stars):
    _, pos, flux, _, catalog, _ = stars
    _, index = _match(catalog, pos)
    assert not catalog["psfFlux_flag"].any()
    pull = (catalog["psfFlux"] - flux[index]) / catalog["psfFluxErr"]
    assert abs(np.mean(pull)) < 0.15
    assert 0.8 <= np.std(pull) <= 1.2


def test_aperture_flux_pulls_are_unit_normal(stars):
    """Noisy aperture fluxes scatter about the noiseless image's fluxes in the same apertures by their errors."""
    exposure, pos, flux, model, catalog, _ = stars
    noiseless = Exposure(
        MaskedImage(model.astype(np.float32), variance=exposure.variance.copy(), xy0=exposure.xy0), psf=exposure.psf
    )
    sources = catalog["id", "parent", "centroid_x", "centroid_y", "footprint_npix", "peak_value", "is_negative"]
    detections = SourceDetectionTask().run(exposure.copy())
    truth = SingleFrameMeasurementTask().run(noiseless, sources, detections.footprints)
    assert not catalog["apFlux_flag"].any()
    for radius in RADII:
        name = aperture_flux_name(radius)
        pull = (catalog[name] - truth[name]) / catalog[name + "Err"]
        assert abs(np.mean(pull)) < 0.15, name
        assert 0.8 <= np.std(pull) <= 1.2, name
    # The largest aperture holds (nearly) all of a Gaussian's flux.
    _, index = _match(catalog, pos)
    assert np.median(truth["apFlux_12_0"] / flux[index]) == pytest.approx(1.0, abs=1e-3)


def test_flags_come_from_the_mask_planes():
    rng = np.random.default_rng(8)
    exposure, pos, _, _ = _star_field(rng, n=6, flux_range=(20000, 20001), shape=(300, 400), spacing=100)
    plane_of = {0: "SAT", 1: "INTRP", 2: "CR", 3: "BAD"}
    for k, plane in plane_of.items():
        x, y = (int(round(v)) for v in pos[k])
        exposure.mask.set_plane(plane, Box2I(x, y, 1, 1))
    catalog, _ = _detect_and_measure(exposure)
    _, index = _match(catalog, pos)
    columns = {"SAT": "flag_saturated", "INTRP": "flag_interpolated", "CR": "flag_cr", "BAD": "flag_bad"}
    for row, k in enumerate(index):
        for plane, column in columns.items():
            assert catalog[column][row] == (plane_of.get(k) == plane), (k, column)
    assert not catalog["flag_edge"].any()


def test_edge_flag_near_the_border_and_off_image_apertures():
    rng = np.random.default_rng(9)
    exposure, _, _, _ = _star_field(rng, n=1, flux_range=(20000, 20001), shape=(200, 200), spacing=100)
    box = Box2I(4, 96, 13, 13)
    star = 20000 * _gaussian_stamp(box, 10.0, 102.0, SIGMA**2, SIGMA**2, 0)
    exposure.image[box.slices(exposure.bbox)] += star.astype(np.float32)
    catalog, _ = _detect_and_measure(exposure)
    catalog.sort("centroid_x")
    edge, centre = catalog[0], catalog[1]
    assert edge["flag_edge"] and not centre["flag_edge"]
    assert edge["apFlux_flag"] and np.isnan(edge["apFlux_12_0"]) and np.isfinite(edge["apFlux_6_0"])
    assert not centre["apFlux_flag"]


def test_neighbours_are_replaced_before_measuring():
    rng = np.random.default_rng(10)
    shape = (200, 200)
    bbox = Box2I(0, 0, 200, 200)
    image = rng.normal(0, math.sqrt(SKY_VAR), shape)
    image += 5000 * _gaussian_stamp(bbox, 100.0, 100.0, SIGMA**2, SIGMA**2, 0)
    image += 50000 * _gaussian_stamp(bbox, 114.0, 100.0, SIGMA**2, SIGMA**2, 0)
    exposure = Exposure(
        MaskedImage(image.astype(np.float32), variance=np.full(shape, SKY_VAR, np.float32)),
        psf=GaussianPsf(31, 31, SIGMA),
    )
    compact = {"thresholdValue": 20.0, "nSigmaToGrow": 0.0}  # two separate footprints 14 pixels apart
    replaced, detections = _detect_and_measure(exposure, compact)
    assert len(detections.sources) == 2
    kept, _ = _detect_and_measure(exposure, compact, doReplaceNeighbors=False)
    faint = int(np.argmin(replaced["psfFlux"]))
    assert replaced["apFlux_12_0"][faint] == pytest.approx(5000, abs=4 * replaced["apFlux_12_0Err"][faint])
    assert kept["apFlux_12_0"][faint] > 5000 + 10 * kept["apFlux_12_0Err"][faint]


def test_negative_sources_have_negative_fluxes():
    rng = np.random.default_rng(11)
    exposure, pos, flux, _ = _star_field(rng, n=20, flux_range=(5000, 20000), shape=(300, 300), spacing=60)
    exposure.image[...] *= -1
    det_config = SourceDetectionTask.ConfigClass()
    det_config.reEstimateBackground = False
    det_config.thresholdPolarity = "both"
    detections = SourceDetectionTask(config=det_config).run(exposure)
    catalog = SingleFrameMeasurementTask().run(exposure, detections.sources, detections.footprints)
    assert catalog["is_negative"].all() and len(catalog) == len(pos)
    _, index = _match(catalog, pos)
    assert not catalog["centroid_flag"].any() and not catalog["shape_flag"].any()
    assert np.allclose(-catalog["psfFlux"], flux[index], rtol=0.1)
    assert np.median(catalog["shape_xx"]) == pytest.approx(SIGMA**2, rel=0.02)


def test_sky_coordinates_come_from_the_wcs(stars):
    exposure, *_, catalog, _ = stars
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [500.0, 500.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    with_wcs = Exposure(exposure.masked_image, psf=exposure.psf, wcs=wcs)
    sources = catalog["id", "parent", "centroid_x", "centroid_y", "footprint_npix", "peak_value", "is_negative"][:5]
    detections = SourceDetectionTask().run(exposure.copy())
    measured = SingleFrameMeasurementTask().run(with_wcs, sources, detections.footprints)
    ra, dec = wcs.all_pix2world(measured["centroid_x"], measured["centroid_y"], 0)
    assert np.allclose(measured["coord_ra"], ra) and np.allclose(measured["coord_dec"], dec)
    assert np.isnan(catalog["coord_ra"]).all()  # no WCS


def test_without_a_psf_the_psf_flux_is_flagged_but_centroids_work(stars):
    exposure, pos, *_ = stars
    no_psf = Exposure(exposure.masked_image)
    detections = SourceDetectionTask().run(exposure.copy())
    catalog = SingleFrameMeasurementTask().run(no_psf, detections.sources, detections.footprints)
    assert catalog["psfFlux_flag"].all() and np.isnan(catalog["psfFlux"]).all()
    matched, index = _match(catalog, pos)
    assert matched.all() and not catalog["centroid_flag"].any()
    assert np.abs(catalog["centroid_x"] - pos[index, 0]).max() < 0.3


def test_empty_source_table():
    rng = np.random.default_rng(12)
    exposure, *_ = _star_field(rng, n=0, shape=(100, 100))
    catalog, _ = _detect_and_measure(exposure)
    assert len(catalog) == 0 and catalog.colnames == SPEC_COLUMNS


# Real data -----------------------------------------------------------------------------------------------


def test_sdss_frame_measurement_smoke(shared_data: Path):
    from tasks.instruments.sdss.formatters import read_fpc, read_fpm, read_psfield, read_tsfield
    from tasks.instruments.sdss.isr import SdssIsrTask

    run, field = 4192, 300
    d = shared_data / "sdss_stripe82_lsst_demo" / "input" / str(run) / "40"
    exposure = SdssIsrTask().run(
        read_fpc(d / f"corr/4/fpC-{run:06d}-r4-{field:04d}.fit.gz"),
        read_fpm(d / f"objcs/4/fpM-{run:06d}-r4-{field:04d}.fit"),
        read_psfield(d / f"objcs/4/psField-{run:06d}-4-{field:04d}.fit", kl_psf=False),
        read_tsfield(d / f"calibChunks/4/tsField-{run:06d}-4-40-{field:04d}.fit"),
    ).exposure
    exposure.psf = GaussianPsf(21, 21, 1.5)
    SubtractBackgroundTask().run(exposure)
    detections = SourceDetectionTask().run(exposure)
    catalog = SingleFrameMeasurementTask().run(exposure, detections.sources, detections.footprints)
    assert catalog.colnames == SPEC_COLUMNS
    assert 300 <= len(catalog) <= 3000
    assert catalog["centroid_flag"].mean() < 0.05 and catalog["shape_flag"].mean() < 0.15
    # Sky positions from the frame's WCS, inside the frame's footprint on the sky.
    assert np.isfinite(catalog["coord_ra"]).all() and np.ptp(catalog["coord_dec"]) < 0.25
    # Bright, clean, compact sources: the PSF flux is close to the large-aperture flux.
    good = (
        ~catalog["psfFlux_flag"] & ~catalog["apFlux_flag"] & ~catalog["flag_saturated"]
        & (catalog["psfFlux"] > 50 * catalog["psfFluxErr"]) & (catalog["shape_xx"] < 3.0)
    )
    assert good.sum() > 30
    assert np.median(catalog["psfFlux"][good] / catalog["apFlux_12_0"][good]) == pytest.approx(1.0, abs=0.15)
    # Saturated stars in the fpM SAT plane are flagged.
    assert catalog["flag_saturated"].sum() >= 1


def test_deblended_children_are_measured_on_their_own_segments():
    from tasks.deblend import SourceDeblendTask

    rng = np.random.default_rng(13)
    shape = (200, 300)
    bbox = Box2I(0, 0, 300, 200)
    truth = [(100.0, 100.0, 20000.0), (107.0, 103.0, 10000.0), (200.0, 100.0, 15000.0)]
    image = rng.normal(0, math.sqrt(SKY_VAR), shape)
    for x, y, f in truth:
        image += f * _gaussian_stamp(bbox, x, y, SIGMA**2, SIGMA**2, 0)
    exposure = Exposure(
        MaskedImage(image.astype(np.float32), variance=np.full(shape, SKY_VAR, np.float32)),
        psf=GaussianPsf(31, 31, SIGMA),
    )
    det_config = SourceDetectionTask.ConfigClass()
    det_config.reEstimateBackground = False
    detections = SourceDetectionTask(config=det_config).run(exposure)
    assert len(detections.sources) == 2  # the close pair shares a footprint
    deblended = SourceDeblendTask().run(exposure, detections.sources, detections.footprints)
    sources = deblended.sources
    assert list(sources["parent"]) == [0, 0, 1, 1] and list(sources["deblend_nChild"]) == [2, 0, 0, 0]
    assert deblended.footprints is detections.footprints  # relabelled in place
    assert list(detections.footprints.ids) == [2, 3, 4]
    catalog = SingleFrameMeasurementTask().run(exposure, sources, detections.footprints)
    assert "deblend_nChild" in catalog.colnames
    children = catalog[catalog["parent"] == 1]
    for (x, y, f), child in zip(truth[:2], children, strict=True):
        assert child["centroid_x"] == pytest.approx(x, abs=0.1) and child["centroid_y"] == pytest.approx(y, abs=0.1)
        assert child["psfFlux"] == pytest.approx(f, rel=0.05)
    parent = catalog[catalog["id"] == 1][0]
    assert parent["footprint_npix"] == children["footprint_npix"].sum()
