"""CalibrateTask, astrometry and photometric calibration: synthetic truth, and SDSS Stripe 82 against the tsField."""

from __future__ import annotations

import math
import time
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.wcs import WCS

from graph import AlgorithmError
from tasks.astrometry import AstrometryTask, fit_wcs, match_to_reference, select_reference_stars, sky_residuals
from tasks.image import Box2I, Exposure, FilterLabel, GaussianPsf, MaskedImage, PhotoCalib
from tasks.photo_cal import PhotoCalTask, fit_zero_point

SCALE = 0.396  # arcsec / pixel (SDSS)


def tan_wcs(
    ra: float, dec: float, crpix: tuple[float, float], *, rotation_deg: float = 0.0, scale: float = SCALE
) -> WCS:
    """A TAN WCS with north up, east left, rotated by ``rotation_deg``; crpix 0-based."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [crpix[0] + 1, crpix[1] + 1]
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    wcs.wcs.cd = (scale / 3600.0) * np.array([[-c, s], [s, c]])
    wcs.wcs.set()
    return wcs


def perturbed(wcs: WCS, *, east: float, north: float, rotation_deg: float) -> WCS:
    """``wcs`` moved by (east, north) [arcsec] on the sky and rotated by ``rotation_deg`` about CRPIX."""
    out = wcs.deepcopy()
    center = SkyCoord(*wcs.wcs.crval, unit="deg").spherical_offsets_by(east * u.arcsec, north * u.arcsec)
    out.wcs.crval = [center.ra.deg, center.dec.deg]
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    out.wcs.cd = wcs.wcs.cd @ np.array([[c, -s], [s, c]])
    out.wcs.set()
    return out


def synthetic_stars(
    rng: np.random.Generator, n: int, bbox: Box2I, *, min_sep: float = 12.0, border: int = 20
) -> np.ndarray:
    """``n`` random (x, y) positions in ``bbox``, at least ``min_sep`` pixels apart."""
    points: list[tuple[float, float]] = []
    while len(points) < n:
        p = rng.uniform([bbox.x0 + border, bbox.y0 + border], [bbox.x1 - border, bbox.y1 - border])
        if all(math.hypot(p[0] - q[0], p[1] - q[1]) >= min_sep for q in points):
            points.append((float(p[0]), float(p[1])))
    return np.array(points)


def refcat_from(wcs: WCS, xy: np.ndarray, mag: np.ndarray, band: str = "r", mag_err: float = 0.01) -> Table:
    sky = wcs.pixel_to_world(xy[:, 0], xy[:, 1])
    ra = sky.ra.deg
    ra = np.where(ra > 180, ra - 360, ra)  # the Stripe 82 catalogue's RA branch (-10..-6)
    n = len(xy)
    return Table({"id": np.arange(1000, 1000 + n), "ra": ra, "dec": sky.dec.deg, band: mag,
                  f"{band}_err": np.full(n, mag_err), "starnotgal": np.ones(n, dtype=np.int64)})


# Matching and the WCS fit -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def astrometry_case():
    """200 stars on an SDSS-sized frame; the exposure's WCS is off by (6", -4") and 0.1 deg of rotation."""
    rng = np.random.default_rng(5)
    bbox = Box2I(0, 0, 2048, 1489)
    truth = tan_wcs(351.6, 0.1, bbox.center)
    xy = synthetic_stars(rng, 200, bbox, min_sep=8.0)
    mag = rng.uniform(15.0, 21.0, len(xy))
    refcat = refcat_from(truth, xy, mag)
    noise = 0.05  # px, centroid noise
    sources = Table({
        "id": np.arange(1, len(xy) + 1), "centroid_x": xy[:, 0] + rng.normal(0, noise, len(xy)),
        "centroid_y": xy[:, 1] + rng.normal(0, noise, len(xy)),
        "psfFlux": 10 ** ((28.0 - mag) / 2.5), "psfFluxErr": 10 ** ((28.0 - mag) / 2.5) / 100.0,
    })
    wrong = perturbed(truth, east=6.0, north=-4.0, rotation_deg=0.1)
    exposure = Exposure(MaskedImage.from_bbox(bbox), wcs=wrong, filter=FilterLabel(band="r", physical_filter="r"))
    return truth, wrong, exposure, sources, refcat, noise


