"""Sky frames (tasks/sky_frame.py) on synthetic visits of a two-detector camera with a known sky pattern.

Each visit's sky is ``L_v (1 + gradient) + a_v P`` in counts with Poisson-like noise, Gaussian stars
(``DETECTED`` where they exceed the noise, as a calexp's detection masks them, fainter wings left), and a
per-detector background already fitted and subtracted (``calexpBackground``).  The pattern ``P`` has whole
periods in every 256-pixel focal-plane superpixel, so the large-scale model (``bgModel``) sees none of it and
the sky frame must be ``mean_v(a_v / L_v) P``.
"""

from __future__ import annotations

import numpy as np
import pytest

from graph import Pipeline
from tasks.background import fit_background_fast
from tasks.image import Background, BackgroundList, Box2I, Camera, Detector, Exposure, MaskedImage
from tasks.sky_frame import SkyFrameError, SkyFrameTask, SkyFrameVisitTask

SIZE = 512  # pixels per detector side
PIXEL = 0.01  # mm
SUPERPIXEL = 2.56  # mm: 256 pixels
BINNING = 32
N_VISITS = 6
FRACTION = 0.03  # pattern amplitude / sky level


def toy_camera() -> Camera:
    """Two abutting 512x512 detectors along x: the 4x2 superpixels of 2.56 mm align with their pixels."""
    half = SIZE * PIXEL / 2
    detectors = [
        Detector(id=i, name=f"D{i}", bbox=Box2I(0, 0, SIZE, SIZE), focal_plane_center=((2 * i - 1) * half, 0.0),
                 yaw=0.0, pixel_size=PIXEL)
        for i in range(2)
    ]
    return Camera("Toy", detectors, plate_scale=20.0)


