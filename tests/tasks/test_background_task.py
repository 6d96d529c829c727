"""Tests of tasks/background.py (SubtractBackgroundTask)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.background import SubtractBackgroundTask, fit_background_fast
from tasks.errors import NoUsableBinsError
from tasks.image import Background, BackgroundList, Box2I, Exposure, MaskedImage

SIGMA = 8.0


def _gradient(shape: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    return 200.0 + 0.04 * x - 0.03 * y + 1e-4 * (x - 300.0) ** 2 - 5e-5 * (y - 200.0) ** 2


def _sky_exposure(seed: int = 1, shape: tuple[int, int] = (600, 800), n_stars: int = 60) -> tuple[Exposure, np.ndarray]:
    """Gradient + N(0, SIGMA) noise + bright stars whose cores are flagged DETECTED."""
    rng = np.random.default_rng(seed)
    truth = _gradient(shape)
    image = truth + rng.normal(0.0, SIGMA, shape)
    mi = MaskedImage(image.astype(np.float32), variance=np.full(shape, SIGMA**2, np.float32))
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    for sx, sy in zip(rng.uniform(0, shape[1], n_stars), rng.uniform(0, shape[0], n_stars), strict=True):
        r2 = (x - sx) ** 2 + (y - sy) ** 2
        mi.image[...] += (20000.0 * np.exp(-0.5 * r2 / 2.0**2)).astype(np.float32)
        mi.mask.set_plane("DETECTED", r2 < 14.0**2)
    return Exposure(mi), truth


def test_subtraction_recovers_a_smooth_gradient():
    exposure, truth = _sky_exposure()
    config = SubtractBackgroundTask.ConfigClass()
    config.binSize = 64
    result = SubtractBackgroundTask(config=config).run(exposure)
    model = result.background.get_image(exposure.bbox)
    rms = np.sqrt(np.mean((model - truth) ** 2))
    assert rms < 0.05 * SIGMA  # the noise of a 64x64-pixel bin mean is SIGMA / 64
    sky = ~exposure.mask.get_plane("DETECTED")
    assert abs(np.mean(exposure.image[sky])) < 0.02 * SIGMA  # subtracted in place


def test_sky_rms_and_mean_metadata():
    exposure, truth = _sky_exposure(seed=2)
    task = SubtractBackgroundTask()
    task.run(exposure)
    assert task.metadata["bgRms"] == pytest.approx(SIGMA, rel=0.03)
    assert task.metadata["bgMean"] == pytest.approx(truth.mean(), abs=0.05 * SIGMA)


def test_result_appends_to_a_copy_of_the_given_list():
    exposure, _ = _sky_exposure(seed=3)
    previous = BackgroundList([Background(exposure.bbox, 128, np.full((5, 7), 3.0))])
    result = SubtractBackgroundTask().run(exposure, previous)
    assert len(previous) == 1 and len(result.background) == 2
    assert result.background[0] is previous[0]


def test_fast_fit_matches_background_fit_on_a_clean_image():
    """Same statistic as `Background.fit` to a small fraction of the per-bin noise."""
    exposure, _ = _sky_exposure(seed=4, n_stars=0)
    for statistic in ("meanclip", "median"):
        reference = Background.fit(exposure.masked_image, bin_size=64, statistic=statistic)
        fast, _ = fit_background_fast(exposure.masked_image, bin_size=64, statistic=statistic)
        bin_noise = np.sqrt(np.median(reference.variances))
        assert np.max(np.abs(fast.values - reference.values)) < 0.3 * bin_noise * (3 if statistic == "median" else 1)


def test_median_statistic_and_partial_bins_on_an_offset_image():
    exposure, truth = _sky_exposure(seed=5, shape=(300, 410))
    shifted = Exposure(MaskedImage(exposure.image, exposure.mask, exposure.variance, xy0=(100, 50)))
    config = SubtractBackgroundTask.ConfigClass()
    config.binSize = 50
    config.statistic = "median"
    result = SubtractBackgroundTask(config=config).run(shifted)
    model = result.background[0]
    assert model.bbox == Box2I(100, 50, 410, 300) and model.n_bins == (6, 9)
    assert np.sqrt(np.mean((model.get_image() - truth) ** 2)) < 0.1 * SIGMA


def test_all_masked_exposure_raises_no_usable_bins():
    exposure, _ = _sky_exposure(seed=6, n_stars=0)
    exposure.mask.set_plane("BAD")
    with pytest.raises(NoUsableBinsError, match="binSize"):
        SubtractBackgroundTask().run(exposure)