def test_reference_selection_keeps_stars_in_the_frame_and_magnitude_range(astrometry_case):
    truth, _, exposure, _, refcat, _ = astrometry_case
    refcat = refcat.copy()
    refcat["starnotgal"][:10] = 0  # galaxies
    far = refcat_from(tan_wcs(171.6, -0.1, (0, 0)), np.zeros((1, 2)), np.array([17.0]))  # near the antipode
    from astropy.table import vstack

    refs = select_reference_stars(vstack([refcat, far]), truth, exposure.bbox, band="r")
    in_range = (refcat["r"] >= 12.0) & (refcat["r"] <= 22.0)
    assert len(refs) == int(in_range[10:].sum())
    assert set(refs["ref_index"]) == set(np.flatnonzero(in_range)[np.flatnonzero(in_range) >= 10])
    assert np.all(refs["inside"]) and np.all((refs["coord_ra"] >= 0) & (refs["coord_ra"] < 360))


def test_offset_search_recovers_a_wcs_shift_larger_than_the_match_radius(astrometry_case):
    truth, wrong, _, sources, refcat, _ = astrometry_case
    coords = wrong.pixel_to_world(sources["centroid_x"], sources["centroid_y"])
    ref_coords = SkyCoord(np.mod(refcat["ra"], 360) * u.deg, refcat["dec"] * u.deg)
    without = match_to_reference(coords, ref_coords, radius=2.0, max_offset=0.0)
    with_search = match_to_reference(coords, ref_coords, radius=2.0, max_offset=10.0)
    assert len(without) < 20  # a 7" offset is beyond the 2" radius
    assert len(with_search) >= 190
    assert np.array_equal(with_search.src_index, with_search.ref_index)  # the true pairs (same order)
    assert with_search.offset == pytest.approx([-6.0, 4.0], abs=0.5)


def test_wcs_fit_recovers_a_shifted_and_rotated_wcs(astrometry_case):
    truth, wrong, exposure, sources, refcat, noise = astrometry_case
    task = AstrometryTask()
    result = task.run(sources, exposure, refcat)
    grid = np.array([[0, 0], [2047, 0], [0, 1488], [2047, 1488], [1024, 744], [300, 1200]], dtype=float)
    error = sky_residuals(result.wcs.pixel_to_world(*grid.T), truth.pixel_to_world(*grid.T))
    assert np.hypot(*error.T).max() < 0.02  # arcsec, over the whole frame (centroid noise 0.02")
    assert task.metadata["astromRmsBefore"] > 5.0  # the perturbed WCS is 7" off
    expected = noise * SCALE * math.sqrt(2)  # radial RMS of the centroid noise
    assert task.metadata["astromRms"] == pytest.approx(expected, rel=0.2)
    assert task.metadata["numMatches"] == 200 and task.metadata["numFitStars"] >= 190


def test_wcs_fit_with_sip_absorbs_distortion():
    rng = np.random.default_rng(7)
    bbox = Box2I(0, 0, 2048, 1489)
    truth = tan_wcs(10.0, -30.0, bbox.center)
    xy = synthetic_stars(rng, 300, bbox, min_sep=5.0)
    # Quadratic distortion: up to ~1.5 px at the corners.
    cx, cy = bbox.center
    dx, dy = (xy[:, 0] - cx) / 1024, (xy[:, 1] - cy) / 744
    distorted = xy + np.column_stack([1.0 * dx * dy, 0.8 * dx**2])
    ref_coords = truth.pixel_to_world(xy[:, 0], xy[:, 1])
    tan = fit_wcs(distorted[:, 0], distorted[:, 1], ref_coords, initial=truth, bbox=bbox, n_iter=1)
    sip = fit_wcs(distorted[:, 0], distorted[:, 1], ref_coords, initial=truth, bbox=bbox, sip_degree=2, n_iter=1)
    assert tan.rms > 0.1 and sip.rms < 0.01


