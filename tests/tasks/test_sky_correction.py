"""SkyCorrectionTask on a synthetic SimCam visit with a known sky: scale, residuals, mosaic steps, semantics.

The visit is SimCam binned 2x2 (9 detectors of 512x512 pixels of 20 microns: the same focal plane, 4 times
fewer pixels, so the tests are fast) with SimCam's r-band sky per pixel: ``sky0 (1 + gx fx + gy fy)`` (a
+-7.9% gradient across the focal plane) plus ``s * sky_frame(detector, x, y)`` (SimCam's sky-frame pattern,
the pixel coordinates mapped to the unbinned detector) with ``s = 3%`` of the sky, Gaussian stars, Gaussian
noise of 29 e- per pixel, and a per-detector background (128 unbinned pixel bins) already subtracted as the
``calexpBackground``.  The sky frames are what `SkyFrameVisitTask` makes of the noise-free pattern on a flat sky
(32 unbinned pixel bins), in the pattern's units: the pattern less what bgModel1 takes of it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tasks.background import fit_background_fast
from tasks.errors import SkyCorrectionError
from tasks.image import Background, BackgroundList, Box2I, Camera, Exposure, GaussianPsf, MaskedImage
from tasks.instruments import get_instrument
from tasks.instruments.simcam.simulate import sky_frame
from tasks.sky_correction import (
    MaskObjectsTask,
    SkyCorrectionConfig,
    SkyCorrectionConnections,
    SkyCorrectionTask,
    focal_plane_mosaic,
)
from tasks.sky_frame import SkyFrameVisitTask

BIN = 2  # SimCam pixels per side of a test pixel
SIZE = 1024 // BIN
SKY = 840.0  # e-/pixel
NOISE = 29.0  # e-/pixel
GRADIENT = (0.005, -0.004)  # per mm
FRACTION = 0.03  # sky-frame amplitude / sky
PSF_SIGMA = 1.2  # pixels


@pytest.fixture(scope="module")
def camera() -> Camera:
    simcam = get_instrument("SimCam").camera
    return Camera(
        "SimCamBinned",
        [
            dataclasses.replace(d, bbox=Box2I(0, 0, SIZE, SIZE), pixel_size=d.pixel_size * BIN, amplifiers=(),
                                raw_bbox=None)
            for d in simcam
        ],
        simcam.plate_scale,
    )


def unbinned(coordinate: np.ndarray) -> np.ndarray:
    """SimCam pixel coordinate of the centre of a test pixel."""
    return BIN * coordinate + (BIN - 1) / 2.0


def truth_sky(detector, fraction: float = FRACTION) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    fx, fy = detector.pixels_to_focal_plane(x, y)
    pattern = sky_frame(detector.id, unbinned(x[0])[None, :], unbinned(y[:, 0])[:, None])
    return SKY * (1.0 + GRADIENT[0] * fx + GRADIENT[1] * fy) + fraction * SKY * pattern


def stars(rng: np.random.Generator, count: int = 80) -> np.ndarray:
    image = np.zeros((SIZE, SIZE))
    x0, y0 = rng.uniform(5, SIZE - 5, (2, count))
    flux = 10 ** rng.uniform(3.0, 5.5, count)  # up to ~8000 e- peak: 300 sigma
    half = 12
    for x, y, f in zip(x0, y0, flux, strict=True):
        ys = slice(max(int(y) - half, 0), min(int(y) + half + 1, SIZE))
        xs = slice(max(int(x) - half, 0), min(int(x) + half + 1, SIZE))
        yy, xx = np.mgrid[ys, xs]
        image[ys, xs] += f / (2 * math.pi * PSF_SIGMA**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * PSF_SIGMA**2))
    return image


@pytest.fixture(scope="module")
def sky_frames(camera: Camera) -> dict[int, BackgroundList]:
    """Per detector id: the sky frame `SkyFrameVisitTask` builds from the pattern alone on a flat sky, times the
    sky level it normalised by (so in units of the pattern)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    exposures = [
        Exposure(MaskedImage((1000.0 + sky_frame(d.id, unbinned(x), unbinned(y))).astype(np.float32),
                             variance=np.ones((SIZE, SIZE), np.float32)), detector=d)
        for d in camera
    ]
    config = SkyFrameVisitTask.ConfigClass()
    config.binning = 32 // BIN
    config.bgModel.binning = 64 // BIN
    result = SkyFrameVisitTask(config=config).run(exposures, [BackgroundList()] * len(exposures), camera)
    return {
        d.id: BackgroundList([residual.scaled(result.skyLevel)])
        for d, residual in zip(camera, result.skyFrameResiduals, strict=True)
    }


