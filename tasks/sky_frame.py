"""Sky frames: the mean small-scale pattern of the sky of each detector and filter, from many visits.

A *sky frame* is the part of the sky background that a smooth focal-plane model cannot follow but that repeats
from visit to visit in detector coordinates (scattered light, fringes, flat-field errors), normalised by the
sky level.  `tasks.sky_correction.SkyCorrectionTask` scales it to each visit and subtracts it.  As the LSST
stack's ``cpSky`` pipeline (cp_pipe; Bosch et al. 2018, PASJ 70, S5, sec. 3.3) it is built in two steps,
because the normalisation needs the whole focal plane of a visit:

1. `SkyFrameVisitTask` (one quantum per visit): restore every detector's ``calexpBackground``; fit a
   `FocalPlaneBackground` to all detectors of the visit with the configuration of SkyCorrection's ``bgModel1``
   (the large-scale sky), pixels of the ``bgModel.mask`` planes (``DETECTED`` objects of the calexp, bad
   pixels) ignored; ``L`` = its `FocalPlaneBackground.skyLevel` (the median superpixel mean [counts]).  The
   residual of each detector, ``(image - model) / L``, is binned in ``binning`` x ``binning`` pixel bins
   (sigma-clipped means of the pixels without a ``mask`` plane) -> ``skyFrameVisitResidual`` (a dimensionless
   `Background`).
2. `SkyFrameTask` (one quantum per physical filter and detector): the per-bin mean over the visits of the
   residuals, weighted by the bins' pixel counts, with iterative sigma clipping of outlying visits about
   that mean (``clip``, ``nIter``); bins no visit measured are filled from their neighbours -> ``skyFrame``
   (a dimensionless `Background`, a calibration: certify its run into a CALIBRATION collection with
   ``butler certify-calibrations`` for SkyCorrection to find it).

Because the residual of a visit is taken after the same large-scale model SkyCorrection subtracts first, the
sky frame is exactly what SkyCorrection's scale fit needs: a visit whose sky carries ``s_v`` times a fixed
pattern ``P`` leaves ``s_v R(P)`` after ``bgModel1`` (``R`` removes the part the model absorbs), the sky frame
is ``mean_w(s_w / L_w) R(P)``, and SkyCorrection recovers the scale ``k_v = s_v / mean_w(s_w / L_w)``.

Clipping is about the (weighted) mean with the visits' (weighted) standard deviation, never about a median
with an interquartile width: the normalised amplitude of a real pattern may differ between visits (the
pattern need not scale exactly with the sky), and a median/IQR start would reject the visits that are merely
brighter.  With the sample standard deviation a value can lie at most ``(n - 1) / sqrt(n)`` standard
deviations from the mean, so a ``clip = 3`` rejects nothing with fewer than 11 visits: clipping protects a
sky frame built from many visits (a satellite trail, an unmasked bright halo).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from graph import Field, Input, Output, PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct, timeMethod

from .background import fit_background_fast
from .errors import NoUsableBinsError, TasksError
from .image import Background, BackgroundList, Camera, Exposure, FocalPlaneBackground, FocalPlaneBackgroundConfig
from .image.background import _fill_bins
from .image.masked_image import MaskedImage
from .instruments import get_instrument
from .sky_correction import SkyCorrectionConfig

__all__ = [
    "SkyFrameConfig",
    "SkyFrameConnections",
    "SkyFrameError",
    "SkyFrameTask",
    "SkyFrameVisitConfig",
    "SkyFrameVisitConnections",
    "SkyFrameVisitTask",
]

_CALEXP_DIMENSIONS = ("instrument", "visit", "detector")


class SkyFrameError(TasksError, ValueError):
    """Sky frames cannot be built from these inputs: a visit's sky level is not positive, the calexps and
    backgrounds do not pair up, or the visits' residuals have different bin grids or measure no bin."""


# Step 1: the normalised residual of every detector of a visit ---------------------------------------------