def test_wcs_fit_clips_wrong_matches(astrometry_case):
    truth, _, exposure, sources, refcat, _ = astrometry_case
    x, y = np.asarray(sources["centroid_x"], float), np.asarray(sources["centroid_y"], float)
    coords = truth.pixel_to_world(x, y)
    x_bad = x.copy()
    x_bad[:10] += 4.0  # 1.6" off
    fit = fit_wcs(x_bad, y, coords, initial=exposure.wcs, bbox=exposure.bbox)
    assert not fit.used[:10].any() and fit.used[10:].mean() > 0.95
    assert fit.rms < 0.05


def test_too_few_matches_is_an_algorithm_error(astrometry_case):
    _, _, exposure, sources, refcat, _ = astrometry_case
    with pytest.raises(AlgorithmError, match=r"only 4 .*need 5"):
        AstrometryTask().run(sources, exposure, refcat[:4])


# Zero point ---------------------------------------------------------------------------------------------------


def _photometry_case(rng, n=80, calibration=18.3, ap_corr=1.03, outliers=8):
    mag = rng.uniform(15.0, 20.5, n)
    ref_flux = 10 ** ((31.4 - mag) / 2.5)
    total = ref_flux / calibration
    psf = total / ap_corr
    psf_err = np.sqrt(psf + 400.0)  # Poisson + sky, counts
    psf_meas = psf + rng.normal(0, 1, n) * psf_err
    psf_meas[:outliers] *= 1.4  # blends / variables
    sources = Table({"id": np.arange(1, n + 1), "psfFlux": psf_meas, "psfFluxErr": psf_err,
                     "apFlux_12_0": psf_meas * ap_corr * (1 + rng.normal(0, 0.003, n)), "apFlux_12_0Err": psf_err * 1.5,
                     "flag_saturated": np.zeros(n, bool)})
    matches = Table({"src_index": np.arange(n), "ref_mag": mag, "ref_flux": ref_flux,
                     "ref_fluxErr": ref_flux * 0.01 / 1.0857})
    return sources, matches


def test_zero_point_is_recovered_with_outliers_and_aperture_correction():
    rng = np.random.default_rng(1)
    sources, matches = _photometry_case(rng)
    task = PhotoCalTask()
    result = task.run(sources, matches)
    true_zp = PhotoCalib(18.3).instrumental_zero_point
    assert result.zeroPoint == pytest.approx(true_zp, abs=0.005)
    assert result.apCorr == pytest.approx(1.03, abs=0.003)
    assert not result.used[:8].any()  # the outliers are clipped
    assert 0.0005 < result.zeroPointErr < 0.005
    assert abs(result.zeroPoint - true_zp) < 3 * result.zeroPointErr
    assert task.metadata["photoRms"] < 0.03


def test_zero_point_without_aperture_correction_is_biased_by_it():
    rng = np.random.default_rng(1)
    sources, matches = _photometry_case(rng)
    config = PhotoCalTask.ConfigClass()
    config.apCorrField = None
    result = PhotoCalTask(config=config).run(sources, matches)
    bias = result.zeroPoint - PhotoCalib(18.3).instrumental_zero_point
    assert bias == pytest.approx(-2.5 * math.log10(1.03), abs=0.005)


def test_saturated_and_faint_stars_are_not_used():
    rng = np.random.default_rng(2)
    sources, matches = _photometry_case(rng, outliers=0)
    sources["flag_saturated"][10:20] = True
    result = PhotoCalTask().run(sources, matches)
    assert not result.selected[10:20].any()
    assert not result.selected[np.asarray(matches["ref_mag"]) > 21.0].any()


