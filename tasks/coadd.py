"""Coadd the warps of one patch: `AssembleCoaddTask`.

The warps of a patch (``directWarp`` or ``psfMatchedWarp``: exposures on the patch's outer box of the tract
pixel grid, in nJy) are combined pixel by pixel into a ``{coaddName}Coadd``, following
``lsst.drp.tasks.assemble_coadd.AssembleCoaddTask``:

1. **Inputs.** Visits not in ``selectVisits`` are dropped while the quantum graph is built (`adjustQuantum`);
   in `AssembleCoaddTask.run` warps whose PSF FWHM at the patch centre exceeds ``maxPsfFwhm`` [arcsec] are
   rejected and listed in the metadata.  With ``doMatchBackgrounds`` the per-visit background-difference
   model of ``MatchBackgroundsTask`` (a ``TractBackground``; ``get_image(bbox)`` in nJy) is added to each warp.
2. **Weights.** One weight per warp: ``1 / median(variance)`` of its good pixels (those with none of the
   ``badMaskPlanes`` set), as the LSST stack's ``prepareInputs``.
3. **Stacking**, one ``subregionSize`` box at a time, vectorised over the stack of warps: pixels with a bad
   mask plane, a NaN image or a non-positive variance are excluded; with ``statistic="MEANCLIP"`` the
   remaining values are sigma-clipped as afw's ``MEANCLIP`` does -- a first window ``median +- sigmaClip *
   0.7413 * IQR``, then ``clipIter - 1`` windows re-centred on the mean of the previous window's values with
   half-width ``sigmaClip`` times their standard deviation (unweighted statistics) -- and the kept values are
   averaged with the warp weights::

       coadd = sum_i w_i v_i / sum_i w_i,   variance = sum_i w_i^2 var_i / (sum_i w_i)^2

   over the kept inputs ``i`` of the pixel.  The mask is the OR of the kept inputs' planes (except
   ``removeMaskPlanes``, matched by name across warps); a plane of ``maskPropagationThresholds`` is also set
   where the inputs rejected for that plane carry more than the threshold fraction of the pixel's weight;
   ``CLIPPED`` marks pixels where sigma clipping rejected an input; pixels with no kept input are
   ``NO_DATA`` with NaN image and variance.
4. **PSF.** At the centres of a grid of ``psfGridSpacing`` pixels the kernel images of the input PSFs whose
   warp covers the point (not ``NO_DATA``) are averaged with the warp weights (LSST's ``CoaddPsf``) and a
   `PcaPsf` is fitted to them.
5. **Background** (``doSubtractBackground``, for coadds of background-unsubtracted warps): a large-scale
   background is fitted (``subtractBackground`` subtask), pixels more than ``backgroundDetectionThreshold``
   sigma above it are masked (grown by ``backgroundMaskGrow`` pixels), the background is fitted again and
   subtracted.  When too few bins have data (a patch the warps cover only in a sliver) the background is a
   constant (metadata ``backgroundUndersampled``).

The coadd carries the tract WCS, ``PhotoCalib(1.0)`` (nJy) and ``coadd_inputs``, one row per used visit:
``visit``, ``weight`` [nJy^-2], ``psf_fwhm`` [arcsec], ``n_pixels`` (coadd pixels the visit contributes to)
and ``n_clipped`` (its pixels rejected by sigma clipping).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage

from graph import (
    ConfigurableField,
    Field,
    Input,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    Struct,
    timeMethod,
)
from graph.errors import NoWorkFound

from .background import SubtractBackgroundConfig, SubtractBackgroundTask
from .errors import NoUsableBinsError, TasksError
from .image import (
    Box2I,
    Exposure,
    FilterLabel,
    MaskedImage,
    PcaPsf,
    PhotoCalib,
    Psf,
)
from .image.skymap import PatchInfo

__all__ = [
    "AssembleCoaddConfig",
    "AssembleCoaddConnections",
    "AssembleCoaddTask",
    "CoaddInputError",
    "coadd_psf",
    "stack_clipped_mean",
]

_IQR_TO_SIGMA = 0.741301109  # sigma of a Gaussian / its interquartile range (afw's IQ_TO_STDEV)
_WARP_DIMENSIONS = ("skymap", "tract", "patch", "visit", "instrument")
_COADD_DIMENSIONS = ("skymap", "tract", "patch", "band")


class CoaddInputError(TasksError, ValueError):
    """The inputs of a coadd are inconsistent (a background model missing for a visit, warps off the patch)."""


# -------------------------------------------------------------------------------------------------
# Connections and config
# -------------------------------------------------------------------------------------------------


class AssembleCoaddConnections(
    PipelineTaskConnections,
    dimensions=_COADD_DIMENSIONS,
    defaultTemplates={"coaddName": "deep", "warpType": "direct"},
):
    inputWarps = Input(  # noqa: N815 - the LSST stack's name
        name="{warpType}Warp",
        storageClass="ExposureF",
        dimensions=_WARP_DIMENSIONS,
        multiple=True,
        deferLoad=True,
        doc="Warps of the patch, one per visit, in nJy (read one subregion at a time).",
    )
    skyMap = Input(  # noqa: N815
        name="skyMap",
        storageClass="SkyMap",
        dimensions=("skymap",),
        doc="The skymap: the patch's outer box and the tract WCS.",
    )
    backgroundInfoList = Input(  # noqa: N815
        name="psfMatchedWarpBackgroundDiff",
        storageClass="TractBackground",
        dimensions=_WARP_DIMENSIONS,
        multiple=True,
        doc="Per-visit background-difference models of MatchBackgroundsTask, added to the warps "
        "(doMatchBackgrounds only).",
    )
    coaddExposure = Output(  # noqa: N815
        name="{coaddName}Coadd",
        storageClass="ExposureF",
        dimensions=_COADD_DIMENSIONS,
        doc="The coadd of the patch (outer box), nJy, with its PSF and coadd inputs.",
    )

    def __init__(self, *, config: Any = None):
        super().__init__(config=config)
        if config is None or not config.doMatchBackgrounds:
            del self.backgroundInfoList

    def adjustQuantum(self, inputs, outputs, label, data_id):  # noqa: N802 - the LSST stack's name
        """Keep only the warps (and background models) of ``config.selectVisits`` when it is set.

        Raises
        ------
        NoWorkFound
            If none of the patch's warps is of a selected visit.
        """
        select = None if self.config is None else self.config.selectVisits
        if select is not None:
            wanted = {int(v) for v in select}
            adjusted = dict(inputs)
            for name in ("inputWarps", "backgroundInfoList"):
                if name in adjusted:
                    connection, refs = adjusted[name]
                    adjusted[name] = (
                        connection,
                        [r for r in refs if int(r.data_id["visit"]) in wanted],
                    )
            if "inputWarps" in adjusted and not adjusted["inputWarps"][1]:
                raise NoWorkFound(
                    f"quantum {label} {data_id}: none of its {len(inputs['inputWarps'][1])} warps is of a visit in "
                    f"selectVisits {sorted(wanted)}."
                )
            inputs = adjusted
        return super().adjustQuantum(inputs, outputs, label, data_id)


class AssembleCoaddConfig(PipelineTaskConfig, pipelineConnections=AssembleCoaddConnections):
    """Configuration of `AssembleCoaddTask` (names as in the LSST stack's ``AssembleCoaddConfig``)."""

    statistic: Literal["MEANCLIP", "MEAN"] = Field(
        "MEANCLIP",
        description="Per-pixel statistic of the stack: sigma-clipped or plain weighted mean.",
    )
    sigmaClip: float = Field(3.0, gt=0, description="Clipping threshold of MEANCLIP [standard deviations].")  # noqa: N815
    clipIter: int = Field(  # noqa: N815
        2,
        ge=1,
        le=10,
        description="MEANCLIP passes (afw numIter): the first window is the median +- sigmaClip * 0.741 IQR, "
        "each later one the mean +- sigmaClip * stddev of the previous window's values.",
    )
    clipVarianceFloor: bool = Field(  # noqa: N815
        True,
        description="Never clip a value within sigmaClip times its own noise (variance plane) of the window centre "
        "(not in the LSST stack: with few inputs afw's clipping rejects ~4% of pure-noise pixels).",
    )
    badMaskPlanes: list[str] = Field(  # noqa: N815
        default_factory=lambda: ["NO_DATA", "BAD", "SAT", "EDGE"],
        description="Mask planes whose input pixels are not used (planes a warp lacks are ignored).",
    )
    removeMaskPlanes: list[str] = Field(  # noqa: N815
        default_factory=lambda: ["NOT_DEBLENDED"],
        description="Mask planes of the inputs not propagated to the coadd.",
    )
    maskPropagationThresholds: dict[str, float] = Field(  # noqa: N815
        default_factory=lambda: {"SAT": 0.1},
        description="Plane -> fraction of a pixel's input weight rejected because of that (bad) plane above "
        "which the plane is set on the coadd.",
    )
    subregionSize: tuple[int, int] = Field(  # noqa: N815
        (4096, 256),
        description="Width and height [pixels] of the boxes stacked at once (memory bound).",
    )
    selectVisits: list[int] | None = Field(  # noqa: N815
        None,
        description="Visits to coadd (e.g. a template's); None: all.  Applied while the quantum graph is built.",
    )
    maxPsfFwhm: float | None = Field(  # noqa: N815
        None,
        gt=0,
        description="Reject warps whose PSF FWHM at the patch centre exceeds this [arcsec]; None: keep all.",
    )
    doMatchBackgrounds: bool = Field(  # noqa: N815
        False,
        description="Add each visit's background-difference model (backgroundInfoList) to its warps.",
    )
    doSubtractBackground: bool = Field(  # noqa: N815
        False,
        description="Fit and subtract a large-scale background from the coadd (for background-unsubtracted warps).",
    )
    subtractBackground: SubtractBackgroundConfig = ConfigurableField(  # noqa: N815
        target=SubtractBackgroundTask,
        doc="Background of the coadd (doSubtractBackground).",
    )
    backgroundDetectionThreshold: float = Field(  # noqa: N815
        5.0,
        gt=0,
        description="Pixels this many sigma above the first background pass are masked for the second.",
    )
    backgroundMaskGrow: int = Field(  # noqa: N815
        3,
        ge=0,
        description="Growth [pixels] of the source mask of the second background pass.",
    )
    psfGridSpacing: int = Field(  # noqa: N815
        256,
        ge=16,
        description="Spacing [pixels] of the grid where the coadd PSF is realised.",
    )
    psfNComponents: int = Field(3, ge=1, description="Components of the coadd's PcaPsf.")  # noqa: N815
    psfDegree: int = Field(2, ge=0, description="Spatial polynomial degree of the coadd's PcaPsf.")  # noqa: N815

    def setDefaults(self) -> None:  # noqa: N802
        super().setDefaults()
        self.subtractBackground.binSize = 256


# -------------------------------------------------------------------------------------------------
# Stacking
# -------------------------------------------------------------------------------------------------


def _sort_axis0(values: np.ndarray) -> list[np.ndarray]:
    """The rows of ``values`` sorted along axis 0 (a list of rows; NaN-free input).

    Up to 12 rows: an odd-even transposition network of elementwise minima and maxima (about twice as fast
    as `numpy.sort` along a short first axis); more rows: `numpy.sort`.
    """
    n = values.shape[0]
    if n > 12:
        return list(np.sort(values, axis=0))
    rows = [values[i].copy() for i in range(n)]
    for p in range(n):
        for i in range(p % 2, n - 1, 2):
            low = np.minimum(rows[i], rows[i + 1])
            np.maximum(rows[i], rows[i + 1], out=rows[i + 1])
            rows[i] = low
    return rows


def _quantiles(rows: list[np.ndarray], n: np.ndarray, quantiles: Sequence[float], all_valid: bool) -> list[np.ndarray]:
    """Linearly interpolated quantiles of the first ``n`` sorted values of each column."""
    out = []
    if all_valid:
        top = len(rows) - 1
        for q in quantiles:
            pos = q * top
            lo = int(math.floor(pos))
            hi = min(lo + 1, top)
            frac = np.float32(pos - lo)
            out.append(rows[lo] + frac * (rows[hi] - rows[lo]) if frac else rows[lo])
        return out
    ordered = np.stack(rows)
    top = np.maximum(n - 1, 0)
    for q in quantiles:
        pos = q * top
        lo = pos.astype(np.intp)
        hi = np.minimum(lo + 1, top)
        a = np.take_along_axis(ordered, lo[None], axis=0)[0]
        b = np.take_along_axis(ordered, hi[None], axis=0)[0]
        out.append(a + (pos - lo).astype(np.float32) * (b - a))
    return out


def _clip_keep(
    values: np.ndarray,
    valid: np.ndarray,
    clip: float,
    n_iter: int,
    floor: np.ndarray | None,
) -> np.ndarray:
    """afw ``MEANCLIP`` membership: True where a value survives the clipping of its column.

    ``floor`` (shape of ``values``, or None): the smallest half-width of the window for each value.
    """
    n = valid.sum(axis=0, dtype=np.int32)
    rows = _sort_axis0(np.where(valid, values, np.float32(np.inf)))
    with np.errstate(invalid="ignore"):  # columns without a valid value: inf - inf
        q25, median, q75 = _quantiles(rows, n, (0.25, 0.5, 0.75), bool(valid.all()))
        half = (q75 - q25) * np.float32(clip * _IQR_TO_SIGMA)
        dev = np.abs(values - median)
    keep = (dev <= (half if floor is None else np.maximum(half, floor))) & valid
    # afw: pass k computes the mean and spread of the values in window k - 1; the result is pass n_iter's mean,
    # i.e. the mean of window n_iter - 1.
    for _ in range(max(n_iter - 1, 0)):
        count = keep.sum(axis=0, dtype=np.int32)
        mean = np.where(keep, values, np.float32(0.0)).sum(axis=0) / np.maximum(count, 1).astype(np.float32)
        dev = values - mean
        kept = np.where(keep, dev, np.float32(0.0))
        spread = np.einsum("ij,ij->j", kept, kept) / np.maximum(count - 1, 1).astype(np.float32)
        half = np.sqrt(spread) * np.float32(clip)
        with np.errstate(invalid="ignore"):
            np.abs(dev, out=dev)
            new = (dev <= (half if floor is None else np.maximum(half, floor))) & valid
        keep = np.where(count > 0, new, keep)
    # A column whose window kept nothing (degenerate ties) keeps its valid values.
    any_kept = keep.any(axis=0)
    return keep if any_kept.all() else np.where(any_kept, keep, valid)


def stack_clipped_mean(
    values: np.ndarray,
    variances: np.ndarray,
    valid: np.ndarray,
    weights: np.ndarray,
    *,
    statistic: str = "MEANCLIP",
    clip: float = 3.0,
    n_iter: int = 2,
    variance_floor: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted (optionally sigma-clipped) mean of a stack of images, vectorised over pixels.

    Parameters
    ----------
    values, variances : `numpy.ndarray`, shape (n_input, n_pixel), float32
        Pixel values and variances of each input (any units; variances in units squared).
    valid : `numpy.ndarray`, shape (n_input, n_pixel), bool
        True where an input pixel may be used (its value and variance must then be finite).
    weights : `numpy.ndarray`, shape (n_input,)
        Weight of each input (> 0).
    statistic : `str`, optional
        ``"MEANCLIP"`` (afw's clipped mean, see the module docstring) or ``"MEAN"``.
    clip : `float`, optional
        Clipping threshold [standard deviations].
    n_iter : `int`, optional
        Clipping passes (afw's ``numIter``): the values used are those of window ``n_iter - 1``, where window 0
        is ``median +- clip * 0.741 IQR`` and window ``k`` is ``mean +- clip * stddev`` of window ``k - 1``
        (unweighted statistics of the column's values).
    variance_floor : `bool`, optional
        Never reject a value within ``clip`` times its own noise (``sqrt(variance)``) of the window centre.
        The spread of a handful of values is a noisy estimate (afw's recipe rejects ~4% of the pixels of 6
        pure-noise inputs, which biases the result and its variance); the floor keeps the rejection of pure
        noise near the Gaussian ``clip``-sigma rate while artifacts far above the noise are still rejected.

    Returns
    -------
    mean, variance : `numpy.ndarray`, shape (n_pixel,), float32
        ``sum w v / sum w`` and ``sum w^2 var / (sum w)^2`` over the kept inputs; NaN where none is kept.
    keep : `numpy.ndarray`, shape (n_input, n_pixel), bool
        The inputs used for each pixel.

    Raises
    ------
    ValueError
        For an unknown statistic.
    """
    if statistic == "MEANCLIP":
        floor = None
        if variance_floor:
            with np.errstate(invalid="ignore"):
                floor = np.sqrt(variances) * np.float32(clip)
        keep = _clip_keep(values, valid, clip, n_iter, floor)
    elif statistic == "MEAN":
        keep = valid
    else:
        raise ValueError(f"unknown coadd statistic {statistic!r}; use 'MEANCLIP' or 'MEAN'.")
    weights = np.asarray(weights, dtype=np.float64)
    wk = keep * (weights / weights.max()).astype(np.float32)[:, None]  # scaled: float32 cannot underflow
    wsum = wk.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.einsum("ij,ij->j", wk, np.where(keep, values, np.float32(0.0))) / wsum
        wk *= wk
        variance = np.einsum("ij,ij->j", wk, np.where(keep, variances, np.float32(0.0))) / (wsum * wsum)
    empty = wsum <= 0
    mean[empty] = np.nan
    variance[empty] = np.nan
    return mean, variance, keep


def coadd_psf(
    psfs: Sequence[Psf | None],
    weights: Sequence[float],
    covered: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    bbox: Box2I,
    *,
    n_components: int = 3,
    degree: int = 2,
) -> PcaPsf | None:
    """The PSF of a weighted mean of images: weight-averaged input kernels at grid points, fitted by `PcaPsf`.

    Parameters
    ----------
    psfs : sequence of `Psf` or None
        PSF of each input (None: the input does not count).
    weights : sequence of `float`
        Weight of each input.
    covered : `numpy.ndarray`, shape (n_input, n_point), bool
        True where an input has data at a grid point.
    x, y : `numpy.ndarray`, shape (n_point,)
        Grid points, parent pixel coordinates of ``bbox``.
    bbox : `Box2I`
        Domain of the result.
    n_components, degree : `int`, optional
        Passed to `PcaPsf.fit`.

    Returns
    -------
    psf : `PcaPsf` or None
        None when no grid point is covered by an input with a PSF.

    Notes
    -----
    As ``lsst.meas.algorithms.CoaddPsf``: the coadd of unit-sum PSFs weighted by ``w_i`` has the PSF
    ``sum_i w_i K_i / sum_i w_i`` over the inputs that cover the point.  Kernels of different sizes are
    zero-padded to the largest.
    """
    use = [i for i, p in enumerate(psfs) if p is not None]
    if not use:
        return None
    stamps: list[np.ndarray] = []
    xs: list[float] = []
    ys: list[float] = []
    for k in range(len(x)):
        members = [i for i in use if covered[i, k]]
        if not members:
            continue
        kernels = [psfs[i].compute_kernel_image(float(x[k]), float(y[k])) for i in members]
        h = max(kern.shape[0] for kern in kernels)
        w = max(kern.shape[1] for kern in kernels)
        total = np.zeros((h, w))
        wsum = 0.0
        for i, kern in zip(members, kernels):
            py, px = (h - kern.shape[0]) // 2, (w - kern.shape[1]) // 2
            total[py : py + kern.shape[0], px : px + kern.shape[1]] += weights[i] * kern / kern.sum()
            wsum += weights[i]
        stamps.append(total / wsum)
        xs.append(float(x[k]))
        ys.append(float(y[k]))
    if not stamps:
        return None
    h = max(s.shape[0] for s in stamps)
    w = max(s.shape[1] for s in stamps)
    padded = np.zeros((len(stamps), h, w))
    for j, s in enumerate(stamps):
        py, px = (h - s.shape[0]) // 2, (w - s.shape[1]) // 2
        padded[j, py : py + s.shape[0], px : px + s.shape[1]] = s
    return PcaPsf.fit(
        padded,
        np.array(xs),
        np.array(ys),
        bbox,
        n_components=n_components,
        degree=degree,
    )


def _grid_points(bbox: Box2I, spacing: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of an ``ceil(width / spacing)`` x ``ceil(height / spacing)`` tiling of ``bbox`` (integers)."""
    nx = max(1, math.ceil(bbox.width / spacing))
    ny = max(1, math.ceil(bbox.height / spacing))
    gx = np.floor(bbox.x0 + (np.arange(nx) + 0.5) * bbox.width / nx).astype(int)
    gy = np.floor(bbox.y0 + (np.arange(ny) + 0.5) * bbox.height / ny).astype(int)
    xx, yy = np.meshgrid(gx, gy)
    return xx.ravel(), yy.ravel()


def _pixel_scale_arcsec(wcs: WCS) -> float:
    """Mean pixel scale [arcsec/pixel] at the WCS reference point."""
    scales = proj_plane_pixel_scales(wcs.celestial)
    return float(math.sqrt(scales[0] * scales[1]) * 3600.0)


# -------------------------------------------------------------------------------------------------
# Inputs
# -------------------------------------------------------------------------------------------------


class _Warp:
    """One input warp: an in-memory `Exposure` or a deferred handle (``.get(component=, parameters=)``)."""

    def __init__(self, warp: Any, visit: int | None):
        self.source = warp
        self.is_exposure = isinstance(warp, Exposure)
        if not self.is_exposure and not callable(getattr(warp, "get", None)):
            raise CoaddInputError(
                f"a warp must be an Exposure or a deferred dataset handle with get(), got {type(warp).__name__}."
            )
        self._visit = visit
        self.background: Any = None
        self.weight = 0.0
        self.psf: Psf | None = None
        self.psf_fwhm = float("nan")
        self.bbox: Box2I | None = None
        self.filter: FilterLabel | None = None

    def component(self, name: str) -> Any:
        if self.is_exposure:
            attribute = {
                "visitInfo": "visit_info",
                "psf": "psf",
                "filter": "filter",
                "bbox": "bbox",
            }[name]
            return getattr(self.source, attribute)
        return self.source.get(component=name)

    @property
    def visit(self) -> int | None:
        if self._visit is None:
            data_id = getattr(self.source, "data_id", None)
            if data_id is not None and "visit" in data_id:
                self._visit = int(data_id["visit"])
            else:
                info = self.component("visitInfo")
                if info is not None and info.id is not None:
                    self._visit = int(info.id)
        return self._visit

    def planes(self, box: Box2I | None = None, *, image: bool = True) -> MaskedImage:
        """Image, mask and variance (of ``box``, parent coordinates) as a `MaskedImage`.

        With ``image=False`` a handle's image plane is not read (the result's image is zero).
        """
        if self.is_exposure:
            exposure = self.source if box is None else self.source[box]
            return exposure.masked_image
        parameters = None if box is None else {"bbox": box}
        mask = self.source.get(component="mask", parameters=parameters)
        variance = self.source.get(component="variance", parameters=parameters)
        pixels = (
            self.source.get(component="image", parameters=parameters) if image else np.zeros(mask.shape, np.float32)
        )
        return MaskedImage(pixels, mask, variance, xy0=mask.xy0)


def _remap_mask(array: np.ndarray, planes: dict[str, int], target: dict[str, int], keep_bits: int) -> np.ndarray:
    """Mask bits of ``planes`` (restricted to ``keep_bits``) expressed in the bit layout ``target``."""
    array = array & np.int32(keep_bits)
    pairs = [(bit, target[name]) for name, bit in planes.items() if keep_bits >> bit & 1]
    if all(src == dst for src, dst in pairs):
        return array
    out = np.zeros_like(array)
    for src, dst in pairs:
        out |= ((array >> src) & 1) << dst
    return out


# -------------------------------------------------------------------------------------------------
# The task
# -------------------------------------------------------------------------------------------------


@dataclass
class _Accumulators:
    n_pixels: np.ndarray
    n_clipped: np.ndarray


class AssembleCoaddTask(PipelineTask):
    """Assemble the coadd of a patch from its warps (see the module docstring for the algorithm).

    Metadata: ``numInputWarps`` (warps given), ``numUsedWarps``, ``usedVisits`` and ``rejectedVisits`` (lists),
    ``rejectedPsfFwhm`` (their FWHM [arcsec], same order), ``visitPsfFwhm.visit_<id>`` [arcsec],
    ``coveredFraction`` (fraction of the patch's pixels with data), ``meanInputsPerPixel`` (over covered
    pixels), ``clippedFraction`` (fraction of usable input pixels rejected by clipping), ``psfFwhm`` (of the
    coadd PSF at the patch centre [arcsec]; NaN without a PSF), ``backgroundMean`` [nJy] with
    ``doSubtractBackground``; ``visitsWithoutBackgroundModel`` (with ``doMatchBackgrounds`` in `runQuantum`:
    visits left out because no background-difference model was made for them).
    """

    ConfigClass = AssembleCoaddConfig
    _DefaultName = "assembleCoadd"

    def __init__(self, *, config: Any = None, **kwargs: Any):
        super().__init__(config=config, **kwargs)
        self.makeSubtask("subtractBackground")

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.data_id
        sky_map = inputs["skyMap"]
        patch_info = sky_map[int(data_id["tract"])].patch_info(int(data_id["patch"]))
        warps = sorted(inputs["inputWarps"], key=lambda h: int(h.data_id["visit"]))
        visits = [int(h.data_id["visit"]) for h in warps]
        backgrounds = None
        if self.config.doMatchBackgrounds:
            by_visit = {
                int(ref.data_id["visit"]): bg
                for ref, bg in zip(inputRefs.backgroundInfoList, inputs["backgroundInfoList"])
            }
            missing = [v for v in visits if v not in by_visit]
            self.metadata["visitsWithoutBackgroundModel"] = missing
            if missing:
                # A visit MatchBackgroundsTask produced no model for (e.g. no usable PSF-matched pixels)
                # cannot be put on the common background: leave it out rather than lose the patch.
                self.log.warning(
                    "doMatchBackgrounds: visits %s of %s have no %r model; they are not coadded",
                    missing,
                    data_id,
                    self.config.connections.backgroundInfoList,
                )
                warps = [h for h, v in zip(warps, visits) if v in by_visit]
                visits = [v for v in visits if v in by_visit]
                if not warps:
                    raise NoWorkFound(f"no warp of {data_id} has a background-difference model.")
            backgrounds = [by_visit[v] for v in visits]
        band = data_id.get("band") if hasattr(data_id, "get") else None
        result = self.run(
            warps,
            patch_info,
            visitIds=visits,
            backgroundInfoList=backgrounds,
            filterLabel=FilterLabel(band=band) if band else None,
        )
        butlerQC.put(result, outputRefs)

    @timeMethod
    def run(
        self,
        inputWarps: Sequence[Any],  # noqa: N803 - the LSST stack's names
        patchInfo: PatchInfo | None = None,  # noqa: N803
        *,
        visitIds: Sequence[int] | None = None,  # noqa: N803
        backgroundInfoList: Sequence[Any] | None = None,  # noqa: N803
        bbox: Box2I | None = None,
        wcs: WCS | None = None,
        filterLabel: FilterLabel | None = None,  # noqa: N803
    ) -> Struct:
        """Coadd warps of one patch.

        Parameters
        ----------
        inputWarps : sequence of `Exposure` or deferred handles
            The warps (nJy, tract pixel grid).  Handles (``get(component=..., parameters={"bbox": box})``)
            are read one subregion at a time.
        patchInfo : `PatchInfo`, optional
            The patch: the coadd covers its ``outer_bbox`` with its ``wcs``.  Or give ``bbox`` and ``wcs``.
        visitIds : sequence of `int`, optional
            Visit of each warp; default from the handles' data IDs or the warps' ``visit_info.id``.
        backgroundInfoList : sequence, optional
            With ``doMatchBackgrounds``: one background-difference model per warp (same order), each with
            ``get_image(bbox) -> ndarray`` [nJy] added to the warp.
        bbox : `Box2I`, optional
            Coadd box (tract pixels) when ``patchInfo`` is not given.
        wcs : `astropy.wcs.WCS`, optional
            Tract WCS when ``patchInfo`` is not given.
        filterLabel : `FilterLabel`, optional
            Filter of the coadd; default the first warp's.

        Returns
        -------
        result : `Struct`
            ``coaddExposure`` (`Exposure`, nJy, with ``coadd_inputs``), ``nImage`` (int32 array (ny, nx):
            inputs used per pixel) and ``background`` (`BackgroundList` subtracted, or None).

        Raises
        ------
        NoWorkFound
            If no warp is given, all are rejected (``maxPsfFwhm``), or none covers the patch.
        CoaddInputError
            If the background models do not match the warps, or neither ``patchInfo`` nor ``bbox`` and
            ``wcs`` are given.
        """
        config = self.config
        if patchInfo is not None:
            bbox, wcs = patchInfo.outer_bbox, patchInfo.wcs
        if bbox is None or wcs is None:
            raise CoaddInputError("AssembleCoaddTask.run needs patchInfo, or both bbox and wcs.")
        if not inputWarps:
            raise NoWorkFound("no warps to coadd.")
        if visitIds is not None and len(visitIds) != len(inputWarps):
            raise CoaddInputError(f"visitIds has {len(visitIds)} entries for {len(inputWarps)} warps.")
        warps = [_Warp(w, None if visitIds is None else int(visitIds[i])) for i, w in enumerate(inputWarps)]
        if config.doMatchBackgrounds:
            if backgroundInfoList is None or len(backgroundInfoList) != len(warps):
                n = 0 if backgroundInfoList is None else len(backgroundInfoList)
                raise CoaddInputError(
                    f"doMatchBackgrounds needs one background model per warp: got {n} for {len(warps)} warps."
                )
            for warp, background in zip(warps, backgroundInfoList):
                warp.background = background
        self.metadata["numInputWarps"] = len(warps)

        pixel_scale = _pixel_scale_arcsec(wcs)
        grid_x, grid_y = _grid_points(bbox, config.psfGridSpacing)
        warps, covered = self._prepare(warps, bbox, pixel_scale, grid_x, grid_y)

        coadd, n_image, acc = self._assemble(warps, bbox)

        psf = coadd_psf(
            [w.psf for w in warps],
            [w.weight for w in warps],
            covered,
            grid_x,
            grid_y,
            bbox,
            n_components=config.psfNComponents,
            degree=config.psfDegree,
        )
        background = None
        if config.doSubtractBackground:
            background = self._subtract_background(coadd)
        coadd_inputs = Table(
            {
                "visit": np.array(
                    [w.visit if w.visit is not None else -1 for w in warps],
                    dtype=np.int64,
                ),
                "weight": np.array([w.weight for w in warps], dtype=np.float64),
                "psf_fwhm": np.array([w.psf_fwhm for w in warps], dtype=np.float64),
                "n_pixels": acc.n_pixels.astype(np.int64),
                "n_clipped": acc.n_clipped.astype(np.int64),
            }
        )
        coadd_inputs["weight"].unit = "nJy-2"
        coadd_inputs["weight"].info.description = "1 / median variance of the warp's good pixels"
        coadd_inputs["psf_fwhm"].unit = "arcsec"
        coadd_inputs["psf_fwhm"].info.description = "FWHM of the warp's PSF at the patch centre"
        coadd_inputs["n_pixels"].info.description = "coadd pixels the visit contributes to"
        coadd_inputs["n_clipped"].info.description = "pixels of the visit rejected by sigma clipping"
        metadata = fits.Header()
        metadata["NINPUTS"] = (len(warps), "number of visits coadded")
        exposure = Exposure(
            coadd,
            wcs=wcs,
            psf=psf,
            photo_calib=PhotoCalib(1.0),
            filter=filterLabel if filterLabel is not None else next((w.filter for w in warps if w.filter), None),
            metadata=metadata,
            coadd_inputs=coadd_inputs,
        )

        covered_pixels = n_image > 0
        self.metadata["numUsedWarps"] = len(warps)
        self.metadata["usedVisits"] = [int(v) for v in coadd_inputs["visit"]]
        self.metadata["coveredFraction"] = float(covered_pixels.mean())
        self.metadata["meanInputsPerPixel"] = float(n_image[covered_pixels].mean()) if covered_pixels.any() else 0.0
        usable = acc.n_pixels.sum() + acc.n_clipped.sum()
        self.metadata["clippedFraction"] = float(acc.n_clipped.sum() / usable) if usable else 0.0
        cx, cy = bbox.center
        self.metadata["psfFwhm"] = float(psf.fwhm(cx, cy) * pixel_scale) if psf is not None else float("nan")
        self.log.info(
            "coadded %d warps on %s: %.1f%% of the pixels covered, %.2f inputs per covered pixel",
            len(warps),
            bbox,
            100.0 * self.metadata["coveredFraction"],
            self.metadata["meanInputsPerPixel"],
        )
        return Struct(coaddExposure=exposure, nImage=n_image, background=background)

    # ------------------------------------------------------------------ steps
    def _prepare(
        self,
        warps: list[_Warp],
        bbox: Box2I,
        pixel_scale: float,
        grid_x: np.ndarray,
        grid_y: np.ndarray,
    ) -> tuple[list[_Warp], np.ndarray]:
        """Weights, PSFs, FWHM selection and grid coverage of each warp; drops rejected and empty warps."""
        config = self.config
        cx, cy = bbox.center
        kept: list[_Warp] = []
        covered: list[np.ndarray] = []
        rejected: list[int] = []
        rejected_fwhm: list[float] = []
        for warp in warps:
            warp.psf = warp.component("psf")
            warp.filter = warp.component("filter")
            if warp.psf is not None:
                warp.psf_fwhm = float(warp.psf.fwhm(cx, cy) * pixel_scale)
            if warp.visit is not None:
                self.metadata[f"visitPsfFwhm.visit_{warp.visit}"] = warp.psf_fwhm
            if config.maxPsfFwhm is not None and not warp.psf_fwhm <= config.maxPsfFwhm:
                rejected.append(-1 if warp.visit is None else int(warp.visit))
                rejected_fwhm.append(warp.psf_fwhm)
                self.log.info(
                    "rejecting visit %s: PSF FWHM %.3f arcsec > maxPsfFwhm %.3f (or no PSF)",
                    warp.visit,
                    warp.psf_fwhm,
                    config.maxPsfFwhm,
                )
                continue
            warp_box = warp.component("bbox")
            overlap = warp_box.intersection(bbox)
            if overlap.is_empty:
                self.log.info(
                    "visit %s: the warp %s does not overlap the coadd %s",
                    warp.visit,
                    warp_box,
                    bbox,
                )
                continue
            planes = warp.planes(None if overlap == warp_box else overlap, image=False)
            mask = planes.mask
            good = (planes.mask.array & np.int32(mask.get_plane_bitmask(config.badMaskPlanes, missing_ok=True))) == 0
            good &= np.isfinite(planes.variance) & (planes.variance > 0)
            # Subsample (every other row and column) for the median: plenty of pixels, 4x faster.
            sample = planes.variance[::2, ::2][good[::2, ::2]]
            if sample.size == 0:
                sample = planes.variance[good]
            if sample.size == 0:
                self.log.info("visit %s: the warp has no good pixels on the patch", warp.visit)
                continue
            warp.weight = float(1.0 / np.median(sample))
            warp.bbox = overlap
            inside = overlap.contains_point(grid_x, grid_y)
            has_data = np.zeros(grid_x.shape, dtype=bool)
            if inside.any():
                gx, gy = grid_x[inside] - overlap.x0, grid_y[inside] - overlap.y0
                nodata = mask.get_plane_bitmask("NO_DATA") if "NO_DATA" in mask.planes else 0
                has_data[inside] = ((mask.array[gy, gx] & np.int32(nodata)) == 0) & np.isfinite(planes.variance[gy, gx])
            covered.append(has_data)
            kept.append(warp)
        self.metadata["rejectedVisits"] = rejected
        self.metadata["rejectedPsfFwhm"] = rejected_fwhm
        if not kept:
            raise NoWorkFound(
                f"none of the {len(warps)} warps can be coadded on {bbox}"
                + (f" ({len(rejected)} rejected by maxPsfFwhm = {config.maxPsfFwhm} arcsec)" if rejected else "")
                + "."
            )
        return kept, np.array(covered)

    def _assemble(self, warps: list[_Warp], bbox: Box2I) -> tuple[MaskedImage, np.ndarray, _Accumulators]:
        """Stack the warps one subregion at a time."""
        config = self.config
        coadd = MaskedImage.from_bbox(bbox)
        target = coadd.mask
        n_image = np.zeros(bbox.shape, dtype=np.int32)
        n_warp = len(warps)
        acc = _Accumulators(np.zeros(n_warp, np.int64), np.zeros(n_warp, np.int64))
        weights = np.array([w.weight for w in warps])
        thresholds = {p: t for p, t in config.maskPropagationThresholds.items() if p in config.badMaskPlanes}
        for p in thresholds:
            target.add_plane(p)
        clipped_bit = 1 << target.add_plane("CLIPPED")
        nodata_bit = 1 << target.planes["NO_DATA"]
        sub_w, sub_h = config.subregionSize
        for y0 in range(bbox.y0, bbox.y1, sub_h):
            for x0 in range(bbox.x0, bbox.x1, sub_w):
                sub = Box2I(x0, y0, min(sub_w, bbox.x1 - x0), min(sub_h, bbox.y1 - y0))
                ny, nx = sub.shape
                values = np.full((n_warp, ny * nx), np.nan, dtype=np.float32)
                variances = np.full((n_warp, ny * nx), np.nan, dtype=np.float32)
                masks = np.zeros((n_warp, ny * nx), dtype=np.int32)
                valid = np.zeros((n_warp, ny * nx), dtype=bool)
                covered = np.zeros((n_warp, ny * nx), dtype=bool)
                bad_per_plane = {p: np.zeros((n_warp, ny * nx), dtype=bool) for p in thresholds}
                for i, warp in enumerate(warps):
                    part = warp.bbox.intersection(sub)
                    if part.is_empty:
                        continue
                    planes = warp.planes(part)
                    mask = planes.mask
                    for name in mask.planes:
                        target.add_plane(name)
                    image = planes.image
                    if warp.background is not None:
                        image = image + np.asarray(warp.background.get_image(part), dtype=np.float32)
                    index = _flat_index(part, sub)
                    values[i, index] = image.ravel()
                    variances[i, index] = planes.variance.ravel()
                    bad = mask.get_plane_bitmask(config.badMaskPlanes, missing_ok=True)
                    finite = np.isfinite(image) & np.isfinite(planes.variance) & (planes.variance > 0)
                    ok = finite & ((mask.array & np.int32(bad)) == 0)
                    valid[i, index] = ok.ravel()
                    nodata = mask.get_plane_bitmask(["NO_DATA"], missing_ok=True)
                    covered[i, index] = (finite & ((mask.array & np.int32(nodata)) == 0)).ravel()
                    for p in thresholds:
                        if p in mask.planes:
                            bad_per_plane[p][i, index] = mask.get_plane(p).ravel()
                    keep_bits = mask.get_plane_bitmask(list(mask.planes)) & ~mask.get_plane_bitmask(
                        config.removeMaskPlanes, missing_ok=True
                    )
                    masks[i, index] = _remap_mask(mask.array, mask.planes, target.planes, keep_bits).ravel()
                mean, variance, keep = stack_clipped_mean(
                    values,
                    variances,
                    valid,
                    weights,
                    statistic=config.statistic,
                    clip=config.sigmaClip,
                    n_iter=config.clipIter,
                    variance_floor=config.clipVarianceFloor,
                )
                out_mask = np.bitwise_or.reduce(np.where(keep, masks, 0), axis=0)
                clipped = valid & ~keep
                out_mask |= np.where(clipped.any(axis=0), np.int32(clipped_bit), np.int32(0))
                if thresholds:
                    wcov = np.where(covered, weights[:, None], 0.0).sum(axis=0)
                    for p, limit in thresholds.items():
                        wrej = np.where(covered & bad_per_plane[p] & ~keep, weights[:, None], 0.0).sum(axis=0)
                        with np.errstate(invalid="ignore", divide="ignore"):
                            hit = wrej > limit * wcov
                        out_mask |= np.where(hit, np.int32(1 << target.planes[p]), np.int32(0))
                n_used = keep.sum(axis=0)
                out_mask |= np.where(n_used == 0, np.int32(nodata_bit), np.int32(0))
                slices = sub.slices(bbox)
                coadd.image[slices] = mean.reshape(ny, nx)
                coadd.variance[slices] = variance.reshape(ny, nx)
                coadd.mask.array[slices] = out_mask.reshape(ny, nx)
                n_image[slices] = n_used.reshape(ny, nx)
                acc.n_pixels += keep.sum(axis=1)
                acc.n_clipped += clipped.sum(axis=1)
        return coadd, n_image, acc

    def _subtract_background(self, coadd: MaskedImage) -> Any:
        """Fit a large-scale background with sources masked and subtract it in place."""
        from .image import BackgroundList

        first = self._fit_background(coadd)
        residual = coadd.image - first.get_image()
        sigma = np.sqrt(coadd.variance)
        with np.errstate(invalid="ignore"):
            sources = residual > self.config.backgroundDetectionThreshold * sigma
        if self.config.backgroundMaskGrow:
            sources = ndimage.binary_dilation(sources, iterations=self.config.backgroundMaskGrow)
        masked = MaskedImage(
            np.where(sources, np.float32(np.nan), coadd.image),
            coadd.mask,
            coadd.variance,
            xy0=coadd.xy0,
        )
        model = self._fit_background(masked)
        image = model.get_image()
        coadd.image[...] -= image.astype(np.float32)
        self.metadata["backgroundMean"] = float(np.mean(image))
        self.metadata["backgroundMaskedFraction"] = float(sources.mean())
        return BackgroundList([model])

    def _fit_background(self, image: MaskedImage) -> Any:
        """The ``subtractBackground`` model of ``image``; a constant (one bin over the whole box, as afw's
        ``REDUCE_INTERP_ORDER`` undersample style ends) when too few of its bins have data -- a patch the
        visits cover only in a sliver."""
        from .background import fit_background_fast

        task = self.subtractBackground
        try:
            model, _ = task.fit(image)
        except NoUsableBinsError as err:
            self.log.warning("coadd background: %s; fitting a constant instead", err)
            config = task.config
            model, _ = fit_background_fast(
                image,
                bin_size=image.bbox.shape,
                bad_mask_planes=tuple(config.ignoredPixelMask),
                statistic=config.statistic,
                clip=config.clip,
                n_iter=config.nIter,
                interpolation="constant",
            )
            self.metadata["backgroundUndersampled"] = True
        return model


def _flat_index(part: Box2I, sub: Box2I) -> np.ndarray | slice:
    """Indices into the raveled ``sub`` array of the pixels of ``part`` (a slice when ``part == sub``)."""
    if part == sub:
        return slice(None)
    ys, xs = part.slices(sub)
    grid = np.arange(sub.area).reshape(sub.shape)
    return grid[ys, xs].ravel()
