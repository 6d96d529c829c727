"""Consolidate the per-detector calibrations of a visit into one table and one visit-level calibration.

`ConsolidateVisitSummaryTask` follows ``lsst.pipe.tasks.postprocess.ConsolidateVisitSummaryTask``: it reads
the small components (``photoCalib``, ``psf``, ``wcs``, ``bbox``) of every detector's ``calexp`` of a visit --
never the pixels -- and writes ``visitSummary``, an `astropy.table.Table` with one row per detector.

Besides the per-detector quantities it computes a *visit-level* photometric calibration: the
inverse-variance weighted mean of the detectors' ``calibration_mean`` [nJy/count], after iterative sigma
clipping of outlier detectors (`consolidate_calibrations`).

Assumption
----------
After instrument signature removal (gain correction and flat-fielding) every detector of an exposure has
the same response, so one zero point per exposure describes all of them: the per-detector zero points fitted
by ``CalibrateTask`` from ~10-30 stars each differ only by their fitting noise (and occasional failures).  This
is the per-visit (per-exposure) term of global calibrations such as FGCM and jointcal.  Averaging the
detectors reduces the noise by ~sqrt(n_detectors) and, above all, gives every detector of the visit the
*same* calibration, so the warps (``MakeWarpConfig.useVisitSummaryPhotoCalib``) show no steps in the sky level
between detectors.  The assumption fails for a camera whose detectors have different, uncorrected
throughputs (e.g. filters that differ from detector to detector): do not use the visit calibration then.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.table import Table

from graph import (
    Field,
    Input,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    Struct,
    timeMethod,
)
from graph.errors import AlgorithmError, NoWorkFound

from .image import Exposure, PhotoCalib
from .image.photo_calib import AB_ZERO_POINT_NJY

__all__ = [
    "ConsolidateVisitSummaryConfig",
    "ConsolidateVisitSummaryConnections",
    "ConsolidateVisitSummaryTask",
    "NoUsableCalibrationError",
    "consolidate_calibrations",
    "visit_photo_calib",
]

_MAG_PER_LN = 2.5 / math.log(10.0)
_MAD_TO_SIGMA = 1.4826


class NoUsableCalibrationError(AlgorithmError):
    """No detector of the visit has a usable (finite, positive) photometric calibration."""


def consolidate_calibrations(
    calibration_mean: Sequence[float] | np.ndarray,
    calibration_err: Sequence[float] | np.ndarray,
    *,
    n_sigma: float = 3.0,
    n_iter: int = 5,
    relative_err_floor: float = 1e-3,
) -> Struct:
    """The inverse-variance weighted, sigma-clipped mean of per-detector calibrations.

    Parameters
    ----------
    calibration_mean : array-like of `float`, shape (n,)
        The detectors' calibrations [nJy/count]; non-finite or non-positive values are never used.
    calibration_err : array-like of `float`, shape (n,)
        Their 1-sigma uncertainties [nJy/count]; non-finite values are never used.
    n_sigma : `float`, optional
        Clipping threshold: a detector is rejected when ``|c_i - mean| > n_sigma * s * e_i``, with ``e_i`` its
        (floored) error and ``s = max(1, 1.4826 MAD(chi))`` the robust scale of the normalised residuals
        ``chi_i = (c_i - mean) / e_i`` (so under-estimated errors do not reject good detectors).
    n_iter : `int`, optional
        Maximum number of clipping iterations (the first is about the median, robust to an outlier with a
        small error); stops earlier when the set of used detectors no longer changes.
    relative_err_floor : `float`, optional
        Floor of the errors as a fraction of the calibration: ``e_i = max(err_i, floor * c_i)``; it bounds
        the weight of a detector with a (near) zero reported error.  Should a valid detector still have a
        zero error (floor 0), every valid detector gets the same weight (unit error).

    Returns
    -------
    result : `Struct`
        ``mean`` [nJy/count] = ``sum(w_i c_i) / sum(w_i)`` over the used detectors, ``w_i = 1 / e_i**2``;
        ``err`` [nJy/count] = ``sqrt(1 / sum(w_i)) * sqrt(max(1, chi2 / (n_used - 1)))`` (the formal error
        inflated by the Birge ratio when the detectors scatter more than their errors say);
        ``used`` (bool, shape (n,)); ``rejected`` (bool, shape (n,): valid but clipped);
        ``scatter`` (RMS of ``c_i / mean - 1`` over the used detectors, dimensionless);
        ``chi2`` (``sum(w_i (c_i - mean)**2)`` over the used detectors); ``errScale`` (the final ``s``).

    Raises
    ------
    NoUsableCalibrationError
        If no detector has a finite, positive calibration with a finite, non-negative error.
    ValueError
        If the two arrays differ in shape, or ``n_sigma`` <= 0.
    """
    c = np.asarray(calibration_mean, dtype=np.float64).ravel()
    e = np.asarray(calibration_err, dtype=np.float64).ravel()
    if c.shape != e.shape:
        raise ValueError(f"calibration_mean has {c.size} values but calibration_err {e.size}.")
    if not n_sigma > 0:
        raise ValueError(f"n_sigma must be > 0, got {n_sigma}.")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(c) & (c > 0) & np.isfinite(e) & (e >= 0)
    if not valid.any():
        raise NoUsableCalibrationError(
            f"none of {c.size} detectors has a finite, positive photometric calibration with a valid error."
        )
    e_eff = np.where(valid, np.maximum(e, relative_err_floor * c), np.inf)
    if np.any(e_eff[valid] == 0):  # a zero error and no floor: an infinite weight; use equal weights instead
        e_eff = np.where(valid, 1.0, np.inf)
    weights = np.where(valid, 1.0 / e_eff**2, 0.0)

    def clip(centre: float) -> tuple[np.ndarray, float]:
        chi = (c - centre) / e_eff
        chi_valid = chi[valid]
        scale = max(1.0, _MAD_TO_SIGMA * float(np.median(np.abs(chi_valid - np.median(chi_valid)))))
        with np.errstate(invalid="ignore"):
            keep = valid & (np.abs(chi) <= n_sigma * scale)
        return keep, scale

    used, scale = clip(float(np.median(c[valid])))
    if not used.any():  # cannot happen with scale >= 1 around the median unless n_sigma is tiny
        used = valid.copy()
    for _ in range(max(0, int(n_iter) - 1)):
        mean = float(np.sum(weights[used] * c[used]) / np.sum(weights[used]))
        new_used, scale = clip(mean)
        if not new_used.any() or np.array_equal(new_used, used):
            break
        used = new_used
    w = weights[used]
    mean = float(np.sum(w * c[used]) / np.sum(w))
    chi2 = float(np.sum(w * (c[used] - mean) ** 2))
    n_used = int(used.sum())
    birge = math.sqrt(max(1.0, chi2 / (n_used - 1))) if n_used > 1 else 1.0
    err = birge / math.sqrt(float(np.sum(w)))
    scatter = float(np.sqrt(np.mean((c[used] / mean - 1.0) ** 2)))
    return Struct(mean=mean, err=err, used=used, rejected=valid & ~used, scatter=scatter, chi2=chi2,
                  errScale=scale)


def visit_photo_calib(visit_summary: Table, visit: int | None = None) -> PhotoCalib:
    """The visit-level calibration stored in a ``visitSummary`` table.

    Parameters
    ----------
    visit_summary : `astropy.table.Table`
        Output of `ConsolidateVisitSummaryTask` (columns ``visit_calibration_mean``, ``visit_calibration_err``
        [nJy/count], and ``visit``).
    visit : `int`, optional
        When given, the table's ``visit`` column must hold only this visit.

    Returns
    -------
    photo_calib : `PhotoCalib`
        ``PhotoCalib(visit_calibration_mean, visit_calibration_err)``.

    Raises
    ------
    ValueError
        If the table is empty, lacks the columns, is of another visit, or its rows disagree.
    """
    missing = {"visit_calibration_mean", "visit_calibration_err"} - set(visit_summary.colnames)
    if missing or len(visit_summary) == 0:
        raise ValueError(
            f"not a visitSummary table: {len(visit_summary)} rows, missing columns {sorted(missing)}."
        )
    if visit is not None and "visit" in visit_summary.colnames:
        visits = set(np.asarray(visit_summary["visit"]).tolist())
        if visits != {int(visit)}:
            raise ValueError(f"visitSummary is of visit(s) {sorted(visits)}, not of visit {visit}.")
    means = np.asarray(visit_summary["visit_calibration_mean"], dtype=np.float64)
    errs = np.asarray(visit_summary["visit_calibration_err"], dtype=np.float64)
    if not (np.all(means == means[0]) and np.all(errs == errs[0])):
        raise ValueError("the visitSummary rows disagree on the visit calibration.")
    return PhotoCalib(float(means[0]), float(errs[0]))


# The task ---------------------------------------------------------------------------------------------------


class ConsolidateVisitSummaryConnections(PipelineTaskConnections, dimensions=("instrument", "visit")):
    calExpList = Input(  # noqa: N815 - the LSST stack's name
        name="calexp",
        storageClass="ExposureF",
        dimensions=("instrument", "visit", "detector"),
        multiple=True,
        deferLoad=True,
        doc="Every detector's calibrated exposure of the visit (only its photoCalib, psf, wcs and bbox are read).",
    )
    visitSummary = Output(  # noqa: N815
        name="visitSummary",
        storageClass="AstropyFitsTable",
        dimensions=("instrument", "visit"),
        doc="One row per detector: geometry, PSF size, own and visit-level photometric calibration.",
    )


class ConsolidateVisitSummaryConfig(PipelineTaskConfig, pipelineConnections=ConsolidateVisitSummaryConnections):
    """Configuration of `ConsolidateVisitSummaryTask`."""

    nSigmaClip: float = Field(  # noqa: N815
        3.0, gt=0, description="Reject detectors whose calibration is this many (robustly scaled) errors from the mean."
    )
    nIter: int = Field(5, ge=1, description="Maximum number of clipping iterations.")  # noqa: N815
    relativeErrFloor: float = Field(  # noqa: N815
        1e-3, ge=0, description="Floor of a detector's calibration error, as a fraction of its calibration."
    )


class ConsolidateVisitSummaryTask(PipelineTask):
    """Summarise the detectors of a visit and compute its visit-level photometric calibration.

    See the module docstring (including the one-zero-point-per-exposure assumption).  Metadata:
    ``visitCalibrationMean``, ``visitCalibrationErr`` [nJy/count], ``visitZeroPoint``, ``visitZeroPointErr``
    [mag, AB magnitude of 1 count], ``nDetectors`` (rows), ``nDetectorsUsed``, ``nDetectorsRejected``,
    ``rejectedDetectors`` (ids of clipped detectors), ``noCalibDetectors`` (ids without a usable calibration),
    ``calibrationScatter`` (RMS of the used detectors' ``calibration / visit calibration - 1``),
    ``zeroPointScatter`` [mag], ``calibrationChi2``.
    """

    ConfigClass = ConsolidateVisitSummaryConfig
    _DefaultName = "consolidateVisitSummary"

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        """Read the calexp handles (no pixels), summarise, write ``visitSummary``."""
        inputs = butlerQC.get(inputRefs)
        handles = list(inputs["calExpList"])
        visit = int(butlerQC.quantum.data_id["visit"])
        detector_ids = [int(h.data_id["detector"]) for h in handles]
        outputs = self.run(handles, visitId=visit, detectorIds=detector_ids)
        butlerQC.put(outputs.visitSummary, outputRefs.visitSummary)

    @timeMethod
    def run(
        self,
        calExpList: Sequence[Any],  # noqa: N803
        *,
        visitId: int,  # noqa: N803
        detectorIds: Sequence[int] | None = None,  # noqa: N803
    ) -> Struct:
        """Build the visit summary.

        Parameters
        ----------
        calExpList : sequence of `Exposure` or deferred handles
            The visit's calexps; a handle is read with ``get(component=...)`` for ``photoCalib``, ``psf``,
            ``wcs`` and ``bbox`` only.
        visitId : `int`
            The visit (the ``visit`` column and the table's ``meta["visit"]``).
        detectorIds : sequence of `int`, optional
            The calexps' detector ids; default from the handles' data IDs, ``exposure.detector.id`` or the
            index.

        Returns
        -------
        result : `Struct`
            ``visitSummary`` (`astropy.table.Table`, one row per detector sorted by detector: ``visit``,
            ``detector``, ``bbox_min_x``, ``bbox_min_y``, ``bbox_max_x``, ``bbox_max_y`` [pixel, inclusive],
            ``ra``, ``dec`` [deg] of the detector centre, ``psf_sigma`` [pixel] (determinant radius at the
            centre), ``calibration_mean``, ``calibration_err`` [nJy/count] and ``zero_point`` [mag] of the
            detector's own ``PhotoCalib``, ``visit_calibration_used`` (bool), ``visit_calibration_mean``,
            ``visit_calibration_err`` [nJy/count], the same in every row); ``photoCalib`` (the visit
            `PhotoCalib`).

        Raises
        ------
        NoWorkFound
            If ``calExpList`` is empty.
        NoUsableCalibrationError
            If no detector has a usable photometric calibration.
        ValueError
            If ``detectorIds`` has a different length from ``calExpList``.
        """
        items = list(calExpList)
        if not items:
            raise NoWorkFound(f"no calexp of visit {visitId}.")
        if detectorIds is None:
            detectorIds = [_detector_id(item, k) for k, item in enumerate(items)]
        if len(detectorIds) != len(items):
            raise ValueError(f"{len(detectorIds)} detector ids for {len(items)} calexps.")
        n = len(items)
        bbox = np.zeros((n, 4), dtype=np.int64)
        ra = np.full(n, np.nan)
        dec = np.full(n, np.nan)
        psf_sigma = np.full(n, np.nan)
        calib = np.full(n, np.nan)
        calib_err = np.full(n, np.nan)
        for k, item in enumerate(items):
            box = _component(item, "bbox")
            bbox[k] = (box.x0, box.y0, box.x1 - 1, box.y1 - 1)  # inclusive maxima, as lsst's getMaxX
            x, y = box.center
            wcs = _component(item, "wcs")
            if wcs is not None:
                sky = wcs.pixel_to_world_values(np.array([x]), np.array([y]))
                ra[k], dec[k] = float(sky[0][0]), float(sky[1][0])
            psf = _component(item, "psf")
            if psf is not None:
                psf_sigma[k] = float(psf.determinant_radius(x, y))
            photo_calib = _component(item, "photoCalib")
            if photo_calib is not None:
                calib[k], calib_err[k] = photo_calib.calibration_mean, photo_calib.calibration_err
        detectors = np.asarray(detectorIds, dtype=np.int64)
        order = np.argsort(detectors, kind="stable")
        config = self.config
        fit = consolidate_calibrations(calib, calib_err, n_sigma=config.nSigmaClip, n_iter=config.nIter,
                                       relative_err_floor=config.relativeErrFloor)
        photo_calib = PhotoCalib(fit.mean, fit.err)
        with np.errstate(invalid="ignore"):
            positive = calib > 0
        zero_point = np.where(positive, AB_ZERO_POINT_NJY - 2.5 * np.log10(np.where(positive, calib, 1.0)), np.nan)

        table = Table()
        table["visit"] = np.full(n, int(visitId), dtype=np.int64)
        table["detector"] = detectors
        for j, name in enumerate(("bbox_min_x", "bbox_min_y", "bbox_max_x", "bbox_max_y")):
            table[name] = bbox[:, j]
            table[name].unit = "pixel"
        columns = [
            ("ra", ra, "deg", "Right ascension of the detector centre"),
            ("dec", dec, "deg", "Declination of the detector centre"),
            ("psf_sigma", psf_sigma, "pixel", "PSF determinant radius (Ixx Iyy - Ixy^2)^(1/4) at the centre"),
            ("calibration_mean", calib, "nJy", "The detector's own calibration [nJy per count]"),
            ("calibration_err", calib_err, "nJy", "Its 1-sigma error [nJy per count]"),
            ("zero_point", zero_point, "mag", "AB magnitude of 1 count, the detector's own calibration"),
        ]
        for name, values, unit, doc in columns:
            table[name] = values
            table[name].unit = unit
            table[name].description = doc
        table["visit_calibration_used"] = fit.used
        table["visit_calibration_used"].description = "The detector's calibration is in the visit calibration"
        table["visit_calibration_mean"] = np.full(n, fit.mean)
        table["visit_calibration_err"] = np.full(n, fit.err)
        for name in ("visit_calibration_mean", "visit_calibration_err"):
            table[name].unit = "nJy"
        table["visit_calibration_mean"].description = "Visit calibration: weighted clipped mean [nJy per count]"
        table["visit_calibration_err"].description = "Its 1-sigma error [nJy per count]"
        table = table[order]
        table.meta["visit"] = int(visitId)

        rejected = sorted(int(d) for d in detectors[fit.rejected])
        no_calib = sorted(int(d) for d in detectors[~(positive & np.isfinite(calib) & np.isfinite(calib_err))])
        md = self.metadata
        md["visitCalibrationMean"] = fit.mean
        md["visitCalibrationErr"] = fit.err
        md["visitZeroPoint"] = photo_calib.instrumental_zero_point
        md["visitZeroPointErr"] = _MAG_PER_LN * fit.err / fit.mean
        md["nDetectors"] = n
        md["nDetectorsUsed"] = int(fit.used.sum())
        md["nDetectorsRejected"] = len(rejected)
        md["rejectedDetectors"] = rejected
        md["noCalibDetectors"] = no_calib
        md["calibrationScatter"] = fit.scatter
        md["zeroPointScatter"] = _MAG_PER_LN * fit.scatter
        md["calibrationChi2"] = fit.chi2
        self.log.info(
            "visit %s: zero point %.4f +- %.4f mag from %d of %d detectors (rejected %s); detector scatter %.2f%%",
            visitId, md["visitZeroPoint"], md["visitZeroPointErr"], md["nDetectorsUsed"], n, rejected or "none",
            100 * fit.scatter,
        )
        return Struct(visitSummary=table, photoCalib=photo_calib)


def _component(item: Any, name: str) -> Any:
    """A calexp component: from an `Exposure`'s attributes, or a deferred handle's ``get(component=name)``."""
    if isinstance(item, Exposure):
        return {"bbox": item.bbox, "wcs": item.wcs, "psf": item.psf, "photoCalib": item.photo_calib}[name]
    return item.get(component=name)


def _detector_id(item: Any, index: int) -> int:
    """A calexp's detector id: the handle's data ID, else ``exposure.detector.id``, else the index."""
    data_id = getattr(item, "data_id", None)
    if data_id is not None and "detector" in data_id:
        return int(data_id["detector"])
    detector = getattr(item, "detector", None) if isinstance(item, Exposure) else None
    return int(detector.id) if detector is not None else int(index)