def test_too_few_photometric_matches_is_an_algorithm_error():
    sources, matches = _photometry_case(np.random.default_rng(3), n=4, outliers=0)
    with pytest.raises(AlgorithmError, match=r"only 4 of 4 reference matches are usable .*need 5"):
        PhotoCalTask().run(sources, matches)


def test_fit_zero_point_error_scales_with_scatter():
    rng = np.random.default_rng(4)
    ratio = 20.0 * (1 + rng.normal(0, 0.05, 400))
    fit = fit_zero_point(ratio * 100.0, np.zeros(400), np.full(400, 100.0), np.zeros(400), error_floor=0.01)
    # The quoted errors (1%) are 5 times too small: the error is inflated by sqrt(chi2).
    assert fit.calibration_err / 20.0 == pytest.approx(0.05 / math.sqrt(400), rel=0.15)
    assert fit.rms == pytest.approx(1.0857 * 0.05, rel=0.15)


# CalibrateTask on a synthetic exposure ------------------------------------------------------------------------

ZP_TRUE = 28.1  # AB magnitude of 1 count


def synthetic_icexp(rng: np.random.Generator, *, n_stars: int = 60, shape: tuple[int, int] = (600, 700)):
    """A background-subtracted star field with a Gaussian PSF; its WCS is off by (5", 3") and 0.08 deg.

    Returns the exposure, the reference catalogue (true positions, magnitudes from ``ZP_TRUE``) and the true WCS.
    """
    ny, nx = shape
    bbox = Box2I(0, 0, nx, ny)
    psf = GaussianPsf(25, 25, 1.7)
    xy = synthetic_stars(rng, n_stars, bbox, min_sep=15.0, border=25)
    mag = rng.uniform(16.0, 21.0, n_stars)
    counts = 10 ** ((ZP_TRUE - mag) / 2.5)
    image = np.zeros(shape)
    for (x, y), c in zip(xy, counts, strict=True):
        stamp, box = psf.compute_image(x, y)
        image[box.slices(bbox)] += c * stamp
    sky_var = 30.0
    variance = sky_var + image / 4.0  # gain 4
    image += rng.normal(0.0, 1.0, shape) * np.sqrt(variance)
    truth = tan_wcs(351.6, 0.1, bbox.center)
    exposure = Exposure(
        MaskedImage(image.astype(np.float32), variance=variance.astype(np.float32)),
        wcs=perturbed(truth, east=5.0, north=3.0, rotation_deg=0.08), psf=psf,
        filter=FilterLabel(band="r", physical_filter="r"),
    )
    return exposure, refcat_from(truth, xy, mag), truth


@pytest.fixture(scope="module")
def synthetic_calibration():
    from tasks.calibrate import CalibrateTask

    exposure, refcat, truth = synthetic_icexp(np.random.default_rng(11))
    task = CalibrateTask()
    result = task.run(exposure, refCat=refcat)
    return task, result, exposure, refcat, truth


def test_calibrate_recovers_the_zero_point_of_a_synthetic_exposure(synthetic_calibration):
    task, result, _, _, _ = synthetic_calibration
    calib = result.outputExposure.photo_calib
    # psfFlux with a Gaussian PSF model equal to the truth: the aperture correction is ~1 and the zero point exact.
    assert calib.instrumental_zero_point == pytest.approx(ZP_TRUE, abs=0.01)
    assert task.metadata["zeroPoint"] == pytest.approx(calib.instrumental_zero_point)
    assert task.metadata["zeroPointErr"] < 0.01 and task.metadata["photoRms"] < 0.05