def pattern(detector_id: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The sky-frame pattern (within +-1.5): whole periods over every 256-pixel block."""
    p1, p2, p3 = (0.3, 1.1, 2.0) if detector_id == 0 else (1.7, 0.4, 5.0)
    two_pi = 2 * np.pi
    return (np.cos(two_pi * x / 128 + p1) * np.cos(two_pi * y / 128 + p2)
            + 0.5 * np.cos(two_pi * (x / 64 + y / 256) + p3))


def binned_pattern(detector_id: int) -> np.ndarray:
    """The pattern averaged over the sky frame's 32x32 bins, shape (16, 16)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    p = pattern(detector_id, xx, yy)
    n = SIZE // BINNING
    return p.reshape(n, BINNING, n, BINNING).mean(axis=(1, 3))


def make_visit(
    rng: np.random.Generator, camera: Camera, level: float, amplitude: float, *, stars: bool = True
) -> tuple[list[Exposure], list[BackgroundList]]:
    """Calexp-like exposures of every detector (background subtracted) and their calexpBackgrounds."""
    gx, gy = rng.uniform(-0.02, 0.02, 2)  # fractional sky change per mm
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    exposures, backgrounds = [], []
    for detector in camera:
        fx, fy = detector.pixels_to_focal_plane(xx, yy)
        sky = level * (1 + gx * fx + gy * fy) + amplitude * pattern(detector.id, xx, yy)
        image = sky + rng.normal(0.0, np.sqrt(sky))
        mi = MaskedImage(image.astype(np.float32), variance=sky.astype(np.float32))
        star_rng = np.random.default_rng(rng.integers(2**32))  # the same noise with or without stars
        if stars:
            sigma = 2.0
            star_image = np.zeros_like(image)
            positions = star_rng.uniform(0, SIZE, (2, 40))
            for x0, y0, peak in zip(*positions, 10 ** star_rng.uniform(1.5, 4, 40)):
                star_image += peak * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
            mi.image[...] += star_image.astype(np.float32)
            mi.mask.set_plane("DETECTED", star_image > np.sqrt(level))
        exposure = Exposure(mi, detector=detector)
        background, _ = fit_background_fast(mi, bin_size=128)
        mi.image[...] -= background.get_image()
        exposures.append(exposure)
        backgrounds.append(BackgroundList([background]))
    return exposures, backgrounds


def visit_task() -> SkyFrameVisitTask:
    task = SkyFrameVisitTask()
    task.config.bgModel.xSize = task.config.bgModel.ySize = SUPERPIXEL
    task.config.binning = BINNING
    return task


def build_sky_frames(levels: list[float], *, stars: bool = True, seed: int = 1) -> tuple[list[Background], float]:
    """The two detectors' sky frames from visits of the given sky levels, and the truth mean(a_v / L_v)."""
    rng = np.random.default_rng(seed)
    camera = toy_camera()
    per_detector: dict[int, list[Background]] = {0: [], 1: []}
    ratios = []
    for level in levels:
        task = visit_task()
        exposures, backgrounds = make_visit(rng, camera, level, FRACTION * level, stars=stars)
        result = task.run(exposures, backgrounds, camera)
        ratios.append(FRACTION * level / result.skyLevel)  # a_v / L_v with the L_v the task measured
        assert task.metadata["skyLevel"] == result.skyLevel
        for exposure, residual in zip(exposures, result.skyFrameResiduals):
            per_detector[exposure.detector.id].append(residual)
    frames = [SkyFrameTask().run(per_detector[d]).skyFrame for d in (0, 1)]
    return frames, float(np.mean(ratios))


@pytest.mark.parametrize("levels", [[600.0] * N_VISITS, [300.0, 900.0, 450.0, 750.0, 350.0, 600.0]],
                         ids=["equal-sky", "sky-varies-3x"])
def test_sky_frame_recovers_the_pattern_whatever_the_sky_level(levels):
    """The combined frame correlates with the binned pattern (r > 0.99) and its amplitude (least-squares
    scale against the pattern) is mean(a_v / L_v) within 2%, whether the visits' skies are equal or differ 3x."""
    frames, truth = build_sky_frames(levels)
    for detector_id, frame in enumerate(frames):
        expected = binned_pattern(detector_id)
        r = np.corrcoef(frame.values.ravel(), expected.ravel())[0, 1]
        scale = float(np.sum(frame.values * expected) / np.sum(expected**2))
        print(f"detector {detector_id}: r = {r:.4f}, scale / truth = {scale / truth:.4f}")
        assert r > 0.99
        assert scale / truth == pytest.approx(1.0, abs=0.02)
        assert frame.bin_size == (BINNING, BINNING) and frame.interpolation == "spline"


def test_objects_do_not_change_the_sky_frame():
    """Stars (masked where they exceed the noise, as in a calexp; their fainter wings are not) change the frame
    by less than 5% of the pattern's RMS amplitude: the same visits and noise with and without stars."""
    levels = [600.0] * N_VISITS
    with_stars, truth = build_sky_frames(levels, stars=True, seed=3)
    without, _ = build_sky_frames(levels, stars=False, seed=3)
    for detector_id in (0, 1):
        amplitude = truth * np.std(binned_pattern(detector_id))
        change = np.std(with_stars[detector_id].values - without[detector_id].values)
        print(f"detector {detector_id}: RMS change {change / amplitude:.4f} of the pattern amplitude")
        assert change < 0.05 * amplitude


def _residual(values: np.ndarray, counts: float = 1024.0) -> Background:
    return Background(Box2I(0, 0, 64, 64), 16, values, counts=np.full(values.shape, counts),
                      variances=np.full(values.shape, 1e-6))


def test_clipped_mean_rejects_an_outlying_visit():
    """With 15 visits, one whose residual is far off in some bins (an unmasked halo) is clipped there, and the
    frame equals the mean of the other visits; elsewhere every visit is used."""
    rng = np.random.default_rng(5)
    truth = rng.normal(0.0, 0.02, (4, 4))
    visits = [truth + rng.normal(0.0, 1e-3, (4, 4)) for _ in range(15)]
    clean_mean = np.mean(visits, axis=0)
    visits[7] = visits[7].copy()
    visits[7][1:3, 1:3] += 0.05  # 50 sigma
    task = SkyFrameTask()
    result = task.run([_residual(v) for v in visits])
    others = np.mean(np.delete(visits, 7, axis=0), axis=0)
    np.testing.assert_allclose(result.skyFrame.values[1:3, 1:3], others[1:3, 1:3], atol=1e-12)
    outside = np.ones((4, 4), bool)
    outside[1:3, 1:3] = False
    np.testing.assert_allclose(result.skyFrame.values[outside], clean_mean[outside], atol=1e-12)
    assert result.nClipped == 4 and task.metadata["nClipped"] == 4 and task.metadata["nVisits"] == 15


def test_mean_is_count_weighted_and_unmeasured_bins_are_filled():
    """Bins are averaged with the visits' pixel counts as weights; a bin no visit measured gets a finite value
    from its neighbours and count 0; the frame's counts are the summed pixel counts."""
    a = _residual(np.full((4, 4), 1.0), counts=300.0)
    b = _residual(np.full((4, 4), 2.0), counts=100.0)
    for background in (a, b):
        background.counts[0, 0] = 0.0
    result = SkyFrameTask().run([a, b])
    frame = result.skyFrame
    assert frame.values[2, 2] == pytest.approx((300 * 1.0 + 100 * 2.0) / 400)
    assert frame.counts[0, 0] == 0 and np.isfinite(frame.values[0, 0])
    assert frame.values[0, 0] == pytest.approx(1.25)
    assert frame.counts[2, 2] == 400
    assert frame.variances[2, 2] == pytest.approx((300**2 + 100**2) * 1e-6 / 400**2)


def test_residuals_of_different_grids_are_refused():
    a = _residual(np.zeros((4, 4)))
    b = Background(Box2I(0, 0, 64, 64), 32, np.zeros((2, 2)), counts=np.ones((2, 2)))
    with pytest.raises(SkyFrameError, match="bins of"):
        SkyFrameTask().run([a, b])
    with pytest.raises(SkyFrameError, match="no sky-frame residual"):
        SkyFrameTask().run([])


def test_a_fully_masked_detector_adds_nothing():
    """A detector whose pixels are all masked gets a residual with zero counts (and the visit still runs)."""
    rng = np.random.default_rng(2)
    camera = toy_camera()
    exposures, backgrounds = make_visit(rng, camera, 500.0, 15.0, stars=False)
    exposures[1].mask.set_plane("BAD", np.ones((SIZE, SIZE), bool))
    task = visit_task()
    result = task.run(exposures, backgrounds, camera)
    assert result.skyFrameResiduals[1].counts.sum() == 0
    assert result.skyFrameResiduals[0].counts.sum() > 0.9 * SIZE * SIZE
    assert task.metadata["usedFraction.detector_1"] == 0.0


def test_sky_frame_pipeline_declares_a_calibration():
    """SkyFrame.yaml: skyFrameVisit (per visit) then skyFrame (per physical filter and detector), whose output
    dataset type is a calibration with the dimensions SkyCorrection's prerequisite looks up."""
    graph = Pipeline.from_file("repo_template/pipelines/SkyFrame.yaml").to_graph()
    assert set(graph.tasks) == {"skyFrameVisit", "skyFrame"}
    node = graph.dataset_types["skyFrame"]
    assert node.is_calibration
    assert set(node.dimensions.names) >= {"instrument", "physical_filter", "detector"}
    simcam = Pipeline.from_file("repo_template/pipelines/SimCam/SkyFrame.yaml").to_graph()
    assert {"isr", "characterizeImage", "calibrate", "skyFrameVisit", "skyFrame"} <= set(simcam.tasks)