def make_visit(camera, frames: dict[int, BackgroundList], *, fraction: float = FRACTION, seed: int = 1) -> dict:
    """Calexps (background-subtracted, with the stars' DETECTED mask), calexpBackgrounds, sky frames, truth."""
    rng = np.random.default_rng(seed)
    visit: dict[str, list] = {"calExps": [], "calBkgs": [], "skyFrames": [], "truth": []}
    for detector in camera:
        truth = truth_sky(detector, fraction)
        objects = stars(rng)
        image = truth + objects + NOISE * rng.standard_normal((SIZE, SIZE))
        masked = MaskedImage(image.astype(np.float32), variance=np.full((SIZE, SIZE), NOISE**2, np.float32))
        masked.mask.set_plane("DETECTED", objects > 3 * NOISE)  # the calexp's own (shallower) detections
        background, _ = fit_background_fast(masked, bin_size=128 // BIN)
        masked.image[...] -= background.get_image()
        visit["calExps"].append(Exposure(masked, detector=detector, psf=GaussianPsf(21, 21, PSF_SIGMA)))
        visit["calBkgs"].append(BackgroundList([background]))
        visit["skyFrames"].append(frames[detector.id])
        visit["truth"].append(truth)
    return visit


def run_task(camera, visit: dict, **overrides) -> tuple[SkyCorrectionTask, object]:
    config = SkyCorrectionConfig()
    # Statistics bins of as many SimCam pixels as the defaults use for unbinned SimCam.
    config.maskObjects.subtractBackground.binSize = 128 // BIN
    config.bgModel1.binning = config.bgModel2.binning = 64 // BIN
    for key, value in overrides.items():
        config.override(key, value)
    task = SkyCorrectionTask(config=config)
    return task, task.run(visit["calExps"], visit["calBkgs"], visit["skyFrames"], camera)


def model_error(visit: dict, sky_corr: list[BackgroundList]) -> np.ndarray:
    """(calexpBackground + skyCorr - truth) of every pixel [e-]."""
    return np.concatenate(
        [
            (bkg.get_image(exp.bbox) + corr.get_image(exp.bbox) - truth).ravel()
            for exp, bkg, corr, truth in zip(visit["calExps"], visit["calBkgs"], sky_corr, visit["truth"], strict=True)
        ]
    )


@pytest.fixture(scope="module")
def visit(camera, sky_frames) -> dict:
    return make_visit(camera, sky_frames)


@pytest.fixture(scope="module")
def corrected(camera, visit):
    return run_task(camera, visit)


def test_sky_frame_scale_is_recovered(corrected):
    _, result = corrected
    truth = FRACTION * SKY  # 25.2 e- per pattern unit
    assert result.skyFrameScale == pytest.approx(truth, rel=0.02)  # measured -0.27% (-0.46% at 1%, -0.24% at 4%)


def test_new_sky_model_matches_the_truth(corrected, visit):
    task, result = corrected
    error = model_error(visit, result.skyCorr)
    assert np.sqrt(np.mean(error**2)) <= 0.1 * NOISE  # measured 0.011 sigma
    # The old per-detector calexpBackground is 5 times further from the truth (0.05 sigma).
    old = np.concatenate([(b.get_image(e.bbox) - t).ravel() for e, b, t in zip(visit["calExps"], visit["calBkgs"], visit["truth"])])
    assert np.sqrt(np.mean(old**2)) > 2 * np.sqrt(np.mean(error**2))
    # The corrected mosaic is flat to its noise (binned 8x8: 1/8 sigma per mosaic pixel).
    assert task.metadata["residualRms"] == pytest.approx(1.0, abs=0.1)
    assert task.metadata["residualRmsPixelSigma"] == pytest.approx(1 / 8, rel=0.1)


def boundary_strips(mosaic: np.ndarray, origin, pixel: float, a, b, width: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Mosaic strips of ``width`` pixels inside detectors a and b along their shared edge (a left of / below b)."""
    def index_range(detector, axis: int) -> tuple[int, int]:
        corners = detector.focal_plane_corners()[:, axis]
        lo = int(math.ceil((corners.min() - origin[axis]) / pixel - 1e-6))
        hi = int(math.floor((corners.max() - origin[axis]) / pixel + 1e-6))
        return lo, hi

    axis = 0 if a.focal_plane_center[1] == b.focal_plane_center[1] else 1
    a_lo, a_hi = index_range(a, axis)
    b_lo, b_hi = index_range(b, axis)
    other_lo, other_hi = index_range(a, 1 - axis)
    along = slice(other_lo, other_hi)
    if axis == 0:
        return mosaic[along, a_hi - width : a_hi], mosaic[along, b_lo : b_lo + width]
    return mosaic[a_hi - width : a_hi, along], mosaic[b_lo : b_lo + width, along]


ADJACENT = [(0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8), (0, 3), (3, 6), (1, 4), (4, 7), (2, 5), (5, 8)]


def test_mosaic_has_no_step_at_detector_boundaries(corrected, camera):
    _, result = corrected
    mosaic, origin, pixel = result.calExpMosaic, result.mosaicOrigin, result.mosaicPixelSize
    assert origin == pytest.approx((-15.86, -15.86)) and pixel == pytest.approx(8 * 0.02)
    steps = []
    for left, right in ADJACENT:
        strip_a, strip_b = boundary_strips(mosaic, origin, pixel, camera[left], camera[right])
        assert np.isfinite(strip_a).mean() > 0.8 and np.isfinite(strip_b).mean() > 0.8
        steps.append(abs(np.nanmedian(strip_a) - np.nanmedian(strip_b)) / NOISE)
    assert max(steps) <= 0.05  # measured 0.016 sigma: the strips' noise (0.007 sigma per step)
    # The background mosaic (the new sky model) follows the truth's focal-plane gradient: 8.4 e- per mm along x.
    row = result.calBkgMosaic[len(mosaic) // 2]
    finite = np.isfinite(row)
    x_mm = origin[0] + (np.arange(len(row)) + 0.5) * pixel
    slope = np.polyfit(x_mm[finite], row[finite], 1)[0]
    assert slope == pytest.approx(SKY * GRADIENT[0], rel=0.1)


def test_missing_detector_is_reported_and_the_others_are_corrected(camera, visit):
    keep = [k for k, e in enumerate(visit["calExps"]) if e.detector.id != 4]
    partial = {key: [values[k] for k in keep] for key, values in visit.items()}
    task, result = run_task(camera, partial)
    assert result.missingDetectors == [4]
    assert task.metadata["missingDetectors"] == "4" and task.metadata["nDetectors"] == 8
    assert len(result.skyCorr) == 8
    assert result.skyFrameScale == pytest.approx(FRACTION * SKY, rel=0.02)
    assert np.sqrt(np.mean(model_error(partial, result.skyCorr) ** 2)) <= 0.1 * NOISE  # measured 0.010 sigma
    centre = camera[4].focal_plane_center
    ix = int((centre[0] - result.mosaicOrigin[0]) / result.mosaicPixelSize)
    iy = int((centre[1] - result.mosaicOrigin[1]) / result.mosaicPixelSize)
    assert np.isnan(result.calExpMosaic[iy - 20 : iy + 20, ix - 20 : ix + 20]).all()
    assert np.isnan(result.calBkgMosaic[iy - 20 : iy + 20, ix - 20 : ix + 20]).all()


def test_without_sky_frames_the_focal_plane_models_correct_a_pattern_free_sky(camera, sky_frames):
    flat_visit = make_visit(camera, sky_frames, fraction=0.0, seed=2)
    flat_visit["skyFrames"] = []
    task, result = run_task(camera, flat_visit, doSky=False)
    assert result.skyFrameScale == 0.0 and task.metadata["skyFrameScale"] == 0.0
    assert all(len(corr) == 3 for corr in result.skyCorr)  # inverted calexpBackground, bgModel1, bgModel2
    assert np.sqrt(np.mean(model_error(flat_visit, result.skyCorr) ** 2)) <= 0.1 * NOISE  # measured 0.008 sigma
    assert "skyFrames" not in SkyCorrectionConnections(config=task.config).prerequisiteInputs


def test_without_sky_frames_a_patterned_sky_is_not_fully_modelled(corrected, camera, visit):
    # The sky frame carries the detector-scale pattern that the focal-plane models cannot: without it the
    # residual is much larger (0.28 sigma against 0.010 sigma).
    _, with_sky = corrected
    _, without = run_task(camera, {**visit, "skyFrames": []}, doSky=False)
    rms_with = np.sqrt(np.mean(model_error(visit, with_sky.skyCorr) ** 2))
    rms_without = np.sqrt(np.mean(model_error(visit, without.skyCorr) ** 2))
    assert rms_without > 10 * rms_with


def test_input_order_does_not_change_the_result(corrected, camera, visit):
    _, result = corrected
    reversed_visit = {key: list(reversed(values)) for key, values in visit.items()}
    _, again = run_task(camera, reversed_visit)
    assert again.skyFrameScale == result.skyFrameScale
    for corr, corr_again in zip(result.skyCorr, reversed(again.skyCorr), strict=True):
        assert corr == corr_again  # BackgroundLists of equal Backgrounds, bit for bit
    np.testing.assert_array_equal(again.calExpMosaic, result.calExpMosaic)
    np.testing.assert_array_equal(again.calBkgMosaic, result.calBkgMosaic)


def test_sky_corr_starts_with_the_inverted_calexp_background(corrected, camera, visit):
    _, result = corrected
    models = []
    for exposure, background, corr in zip(visit["calExps"], visit["calBkgs"], result.skyCorr, strict=True):
        n = len(background)
        assert corr[:n] == background.inverted()  # subtractive elements first
        assert len(corr) == n + 3  # then bgModel1, the scaled sky frame, bgModel2 (additive)
        additive = BackgroundList(corr[n:]).get_image(exposure.bbox)
        total = background.get_image(exposure.bbox) + corr.get_image(exposure.bbox)
        np.testing.assert_allclose(total, additive, atol=1e-3 * NOISE)  # calexpBackground + skyCorr = additive part
        models.append(total)
    expected, _, _ = focal_plane_mosaic(models, [e.detector for e in visit["calExps"]], camera, 8)
    np.testing.assert_allclose(result.calBkgMosaic, expected, atol=1e-3 * NOISE)


def test_metadata_records_the_qa(corrected):
    task, result = corrected
    md = task.metadata
    assert md["nDetectors"] == 9 and md["missingDetectors"] == ""
    assert md["skyFrameScale"] == result.skyFrameScale
    used = [md[f"usedFraction.detector_{d}"] for d in range(9)]
    assert all(0.8 < f < 0.97 for f in used)  # stars, their grown footprints and the EDGE border are not used
    assert md["bgModel1SkyLevel"] == pytest.approx(SKY, rel=0.01)
    assert md["mosaicPixelSize"] == pytest.approx(0.16)
    assert md["skyFrameBinsUsed"] > 0.9 * 9 * (SIZE // 16) ** 2


def test_mask_objects_flags_the_stars_on_the_restored_image(camera):
    rng = np.random.default_rng(4)
    detector = camera[0]
    objects = stars(rng)
    image = truth_sky(detector) + objects + NOISE * rng.standard_normal((SIZE, SIZE))
    exposure = Exposure(
        MaskedImage(image.astype(np.float32), variance=np.full((SIZE, SIZE), NOISE**2, np.float32)),
        detector=detector,
        psf=GaussianPsf(21, 21, PSF_SIGMA),
    )
    before = exposure.image.copy()
    config = MaskObjectsTask.ConfigClass()
    config.subtractBackground.binSize = 128 // BIN
    result = MaskObjectsTask(config=config).run(exposure)
    detected = exposure.mask.get_plane("DETECTED")
    assert objects[detected].sum() > 0.99 * objects.sum()  # the sky (840 e-) itself is not a detection
    assert result.detectedFraction < 0.1
    np.testing.assert_array_equal(exposure.image, before)


def test_mosaic_places_each_detector_at_its_focal_plane_position(camera):
    images = [np.full(d.bbox.shape, float(d.id)) for d in camera]
    images[0][:8, :8] = np.nan  # one block without data
    mosaic, origin, pixel = focal_plane_mosaic(images, list(camera), camera, 8)
    assert mosaic.shape == (199, 199)  # 31.72 mm / 0.16 mm
    for detector in camera:
        x, y = detector.focal_plane_center
        assert mosaic[int((y - origin[1]) / pixel), int((x - origin[0]) / pixel)] == detector.id
    gap = int((-5.37 - origin[0]) / pixel)  # x = -5.37 mm: the middle of the gap between columns 0 and 1
    assert np.isnan(mosaic[:, gap]).all()
    assert np.isnan(mosaic[0, 0]) and mosaic[0, 1] == 0.0


def test_errors_name_the_detector(camera, visit):
    task = SkyCorrectionTask(config=SkyCorrectionConfig())
    frames = list(visit["skyFrames"])
    frames[3] = None
    with pytest.raises(SkyCorrectionError, match="no sky frame for detector 3"):
        task.run(visit["calExps"], visit["calBkgs"], frames, camera)
    with pytest.raises(SkyCorrectionError, match="2 calexpBackgrounds for 9 calexps"):
        task.run(visit["calExps"], visit["calBkgs"][:2], visit["skyFrames"], camera)
    with pytest.raises(SkyCorrectionError, match="not supported"):
        task.run(visit["calExps"], visit["calBkgs"], visit["skyFrames"], camera, backgroundToPhotometricRatioHandles=[1])
    wrong = list(visit["skyFrames"])
    wrong[5] = BackgroundList([Background(Box2I(0, 0, 100, 100), 10, np.zeros((10, 10)))])
    with pytest.raises(SkyCorrectionError, match="sky frame of detector 5 covers"):
        task.run(visit["calExps"], visit["calBkgs"], wrong, camera)


def test_run_quantum_matches_inputs_by_detector_and_writes_one_sky_corr_each(tmp_path):
    import unittest.mock

    from graph import Struct
    from graph.testing import make_quantum, make_test_repo, run_test_quantum

    detectors = [5, 0, 2]  # written out of order
    data_id = {"instrument": "SimCam", "visit": 1}
    butler = make_test_repo(tmp_path / "repo", {"instrument": ["SimCam"], "visit": [1], "detector": detectors})
    dims = ("instrument", "visit", "detector")
    butler.register_dataset_type("calexp", dims, "ExposureF")
    butler.register_dataset_type("calexpBackground", dims, "Background")
    butler.register_dataset_type(
        "skyFrame", ("instrument", "physical_filter", "detector"), "Background", is_calibration=True
    )
    box = Box2I(0, 0, 16, 16)
    for d in detectors:
        butler.put(Exposure(MaskedImage(np.full((16, 16), d, np.float32))), "calexp", {**data_id, "detector": d})
        butler.put(BackgroundList([Background(box, 8, np.full((2, 2), 100.0 + d))]), "calexpBackground",
                   {**data_id, "detector": d})
        butler.put(BackgroundList([Background(box, 8, np.full((2, 2), 200.0 + d))]), "skyFrame",
                   {"instrument": "SimCam", "physical_filter": "r1", "detector": d})
    task = SkyCorrectionTask()
    per_detector = [{"detector": d} for d in detectors]
    io = {
        "calExps": per_detector,
        "calBkgs": per_detector,
        "skyFrames": [{"detector": d, "physical_filter": "r1"} for d in detectors],
        "skyCorr": per_detector,
        "calExpMosaic": {},
        "calBkgMosaic": {},
    }
    quantum = make_quantum(task, butler, data_id, io)
    run_mock = run_test_quantum(task, butler, quantum)
    calexps, backgrounds, frames, camera = run_mock.call_args.args
    assert [float(e.image[0, 0]) for e in calexps] == [0.0, 2.0, 5.0]  # sorted by detector
    assert [e.detector.id for e in calexps] == [0, 2, 5] and camera.name == "SimCam"
    assert [b[0].values[0, 0] for b in backgrounds] == [100.0, 102.0, 105.0]
    assert [f[0].values[0, 0] for f in frames] == [200.0, 202.0, 205.0]

    outputs = Struct(
        skyFrameScale=1.0,
        skyCorr=[BackgroundList([Background(box, 8, np.full((2, 2), float(d)))]) for d in (0, 2, 5)],
        calExpMosaic=np.zeros((4, 4), np.float32),
        calBkgMosaic=np.ones((4, 4), np.float32),
    )
    with unittest.mock.patch.object(task, "run", return_value=outputs):
        refs = run_test_quantum(task, butler, quantum, mock_run=False)
    assert sorted(r.dataset_type.name for r in refs).count("skyCorr") == 3
    for d in detectors:
        assert butler.get("skyCorr", {**data_id, "detector": d})[0].values[0, 0] == float(d)
    np.testing.assert_array_equal(butler.get("calexpBackground_skyCorr_visit_mosaic", data_id), np.ones((4, 4)))
    butler.close()