class SkyFrameVisitConnections(PipelineTaskConnections, dimensions=("instrument", "visit")):
    calExps = Input(  # noqa: N815 - the LSST stack's name
        name="calexp",
        storageClass="ExposureF",
        dimensions=_CALEXP_DIMENSIONS,
        multiple=True,
        doc="Every detector's calibrated exposure of the visit [counts], background subtracted, objects DETECTED.",
    )
    calBkgs = Input(  # noqa: N815
        name="calexpBackground",
        storageClass="Background",
        dimensions=_CALEXP_DIMENSIONS,
        multiple=True,
        doc="The background models subtracted from each calexp; restored before anything is measured.",
    )
    skyFrameResiduals = Output(  # noqa: N815
        name="skyFrameVisitResidual",
        storageClass="Background",
        dimensions=_CALEXP_DIMENSIONS,
        multiple=True,
        doc="Per detector: (restored image - large-scale focal-plane model) / visit sky level, binned "
        "(dimensionless; a BackgroundList of one Background).",
    )


class SkyFrameVisitConfig(PipelineTaskConfig, pipelineConnections=SkyFrameVisitConnections):
    """Configuration of `SkyFrameVisitTask`."""

    bgModel: FocalPlaneBackgroundConfig = Field(  # noqa: N815
        default_factory=SkyCorrectionConfig.model_fields["bgModel1"].default_factory,
        description="The large-scale focal-plane background removed before binning, and whose median superpixel "
        "normalises the residual; must equal the skyCorr task's bgModel1 (its default is that default), so that "
        "the sky frame is the residual SkyCorrection fits: override both together.",
    )
    binning: int = Field(
        32,
        ge=4,
        description="Side of the square bins of the residual, i.e. of the sky frame [pixels] (32 for SimCam's "
        "1024-pixel detectors: finer than the pattern, coarse enough for ~1000 pixels per bin).",
    )
    mask: list[str] = Field(
        default_factory=lambda: ["BAD", "SAT", "DETECTED", "NO_DATA"],
        description="Mask planes whose pixels are left out of the residual bins (LSST's SkyMeasurementConfig "
        "default).  Not EDGE: those pixels are good sky, and leaving them out would move the data of every border "
        "bin away from the bin centre where the sky frame places its value.",
    )
    statistic: Literal["meanclip", "median"] = Field(
        "meanclip", description="Statistic of each bin's unmasked pixels after sigma clipping."
    )
    clip: float = Field(3.0, gt=0, description="Clipping threshold of the per-bin statistic [standard deviations].")
    nIter: int = Field(3, ge=1, le=20, description="Clipping passes of the per-bin statistic.")  # noqa: N815


