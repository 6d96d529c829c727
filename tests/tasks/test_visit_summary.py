"""ConsolidateVisitSummaryTask: the visit-level calibration, and warps without sky steps between detectors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS

from graph.errors import NoWorkFound
from tasks.image import DiscreteSkyMap, Exposure, GaussianPsf, MaskedImage, PhotoCalib
from tasks.visit_summary import (
    ConsolidateVisitSummaryConfig,
    ConsolidateVisitSummaryTask,
    NoUsableCalibrationError,
    consolidate_calibrations,
    visit_photo_calib,
)
from tasks.warp import MakeWarpConfig, MakeWarpTask

RA0, DEC0 = 45.0, 10.0  # tract centre
SCALE = 0.4  # arcsec / pixel
SKYMAP_CONFIG = {
    "name": "test", "type": "discrete", "pixel_scale": SCALE, "patch_inner_dimensions": [300, 300],
    "patch_border": 40, "tracts": [{"ra": RA0, "dec": DEC0, "radius": 0.06}],
}
PATCH = DiscreteSkyMap(SKYMAP_CONFIG)[0].find_patch(RA0, DEC0)
# The focal plane is centred on the patch centre: the detector boundary x = 0 runs through the patch middle.
FP_RA, FP_DEC = (float(v) for v in PATCH.wcs.pixel_to_world_values(*PATCH.outer_bbox.center))
DET_SHAPE = (300, 250)  # (height, width) of a detector [pixels]
TRUE_CALIB = 2.0  # nJy / count, the same for every (flat-fielded) detector
SKY_NJY = 1000.0  # nJy / pixel: a flat sky
# Per-detector calibrations as CalibrateTask would fit them: independent ~0.5% errors.
DELTAS = np.array([0.006, -0.004, 0.002, -0.007, 0.003, -0.001])
ERRS = np.array([0.005, 0.004, 0.006, 0.005, 0.003, 0.008])  # relative 1-sigma errors


def weighted_mean(calib: np.ndarray, err: np.ndarray) -> tuple[float, float]:
    """Reference: inverse-variance weighted mean and its Birge-inflated error."""
    w = 1.0 / err**2
    mean = float(np.sum(w * calib) / np.sum(w))
    chi2 = float(np.sum(w * (calib - mean) ** 2))
    return mean, math.sqrt(1.0 / np.sum(w)) * math.sqrt(max(1.0, chi2 / (len(calib) - 1)))


def focal_plane_wcs(column: int, row: int = 0) -> WCS:
    """The TAN WCS of the detector at (column, row) of a grid of abutting detectors centred on (FP_RA, FP_DEC)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [FP_RA, FP_DEC]
    # The focal plane is 2 detectors wide and centred on the tangent point.
    wcs.wcs.crpix = [DET_SHAPE[1] - column * DET_SHAPE[1] + 0.5, DET_SHAPE[0] / 2 - row * DET_SHAPE[0] + 0.5]
    d = SCALE / 3600.0
    wcs.wcs.cd = np.array([[-d, 0.0], [0.0, d]])
    wcs.wcs.set()
    return wcs


def make_calexp(calib: float, calib_err: float, *, column: int = 0, row: int = 0, sigma: float = 1.5) -> Exposure:
    """A calexp of the flat sky [counts = SKY_NJY / TRUE_CALIB] with its (imperfect) fitted calibration."""
    counts = SKY_NJY / TRUE_CALIB
    return Exposure(
        MaskedImage(np.full(DET_SHAPE, counts, np.float32), variance=np.full(DET_SHAPE, counts, np.float32)),
        wcs=focal_plane_wcs(column, row),
        psf=GaussianPsf(25, 25, sigma),
        photo_calib=PhotoCalib(calib, calib_err),
    )


def visit_calexps(deltas: np.ndarray, errs: np.ndarray) -> list[Exposure]:
    """Detectors in a 2-column grid: column k % 2, row k // 2 - 1 (two rows above and below the centre)."""
    return [
        make_calexp(TRUE_CALIB * (1 + d), TRUE_CALIB * (1 + d) * e, column=k % 2, row=k // 2 - 1,
                    sigma=1.2 + 0.1 * k)
        for k, (d, e) in enumerate(zip(deltas, errs))
    ]


# consolidate_calibrations -----------------------------------------------------------------------------------