def test_calibrate_recovers_the_wcs_of_a_synthetic_exposure(synthetic_calibration):
    task, result, exposure, _, truth = synthetic_calibration
    bbox = exposure.bbox
    corners = bbox.corners().astype(float)
    error = sky_residuals(result.outputExposure.wcs.pixel_to_world(corners[:, 0], corners[:, 1]),
                          truth.pixel_to_world(corners[:, 0], corners[:, 1]))
    assert np.hypot(*error.T).max() < 0.05  # arcsec at the corners; the input WCS was 6" off
    assert task.metadata["astromRmsBefore"] > 4.0 and task.metadata["astromRms"] < 0.05
    assert exposure.wcs is not result.outputExposure.wcs  # the input is not modified


def test_calibrate_catalogue_has_sky_coordinates_and_calibrated_fluxes(synthetic_calibration):
    task, result, _, refcat, truth = synthetic_calibration
    src, matches = result.outputCat, result.matches
    assert len(refcat) - 2 <= len(matches) == task.metadata["numMatches"]  # close pairs may blend
    assert task.metadata["fracRefMatched"] >= 0.95
    rows = np.asarray(matches["src_index"])
    sky = SkyCoord(np.asarray(src["coord_ra"][rows]), np.asarray(src["coord_dec"][rows]), unit="deg")
    ref = SkyCoord(np.asarray(matches["ref_coord_ra"]), np.asarray(matches["ref_coord_dec"]), unit="deg")
    assert np.median(sky.separation(ref).arcsec) < 0.05
    ratio = src["psfFlux_nJy"][rows] / matches["ref_flux"]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.01)
    for name in ("psfFlux_nJyErr", "calib_astrometry_used", "calib_photometry_used", "calib_psf_used"):
        assert name in src.colnames
    assert src["calib_photometry_used"].sum() == task.metadata["numPhotoCalStars"] >= 20


def test_calibrate_with_too_few_reference_stars_raises_algorithm_error():
    from tasks.calibrate import CalibrateTask

    exposure, refcat, _ = synthetic_icexp(np.random.default_rng(12), n_stars=20)
    with pytest.raises(AlgorithmError, match=r"astrometric calibration failed: only 3 reference stars"):
        CalibrateTask().run(exposure, refCat=refcat[:3])


def test_calibrate_without_required_astrometry_keeps_the_wcs_and_fails_photometry_clearly():
    from tasks.calibrate import CalibrateTask

    exposure, refcat, _ = synthetic_icexp(np.random.default_rng(13), n_stars=20)
    config = CalibrateTask.ConfigClass()
    config.requireAstrometry = False
    with pytest.raises(AlgorithmError, match=r"photometric calibration failed: only \d of \d reference matches"):
        CalibrateTask(config=config).run(exposure, refCat=refcat[:3])


# SDSS Stripe 82: both runs in r, against the tsField calibration ----------------------------------------------

FIELDS = {4192: 300, 6377: 399}


def _sdss_files(shared_data: Path, run: int, band: str = "r") -> dict[str, Path]:
    d, field = shared_data / "sdss_stripe82_lsst_demo" / "input" / str(run) / "40", FIELDS[run]
    return {
        "fpC": d / f"corr/4/fpC-{run:06d}-{band}4-{field:04d}.fit.gz",
        "fpM": d / f"objcs/4/fpM-{run:06d}-{band}4-{field:04d}.fit",
        "psField": d / f"objcs/4/psField-{run:06d}-4-{field:04d}.fit",
        "tsField": d / f"calibChunks/4/tsField-{run:06d}-4-40-{field:04d}.fit",
    }


def sdss_kl_psf(psfield: dict, band: str, bbox: Box2I, *, size: int = 41):
    """The SDSS KL PSF of the psField as a `PcaPsf`: sampled on a 5x5 grid and refit (3 components, degree 2)."""
    from tasks.image import PcaPsf
    from tasks.instruments.sdss.formatters import kl_psf_image

    xs, ys = np.meshgrid(np.linspace(bbox.x0, bbox.x1, 5), np.linspace(bbox.y0, bbox.y1, 5))
    trim = (51 - size) // 2
    stamps = np.array([kl_psf_image(psfield, band, x, y)[trim:51 - trim, trim:51 - trim]
                       for x, y in zip(xs.ravel(), ys.ravel(), strict=True)])
    return PcaPsf.fit(stamps, xs.ravel(), ys.ravel(), bbox, n_components=3, degree=2)