class SkyFrameVisitTask(PipelineTask):
    """Normalised, binned sky residual of every detector of a visit (step 1 of a sky frame; module docstring).

    Metadata: ``skyLevel`` (``L`` [counts]), ``nDetectors``, ``usedFraction.detector_<id>`` (fraction of the
    detector's pixels in usable residual bins).
    """

    ConfigClass = SkyFrameVisitConfig
    _DefaultName = "skyFrameVisit"

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        """Pair the calexps and backgrounds by detector, run, and write one residual per output detector."""
        camera = get_instrument(butlerQC.quantum.data_id["instrument"]).camera
        exposures = _by_detector(inputRefs.calExps, butlerQC.get(inputRefs.calExps))
        backgrounds = _by_detector(inputRefs.calBkgs, butlerQC.get(inputRefs.calBkgs))
        if set(exposures) != set(backgrounds):
            raise SkyFrameError(
                f"visit {butlerQC.quantum.data_id['visit']}: calexps of detectors {sorted(exposures)} but "
                f"calexpBackgrounds of {sorted(backgrounds)}; both must come from the same ProcessCcd run."
            )
        detectors = sorted(exposures)
        for detector in detectors:
            if exposures[detector].detector is None:
                exposures[detector].detector = camera[detector]
        result = self.run([exposures[d] for d in detectors], [backgrounds[d] for d in detectors], camera)
        by_detector = dict(zip(detectors, result.skyFrameResiduals))
        refs = list(outputRefs.skyFrameResiduals)
        # The "Background" storage class holds a BackgroundList.
        butlerQC.put([BackgroundList([by_detector[int(ref.data_id["detector"])]]) for ref in refs], refs)

    @timeMethod
    def run(
        self, calExps: Sequence[Exposure], calBkgs: Sequence[BackgroundList], camera: Camera  # noqa: N803
    ) -> Struct:
        """Measure the normalised sky residual of each detector of one visit.

        Parameters
        ----------
        calExps : sequence of `Exposure`
            The visit's calexps [counts], each with ``detector`` set; not modified.
        calBkgs : sequence of `BackgroundList`
            The background subtracted from each calexp (same order) [counts].
        camera : `Camera`
            The camera: the focal-plane superpixel grid covers all its detectors.

        Returns
        -------
        result : `Struct`
            ``skyFrameResiduals``: `list` [`Background`] (order of ``calExps``): the residual
            ``(image - model) / skyLevel`` binned in ``binning`` pixel bins, dimensionless, with the pixel count
            of every bin (0 for bins too masked to measure, whose value is filled from their neighbours, or for
            every bin of a detector with fewer than 4 usable bins); ``skyLevel``: ``L`` [counts];
            ``focalPlaneBackground``: the fitted `FocalPlaneBackground`.

        Raises
        ------
        SkyFrameError
            If the two lists differ in length, a calexp has no detector, or the sky level is not positive.
        tasks.errors.FocalPlaneBackgroundError
            If no superpixel of the focal plane has enough usable pixels.
        """
        if len(calExps) != len(calBkgs):
            raise SkyFrameError(
                f"{len(calExps)} calexps but {len(calBkgs)} backgrounds; give one background per calexp."
            )
        if any(exposure.detector is None for exposure in calExps):
            raise SkyFrameError(
                "every calexp needs exposure.detector (the camera's Detector) to be placed on the focal plane."
            )
        config = self.config
        restored = []
        for exposure, background in zip(calExps, calBkgs):
            masked_image = exposure.masked_image.copy()
            masked_image.image[...] += BackgroundList(background).get_image(exposure.bbox)
            restored.append(Exposure(masked_image, detector=exposure.detector))

        model = FocalPlaneBackground.fromCamera(config.bgModel, camera)
        for exposure in restored:
            model.addCcd(exposure)
        level = model.skyLevel()
        if not (np.isfinite(level) and level > 0):
            raise SkyFrameError(
                f"the visit's sky level (median focal-plane superpixel) is {level} counts; a sky frame is "
                "normalised by it and needs a positive sky (are these background-restored calexps in counts?)."
            )

        residuals = []
        for exposure in restored:
            detector = exposure.detector
            large_scale = model.toCcdBackground(detector, exposure.bbox).get_image(exposure.bbox)
            residual = MaskedImage(
                (exposure.image - large_scale) / np.float32(level),
                exposure.mask,
                exposure.variance / np.float32(level**2),
                xy0=exposure.xy0,
            )
            try:
                binned, _ = fit_background_fast(
                    residual,
                    bin_size=config.binning,
                    bad_mask_planes=tuple(config.mask),
                    statistic=config.statistic,
                    clip=config.clip,
                    n_iter=config.nIter,
                )
            except NoUsableBinsError:
                self.log.warning("detector %s has fewer than 4 usable %d-pixel bins; it adds nothing to the sky frame",
                                 detector.id, config.binning)
                binned = _empty_like(exposure, config.binning)
            residuals.append(binned)
            self.metadata[f"usedFraction.detector_{detector.id}"] = float(binned.counts.sum() / exposure.bbox.area)
        self.metadata["skyLevel"] = level
        self.metadata["nDetectors"] = len(residuals)
        self.log.info("Sky level %.2f counts over %d detectors", level, len(residuals))
        return Struct(skyFrameResiduals=residuals, skyLevel=level, focalPlaneBackground=model)


