"""FocalPlaneBackground: superpixel statistics over SimCam's focal plane, hole filling, continuity, yaw."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tasks.errors import FocalPlaneBackgroundError
from tasks.image import (
    Background,
    Box2I,
    Camera,
    Exposure,
    FocalPlaneBackground,
    FocalPlaneBackgroundConfig,
    Mask,
    MaskedImage,
)
from tasks.instruments import get_instrument

SKY = 840.0  # e-/pixel, SimCam r band
NOISE = 29.0  # e-/pixel
GRAD = (0.005, -0.004)  # fractional change per mm: +-7.9% across the 31.7 mm focal plane


@pytest.fixture(scope="module")
def camera() -> Camera:
    return get_instrument("SimCam").camera


def gradient(fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    return SKY * (1.0 + GRAD[0] * fx + GRAD[1] * fy)


def wave(fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """A smooth non-linear focal-plane function (30 e- amplitude, 25 mm wavelength) on top of the gradient."""
    return gradient(fx, fy) + 30.0 * np.cos(2 * math.pi * fx / 25.0) * np.sin(2 * math.pi * (fy + 3.0) / 25.0)


def truth_image(detector, function) -> np.ndarray:
    y, x = np.mgrid[detector.bbox.y0 : detector.bbox.y1, detector.bbox.x0 : detector.bbox.x1].astype(float)
    return function(*detector.pixels_to_focal_plane(x, y))


def noisy_exposure(detector, function, rng: np.random.Generator, noise: float = NOISE) -> Exposure:
    image = truth_image(detector, function) + noise * rng.standard_normal(detector.bbox.shape)
    variance = np.full(detector.bbox.shape, noise**2, np.float32)
    return Exposure(MaskedImage(image.astype(np.float32), variance=variance, xy0=detector.bbox.xy0), detector=detector)


def rms_error(background: FocalPlaneBackground, detectors, function) -> tuple[float, float]:
    errors = np.concatenate(
        [(background.toCcdBackground(d, d.bbox).get_image() - truth_image(d, function)).ravel() for d in detectors]
    )
    return float(np.sqrt(np.mean(errors**2))), float(np.abs(errors).max())


@pytest.fixture(scope="module")
def gradient_exposures(camera) -> list[Exposure]:
    rng = np.random.default_rng(8)
    return [noisy_exposure(d, gradient, rng) for d in camera]


@pytest.mark.parametrize("size", [5.12, 2.56])
@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_focal_plane_gradient_is_recovered_on_every_detector(camera, gradient_exposures, size, interpolation):
    # Partly covered superpixels (focal-plane edges, gaps) are moved to their centres: without that the
    # 5.12 mm model is off by 2.4 e- RMS, 9 e- at the corners.
    config = FocalPlaneBackgroundConfig(xSize=size, ySize=size, interpolation=interpolation)
    background = FocalPlaneBackground.fromCamera(config, camera)
    for exposure in gradient_exposures:
        background.addCcd(exposure)
    rms, worst = rms_error(background, camera, gradient)
    assert rms < 0.01 * NOISE  # measured 0.05-0.12 e-
    assert worst < 0.1 * NOISE  # measured 0.3-1.6 e- (noise of the extrapolated corners)
    assert background.skyLevel() == pytest.approx(SKY, abs=1.0)
    assert all(f == pytest.approx(1.0, abs=0.01) for f in background.coverage.values())  # 3-sigma clipping


def test_grid_is_centred_on_the_camera_and_covers_it(camera):
    background = FocalPlaneBackground.fromCamera(FocalPlaneBackgroundConfig(xSize=5.12, ySize=2.56), camera)
    assert background.shape == (13, 7)  # 31.72 mm / 2.56 and / 5.12, rounded up
    yc, xc = background.superpixelCenters()
    assert xc.mean() == pytest.approx(0.0, abs=1e-12) and yc.mean() == pytest.approx(0.0, abs=1e-12)
    assert background.origin[0] <= -15.86 and background.origin[0] + 7 * 5.12 >= 15.86


def test_model_is_continuous_across_detector_gaps(camera):
    # A non-linear focal-plane function: the per-detector Backgrounds of two neighbours, extrapolated to the
    # middle of the 0.5 mm gap between them, agree (one focal-plane function, so no step at detector edges).
    rng = np.random.default_rng(3)
    background = FocalPlaneBackground.fromCamera(FocalPlaneBackgroundConfig(xSize=2.56, ySize=2.56), camera)
    for detector in camera:
        background.addCcd(noisy_exposure(detector, wave, rng))
    rms, _ = rms_error(background, camera, wave)
    assert rms < 0.05 * NOISE  # the model follows the wave: measured 0.50 e-
    steps = []
    for left, right in ((3, 4), (4, 5), (1, 4), (4, 7), (0, 1)):
        a, b = camera[left], camera[right]
        # The gap's middle is 24.5 pixels beyond the last pixel centre of a and before the first of b.
        if a.focal_plane_center[1] == b.focal_plane_center[1]:  # side by side along x
            edge_a, edge_b = Box2I(1048, 0, 2, 1024), Box2I(-26, 0, 2, 1024)
            axis = 1
        else:
            edge_a, edge_b = Box2I(0, 1048, 1024, 2), Box2I(0, -26, 1024, 2)
            axis = 0
        value_a = background.toCcdBackground(a, a.bbox).get_image(edge_a).mean(axis=axis)
        value_b = background.toCcdBackground(b, b.bbox).get_image(edge_b).mean(axis=axis)
        steps.append(np.max(np.abs(value_a - value_b)))
    assert max(steps) < 0.002 * NOISE  # measured 0.006 e- (float32 rounding); the wave changes ~4 e- per gap


def test_rotated_detectors_give_the_same_model(camera):
    # Detectors turned by 90 and 30 degrees about their centres sample the same focal-plane function.
    rng = np.random.default_rng(5)
    rotated = Camera(
        "rotated", [dataclasses.replace(d, yaw=90.0 if d.id % 2 else 30.0) for d in camera], camera.plate_scale
    )
    config = FocalPlaneBackgroundConfig(xSize=5.12, ySize=5.12)
    straight = FocalPlaneBackground.fromCamera(config, camera)
    turned = FocalPlaneBackground.fromCamera(config, rotated)
    for d, r in zip(camera, rotated, strict=True):
        straight.addCcd(noisy_exposure(d, gradient, rng))
        turned.addCcd(noisy_exposure(r, gradient, rng))
    rms, _ = rms_error(turned, rotated, gradient)
    assert rms < 0.01 * NOISE  # measured 0.07 e-
    fx, fy = np.meshgrid(np.linspace(-15, 15, 31), np.linspace(-15, 15, 31))
    assert np.max(np.abs(turned.evaluate(fx, fy) - straight.evaluate(fx, fy))) < 0.03 * NOISE  # measured 0.33 e-


def test_masked_objects_are_ignored_and_coverage_is_reported(camera):
    rng = np.random.default_rng(7)
    exposures = [noisy_exposure(d, gradient, rng) for d in camera]
    # Bright objects over a quarter of detector 4 (16-column stripes), flagged DETECTED as detection would.
    x = np.arange(1024)
    objects = np.broadcast_to((x // 16) % 4 == 0, (1024, 1024))
    exposures[4].image[objects] += 5000.0
    exposures[4].mask.set_plane("DETECTED", objects)
    background = FocalPlaneBackground.fromCamera(FocalPlaneBackgroundConfig(), camera)
    for exposure in exposures:
        background.addCcd(exposure)
    assert background.coverage[4] == pytest.approx(0.75, abs=0.01)
    rms, _ = rms_error(background, camera, gradient)
    assert rms < 0.01 * NOISE  # measured 0.11 e-; unmasked, the objects would add 1250 e- to detector 4


def test_missing_detector_is_filled_from_its_neighbours(camera, gradient_exposures):
    background = FocalPlaneBackground.fromCamera(FocalPlaneBackgroundConfig(), camera)
    for exposure in gradient_exposures:
        if exposure.detector.id != 4:
            background.addCcd(exposure)
    stats = background.getStatsImage()
    assert np.isnan(stats[3, 3])  # the central superpixel lies on detector 4 only
    assert np.isfinite(background.getModelImage()).all()
    rms, _ = rms_error(background, [camera[4]], gradient)
    assert rms < 0.005 * NOISE  # a linear fill of a linear gradient: measured 0.03 e-


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_holes_outside_the_data_are_extrapolated_linearly(camera, interpolation):
    # One corner detector with a masked corner: 41 of the 49 superpixels are holes, most outside the hull of
    # the valid ones.  A noise-free plane is still reproduced on the detector (a flat, nearest-superpixel fill
    # would be off by up to 14 e- there).  The mask follows the 64 px bins: a partly masked bin's value is
    # that of its unmasked pixels but is placed at the bin centre (0.5 e- off here for a 300 px mask).
    detector = camera[2]
    exposure = noisy_exposure(detector, gradient, np.random.default_rng(0), noise=0.0)
    exposure.mask.set_plane("BAD", np.pad(np.ones((320, 320), bool), ((704, 0), (704, 0))))
    background = FocalPlaneBackground.fromCamera(FocalPlaneBackgroundConfig(interpolation=interpolation), camera)
    background.addCcd(exposure)
    assert np.isfinite(background.getStatsImage()).sum() == 8
    _, worst = rms_error(background, [detector], gradient)
    assert worst < 1e-3 * NOISE


def test_min_frac_rejects_thinly_covered_superpixels(camera, gradient_exposures):
    exposure = gradient_exposures[0]  # detector 0: 2.06 mm margin, so the corner superpixel is 36% covered
    config = FocalPlaneBackgroundConfig(minFrac=0.1)
    loose = FocalPlaneBackground.fromCamera(config, camera)
    loose.addCcd(exposure)
    # Bins are assigned by their centres: 5 bins of 0.64 mm (3.2 mm) of the 3.06 mm fall in the superpixel;
    # 3-sigma clipping drops 0.3% of the pixels.
    assert loose.coveredFraction()[0, 0] == pytest.approx((3.2 / 5.12) ** 2, rel=0.01)
    assert np.isfinite(loose.getStatsImage()[0, 0])
    strict = FocalPlaneBackground.fromCamera(config.model_copy(update={"minFrac": 0.5}), camera)
    strict.addCcd(exposure)
    assert np.isnan(strict.getStatsImage()[0, 0]) and np.isfinite(strict.getStatsImage()[1, 1])


def test_merge_adds_statistics(camera, gradient_exposures):
    config = FocalPlaneBackgroundConfig()
    whole = FocalPlaneBackground.fromCamera(config, camera)
    first = FocalPlaneBackground.fromCamera(config, camera)
    second = FocalPlaneBackground.fromCamera(config, camera)
    for k, exposure in enumerate(gradient_exposures):
        whole.addCcd(exposure)
        (first if k % 2 else second).addCcd(exposure)
    first.merge(second)
    np.testing.assert_allclose(first.getStatsImage(), whole.getStatsImage(), rtol=1e-12)
    assert first.coverage == pytest.approx(whole.coverage)
    other = FocalPlaneBackground.fromCamera(FocalPlaneBackgroundConfig(xSize=2.56, ySize=2.56), camera)
    with pytest.raises(FocalPlaneBackgroundError, match="cannot merge"):
        first.merge(other)


def test_binned_background_input_is_weighted_like_add_ccd(camera, gradient_exposures):
    # addBackground takes already binned values (e.g. a sky frame) weighted by their counts, as addCcd does.
    from tasks.background import fit_background_fast

    config = FocalPlaneBackgroundConfig()
    from_pixels = FocalPlaneBackground.fromCamera(config, camera)
    from_bins = FocalPlaneBackground.fromCamera(config, camera)
    for exposure in gradient_exposures:
        from_pixels.addCcd(exposure)
        stats, _ = fit_background_fast(exposure.masked_image, bin_size=config.binning)
        from_bins.addBackground(exposure.detector, stats)
    np.testing.assert_allclose(from_bins.getStatsImage(), from_pixels.getStatsImage(), rtol=1e-12)
    # Without counts, bins are weighted by their areas: a noise-free plane on 100 px bins (partial last bins).
    detector = camera[4]
    yc = xc = np.minimum(np.arange(11) * 100 + 49.5, (1000 + 1023) / 2)
    plane = Background(detector.bbox, 100, gradient(*detector.pixels_to_focal_plane(*np.meshgrid(xc, yc))))
    binned = FocalPlaneBackground.fromCamera(config, camera)
    binned.addBackground(detector, plane)
    assert binned.coverage[4] == pytest.approx(1.0)
    # Superpixel (4, 4) holds the bins centred at 849.5, 949.5 and the partial (24 px) 1011.5 along each axis.
    centroid = np.average([849.5, 949.5, 1011.5], weights=[100, 100, 24])
    expected = gradient(*detector.pixels_to_focal_plane(centroid, centroid))
    assert binned.getStatsImage()[4, 4] == pytest.approx(expected, rel=1e-12)


def test_errors_name_the_problem(camera):
    background = FocalPlaneBackground.fromCamera(FocalPlaneBackgroundConfig(), camera)
    with pytest.raises(FocalPlaneBackgroundError, match="no superpixel"):
        background.getModelImage()
    with pytest.raises(FocalPlaneBackgroundError, match="no superpixel"):
        background.skyLevel()
    exposure = Exposure(MaskedImage(np.zeros((64, 64), np.float32)))
    with pytest.raises(FocalPlaneBackgroundError, match="exposure.detector"):
        background.addCcd(exposure)
    # A fully masked detector contributes nothing and is reported with coverage 0.
    detector = camera[0]
    masked = Exposure(
        MaskedImage(np.zeros(detector.bbox.shape, np.float32), Mask(detector.bbox.shape)), detector=detector
    )
    masked.mask.set_plane("BAD")
    background.addCcd(masked)
    assert background.coverage == {0: 0.0}
    with pytest.raises(FocalPlaneBackgroundError, match="detectors added: \\[0\\]"):
        background.toCcdBackground(detector, detector.bbox)