def sdss_icexp(shared_data: Path, run: int):
    """An icExp-like SDSS r frame: ISR (SdssIsrTask), background subtracted, the psField PSF installed.

    Returns ``(exposure, background, tsfield_calib)``; the exposure carries no PhotoCalib, so the calibration
    that CalibrateTask fits is independent of the tsField one it is compared with.
    """
    from tasks.background import SubtractBackgroundTask
    from tasks.instruments.sdss.formatters import read_fpc, read_fpm, read_psfield, read_tsfield
    from tasks.instruments.sdss.isr import SdssIsrTask

    files = _sdss_files(shared_data, run)
    psfield = read_psfield(files["psField"])
    exposure = SdssIsrTask().run(read_fpc(files["fpC"]), read_fpm(files["fpM"]), psfield,
                                 read_tsfield(files["tsField"])).exposure
    tsfield_calib, exposure.photo_calib = exposure.photo_calib, None
    background = SubtractBackgroundTask().run(exposure).background
    exposure.psf = sdss_kl_psf(psfield, "r", exposure.bbox)
    return exposure, background, tsfield_calib


def sdss_icsrc(exposure: Exposure) -> Table:
    """Bright sources (10 sigma) with calib_psf_used set on the 30 brightest unsaturated ones (an icSrc stand-in)."""
    from tasks.detection import SourceDetectionTask
    from tasks.measurement import SingleFrameMeasurementTask

    work = exposure.copy()
    config = SourceDetectionTask.ConfigClass()
    config.thresholdValue, config.reEstimateBackground = 10.0, False
    detections = SourceDetectionTask(config=config).run(work)
    catalog = SingleFrameMeasurementTask().run(work, detections.sources, detections.footprints)
    flux = np.nan_to_num(np.asarray(catalog["psfFlux"], float), nan=-np.inf)
    flux[np.asarray(catalog["flag_saturated"], bool)] = -np.inf
    used = np.zeros(len(catalog), dtype=bool)
    used[np.argsort(flux)[::-1][:30]] = True
    catalog["calib_psf_candidate"] = catalog["calib_psf_used"] = used
    catalog["calib_psf_reserved"] = np.zeros(len(catalog), dtype=bool)
    return catalog


@pytest.fixture(scope="module")
def sdss_refcat(shared_data: Path) -> Table:
    return Table.read(shared_data / "sdss_stripe82_lsst_demo" / "ref_cat" / "stars.fits")


@pytest.fixture(scope="module", params=[4192, 6377], ids=["run4192", "run6377"])
def sdss_calibrated(request, shared_data, sdss_refcat):
    """CalibrateTask on the r frame of one run: (task, result, icExp, tsField PhotoCalib, icSrc, seconds)."""
    from tasks.calibrate import CalibrateTask

    exposure, background, tsfield_calib = sdss_icexp(shared_data, request.param)
    icsrc = sdss_icsrc(exposure)
    task = CalibrateTask()
    start = time.perf_counter()
    result = task.run(exposure, background=background, icSourceCat=icsrc, refCat=sdss_refcat)
    seconds = time.perf_counter() - start
    print(f"\nrun {request.param}: CalibrateTask {seconds:.2f} s; metadata "
          + ", ".join(f"{k}={task.metadata[k]:.4g}" for k in (
              "numSources", "numRefStars", "numMatches", "fracRefMatched", "astromRmsBefore", "astromRms",
              "zeroPoint", "zeroPointErr", "photoRms", "apCorr")))
    return task, result, exposure, tsfield_calib, icsrc, seconds