def _empty_like(exposure: Exposure, binning: int) -> Background:
    """A residual of zeros with zero counts over the exposure's bin grid: a detector that measured nothing."""
    ny = -(-exposure.bbox.height // binning)
    nx = -(-exposure.bbox.width // binning)
    return Background(exposure.bbox, binning, np.zeros((ny, nx)), counts=np.zeros((ny, nx)), interpolation="spline")


def _single(background: Background | BackgroundList, ref: Any) -> Background:
    """The one model of a residual read from the butler (its storage class holds a `BackgroundList`)."""
    if isinstance(background, Background):
        return background
    if len(background) != 1:
        raise SkyFrameError(
            f"{ref.dataset_type.name} {ref.data_id} holds {len(background)} background models; a sky-frame residual "
            "has exactly one (was it written by SkyFrameVisitTask?)."
        )
    return background[0]


def _by_detector(refs: Sequence[Any], objects: Sequence[Any]) -> dict[int, Any]:
    return {int(ref.data_id["detector"]): obj for ref, obj in zip(refs, objects)}


# Step 2: the clipped mean over visits ----------------------------------------------------------------------


class SkyFrameConnections(PipelineTaskConnections, dimensions=("instrument", "physical_filter", "detector")):
    skyFrameResiduals = Input(  # noqa: N815
        name="skyFrameVisitResidual",
        storageClass="Background",
        dimensions=_CALEXP_DIMENSIONS,
        multiple=True,
        doc="The normalised residuals of this detector in every visit of the filter (SkyFrameVisitTask).",
    )
    skyFrame = Output(  # noqa: N815
        name="skyFrame",
        storageClass="Background",
        dimensions=("instrument", "physical_filter", "detector"),
        isCalibration=True,
        doc="The sky frame: the clipped mean of the normalised residuals (dimensionless; a BackgroundList of one "
        "Background), a calibration.",
    )


class SkyFrameConfig(PipelineTaskConfig, pipelineConnections=SkyFrameConnections):
    """Configuration of `SkyFrameTask` (names as in cp_pipe's ``CpSkyCombineConfig``)."""

    clip: float = Field(3.0, gt=0, description="Reject a visit's bin this many standard deviations from the mean.")
    nIter: int = Field(  # noqa: N815
        3, ge=1, le=20, description="Clipping iterations (stops early when nothing changes)."
    )
    minVisits: int = Field(  # noqa: N815
        1, ge=1, description="Fewest visits with a measured bin for the bin to be measured (else it is filled)."
    )


class SkyFrameTask(PipelineTask):
    """Combine the normalised residuals of many visits into a sky frame (step 2; see the module docstring).

    Metadata: ``nVisits`` (residuals combined), ``nClipped`` (visit-bins rejected), ``nFilledBins`` (bins
    filled from their neighbours), ``visits`` (ids, in `runQuantum`).
    """

    ConfigClass = SkyFrameConfig
    _DefaultName = "skyFrame"

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        """Read the residuals of every visit (ordered by visit) and write the sky frame."""
        refs = sorted(inputRefs.skyFrameResiduals, key=lambda ref: int(ref.data_id["visit"]))
        self.metadata["visits"] = [int(ref.data_id["visit"]) for ref in refs]
        result = self.run([_single(residual, ref) for residual, ref in zip(butlerQC.get(refs), refs)])
        butlerQC.put(BackgroundList([result.skyFrame]), outputRefs.skyFrame)

    @timeMethod
    def run(self, skyFrameResiduals: Sequence[Background]) -> Struct:  # noqa: N803
        """Per-bin, count-weighted, sigma-clipped mean of the visits' residuals.

        Parameters
        ----------
        skyFrameResiduals : sequence of `Background`
            One residual per visit (`SkyFrameVisitTask`), all with the same bbox and bin size; bins with
            count 0 (or no counts at all) are not measurements.

        Returns
        -------
        result : `Struct`
            ``skyFrame``: `Background` (same grid, ``"spline"`` interpolation, dimensionless) whose values are,
            per bin, ``sum(n_v r_v) / sum(n_v)`` over the kept visits ``v`` (``n_v`` the bin's pixel count in
            visit v, ``r_v`` its value), counts ``sum(n_v)``, variances ``sum(n_v^2 var_v) / sum(n_v)^2`` (when
            the residuals have variances); bins with fewer than ``minVisits`` measurements have count 0 and a
            value filled from the measured bins.  ``nVisits``, ``nClipped``.

        Raises
        ------
        SkyFrameError
            If there is no residual, their grids differ, or no bin is measured.

        Notes
        -----
        Each iteration computes the weighted mean ``m`` and the weighted standard deviation
        ``s = sqrt(sum(n_v (r_v - m)^2) / sum(n_v) * k / (k - 1))`` of the ``k`` kept visits of every bin, and
        keeps the visits with ``|r_v - m| <= clip * s`` (bins with fewer than 3 kept visits are not clipped).
        """
        residuals = list(skyFrameResiduals)
        if not residuals:
            raise SkyFrameError("no sky-frame residual to combine; run SkyFrameVisitTask on some visits first.")
        first = residuals[0]
        for index, other in enumerate(residuals[1:], start=1):
            if other.bbox != first.bbox or other.bin_size != first.bin_size:
                raise SkyFrameError(
                    f"residual {index} covers {other.bbox} in bins of {other.bin_size} pixels but residual 0 covers "
                    f"{first.bbox} in bins of {first.bin_size}; combine residuals of one detector made with one "
                    "binning."
                )
        values = np.stack([r.values for r in residuals])  # (n_visits, ny, nx)
        counts = np.stack([np.zeros_like(r.values) if r.counts is None else r.counts for r in residuals])
        valid = (counts > 0) & np.isfinite(values)
        weights = np.where(valid, counts, 0.0)
        values = np.where(valid, values, 0.0)
        keep = valid
        for _ in range(self.config.nIter):
            mean, sigma, n_kept = _weighted_moments(values, weights * keep, keep)
            with np.errstate(invalid="ignore"):
                new_keep = valid & ((np.abs(values - mean) <= self.config.clip * sigma) | (n_kept < 3))
            if np.array_equal(new_keep, keep):
                break
            keep = new_keep
        w = weights * keep
        total = w.sum(axis=0)
        measured = keep.sum(axis=0) >= self.config.minVisits
        if not measured.any():
            raise SkyFrameError(
                f"no bin of the {first.n_bins} sky-frame grid is measured by {self.config.minVisits} visit(s) out of "
                f"{len(residuals)}: every residual bin has count 0 (detector fully masked?)."
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            combined = np.where(measured, (w * values).sum(axis=0) / total, np.nan)
        variances = None
        if all(r.variances is not None for r in residuals):
            per_visit = np.stack([np.where(np.isfinite(r.variances), r.variances, 0.0) for r in residuals])
            with np.errstate(invalid="ignore", divide="ignore"):
                variances = np.where(measured, (w**2 * per_visit).sum(axis=0) / total**2, np.nan)
        if not measured.all():
            combined = _fill_bins(combined, measured)
        n_clipped = int((valid & ~keep).sum())
        self.metadata["nVisits"] = len(residuals)
        self.metadata["nClipped"] = n_clipped
        self.metadata["nFilledBins"] = int((~measured).sum())
        self.log.info("Combined %d visits: %d visit-bins clipped, %d bins filled", len(residuals), n_clipped,
                      int((~measured).sum()))
        sky_frame = Background(
            first.bbox,
            first.bin_size,
            combined,
            counts=np.where(measured, total, 0.0),
            variances=variances,
            interpolation="spline",
        )
        return Struct(skyFrame=sky_frame, nVisits=len(residuals), nClipped=n_clipped)


def _weighted_moments(
    values: np.ndarray, weights: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted mean, weighted standard deviation (with the k / (k - 1) correction) and number of kept values
    along axis 0; NaN mean and infinite sigma where nothing is kept."""
    total = weights.sum(axis=0)
    n_kept = keep.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (weights * values).sum(axis=0) / total
        var = (weights * (values - mean) ** 2).sum(axis=0) / total * n_kept / np.maximum(n_kept - 1, 1)
    sigma = np.where(n_kept > 1, np.sqrt(var), np.inf)
    return mean, sigma, n_kept
