"""MatchBackgroundsTask on synthetic warps: visits with known sky offsets and gradients, dithers, missing
detectors, shared sources and a transient; the matched skies are compared with the truth."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from graph.errors import NoWorkFound
from tasks.errors import MatchBackgroundsError
from tasks.image import Exposure, Mask, MaskedImage, PhotoCalib, SkyMap, TractBackground, VisitInfo
from tasks.match_backgrounds import MatchBackgroundsConfig, MatchBackgroundsTask

SKYMAP_CONFIG = {
    "name": "test",
    "type": "discrete",
    "pixel_scale": 0.2,
    "projection": "TAN",
    "patch_inner_dimensions": [400, 400],
    "patch_border": 20,
    "tract_overlap": 0.0,
    "tracts": [{"ra": 150.0, "dec": 2.0, "radius": 0.03}],
}
DETECTOR, GAP = 260, 10  # a 3 x 3 mosaic of 260 px detectors with 10 px gaps: 800 px focal plane
HALF = (3 * DETECTOR + 2 * GAP) / 2
NOISE_AT_300 = 10.0  # sky noise [nJy] of a visit with sky level 300 nJy (noise ~ sqrt(sky))


@dataclass(frozen=True)
class Visit:
    id: int
    dither: tuple[int, int]  # focal-plane centre offset from the tract centre [px]
    missing: tuple[int, ...]  # detectors (0..8) without data
    sky0: float  # [nJy]
    gx: float  # sky = sky0 * (1 + gx fx + gy fy), f = focal-plane position / half width
    gy: float

    @property
    def noise(self) -> float:
        return NOISE_AT_300 * math.sqrt(self.sky0 / 300.0)


VISITS = (
    Visit(101, (0, 0), (), 300.0, 0.05, -0.03),  # full coverage: the expected reference
    Visit(102, (150, 90), (4,), 250.0, -0.06, 0.04),  # lower sky and noise, no centre detector
    Visit(103, (-140, 60), (0,), 350.0, -0.08, 0.02),
    Visit(104, (80, -150), (8,), 280.0, 0.02, 0.10),
    Visit(105, (-100, -120), (2, 6), 220.0, 0.07, 0.06),
)


@pytest.fixture(scope="module")
def skymap() -> SkyMap:
    return SkyMap.from_config(SKYMAP_CONFIG)


def sky(visit: Visit, centre: tuple[float, float], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    fx = (x - centre[0] - visit.dither[0]) / HALF
    fy = (y - centre[1] - visit.dither[1]) / HALF
    return visit.sky0 * (1.0 + visit.gx * fx + visit.gy * fy)


def footprint(visit: Visit, centre: tuple[float, float], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixels on a detector of the visit (not in a gap, not on a missing detector)."""
    u = x - (centre[0] + visit.dither[0] - HALF)
    v = y - (centre[1] + visit.dither[1] - HALF)
    col, row = np.floor(u / (DETECTOR + GAP)), np.floor(v / (DETECTOR + GAP))
    on = (u >= 0) & (v >= 0) & (col < 3) & (row < 3)
    on &= (u - col * (DETECTOR + GAP) < DETECTOR) & (v - row * (DETECTOR + GAP) < DETECTOR)
    for d in visit.missing:
        on &= ~((col == d % 3) & (row == d // 3))
    return on


def simulate(skymap: SkyMap, visits=VISITS, seed: int = 11, calib: float = 1.0):
    """Warps (ordered by patch, then visit) of every visit on every patch it touches.

    Returns the warps, their visit and patch ids, and truth: for each warp the sky [nJy] on its pixels.
    The warp pixels are ``(sky + sources + transient + noise) / calib`` with PhotoCalib(calib).
    """
    rng = np.random.default_rng(seed)
    tract = skymap[0]
    centre = tract.bbox.center
    y, x = np.mgrid[0 : tract.bbox.height, 0 : tract.bbox.width].astype(float)
    sources = np.zeros(tract.bbox.shape)
    positions = rng.uniform(100, tract.bbox.width - 100, size=(60, 2))
    fluxes = 10 ** rng.uniform(3.5, 5.5, size=60)  # [nJy]
    for (xs, ys), flux in zip(positions, fluxes):  # Gaussians of sigma 2 px on 41 x 41 stamps
        ix, iy = int(xs) - 20, int(ys) - 20
        sy, sx = np.mgrid[iy : iy + 41, ix : ix + 41]
        sources[iy : iy + 41, ix : ix + 41] += (
            flux / (2 * np.pi * 2.0**2) * np.exp(-((sx - xs) ** 2 + (sy - ys) ** 2) / (2 * 2.0**2))
        )
    planes = {}
    for visit in visits:
        on = footprint(visit, centre, x, y)
        truth_sky = sky(visit, centre, x, y)
        image = truth_sky + sources + visit.noise * rng.standard_normal(x.shape)
        if visit.id == 103:  # an unmasked transient blob (satellite glint) only in this visit
            image += 400.0 * np.exp(-((x - 560) ** 2 + (y - 480) ** 2) / (2 * 12.0**2))
        image[~on] = np.nan
        detected = on & (sources > 3 * visit.noise)
        planes[visit.id] = (image, on, detected, truth_sky)
    warps, visit_ids, patch_ids, truths = [], [], [], []
    for patch in tract:
        box = patch.outer_bbox
        for visit in visits:
            image, on, detected, truth_sky = planes[visit.id]
            sl = box.slices(tract.bbox)
            if not on[sl].any():
                continue
            mask = Mask(box.shape, xy0=box.xy0)
            mask.set_plane("NO_DATA", ~on[sl])
            mask.set_plane("DETECTED", detected[sl])
            masked = MaskedImage(
                (image[sl] / calib).astype(np.float32),
                mask,
                np.where(on[sl], (visit.noise / calib) ** 2, np.nan).astype(np.float32),
                xy0=box.xy0,
            )
            warps.append(
                Exposure(masked, wcs=tract.wcs, photo_calib=PhotoCalib(calib), visit_info=VisitInfo(id=visit.id))
            )
            visit_ids.append(visit.id)
            patch_ids.append(patch.sequential_index)
            truths.append(np.where(on[sl], truth_sky[sl], np.nan))
    return warps, visit_ids, patch_ids, truths


@pytest.fixture(scope="module")
def simulation(skymap):
    return simulate(skymap)


@pytest.fixture(scope="module")
def auto_result(skymap, simulation):
    warps, _, _, _ = simulation
    task = MatchBackgroundsTask()
    return task, task.run(warps, skymap)


def residual_rms_in_sigma(skymap, simulation, result, ref_id: int) -> dict[int, float]:
    """RMS over each visit's pixels (each patch's inner box once) of matched sky - reference sky, / noise."""
    warps, visit_ids, patch_ids, truths = simulation
    tract = skymap[0]
    by_visit = {v.id: v for v in VISITS}
    ref = by_visit[ref_id]
    centre = tract.bbox.center
    sums: dict[int, list[float]] = {}
    index = {(p, v): i for i, (p, v) in enumerate(zip(patch_ids, visit_ids))}
    for out, model, patch, visit in zip(
        result.matchedImageList, result.backgroundInfoList, result.patchIds, result.visitIds
    ):
        i = index[(patch, visit)]
        inner = tract.patch_info(patch).inner_bbox
        sl = inner.slices(out.bbox)
        y, x = np.mgrid[inner.y0 : inner.y1, inner.x0 : inner.x1].astype(float)
        # matched - input = model; the truth of the model is sky_ref - sky_visit (the ref's plane extended).
        applied = (out.image[sl] - warps[i].image[sl] * warps[i].photo_calib.calibration_mean).astype(np.float64)
        wanted = sky(ref, centre, x, y) - truths[i][sl]
        ok = np.isfinite(applied) & np.isfinite(wanted)
        np.testing.assert_allclose(applied[ok], model.get_image(inner)[ok], atol=1e-3 * ref.noise)
        sums.setdefault(visit, []).extend((applied[ok] - wanted[ok]).tolist())
    return {v: float(np.sqrt(np.mean(np.square(d)))) / ref.noise for v, d in sums.items()}


# The matched result ------------------------------------------------------------------------------------------


def test_matched_skies_equal_the_reference_sky_to_a_small_fraction_of_the_noise(skymap, simulation, auto_result):
    _, result = auto_result
    rms = residual_rms_in_sigma(skymap, simulation, result, result.refVisitId)
    assert sorted(rms) == [v.id for v in VISITS]
    assert rms[result.refVisitId] == 0.0
    # Each visit's sky (offset + gradient), including its pixels beyond the reference's footprint, matches
    # the reference's extended plane to < 5% of the per-pixel noise (before matching: 2.6 to 7.9 sigma).
    assert max(rms.values()) < 0.05, rms


def test_automatic_reference_is_the_full_coverage_visit(auto_result):
    task, result = auto_result
    assert result.refVisitId == 101
    md = task.metadata
    assert md["refVisitId"] == 101 and md["refVisitAuto"] is True
    assert md["visit_101_coverage"] == pytest.approx(1.0)
    for visit in VISITS[1:]:
        n_missing = len(visit.missing)
        assert md[f"visit_{visit.id}_coverage"] < 1.0 - 0.08 * n_missing  # one detector is 1/9 of the pixels
        assert md[f"visit_{visit.id}_refCost"] > md["visit_101_refCost"]
    # 102 has the lowest noise, yet coverage wins.
    assert md["visit_102_pixelRms"] < md["visit_101_pixelRms"]


def test_metadata_records_the_fit_diagnostics(auto_result, skymap):
    task, result = auto_result
    md = task.metadata
    assert md["matchedVisitCount"] == 5 and md["unmatchedVisitCount"] == 0 and md["visitCount"] == 5
    assert md["visit_101_chi2"] == 0.0 and md["visit_101_nGoodBins"] == 0 and md["visit_101_meanOffset"] == 0.0
    tract = skymap[0]
    centre = tract.bbox.center
    ref = VISITS[0]
    for visit in VISITS[1:]:
        v = visit.id
        assert md[f"visit_{v}_order"] == 2
        assert 20 <= md[f"visit_{v}_nGoodBins"] <= 49
        assert 0.3 < md[f"visit_{v}_chi2"] < 3.0
        assert 0 < md[f"visit_{v}_rms"] < 0.05 * ref.noise  # bins of 128 px: noise / ~90
        # Mean offset: the mean of sky_ref - sky_visit over the visit's footprint box (planes: at its centre).
        cx, cy = centre[0] + visit.dither[0], centre[1] + visit.dither[1]
        expected = float(sky(ref, centre, np.array(cx), np.array(cy)) - visit.sky0)
        assert md[f"visit_{v}_meanOffset"] == pytest.approx(expected, abs=0.05 * ref.noise + 0.01 * abs(expected))


def test_outputs_follow_the_input_order_and_are_in_nanojansky(skymap):
    warps, visit_ids, patch_ids, truths = simulate(skymap, VISITS[:3], seed=5, calib=2.5)
    task = MatchBackgroundsTask()
    result = task.run(warps, skymap)
    assert result.visitIds == visit_ids and result.patchIds == patch_ids
    assert all(isinstance(b, TractBackground) for b in result.backgroundInfoList)
    # One model object per visit, shared by its warps.
    assert len({id(b) for b in result.backgroundInfoList}) == 3
    ref_outputs = [(o, w) for o, w, v in zip(result.matchedImageList, warps, visit_ids) if v == result.refVisitId]
    for out, warp in ref_outputs:
        assert out.photo_calib == PhotoCalib(1.0)
        np.testing.assert_allclose(out.image, warp.image * 2.5, rtol=1e-6)  # the reference is only calibrated
        assert out.mask == warp.mask
    assert warps[0].photo_calib == PhotoCalib(2.5)  # inputs untouched
    rms = residual_rms_in_sigma(skymap, (warps, visit_ids, patch_ids, truths), result, result.refVisitId)
    assert max(rms.values()) < 0.05


def test_configured_reference_is_used(skymap, simulation):
    warps, visit_ids, patch_ids, _ = simulation
    config = MatchBackgroundsConfig()
    config.refVisitId = 103
    task = MatchBackgroundsTask(config=config)
    result = task.run(warps, skymap)
    assert result.refVisitId == 103 and task.metadata["refVisitAuto"] is False
    assert "visit_101_refCost" not in task.metadata
    rms = residual_rms_in_sigma(skymap, simulation, result, 103)
    # 103 lacks a detector, so 101's pixels there are extrapolated over a 260 px hole: still well matched.
    assert max(rms.values()) < 0.05, rms


def test_match_backgrounds_with_explicit_ids_and_bad_reference(skymap, simulation):
    warps, visit_ids, patch_ids, _ = simulation
    task = MatchBackgroundsTask()
    result = task.matchBackgrounds(warps, skymap, 104, visitIds=visit_ids, patchIds=patch_ids)
    assert task.metadata["refVisitId"] == 104 and len(result.matchedImageList) == len(warps)
    with pytest.raises(MatchBackgroundsError, match="reference visit 999"):
        task.matchBackgrounds(warps, skymap, 999)
    with pytest.raises(NoWorkFound):
        task.run([], skymap)


def test_visit_without_overlap_is_left_out(skymap):
    far = Visit(106, (420, 420), (0, 1, 2, 3, 4, 5, 6, 7), 300.0, 0.0, 0.0)  # only detector 8, off 101
    near = VISITS[0]
    warps, visit_ids, patch_ids, _ = simulate(skymap, (near, far), seed=3)
    config = MatchBackgroundsConfig()
    config.refVisitId = 101
    task = MatchBackgroundsTask(config=config)
    result = task.run(warps, skymap)
    assert set(result.visitIds) == {101}
    assert task.metadata["unmatchedVisitCount"] == 1 and task.metadata["matchedVisitCount"] == 1


# As a quantum -------------------------------------------------------------------------------------------------


def test_run_quantum_writes_each_output_to_its_patch_and_visit(tmp_path, skymap):
    from graph.testing import make_quantum, make_test_repo, run_test_quantum

    visits = VISITS[:2]
    warps, visit_ids, patch_ids, _ = simulate(skymap, visits, seed=9)
    butler = make_test_repo(
        tmp_path / "repo",
        {"visit": [v.id for v in visits], "patch": sorted(set(patch_ids)), "tract": [0]},
        run="warps",
    )
    dims = ("skymap", "tract", "patch", "visit", "instrument")
    butler.register_dataset_type("psfMatchedWarp", dims, "ExposureF")
    butler.register_dataset_type("skyMap", ("skymap",), "SkyMap")
    butler.put(skymap, "skyMap", {"skymap": "test"})
    # Put the warps in another order than (patch, visit): runQuantum sorts them.
    for warp, visit, patch in reversed(list(zip(warps, visit_ids, patch_ids))):
        butler.put(warp, "psfMatchedWarp", {"skymap": "test", "tract": 0, "patch": patch, "visit": visit,
                                            "instrument": "TestCam"})
    task = MatchBackgroundsTask()
    ids = [{"patch": p, "visit": v, "instrument": "TestCam"} for p, v in zip(patch_ids, visit_ids)]
    quantum = make_quantum(
        task,
        butler,
        {"skymap": "test", "tract": 0, "band": "r"},
        {"warps": list(reversed(ids)), "skyMap": {}, "backgroundInfoList": ids, "matchedImageList": ids},
    )
    run_mock = run_test_quantum(task, butler, quantum)
    (handles, skymap_arg), kwargs = run_mock.call_args
    assert [(h.data_id["patch"], h.data_id["visit"]) for h in handles] == sorted(zip(patch_ids, visit_ids))
    assert kwargs == {"tractId": 0} and skymap_arg == skymap
    refs = run_test_quantum(task, butler, quantum, mock_run=False)
    assert len(refs) == 2 * len(warps)
    expected = task.run(warps, skymap)
    for i in (0, len(warps) // 2, len(warps) - 1):
        data_id = {"skymap": "test", "tract": 0, "patch": patch_ids[i], "visit": visit_ids[i], "instrument": "TestCam"}
        matched = butler.get("psfMatchedWarpMatched", data_id)
        background = butler.get("psfMatchedWarpBackgroundDiff", data_id)
        np.testing.assert_allclose(matched.image, expected.matchedImageList[i].image, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(
            background.get_image(matched.bbox), expected.backgroundInfoList[i].get_image(matched.bbox), atol=1e-4
        )
    butler.close()