def test_visit_calibration_is_the_inverse_variance_weighted_mean():
    calib = TRUE_CALIB * (1 + DELTAS)
    err = calib * ERRS
    fit = consolidate_calibrations(calib, err)
    mean, mean_err = weighted_mean(calib, err)
    assert fit.used.all() and not fit.rejected.any()
    assert fit.mean == pytest.approx(mean, rel=1e-6)
    assert fit.err == pytest.approx(mean_err, rel=1e-6)
    # Not the unweighted mean (differs by 1.5e-4 relative) nor the median.
    assert abs(np.mean(calib) / mean - 1) > 1e-4 and abs(np.median(calib) / mean - 1) > 1e-4
    assert fit.scatter == pytest.approx(np.sqrt(np.mean((calib / mean - 1) ** 2)), rel=1e-9)
    # The visit calibration is closer to the truth than the typical detector (0.5% errors averaged).
    assert abs(fit.mean / TRUE_CALIB - 1) < 0.002 < np.sqrt(np.mean(DELTAS**2))


def test_outlier_detector_is_rejected():
    deltas = np.append(DELTAS, 0.04)  # a poor detector: 4% off, claiming 0.5%
    errs = np.append(ERRS, 0.005)
    calib = TRUE_CALIB * (1 + deltas)
    err = calib * errs
    fit = consolidate_calibrations(calib, err)
    assert fit.rejected.tolist() == [False] * 6 + [True] and fit.used.sum() == 6
    mean, _ = weighted_mean(calib[:6], err[:6])
    assert fit.mean == pytest.approx(mean, rel=1e-6)
    # Without rejection the mean would be 0.44% high.
    assert weighted_mean(calib, err)[0] / mean - 1 > 0.004


def test_outlier_with_a_tiny_error_does_not_capture_the_mean():
    """An outlier claiming a 0.1% error would have 25x the weight of the others: clipping starts at the median."""
    deltas = np.append(DELTAS, -0.03)
    errs = np.append(ERRS, 0.001)
    calib = TRUE_CALIB * (1 + deltas)
    fit = consolidate_calibrations(calib, calib * errs)
    assert fit.rejected[-1] and fit.used[:-1].all()
    assert fit.mean == pytest.approx(weighted_mean(calib[:-1], (calib * errs)[:-1])[0], rel=1e-6)


def test_underestimated_errors_do_not_reject_good_detectors():
    """Detectors scattering 4x more than their errors: the robust scale keeps them all, the error is inflated."""
    from scipy.stats import norm

    deltas = np.roll(norm.ppf((np.arange(20) + 0.5) / 20) * 0.02, 7)  # a 2%-sigma normal sample's quantiles
    calib = TRUE_CALIB * (1 + deltas)
    err = calib * 0.005
    fit = consolidate_calibrations(calib, err)
    assert fit.used.all()
    mean, mean_err = weighted_mean(calib, err)
    assert fit.mean == pytest.approx(mean, rel=1e-6) and fit.err == pytest.approx(mean_err, rel=1e-6)
    assert fit.err > 3 * TRUE_CALIB * 0.005 / math.sqrt(20)  # Birge ratio ~4


def test_invalid_calibrations_are_skipped_or_raise():
    fit = consolidate_calibrations([2.0, np.nan, 2.02, -1.0], [0.01, 0.01, 0.01, 0.01])
    assert fit.used.tolist() == [True, False, True, False] and not fit.rejected.any()
    assert fit.mean == pytest.approx(2.01, rel=1e-12)
    # Zero errors are floored at 0.1% of the calibration: weights 1 / (1e-3 c)^2.
    c = np.array([2.0, 2.004])
    assert consolidate_calibrations(c, [0.0, 0.0]).mean == pytest.approx(np.sum(c**-1) / np.sum(c**-2), rel=1e-12)
    # Without a floor, zero errors give equal weights.
    assert consolidate_calibrations(c, [0.0, 0.01], relative_err_floor=0.0).mean == pytest.approx(2.002, rel=1e-12)
    with pytest.raises(NoUsableCalibrationError, match="none of 2 detectors"):
        consolidate_calibrations([np.nan, 0.0], [0.1, 0.1])
    with pytest.raises(ValueError, match="calibration_mean has 2 values but calibration_err 1"):
        consolidate_calibrations([1.0, 2.0], [0.1])


# The task ----------------------------------------------------------------------------------------------------