def test_sdss_zero_point_agrees_with_the_tsfield(sdss_calibrated):
    """Acceptance: the fitted zero point is the tsField's (aa, kk, airmass) to 0.03 mag."""
    task, result, _, tsfield_calib, _, _ = sdss_calibrated
    difference = result.outputExposure.photo_calib.instrumental_zero_point - tsfield_calib.instrumental_zero_point
    print(f"zero point - tsField = {difference:+.4f} mag (+- {task.metadata['zeroPointErr']:.4f})")
    assert abs(difference) < 0.03
    assert task.metadata["numPhotoCalStars"] >= 30


def test_sdss_astrometric_residuals_are_below_a_tenth_of_an_arcsec(sdss_calibrated):
    """Acceptance: after the fit, unsaturated stars with 15 < r < 20 are within 0.1" RMS of the reference
    (all of them: no clipping)."""
    task, result, _, _, _, _ = sdss_calibrated
    src, matches = result.outputCat, result.matches
    rows = np.asarray(matches["src_index"])
    good = (matches["ref_mag"] > 15) & (matches["ref_mag"] < 20) & ~np.asarray(src["flag_saturated"], bool)[rows]
    sky = SkyCoord(np.asarray(src["coord_ra"][rows]), np.asarray(src["coord_dec"][rows]), unit="deg")
    ref = SkyCoord(np.asarray(matches["ref_coord_ra"]), np.asarray(matches["ref_coord_dec"]), unit="deg")
    separation = sky.separation(ref).arcsec[good]
    rms = float(np.sqrt(np.mean(separation**2)))
    print(f"astrometric RMS of {good.sum()} stars with 15 < r < 20: {rms:.3f} arcsec "
          f"(fit stars: {task.metadata['astromRms']:.3f})")
    assert good.sum() >= 40
    assert rms <= 0.1 and task.metadata["astromRms"] <= 0.1


def test_sdss_reference_stars_brighter_than_20_are_matched(sdss_calibrated, sdss_refcat):
    """Acceptance: >= 90% of the reference stars with r < 20 inside the frame are detected and matched."""
    task, result, exposure, _, _, _ = sdss_calibrated
    wcs, bbox = result.outputExposure.wcs, exposure.bbox
    stars = sdss_refcat[(sdss_refcat["r"] < 20) & (sdss_refcat["starnotgal"] == 1)]
    coords = SkyCoord(np.asarray(stars["ra"]), np.asarray(stars["dec"]), unit="deg")
    near = coords.separation(wcs.pixel_to_world(*bbox.center)).deg < 0.2  # the frame's half-diagonal is 0.14 deg
    x, y = wcs.world_to_pixel(coords[near])
    inside = (x >= -0.5) & (x <= bbox.x1 + 0.5) & (y >= -0.5) & (y <= bbox.y1 + 0.5)
    ids = set(np.asarray(stars["id"][near][inside]).tolist())
    matched = ids & set(np.asarray(result.matches["ref_id"]).tolist())
    fraction = len(matched) / len(ids)
    print(f"matched {len(matched)} of {len(ids)} reference stars with r < 20 in the frame ({fraction:.1%})")
    assert len(ids) >= 50 and fraction >= 0.9
    assert task.metadata["fracRefMatched"] == pytest.approx(fraction)


def test_sdss_psf_flags_are_copied_from_icsrc(sdss_calibrated):
    _, result, _, _, icsrc, _ = sdss_calibrated
    assert result.outputCat["calib_psf_used"].sum() == pytest.approx(icsrc["calib_psf_used"].sum(), abs=2)


def test_sdss_calibration_takes_seconds(sdss_calibrated):
    assert sdss_calibrated[5] < 30.0


