"""Tests of tasks/detection.py (SourceDetectionTask, FootprintSet)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from tasks.background import SubtractBackgroundTask
from tasks.detection import FootprintSet, SourceDetectionTask, gaussian_kernel_1d, smooth_gaussian
from tasks.errors import ImageError
from tasks.image import Box2I, Exposure, GaussianPsf, MaskedImage

NOISE = 10.0
PSF_SIGMA = 2.0


def _noise_exposure(rng: np.random.Generator, shape=(1000, 1000), xy0=(0, 0)) -> Exposure:
    image = rng.normal(0.0, NOISE, shape).astype(np.float32)
    mi = MaskedImage(image, variance=np.full(shape, NOISE**2, np.float32), xy0=xy0)
    return Exposure(mi, psf=GaussianPsf(21, 21, PSF_SIGMA))


def _add_stars(exposure: Exposure, x: np.ndarray, y: np.ndarray, flux: np.ndarray, sigma: float = PSF_SIGMA) -> None:
    h = int(6 * sigma) + 1
    for sx, sy, f in zip(x, y, flux, strict=True):
        ix, iy = int(round(sx)), int(round(sy))
        box = Box2I(ix - h, iy - h, 2 * h + 1, 2 * h + 1).intersection(exposure.bbox)
        yy, xx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1]
        star = f * np.exp(-0.5 * ((xx - sx) ** 2 + (yy - sy) ** 2) / sigma**2) / (2 * math.pi * sigma**2)
        exposure.image[box.slices(exposure.bbox)] += star.astype(np.float32)


def _task(**overrides) -> SourceDetectionTask:
    config = SourceDetectionTask.ConfigClass()
    config.reEstimateBackground = False
    for key, value in overrides.items():
        setattr(config, key, value)
    return SourceDetectionTask(config=config)


def _euler_density(u: float, s: float) -> float:
    """Expected number of excursions above u per pixel of white noise smoothed by a Gaussian of sigma s
    (Euler characteristic density of a 2-D Gaussian random field, Adler 1981)."""
    lambda2 = 1.0 / (2.0 * s * s)
    return lambda2 / (2 * math.pi) ** 1.5 * u * math.exp(-0.5 * u * u)


def test_pure_noise_gives_almost_no_5_sigma_detections():
    rng = np.random.default_rng(11)
    total = 0
    for _ in range(2):
        result = _task(thresholdPolarity="both").run(_noise_exposure(rng))
        total += result.numPos + result.numNeg
    # Gaussian statistics predict ~0.15 excursions per Mpix per polarity above 5 sigma (fewer with minPixels).
    assert total <= 2


def test_false_positive_rate_follows_gaussian_statistics():
    """At 3.5 sigma (single pixels allowed) the count matches the Euler-characteristic prediction."""
    rng = np.random.default_rng(12)
    counts = 0
    area = 0
    for _ in range(3):
        exposure = _noise_exposure(rng)
        result = _task(thresholdValue=3.5, thresholdPolarity="both", minPixels=1, nSigmaToGrow=0.0).run(exposure)
        counts += result.numPos + result.numNeg
        area += 2 * int((~exposure.mask.get_plane("EDGE")).sum())  # two polarities
    expected = _euler_density(3.5, PSF_SIGMA) * area
    assert 0.75 <= counts / expected <= 1.1, (counts, expected)


def test_noise_estimate_accounts_for_the_smoothing():
    rng = np.random.default_rng(13)
    exposure = _noise_exposure(rng)
    task = _task()
    task.run(exposure)
    smoothed = smooth_gaussian(exposure.image, gaussian_kernel_1d(PSF_SIGMA))[20:-20, 20:-20]
    assert task.metadata["noise"] == pytest.approx(np.std(smoothed), rel=0.02)
    assert task.metadata["noise"] == pytest.approx(NOISE / (2 * math.sqrt(math.pi) * PSF_SIGMA), rel=0.02)


def test_all_10_sigma_stars_are_detected_at_their_positions():
    rng = np.random.default_rng(14)
    exposure = _noise_exposure(rng, xy0=(100, 200))
    gy, gx = np.mgrid[40:960:40, 40:960:40]
    x = gx.ravel() + 100 + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + 200 + rng.uniform(-0.5, 0.5, gy.size)
    # PSF-flux S/N = F / (2 sqrt(pi) sigma_psf noise) = 10
    flux = np.full(x.size, 10.0 * 2 * math.sqrt(math.pi) * PSF_SIGMA * NOISE)
    _add_stars(exposure, x, y, flux)
    result = _task().run(exposure)
    sources = result.sources
    found = np.column_stack([sources["centroid_x"], sources["centroid_y"]])
    distance, _ = cKDTree(np.column_stack([x, y])).query(found)
    assert result.numPos == x.size
    assert np.all(distance <= 1.5)
    assert not sources["is_negative"].any()


def test_negative_sources_need_polarity_negative_or_both():
    rng = np.random.default_rng(15)
    exposure = _noise_exposure(rng, shape=(400, 400))
    _add_stars(exposure, np.array([100.0, 300.0]), np.array([100.0, 300.0]), np.array([3000.0, -3000.0]))
    positive = _task().run(exposure.copy())
    assert (positive.numPos, positive.numNeg) == (1, 0)
    both_exposure = exposure.copy()
    both = _task(thresholdPolarity="both").run(both_exposure)
    assert (both.numPos, both.numNeg) == (1, 1)
    neg = both.sources[both.sources["is_negative"]][0]
    assert (neg["centroid_x"], neg["centroid_y"]) == (300.0, 300.0) and neg["peak_value"] < 0
    assert both_exposure.mask.get_plane("DETECTED_NEGATIVE")[300, 300]
    assert not both_exposure.mask.get_plane("DETECTED")[300, 300]
    only = _task(thresholdPolarity="negative").run(exposure.copy())
    assert (only.numPos, only.numNeg) == (0, 1)


def test_footprints_are_grown_and_set_detected():
    rng = np.random.default_rng(16)
    exposure = _noise_exposure(rng, shape=(200, 200))
    _add_stars(exposure, np.array([100.0]), np.array([100.0]), np.array([4000.0]))
    ungrown = _task(nSigmaToGrow=0.0).run(exposure.copy()).sources["footprint_npix"][0]
    result = _task().run(exposure)
    n_grow = int(round(2.4 * PSF_SIGMA))
    (npix,) = result.sources["footprint_npix"]
    radius_core = math.sqrt(ungrown / math.pi)
    assert npix == pytest.approx(math.pi * (radius_core + n_grow) ** 2, rel=0.15)
    detected = exposure.mask.get_plane("DETECTED")
    assert detected.sum() == npix
    assert np.array_equal(detected, result.footprints.labels > 0)


def test_footprint_set_is_consistent_with_the_sources():
    rng = np.random.default_rng(17)
    exposure = _noise_exposure(rng, shape=(300, 500), xy0=(1000, 2000))
    x = np.array([1100.0, 1250.0, 1400.0])
    y = np.array([2050.0, 2150.0, 2250.0])
    _add_stars(exposure, x, y, np.array([2000.0, 5000.0, 9000.0]))
    result = _task().run(exposure)
    fs, sources = result.footprints, result.sources
    assert isinstance(fs, FootprintSet) and len(fs) == 3
    assert fs.bbox == exposure.bbox and fs.labels.shape == exposure.shape and fs.labels.dtype == np.int32
    assert list(fs.ids) == list(sources["id"]) == [1, 2, 3]
    assert list(sources["parent"]) == [0, 0, 0]
    assert list(fs.npix) == list(sources["footprint_npix"])
    for k, fid in enumerate(fs.ids):
        mask, box = fs.footprint_mask(fid)
        assert box == fs.bboxes[k] and mask.sum() == sources["footprint_npix"][k]
        assert box.contains_point(fs.peaks["x"][k], fs.peaks["y"][k])
    assert list(fs.peaks["x"]) == list(sources["centroid_x"])
    expected = {"id", "parent", "centroid_x", "centroid_y", "footprint_npix", "peak_value", "is_negative"}
    assert set(sources.colnames) >= expected


def test_border_is_flagged_edge_and_not_detected():
    rng = np.random.default_rng(18)
    exposure = _noise_exposure(rng, shape=(200, 200))
    _add_stars(exposure, np.array([1.0, 100.0]), np.array([100.0, 100.0]), np.array([20000.0, 20000.0]))
    result = _task().run(exposure)
    half = len(gaussian_kernel_1d(PSF_SIGMA)) // 2
    edge = exposure.mask.get_plane("EDGE")
    assert edge[:, :half].all() and not edge[half:-half, half:-half].any()
    # The star one pixel from the border is still detected from its pixels inside the valid region.
    assert result.numPos == 2


def test_reestimated_background_removes_an_offset():
    rng = np.random.default_rng(19)
    exposure = _noise_exposure(rng, shape=(512, 512))
    exposure.image[...] += 7.0
    _add_stars(exposure, np.array([200.0, 300.0]), np.array([200.0, 350.0]), np.array([50000.0, 50000.0]))
    config = SourceDetectionTask.ConfigClass()
    config.thresholdValue = 50.0  # only the two stars, not the offset
    result = SourceDetectionTask(config=config).run(exposure)
    assert len(result.background) == 1
    assert np.mean(result.background.get_image()) == pytest.approx(7.0, abs=0.1)
    assert np.mean(exposure.image[~exposure.mask.get_plane("DETECTED")]) == pytest.approx(0.0, abs=0.1)


def test_detection_needs_a_psf_or_a_sigma():
    rng = np.random.default_rng(20)
    exposure = _noise_exposure(rng, shape=(100, 100))
    exposure.psf = None
    with pytest.raises(ImageError, match="no PSF"):
        _task().run(exposure)
    assert _task().run(exposure, sigma=2.0).numPos == 0


def test_detected_planes_are_cleared_before_detection():
    rng = np.random.default_rng(21)
    exposure = _noise_exposure(rng, shape=(100, 100))
    exposure.mask.set_plane("DETECTED", Box2I(10, 10, 20, 20))
    _task().run(exposure)
    assert not exposure.mask.get_plane("DETECTED").any()


# Real data -----------------------------------------------------------------------------------------------


def _sdss_r_exposure(shared_data: Path) -> Exposure:
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
    exposure.psf = GaussianPsf(21, 21, 1.5)  # ~1.4 arcsec FWHM at 0.396 arcsec/pixel
    return exposure


def test_sdss_frame_has_a_sane_number_of_5_sigma_detections(shared_data):
    exposure = _sdss_r_exposure(shared_data)
    SubtractBackgroundTask().run(exposure)
    task = SourceDetectionTask()
    result = task.run(exposure)
    assert 300 <= result.numPos <= 3000
    # The detection threshold is 5 times the smoothed sky noise predicted by the variance plane.
    assert task.metadata["threshold"] == pytest.approx(5 * task.metadata["noise"])
    sky = ~exposure.mask.get_plane(["DETECTED", "EDGE"])
    smoothed = smooth_gaussian(exposure.image, gaussian_kernel_1d(1.5))
    clipped = smoothed[sky & (np.abs(smoothed) < 5 * task.metadata["noise"])]
    assert np.std(clipped) == pytest.approx(task.metadata["noise"], rel=0.15)