def test_visit_summary_table_has_one_row_per_detector():
    calexps = visit_calexps(np.append(DELTAS, 0.04), np.append(ERRS, 0.005))
    calexps[2].psf = None
    detectors = [16, 11, 12, 13, 14, 15, 10]  # unsorted: rows come out sorted by detector
    task = ConsolidateVisitSummaryTask()
    result = task.run(calexps, visitId=7, detectorIds=detectors)
    table = result.visitSummary
    assert table["detector"].tolist() == sorted(detectors) and table["visit"].tolist() == [7] * 7
    assert table.meta["visit"] == 7
    by_det = {d: calexps[k] for k, d in enumerate(detectors)}
    for row in table:
        calexp = by_det[int(row["detector"])]
        box = calexp.bbox
        assert (row["bbox_min_x"], row["bbox_min_y"], row["bbox_max_x"], row["bbox_max_y"]) == (
            box.x0, box.y0, box.x1 - 1, box.y1 - 1) == (0, 0, 249, 299)
        assert row["calibration_mean"] == calexp.photo_calib.calibration_mean
        assert row["calibration_err"] == calexp.photo_calib.calibration_err
        assert row["zero_point"] == pytest.approx(calexp.photo_calib.instrumental_zero_point, abs=1e-12)
        ra, dec = calexp.wcs.pixel_to_world_values(124.5, 149.5)
        assert (row["ra"], row["dec"]) == (pytest.approx(float(ra), abs=1e-12), pytest.approx(float(dec), abs=1e-12))
        if calexp.psf is None:
            assert np.isnan(row["psf_sigma"])
        else:
            assert row["psf_sigma"] == pytest.approx(calexp.psf.sigma, rel=1e-3)
    assert table["ra"].unit == "deg" and table["psf_sigma"].unit == "pixel" and table["calibration_mean"].unit == "nJy"
    # The detectors cover a 2 x 4 grid around the visit centre: centres 50 arcsec (125 px) either side in RA.
    assert np.ptp(table["ra"]) * 3600 * math.cos(math.radians(DEC0)) == pytest.approx(250 * SCALE, rel=1e-3)
    # The visit calibration: the first six detectors' weighted mean, the same in every row.
    calib = TRUE_CALIB * (1 + DELTAS)
    mean, err = weighted_mean(calib, calib * ERRS)
    assert np.all(table["visit_calibration_mean"] == table["visit_calibration_mean"][0])
    assert table["visit_calibration_mean"][0] == pytest.approx(mean, rel=1e-6)
    assert table["visit_calibration_err"][0] == pytest.approx(err, rel=1e-6)
    assert table["visit_calibration_used"].tolist() == [False] + [True] * 6  # detector 10 is the outlier
    assert result.photoCalib == visit_photo_calib(table, 7)
    md = task.metadata
    assert md["nDetectors"] == 7 and md["nDetectorsUsed"] == 6 and md["nDetectorsRejected"] == 1
    assert md["rejectedDetectors"] == [10] and md["noCalibDetectors"] == []
    assert md["visitZeroPoint"] == pytest.approx(31.4 - 2.5 * math.log10(mean), abs=1e-9)
    assert md["visitZeroPointErr"] == pytest.approx(2.5 / math.log(10) * err / mean, rel=1e-6)
    assert md["calibrationScatter"] == pytest.approx(np.sqrt(np.mean((calib / mean - 1) ** 2)), rel=1e-6)
    assert 0.003 < md["calibrationScatter"] < 0.006


def test_visit_summary_errors():
    task = ConsolidateVisitSummaryTask()
    with pytest.raises(NoWorkFound, match="no calexp of visit 3"):
        task.run([], visitId=3)
    calexp = make_calexp(2.0, 0.01)
    calexp.photo_calib = None
    with pytest.raises(NoUsableCalibrationError):
        task.run([calexp], visitId=3)
    table = task.run([make_calexp(2.0, 0.01)], visitId=3).visitSummary
    with pytest.raises(ValueError, match="not of visit 4"):
        visit_photo_calib(table, 4)
    assert ConsolidateVisitSummaryConfig().nSigmaClip == 3.0


# Warps -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patch():  # noqa: ANN201
    return PATCH


def _sky_either_side(warp: Exposure, patch) -> tuple[float, float, float, float]:  # noqa: ANN001
    """Median and peak-to-peak of the warp's sky 12-30 columns left and right of the detector boundary.

    (The PSF-matched warp has no data within the kernel radius, ~10 px, of a detector edge.)
    """
    boundary_x, _ = patch.wcs.world_to_pixel_values(FP_RA, FP_DEC)  # the detectors abut at the tangent point
    col = int(round(float(boundary_x))) - warp.bbox.x0
    left = warp.image[:, col - 30 : col - 12]
    right = warp.image[:, col + 12 : col + 30]
    left, right = left[np.isfinite(left)].astype(float), right[np.isfinite(right)].astype(float)
    assert left.size > 3000 and right.size > 3000
    return float(np.median(left)), float(np.median(right)), float(np.ptp(left)), float(np.ptp(right))


