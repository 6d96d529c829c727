"""MakeWarpTask: direct and PSF-matched warps of synthetic calexps onto a small skymap patch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS

from graph.errors import NoWorkFound
from tasks.image import DiscreteSkyMap, Exposure, GaussianPsf, MaskedImage, PcaPsf, PhotoCalib
from tasks.image.psf import FWHM_PER_SIGMA, adaptive_moments
from tasks.warp import MakeWarpConfig, MakeWarpTask, match_to_model_psf, psf_matching_kernel

RA0, DEC0 = 45.0, 10.0
SCALE = 0.4  # arcsec / pixel, calexp and tract
SHAPE = (400, 500)
CALIB = 2.0  # nJy / count
FLUX = 5000.0  # counts per star


def tan_wcs(ra: float, dec: float, shape: tuple[int, int], scale: float, rotation: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    d = scale / 3600.0
    wcs.wcs.cd = np.array([[-d * c, d * s], [d * s, d * c]])
    wcs.wcs.set()
    return wcs


def sigma_at(x: np.ndarray | float) -> np.ndarray | float:
    """The calexp PSF sigma [pixels], varying from 1.3 to 1.7 across the detector."""
    return 1.3 + 0.4 * np.asarray(x) / SHAPE[1]


def star_positions() -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(40, SHAPE[1] - 30, 45) + 0.3, np.arange(40, SHAPE[0] - 30, 45) - 0.2)
    return gx.ravel(), gy.ravel()


def make_calexp(ra: float, dec: float, *, psf_scale: float = 1.0, detector_value: float | None = None) -> Exposure:
    """A calexp in counts: point-sampled Gaussian stars whose width varies across x, its `PcaPsf`."""
    y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(float)
    image = np.zeros(SHAPE)
    xs, ys = star_positions()
    if detector_value is None:
        for x0, y0 in zip(xs, ys):
            s = psf_scale * sigma_at(x0)
            image += FLUX / (2 * math.pi * s * s) * np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / s**2)
    else:
        image[...] = detector_value
    gx, gy = np.meshgrid(np.linspace(0, SHAPE[1] - 1, 6), np.linspace(0, SHAPE[0] - 1, 5))
    stamps = np.stack([GaussianPsf(31, 31, psf_scale * sigma_at(px)).compute_kernel_image() for px in gx.ravel()])
    psf = PcaPsf.fit(stamps, gx.ravel(), gy.ravel(), MaskedImage(image).bbox)
    return Exposure(
        MaskedImage(image.astype(np.float32), variance=np.full(SHAPE, 4.0, np.float32)),
        wcs=tan_wcs(ra, dec, SHAPE, SCALE, rotation=12.0),
        psf=psf,
        photo_calib=PhotoCalib(CALIB),
    )


@pytest.fixture(scope="module")
def skymap() -> DiscreteSkyMap:
    return DiscreteSkyMap({
        "name": "test", "type": "discrete", "pixel_scale": SCALE, "patch_inner_dimensions": [300, 300],
        "patch_border": 40, "tracts": [{"ra": RA0, "dec": DEC0, "radius": 0.06}],
    })


@pytest.fixture(scope="module")
def patch(skymap):  # noqa: ANN001, ANN201
    return skymap[0].find_patch(RA0, DEC0)


@pytest.fixture(scope="module")
def centre(patch) -> tuple[float, float]:  # noqa: ANN001
    """(ra, dec) [deg] of the patch centre: calexps centred there cover most of the patch."""
    sky = patch.wcs.pixel_to_world(*patch.outer_bbox.center)
    return float(sky.ra.deg), float(sky.dec.deg)


@pytest.fixture(scope="module")
def warps(patch, centre):  # noqa: ANN001, ANN201
    config = MakeWarpConfig()
    config.matchingKernelGridSpacing = 128
    task = MakeWarpTask(config=config)
    calexp = make_calexp(*centre)
    return task, calexp, task.run([calexp], patch, visitId=42, detectorIds=[7])


def _star_stamps(warp: Exposure, calexp: Exposure, half: int = 12):
    """(stamp, centre in stamp coordinates) of every star whose stamp is fully inside the warp."""
    xs, ys = star_positions()
    ox, oy = warp.wcs.world_to_pixel(calexp.wcs.pixel_to_world(xs, ys))
    for x, y in zip(np.asarray(ox), np.asarray(oy)):
        ix, iy = int(round(x)), int(round(y))
        box = (slice(iy - half - warp.bbox.y0, iy + half + 1 - warp.bbox.y0),
               slice(ix - half - warp.bbox.x0, ix + half + 1 - warp.bbox.x0))
        if box[0].start < 0 or box[1].start < 0:
            continue
        stamp = warp.image[box]
        if stamp.shape == (2 * half + 1, 2 * half + 1) and np.isfinite(stamp).all():
            yield stamp.astype(float), (half + x - ix, half + y - iy)


def test_direct_warp_is_in_njy_and_conserves_flux(warps, patch):
    task, calexp, result = warps
    warp = result.directWarp
    assert warp.bbox == patch.outer_bbox and warp.photo_calib == PhotoCalib(1.0)
    fluxes = [stamp.sum() for stamp, _ in _star_stamps(warp, calexp)]
    assert len(fluxes) >= 20
    np.testing.assert_allclose(fluxes, FLUX * CALIB, rtol=0.005)
    good = np.isfinite(warp.variance)
    # Same pixel scale: the area ratio is 1; Lanczos3 averages the noise (sum of squared weights < 1).
    assert 0.6 * 4.0 * CALIB**2 < np.median(warp.variance[good]) <= 4.0 * CALIB**2 * 1.0001
    assert warp.metadata["VISIT"] == 42


def test_direct_warp_psf_follows_the_calexp_psf(warps):
    _, calexp, result = warps
    warp = result.directWarp
    xs, ys = star_positions()
    ox, oy = warp.wcs.world_to_pixel(calexp.wcs.pixel_to_world(xs, ys))
    inside = np.isfinite(warp.image[np.clip(np.round(oy).astype(int) - warp.bbox.y0, 0, warp.bbox.height - 1),
                                    np.clip(np.round(ox).astype(int) - warp.bbox.x0, 0, warp.bbox.width - 1)])
    for x_in, x, y in zip(xs[inside], np.asarray(ox)[inside], np.asarray(oy)[inside]):
        ixx, iyy, _ = warp.psf.compute_shape(float(x), float(y))
        assert math.sqrt(ixx * iyy) ** 0.5 == pytest.approx(sigma_at(x_in), rel=0.02)


def test_psf_matched_stars_have_the_model_psf(warps, patch):
    task, calexp, result = warps
    warp = result.psfMatchedWarp
    model_sigma = task.config.modelPsfFwhm / SCALE / FWHM_PER_SIGMA
    assert isinstance(warp.psf, GaussianPsf) and warp.psf.sigma == pytest.approx(model_sigma, rel=1e-3)
    moments = np.array([adaptive_moments(stamp, center=c) for stamp, c in _star_stamps(warp, calexp)])
    assert len(moments) >= 15
    # Input sigma varies 1.3..1.7 px (23%); after matching every star has the model's width within 2%.
    np.testing.assert_allclose(moments[:, 0], model_sigma**2, rtol=0.02)
    np.testing.assert_allclose(moments[:, 1], model_sigma**2, rtol=0.02)
    assert np.all(np.abs(moments[:, 2]) < 0.02 * model_sigma**2)
    fluxes = [stamp.sum() for stamp, _ in _star_stamps(warp, calexp, half=15)]
    np.testing.assert_allclose(fluxes, FLUX * CALIB, rtol=0.01)
    assert task.metadata["nPsfMatchedInputs"] == 1 and task.metadata["psfTooWideDetectors"] == []


def test_metadata_counts_inputs_and_coverage(warps, patch):
    task, calexp, result = warps
    md = task.metadata
    assert md["nInputs"] == 1 and md["nDirectInputs"] == 1
    assert md["directCoveredFraction"] == pytest.approx(np.isfinite(result.directWarp.image).mean())
    # Covered: the patch pixels whose Lanczos3 footprint lies inside the calexp (2 px / 3 px margins).
    from tasks.image.warping import PixelMapping

    yy, xx = np.mgrid[0 : patch.outer_bbox.height, 0 : patch.outer_bbox.width]
    sx, sy = PixelMapping(calexp.wcs, patch.wcs)(xx + patch.outer_bbox.x0, yy + patch.outer_bbox.y0)
    expected = (sx >= 1.5) & (sx < SHAPE[1] - 3.5) & (sy >= 1.5) & (sy < SHAPE[0] - 3.5)
    assert md["directCoveredFraction"] == pytest.approx(expected.mean(), abs=0.005)
    assert 0.7 < md["directCoveredFraction"] < 1.0
    assert md["psfMatchedCoveredFraction"] < md["directCoveredFraction"]  # the kernel border is lost


def test_psf_wider_than_the_model_is_left_out_of_the_psf_matched_warp(patch, centre):
    config = MakeWarpConfig()
    config.modelPsfFwhm = 1.2  # 3 px FWHM: narrower than the calexp's 3.1..4.0 px
    task = MakeWarpTask(config=config)
    result = task.run([make_calexp(*centre)], patch, visitId=1, detectorIds=[5])
    assert result.psfMatchedWarp is None and result.directWarp is not None
    assert task.metadata["psfTooWideDetectors"] == [5]


def test_detectors_are_merged_first_valid_wins(patch, centre):
    step = 200 * SCALE / 3600 / math.cos(math.radians(centre[1]))  # 200 px in RA
    a = make_calexp(centre[0] - step, centre[1], detector_value=1.0)
    b = make_calexp(centre[0] + step, centre[1], detector_value=3.0)  # overlapping a by ~100 px
    task = MakeWarpTask(config=MakeWarpConfig(makePsfMatched=False))
    warp = task.run([a, b], patch, visitId=1).directWarp
    values = warp.image[np.isfinite(warp.image)]
    assert set(np.unique(np.round(values, 3)).tolist()) == {CALIB * 1.0, CALIB * 3.0}
    # Pixels of the overlap come from the first detector.
    only_a = MakeWarpTask(config=MakeWarpConfig(makePsfMatched=False)).run([a], patch, visitId=1).directWarp
    has_a = np.isfinite(only_a.image)
    assert np.all(warp.image[has_a] == only_a.image[has_a])
    assert task.metadata["nDirectInputs"] == 2
    assert task.metadata["directCoveredFraction"] > np.mean(has_a) + 0.05
    assert warp.psf is not None


def test_no_overlap_raises_no_work_found(patch, centre):
    far = make_calexp(centre[0] + 1.0, centre[1])
    with pytest.raises(NoWorkFound, match="no calexp of visit 3"):
        MakeWarpTask().run([far], patch, visitId=3)


def test_revert_old_background_adds_it_back(patch, centre):
    class Flat:
        def get_image(self, bbox):  # noqa: ANN001, ANN202
            return np.full(bbox.shape, 5.0, np.float32)

    calexp = make_calexp(*centre, detector_value=0.0)
    task = MakeWarpTask(config=MakeWarpConfig(doRevertOldBackground=True, makePsfMatched=False))
    warp = task.run([calexp], patch, backgroundList=[Flat()], visitId=1).directWarp
    assert np.nanmedian(warp.image) == pytest.approx(5.0 * CALIB, rel=1e-4)
    with pytest.raises(Exception, match="one background per calexp"):
        task.run([calexp], patch, visitId=1)


def test_matching_kernel_convolves_the_psf_into_the_target():
    from scipy.signal import fftconvolve

    psf = GaussianPsf(31, 31, 1.5).compute_kernel_image()
    target = GaussianPsf(41, 41, 2.5).compute_kernel_image()
    kernel = psf_matching_kernel(psf, target, half_size=15)
    matched = fftconvolve(psf, kernel, mode="full")
    ixx, iyy, _ = adaptive_moments(matched)
    assert ixx == pytest.approx(2.5**2, rel=0.005) and iyy == pytest.approx(2.5**2, rel=0.005)
    assert kernel.sum() == pytest.approx(1.0)


def test_match_to_model_psf_marks_the_border_and_keeps_flat_images_flat():
    calexp = make_calexp(RA0, DEC0, detector_value=10.0)
    result = match_to_model_psf(calexp, lambda x, y: np.eye(2) * 2.2**2, grid_spacing=128, kernel_half_size=15)
    image = result.exposure.image
    good = np.isfinite(image)
    r = result.radius
    assert not result.psfTooWide and 3 <= r <= 15
    assert not good[:r].any() and not good[:, -r:].any() and good[r:-r, r:-r].all()
    # Exactly flat where the whole kernel is inside; within the kernel's faint tail of the edge, nearly.
    np.testing.assert_allclose(image[15:-15, 15:-15], 10.0, rtol=1e-5)
    np.testing.assert_allclose(image[good], 10.0, rtol=1e-3)


def test_runs_as_a_quantum(tmp_path, skymap, patch, centre):
    from butler import Butler
    from graph.testing import make_quantum, make_test_repo, run_test_quantum

    butler = make_test_repo(tmp_path / "repo", {"visit": [1], "detector": [0, 1]}, run="calexps")
    skymap.register(butler, run="skymaps")
    butler.register_dataset_type("calexp", ("instrument", "visit", "detector"), "ExposureF")
    butler.put(make_calexp(*centre), "calexp", {"instrument": "TestCam", "visit": 1, "detector": 0})
    butler.put(make_calexp(centre[0] + 1.0, centre[1]), "calexp", {"instrument": "TestCam", "visit": 1, "detector": 1})
    butler.close()

    butler = Butler(tmp_path / "repo", collections=["calexps", "skymaps"], run="warps")
    config = MakeWarpConfig()
    config.matchingKernelGridSpacing = 256
    task = MakeWarpTask(config=config)
    data_id = {"skymap": "test", "tract": 0, "patch": patch.id, "visit": 1, "instrument": "TestCam"}
    io = {"calExpList": [{"detector": 0}, {"detector": 1}], "skyMap": {}, "directWarp": {}, "psfMatchedWarp": {}}
    quantum = make_quantum(task, butler, data_id, io)
    run_mock = run_test_quantum(task, butler, quantum)
    args, kwargs = run_mock.call_args
    assert len(args[0]) == 1 and args[1] == patch  # the far detector is not read
    assert kwargs["visitId"] == 1 and kwargs["detectorIds"] == [0]
    refs = run_test_quantum(task, butler, quantum, mock_run=False)
    assert sorted(r.dataset_type.name for r in refs) == ["directWarp", "psfMatchedWarp"]
    warp = butler.get("directWarp", data_id, collections="warps")
    assert warp.bbox == patch.outer_bbox and np.isfinite(warp.image).mean() > 0.5
    assert isinstance(butler.get("psfMatchedWarp.psf", data_id, collections="warps"), GaussianPsf)
    butler.close()


def test_connections_follow_the_config():
    from tasks.warp import MakeWarpConnections

    default = MakeWarpConnections(config=MakeWarpConfig())
    assert "backgroundList" not in default.inputs and {"directWarp", "psfMatchedWarp"} <= default.outputs
    reverted = MakeWarpConnections(config=MakeWarpConfig(doRevertOldBackground=True, makeDirect=False))
    assert "backgroundList" in reverted.inputs and reverted.outputs == {"psfMatchedWarp"}
    assert "visitSummary" not in default.inputs
    visit = MakeWarpConnections(config=MakeWarpConfig(useVisitSummaryPhotoCalib=True))
    assert "visitSummary" in visit.inputs and visit.visitSummary.dimensions == ("instrument", "visit")


def test_use_visit_summary_photo_calib(patch, centre):
    """With useVisitSummaryPhotoCalib the visit calibration replaces the calexp's own (CALIB = 2.0)."""
    from astropy.table import Table

    from tasks.errors import WarpingError

    calexp = make_calexp(*centre, detector_value=10.0)
    summary = Table({"visit": [3, 3], "detector": [7, 8], "visit_calibration_mean": [2.05, 2.05],
                     "visit_calibration_err": [0.01, 0.01]})
    task = MakeWarpTask(config=MakeWarpConfig(makePsfMatched=False, useVisitSummaryPhotoCalib=True))
    warp = task.run([calexp], patch, visitId=3, visitSummary=summary).directWarp
    good = np.isfinite(warp.image)
    np.testing.assert_allclose(warp.image[good], 10.0 * 2.05, rtol=1e-5)  # not 10 * CALIB = 20
    assert warp.photo_calib == PhotoCalib(1.0)
    assert task.metadata["photoCalibSource"] == "visitSummary" and task.metadata["visitCalibrationMean"] == 2.05
    with pytest.raises(WarpingError, match="needs the visitSummary of visit 3"):
        task.run([calexp], patch, visitId=3)
    with pytest.raises(WarpingError, match="not of visit 4"):
        task.run([calexp], patch, visitId=4, visitSummary=summary)
    # The option off: the calexp's own calibration, the summary ignored.
    own = MakeWarpTask(config=MakeWarpConfig(makePsfMatched=False)).run([calexp], patch, visitId=3,
                                                                        visitSummary=summary).directWarp
    np.testing.assert_allclose(own.image[good], 10.0 * CALIB, rtol=1e-5)
    np.testing.assert_allclose(warp.variance[good] / own.variance[good], (2.05 / CALIB) ** 2, rtol=1e-5)