def test_sdss_wcs_fit_recovers_from_a_header_wcs_several_arcsec_off(shared_data, sdss_refcat):
    """The header WCS moved by (4", -5") and rotated by 0.05 deg (1" at the corners): the fit restores it."""
    from tasks.calibrate import CalibrateTask

    exposure, background, _ = sdss_icexp(shared_data, 6377)
    header_wcs = exposure.wcs
    wrong = header_wcs.deepcopy()
    wrong.wcs.crval = [header_wcs.wcs.crval[0] + 4.0 / 3600.0, header_wcs.wcs.crval[1] - 5.0 / 3600.0]
    c, s = math.cos(math.radians(0.05)), math.sin(math.radians(0.05))
    wrong.wcs.cd = header_wcs.wcs.cd @ np.array([[c, -s], [s, c]])
    wrong.wcs.set()
    exposure.wcs = wrong
    task = CalibrateTask()
    result = task.run(exposure, background=background, refCat=sdss_refcat)
    corners = exposure.bbox.corners().astype(float)
    error = sky_residuals(result.outputExposure.wcs.pixel_to_world(corners[:, 0], corners[:, 1]),
                          header_wcs.pixel_to_world(corners[:, 0], corners[:, 1]))
    assert task.metadata["astromRmsBefore"] > 4.0
    assert task.metadata["astromRms"] < 0.1
    assert np.hypot(*error.T).max() < 0.25  # the header WCS itself is good to ~0.1"


# As a quantum: prerequisite refcat found in the input collections ---------------------------------------------


def test_calibrate_runs_as_a_quantum_with_the_refcat_from_another_collection(tmp_path):
    from butler import Butler
    from graph.testing import assert_valid_output, make_quantum, make_test_repo, run_test_quantum
    from tasks.calibrate import CalibrateTask
    from tasks.image import Background, BackgroundList

    exposure, refcat, _ = synthetic_icexp(np.random.default_rng(21), n_stars=30)
    data_id = {"instrument": "TestCam", "visit": 1, "detector": 0}
    butler = make_test_repo(tmp_path / "repo", {"visit": [1], "detector": [0]}, run="icexp")
    dims = ("instrument", "visit", "detector")
    for name, storage_class in (("icExp", "ExposureF"), ("icExpBackground", "Background"), ("icSrc", "ArrowAstropy")):
        butler.register_dataset_type(name, dims, storage_class)
    butler.register_dataset_type("refcat", (), "AstropyFitsTable")
    butler.put(exposure, "icExp", data_id)
    butler.put(BackgroundList([Background.fit(exposure.masked_image, bin_size=128)]), "icExpBackground", data_id)
    butler.put(Table({"centroid_x": [10.0], "centroid_y": [10.0], "calib_psf_used": [True]}), "icSrc", data_id)
    butler.put(refcat, "refcat", run="refcats/test")
    butler.collection_chain("refcats", ["refcats/test"])
    butler.close()

    butler = Butler(tmp_path / "repo", collections=["icexp", "refcats"], run="u/test/calibrate")
    task = CalibrateTask()
    io = {name: {} for name in ("exposure", "background", "icSourceCat", "refCat", "outputExposure", "outputCat",
                                "outputBackground")}
    quantum = make_quantum(task, butler, data_id, io)
    run_mock = run_test_quantum(task, butler, quantum)
    kwargs = run_mock.call_args.kwargs
    assert set(kwargs) == {"exposure", "background", "icSourceCat", "refCat", "exposureIdInfo"}
    assert len(kwargs["refCat"]) == len(refcat)
    refs = run_test_quantum(task, butler, quantum, mock_run=False)
    assert sorted(r.dataset_type.name for r in refs) == ["calexp", "calexpBackground", "src"]
    calexp = butler.get("calexp", data_id, collections="u/test/calibrate")
    assert calexp.photo_calib.instrumental_zero_point == pytest.approx(ZP_TRUE, abs=0.02)
    src = butler.get("src", data_id, collections="u/test/calibrate")
    ids = np.asarray(src["id"])
    assert len(set(ids.tolist())) == len(ids) and ids.min() > 2**20  # made unique with the visit and detector
    assert_valid_output(task, task.run(**kwargs))
    butler.close()