def test_warps_with_the_visit_calibration_have_no_sky_steps(patch):
    # Two detectors whose fitted calibrations are 0.6% high and 0.4% low: a 1% step with their own.
    calexps = [make_calexp(TRUE_CALIB * 1.006, TRUE_CALIB * 0.005, column=0),
               make_calexp(TRUE_CALIB * 0.996, TRUE_CALIB * 0.004, column=1)]
    summary = ConsolidateVisitSummaryTask().run(calexps, visitId=5, detectorIds=[0, 1]).visitSummary
    visit_calib = float(summary["visit_calibration_mean"][0])
    counts = SKY_NJY / TRUE_CALIB

    own = MakeWarpTask(config=MakeWarpConfig(makePsfMatched=False))
    left, right, _, _ = _sky_either_side(own.run(calexps, patch, visitId=5).directWarp, patch)
    assert left / right - 1 == pytest.approx(1.006 / 0.996 - 1, abs=1e-4)  # the step: 1.004%
    assert own.metadata["photoCalibSource"] == "calexp"

    config = MakeWarpConfig(makePsfMatched=True, useVisitSummaryPhotoCalib=True)
    config.matchingKernelGridSpacing = 128
    task = MakeWarpTask(config=config)
    result = task.run(calexps, patch, visitId=5, visitSummary=summary)
    for warp in (result.directWarp, result.psfMatchedWarp):
        left, right, spread_left, spread_right = _sky_either_side(warp, patch)
        assert abs(left / right - 1) < 1e-4
        assert left == pytest.approx(counts * visit_calib, rel=1e-4)
        assert max(spread_left, spread_right) < 1e-4 * left
        assert warp.photo_calib == PhotoCalib(1.0)
    assert task.metadata["photoCalibSource"] == "visitSummary"
    assert task.metadata["visitCalibrationMean"] == visit_calib
    # The visit calibration is the weighted mean (0.4% error weighs 1.56x the 0.5% one).
    assert visit_calib == pytest.approx(weighted_mean(np.array([2.012, 1.992]), np.array([0.01, 0.008]))[0], rel=1e-6)


def test_runs_as_quanta(tmp_path, patch):
    """consolidateVisitSummary writes visitSummary (FITS round trip); makeWarp reads it."""
    from butler import Butler
    from graph.testing import make_quantum, make_test_repo, run_test_quantum
    calexps = visit_calexps(np.append(DELTAS[:3], 0.05), np.append(ERRS[:3], 0.004))
    butler = make_test_repo(tmp_path / "repo", {"visit": [1], "detector": [0, 1, 2, 3]}, run="calexps")
    DiscreteSkyMap(SKYMAP_CONFIG).register(butler, run="skymaps")
    butler.register_dataset_type("calexp", ("instrument", "visit", "detector"), "ExposureF")
    for k, calexp in enumerate(calexps):
        butler.put(calexp, "calexp", {"instrument": "TestCam", "visit": 1, "detector": k})
    butler.close()

    butler = Butler(tmp_path / "repo", collections=["calexps", "skymaps"], run="summaries")
    task = ConsolidateVisitSummaryTask()
    data_id = {"instrument": "TestCam", "visit": 1}
    quantum = make_quantum(task, butler, data_id,
                           {"calExpList": [{"detector": d} for d in range(4)], "visitSummary": {}})
    run_mock = run_test_quantum(task, butler, quantum)
    args, kwargs = run_mock.call_args
    assert len(args[0]) == 4 and kwargs == {"visitId": 1, "detectorIds": [0, 1, 2, 3]}
    refs = run_test_quantum(task, butler, quantum, mock_run=False)
    assert [r.dataset_type.name for r in refs] == ["visitSummary"]
    table = butler.get("visitSummary", data_id, collections="summaries")
    calib = TRUE_CALIB * (1 + DELTAS[:3])
    mean, _ = weighted_mean(calib, calib * ERRS[:3])
    assert table["detector"].tolist() == [0, 1, 2, 3]
    assert table["visit_calibration_used"].tolist() == [True, True, True, False]
    assert float(table["visit_calibration_mean"][0]) == pytest.approx(mean, rel=1e-6)
    assert task.metadata["rejectedDetectors"] == [3]

    butler = Butler(tmp_path / "repo", collections=["calexps", "skymaps", "summaries"], run="warps")
    config = MakeWarpConfig(useVisitSummaryPhotoCalib=True, makePsfMatched=False)
    warp_task = MakeWarpTask(config=config)
    warp_id = {"skymap": "test", "tract": 0, "patch": patch.id, "visit": 1, "instrument": "TestCam"}
    io = {"calExpList": [{"detector": d} for d in range(4)], "skyMap": {}, "visitSummary": {}, "directWarp": {}}
    quantum = make_quantum(warp_task, butler, warp_id, io)
    run_mock = run_test_quantum(warp_task, butler, quantum)
    assert float(run_mock.call_args.kwargs["visitSummary"]["visit_calibration_mean"][0]) == pytest.approx(mean)
    run_test_quantum(warp_task, butler, quantum, mock_run=False)
    warp = butler.get("directWarp", warp_id, collections="warps")
    good = np.isfinite(warp.image)
    assert good.mean() > 0.5
    # All four detectors -- the rejected outlier too -- are calibrated with the one visit calibration.
    np.testing.assert_allclose(warp.image[good], SKY_NJY / TRUE_CALIB * mean, rtol=1e-4)
    butler.close()
