"""Full focal-plane sky correction of a visit: `SkyCorrectionTask` (and `MaskObjectsTask`).

`SkyCorrectionTask` follows the contract of ``lsst.pipe.tasks.skyCorrection.SkyCorrectionTask`` (seed
documentation).  For every detector of one visit (all pixels in counts, electrons for SimCam):

1. restore the per-detector background (``calexpBackground``) to the calexp; the detector's ``skyCorr``
   starts as the inverted calexpBackground (subtractive elements), so that ``calexp - skyCorr`` is the
   background-restored image;
2. ``doMaskObjects``: re-detect objects on the background-restored image (`MaskObjectsTask`: ``nIter``
   times fit a per-detector background with the current mask, detect on the subtracted copy), so the
   ``DETECTED`` mask is that of the restored image, not only the calexp's;
3. ``bgModel1``: one `FocalPlaneBackground` from every detector, evaluated on each and subtracted;
4. ``doSky``: the sky frame scale ``k`` is a count-weighted, iteratively clipped least-squares fit, over all
   detectors at once, of the binned residual ``b`` (on each sky frame's own bin grid, objects masked) against
   the sky frame values ``F``: ``k = sum(w b F) / sum(w F^2)``, repeated ``sky.skyIter`` times rejecting bins
   with ``|b - k F|`` beyond ``sky.skyRej`` robust standard deviations (as the LSST stack's
   SkyMeasurementTask).  A sky frame is the residual of a bgModel1-like model (``tasks.sky_frame``), so it
   holds what bgModel1 leaves in the image.  ``k F`` (a `Background` on the sky frame's bin grid) is
   subtracted; with ``undoBgModel1`` bgModel1 is added back first and bgModel2 models the large scales;
5. ``doBgModel2``: a second, finer `FocalPlaneBackground` of the residual, subtracted;
6. the binned visit mosaics (`focal_plane_mosaic`): ``calExpMosaic`` (the corrected image, masked pixels
   excluded) and ``calBkgMosaic`` (the complete new sky model, ``calexpBackground + skyCorr``).

Each step's model is appended to ``skyCorr`` (additive elements), so ``calexpBackground + skyCorr`` is the
new sky model and ``calexp - skyCorr`` the newly sky-subtracted image.  The method is that of the HSC
pipeline's full focal-plane sky subtraction with sky frames (Aihara et al. 2019, PASJ 71, 114, "Second data
release of the Hyper Suprime-Cam Subaru Strategic Program").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from graph import (
    Config,
    ConfigurableField,
    Field,
    Input,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    PrerequisiteInput,
    Struct,
    Task,
    timeMethod,
)

from .background import SubtractBackgroundConfig, SubtractBackgroundTask, fit_background_fast
from .detection import SourceDetectionConfig, SourceDetectionTask, psf_sigma
from .errors import NoUsableBinsError, SkyCorrectionError
from .image import (
    Background,
    BackgroundList,
    Camera,
    Detector,
    Exposure,
    FocalPlaneBackground,
    FocalPlaneBackgroundConfig,
    MaskedImage,
)
from .instruments import get_instrument

__all__ = [
    "MaskObjectsConfig",
    "MaskObjectsTask",
    "SkyCorrectionConfig",
    "SkyCorrectionConnections",
    "SkyCorrectionTask",
    "SkyMeasurementConfig",
    "focal_plane_mosaic",
]

_DETECTOR_DIMENSIONS = ("instrument", "visit", "detector")
_MAD_TO_SIGMA = 1.4826
_MEDIAN_SQUARE_TO_VARIANCE = 0.454936  # median of chi^2 with 1 degree of freedom


# Object masking -----------------------------------------------------------------------------------------------


class MaskObjectsConfig(Config):
    """Configuration of `MaskObjectsTask` (names as in ``lsst.pipe.tasks.background.MaskObjectsConfig``)."""

    nIter: int = Field(3, ge=1, le=10, description="Number of background-fit / detection iterations.")
    detectSigma: float | None = Field(
        None,
        gt=0,
        description="Sigma of the Gaussian the image is smoothed with before detection [pixels]; None: the "
        "exposure PSF's sigma (2 pixels without a PSF).",
    )
    subtractBackground: SubtractBackgroundConfig = ConfigurableField(
        target=SubtractBackgroundTask,
        doc="Per-detector background subtracted (from a copy) before detecting; its 128 px bins (8 per SimCam "
        "detector) follow the sky-frame pattern, which coarser bins would leave to be detected as objects.",
    )
    detection: SourceDetectionConfig = ConfigurableField(
        target=SourceDetectionTask, doc="Detection on the background-subtracted copy; sets DETECTED."
    )

    def setDefaults(self) -> None:  # noqa: N802
        super().setDefaults()
        self.detection.reEstimateBackground = False


class MaskObjectsTask(Task):
    """Mask the objects of an exposure whose background has not been subtracted.

    ``nIter`` times: fit a per-detector background with the current mask (``subtractBackground``), subtract it
    from a copy of the image and detect objects on the copy (``detection``), which resets ``DETECTED`` and
    ``DETECTED_NEGATIVE`` in the exposure's mask.  The image itself is not changed.

    Metadata: ``detectedFraction`` (fraction of the pixels with DETECTED or DETECTED_NEGATIVE at the end).
    """

    ConfigClass = MaskObjectsConfig
    _DefaultName = "maskObjects"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.makeSubtask("subtractBackground")
        self.makeSubtask("detection")

    @timeMethod
    def run(self, exposure: Exposure) -> Struct:
        """Update the DETECTED mask planes of an exposure from its background-restored pixels.

        Parameters
        ----------
        exposure : `Exposure`
            Exposure with its sky [counts]; its mask is updated in place, its image and variance are not.

        Returns
        -------
        result : `Struct`
            ``detectedFraction``: fraction of pixels flagged DETECTED or DETECTED_NEGATIVE.

        Raises
        ------
        NoUsableBinsError
            If the background cannot be fitted (nearly every pixel masked).
        """
        sigma = self.config.detectSigma
        if sigma is None:
            sigma = psf_sigma(exposure, default=2.0)
        for _ in range(self.config.nIter):
            model, _ = self.subtractBackground.fit(exposure.masked_image)
            subtracted = MaskedImage(
                exposure.image - model.get_image(), exposure.mask, exposure.variance, xy0=exposure.xy0
            )
            self.detection.run(exposure.replace(subtracted), sigma=sigma)
        fraction = float(exposure.mask.get_plane(["DETECTED", "DETECTED_NEGATIVE"]).mean())
        self.metadata["detectedFraction"] = fraction
        return Struct(detectedFraction=fraction)


# Mosaics ------------------------------------------------------------------------------------------------------


def _block_sums(image: np.ndarray, binning: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of the finite pixels and their numbers in ``binning`` x ``binning`` blocks (partial last blocks)."""
    ny, nx = image.shape
    ny_b, nx_b = -(-ny // binning), -(-nx // binning)
    padded = np.full((ny_b * binning, nx_b * binning), np.nan)
    padded[:ny, :nx] = image
    blocks = padded.reshape(ny_b, binning, nx_b, binning)
    finite = np.isfinite(blocks)
    return np.where(finite, blocks, 0.0).sum(axis=(1, 3)), finite.sum(axis=(1, 3)).astype(np.float64)


def _block_mean(image: np.ndarray, binning: int) -> np.ndarray:
    """Mean of the finite pixels of each block; NaN for blocks without one."""
    sums, n = _block_sums(image, binning)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, sums / n, np.nan)


def focal_plane_mosaic(
    images: Sequence[np.ndarray], detectors: Sequence[Detector], camera: Camera, binning: int
) -> tuple[np.ndarray, tuple[float, float], float]:
    """Bin detector images and place them on a focal-plane grid covering the whole camera.

    Parameters
    ----------
    images : sequence of `numpy.ndarray`, each of shape ``detector.bbox.shape``
        One image per detector, indexed [y, x] from the detector bbox's origin; NaN pixels are excluded from
        the block means.
    detectors : sequence of `Detector`
        The detectors of ``images`` (same order).
    camera : `Camera`
        The camera whose focal plane the mosaic covers (its detectors may be more than those given).
    binning : `int`
        Side of the square pixel blocks averaged into one mosaic pixel.

    Returns
    -------
    mosaic : `numpy.ndarray`, shape (ny, nx), float32
        Block means [image units]; NaN in the gaps between detectors, on missing detectors and where a block
        has no finite pixel.  Mosaic pixel (i, j) covers focal-plane x in
        ``[origin[0] + j pixel, origin[0] + (j + 1) pixel)`` and y likewise with i.
    origin : `tuple` [`float`, `float`]
        Focal-plane position (x, y) [mm] of the mosaic's lower-left corner: the camera's minimum corner.
    pixel : `float`
        Mosaic pixel size [mm]: ``binning`` times the detectors' pixel size.

    Raises
    ------
    SkyCorrectionError
        If the camera's detectors have different pixel sizes, an image does not have its detector's shape,
        or ``binning`` < 1.

    Notes
    -----
    Each block is placed at the mosaic pixel containing the focal-plane position of its centre, so a rotated
    detector is resampled to the nearest mosaic pixel.
    """
    if binning < 1:
        raise SkyCorrectionError(f"the mosaic binning must be >= 1 pixel, got {binning}.")
    sizes = {d.pixel_size for d in camera}
    if len(sizes) != 1:
        raise SkyCorrectionError(
            f"camera {camera.name!r} has detectors of different pixel sizes {sorted(sizes)} mm: no common mosaic grid."
        )
    pixel = binning * sizes.pop()
    corners = np.concatenate([d.focal_plane_corners() for d in camera])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    nx, ny = (int(n) for n in np.maximum(np.ceil((hi - lo) / pixel - 1e-9), 1))
    mosaic = np.full((ny, nx), np.nan, dtype=np.float32)
    for image, detector in zip(images, detectors, strict=True):
        bbox = detector.bbox
        if image.shape != bbox.shape:
            raise SkyCorrectionError(
                f"detector {detector.id}: image of shape {image.shape} does not match its bbox {bbox.shape}."
            )
        binned = _block_mean(image, binning)
        yc = (np.minimum(np.arange(binned.shape[0]) * binning + binning, bbox.height) - 1
              + np.arange(binned.shape[0]) * binning) / 2.0 + bbox.y0
        xc = (np.minimum(np.arange(binned.shape[1]) * binning + binning, bbox.width) - 1
              + np.arange(binned.shape[1]) * binning) / 2.0 + bbox.x0
        fx, fy = detector.pixels_to_focal_plane(*np.meshgrid(xc, yc))
        ix = np.floor((fx - lo[0]) / pixel).astype(np.int64)
        iy = np.floor((fy - lo[1]) / pixel).astype(np.int64)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & np.isfinite(binned)
        mosaic[iy[inside], ix[inside]] = binned[inside]
    return mosaic, (float(lo[0]), float(lo[1])), float(pixel)


# The task -----------------------------------------------------------------------------------------------------


class SkyCorrectionConnections(PipelineTaskConnections, dimensions=("instrument", "visit")):
    calExps = Input(  # noqa: N815 - the LSST stack's name
        name="calexp",
        storageClass="ExposureF",
        dimensions=_DETECTOR_DIMENSIONS,
        multiple=True,
        deferLoad=True,
        doc="Background-subtracted calibrated exposures of every detector of the visit [counts].",
    )
    calBkgs = Input(  # noqa: N815
        name="calexpBackground",
        storageClass="Background",
        dimensions=_DETECTOR_DIMENSIONS,
        multiple=True,
        doc="The per-detector backgrounds subtracted from the calexps [counts].",
    )
    skyFrames = PrerequisiteInput(  # noqa: N815
        name="skyFrame",
        storageClass="Background",
        dimensions=("instrument", "physical_filter", "detector"),
        multiple=True,
        isCalibration=True,
        doc="Sky frames (dimensionless sky patterns, one per detector) of the visit's filter (doSky).",
    )
    skyCorr = Output(  # noqa: N815
        name="skyCorr",
        storageClass="Background",
        dimensions=_DETECTOR_DIMENSIONS,
        multiple=True,
        doc="Per-detector sky correction: the inverted calexpBackground, then the additive new sky models.",
    )
    calExpMosaic = Output(  # noqa: N815
        name="calexp_skyCorr_visit_mosaic",
        storageClass="ImageF",
        dimensions=("instrument", "visit"),
        doc="Binned focal-plane mosaic of calexp - skyCorr (masked pixels excluded) [counts].",
    )
    calBkgMosaic = Output(  # noqa: N815
        name="calexpBackground_skyCorr_visit_mosaic",
        storageClass="ImageF",
        dimensions=("instrument", "visit"),
        doc="Binned focal-plane mosaic of calexpBackground + skyCorr: the new sky model [counts].",
    )

    def __init__(self, *, config: Any = None):
        super().__init__(config=config)
        if config is None:
            return
        if not config.doSky:
            del self.skyFrames


class SkyMeasurementConfig(Config):
    """Sky-frame scale fit (names as in ``lsst.pipe.drivers.skyCorrection``'s ``SkyMeasurementConfig``)."""

    skyIter: int = Field(3, ge=1, le=20, description="Number of fit / bin-rejection iterations of the scale.")
    skyRej: float = Field(
        3.0, gt=0, description="Bins whose residual from the scaled sky frame exceeds skyRej robust sigmas are rejected."
    )
    mask: list[str] = Field(
        default_factory=lambda: ["BAD", "SAT", "DETECTED", "NO_DATA"],
        description="Mask planes whose pixels are ignored in the binned residuals (those the sky frames are built "
        "with, `tasks.sky_frame`; not EDGE, which would move the data of border bins off their centres).",
    )
    clip: float = Field(3.0, gt=0, description="Pixel clipping threshold of the binned residuals [sigma].")
    nIter: int = Field(3, ge=1, le=20, description="Number of pixel clipping passes of the binned residuals.")


class SkyCorrectionConfig(PipelineTaskConfig, pipelineConnections=SkyCorrectionConnections):
    """Configuration of `SkyCorrectionTask` (names as in ``lsst.pipe.tasks.skyCorrection``)."""

    bgModel1: FocalPlaneBackgroundConfig = Field(  # noqa: N815
        default_factory=lambda: FocalPlaneBackgroundConfig(xSize=5.12, ySize=5.12, minFrac=0.1),
        description="First full focal-plane background (before the sky frame): 5.12 mm superpixels are half a "
        "SimCam detector.",
    )
    bgModel2: FocalPlaneBackgroundConfig = Field(  # noqa: N815
        default_factory=lambda: FocalPlaneBackgroundConfig(xSize=2.56, ySize=2.56, minFrac=0.5),
        description="Second, finer full focal-plane background of the residual after the sky frame.",
    )
    doBgModel2: bool = Field(True, description="Fit and subtract bgModel2.")  # noqa: N815
    undoBgModel1: bool = Field(  # noqa: N815
        False,
        description="Add bgModel1 back after the sky frame is subtracted (it then only serves the scale fit; "
        "bgModel2 models the large scales).",
    )
    doSky: bool = Field(True, description="Scale and subtract the sky frame.")  # noqa: N815
    sky: SkyMeasurementConfig = Field(
        default_factory=SkyMeasurementConfig, description="Sky frame scale measurement."
    )
    doMaskObjects: bool = Field(  # noqa: N815
        True, description="Re-detect objects on the background-restored image before modelling the sky."
    )
    maskObjects: MaskObjectsConfig = ConfigurableField(  # noqa: N815
        target=MaskObjectsTask, doc="Iterative object masking (doMaskObjects)."
    )
    binning: int = Field(8, ge=1, description="Binning of the visit mosaics [pixels per side].")

    def validate(self) -> None:  # type: ignore[override]
        super().validate()
        if self.undoBgModel1 and not self.doBgModel2:
            raise ValueError("undoBgModel1 needs doBgModel2: nothing would model the large scales.")


class SkyCorrectionTask(PipelineTask):
    """Full focal-plane sky correction of one visit (see the module docstring).

    Metadata: ``nDetectors`` (calexps corrected), ``missingDetectors`` (ids of the camera's detectors without a
    calexp, comma-separated), ``usedFraction.detector_<id>`` (fraction of the detector's pixels used by
    bgModel1), ``bgModel1SkyLevel`` [counts], ``skyFrameScale`` [counts per sky-frame unit; 0 without doSky],
    ``skyFrameBinsUsed`` (bins kept by the scale fit), ``residualRms`` (robust RMS of the calExpMosaic pixels
    over their expected noise: 1 when the corrected sky is flat to the noise), ``residualRmsPixelSigma``
    (robust RMS of the calExpMosaic pixels in units of the per-pixel noise), ``mosaicOriginX``,
    ``mosaicOriginY`` [mm], ``mosaicPixelSize`` [mm].
    """

    ConfigClass = SkyCorrectionConfig
    _DefaultName = "skyCorr"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.config.doMaskObjects:
            self.makeSubtask("maskObjects")

    # Quantum I/O -------------------------------------------------------------------------------------------

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        """Read a visit's calexps, backgrounds and sky frames (matched by detector), correct, write outputs."""
        inputs = butlerQC.get(inputRefs)
        camera = get_instrument(str(butlerQC.quantum.data_id["instrument"])).camera
        handles = sorted(inputs["calExps"], key=lambda h: int(h.data_id["detector"]))
        detector_ids = [int(h.data_id["detector"]) for h in handles]
        backgrounds = {int(ref.data_id["detector"]): bg for ref, bg in zip(inputRefs.calBkgs, inputs["calBkgs"])}
        sky_frames: list[Any] = []
        if self.config.doSky:
            by_detector = {int(ref.data_id["detector"]): sf for ref, sf in zip(inputRefs.skyFrames, inputs["skyFrames"])}
            sky_frames = [by_detector.get(d) for d in detector_ids]
        missing_bkg = [d for d in detector_ids if d not in backgrounds]
        if missing_bkg:
            raise SkyCorrectionError(f"no calexpBackground for detector(s) {missing_bkg} of this visit.")
        calexps = []
        for handle, detector_id in zip(handles, detector_ids, strict=True):
            exposure = handle.get()
            exposure.detector = camera[detector_id]
            calexps.append(exposure)
        result = self.run(calexps, [backgrounds[d] for d in detector_ids], sky_frames, camera)
        refs = {int(ref.data_id["detector"]): ref for ref in outputRefs.skyCorr}
        for detector_id, sky_corr in zip(detector_ids, result.skyCorr):  # run returns them in input order
            if detector_id in refs:
                butlerQC.put(sky_corr, refs[detector_id])
        butlerQC.put(result.calExpMosaic, outputRefs.calExpMosaic)
        butlerQC.put(result.calBkgMosaic, outputRefs.calBkgMosaic)

    # The algorithm -----------------------------------------------------------------------------------------

    @timeMethod
    def run(
        self,
        calExps: Sequence[Any],  # noqa: N803
        calBkgs: Sequence[BackgroundList],  # noqa: N803
        skyFrames: Sequence[Any],  # noqa: N803
        camera: Camera,
        backgroundToPhotometricRatioHandles: Sequence[Any] = (),  # noqa: N803
    ) -> Struct:
        """Sky-correct the detectors of one visit.

        Parameters
        ----------
        calExps : sequence of `Exposure` or deferred handles
            Background-subtracted calexps [counts] of the visit's detectors (any order), each with
            ``exposure.detector`` set (a detector of ``camera``).  Not modified.
        calBkgs : sequence of `BackgroundList`
            The backgrounds subtracted from ``calExps`` (same order) [counts].
        skyFrames : sequence of `Background` or `BackgroundList` (one model), or None entries
            The sky frames of ``calExps``' detectors (same order; ignored unless ``doSky``): dimensionless
            binned patterns whose bbox is the detector's.
        camera : `Camera`
            The camera: its focal-plane geometry, and the detectors a complete visit has.
        backgroundToPhotometricRatioHandles : sequence, optional
            Not supported: must be empty (no flat-background ratio is applied).

        Returns
        -------
        result : `Struct`
            ``skyFrameScale`` (`float` [counts per sky-frame unit]; 0.0 without doSky), ``skyCorr`` (`list` of
            `BackgroundList`, order of ``calExps``: the inverted calexpBackground then bgModel1, the scaled sky
            frame and bgModel2, each a `Background` in counts), ``calExpMosaic`` and ``calBkgMosaic``
            (`numpy.ndarray` float32 [counts], see `focal_plane_mosaic`), ``mosaicOrigin`` (x, y) [mm],
            ``mosaicPixelSize`` [mm], ``missingDetectors`` (sorted ids of the camera's detectors without a
            calexp).

        Raises
        ------
        SkyCorrectionError
            If there is no calexp, the lists differ in length, a calexp has no detector or one not in
            ``camera`` (or twice), ``doSky`` and a detector has no sky frame or one whose bbox is not the
            calexp's, the sky frames have no structure, or ``backgroundToPhotometricRatioHandles`` is given.
        FocalPlaneBackgroundError
            If no superpixel of a focal-plane model has enough usable pixels.
        """
        config = self.config
        if backgroundToPhotometricRatioHandles:
            raise SkyCorrectionError(
                "backgroundToPhotometricRatioHandles is not supported: the sky correction works on calexps whose "
                "flat field is photometric; pass no ratio images."
            )
        exposures = [c.get() if hasattr(c, "get") and not isinstance(c, Exposure) else c for c in calExps]
        if not exposures:
            raise SkyCorrectionError("no calexp to sky-correct: give at least one detector of the visit.")
        if len(calBkgs) != len(exposures):
            raise SkyCorrectionError(f"got {len(calBkgs)} calexpBackgrounds for {len(exposures)} calexps.")
        detectors = self._detectors(exposures, camera)
        sky_frames = self._sky_frames(skyFrames, exposures, detectors) if config.doSky else None
        # Work in detector order (results do not depend on the input order) on copies of the pixels.
        order = sorted(range(len(exposures)), key=lambda k: detectors[k].id)
        missing = sorted(set(camera.ids) - {d.id for d in detectors})

        work: list[Exposure] = []
        sky_corr: list[BackgroundList] = []
        models: list[np.ndarray] = []  # the new sky model: calexpBackground + skyCorr = its additive elements
        for k in order:
            exposure = exposures[k]
            restored = exposure.masked_image.copy()
            calexp_background = calBkgs[k].get_image(exposure.bbox)
            restored.image[...] += calexp_background
            work.append(exposure.replace(restored, detector=detectors[k]))
            sky_corr.append(BackgroundList(calBkgs[k].inverted()))
            models.append(np.zeros(exposure.shape, dtype=np.float64))

        if config.doMaskObjects:
            for exposure in work:
                self.maskObjects.run(exposure)

        bg1 = self._subtract_focal_plane(work, camera, config.bgModel1, sky_corr, models)
        self.metadata["bgModel1SkyLevel"] = bg1.skyLevel()
        for detector_id, fraction in sorted(bg1.coverage.items()):
            self.metadata[f"usedFraction.detector_{detector_id}"] = fraction

        scale = 0.0
        elements: list[Background] = []
        if sky_frames is not None:
            frames = [sky_frames[k] for k in order]
            scale = self._fit_sky_frame_scale(work, frames)
            elements = [frame.scaled(scale) for frame in frames]
        if config.undoBgModel1:
            for k, exposure, corr, model in zip(order, work, sky_corr, models, strict=True):
                bg1_model = corr.pop(len(calBkgs[k]))  # right after the inverted calexpBackground
                image = bg1_model.get_image(exposure.bbox)
                exposure.image[...] += image
                model -= image
        for exposure, element, corr, model in zip(work, elements, sky_corr, models):
            image = element.get_image(exposure.bbox)
            exposure.image[...] -= image
            model += image
            corr.append(element)
        if config.doBgModel2:
            self._subtract_focal_plane(work, camera, config.bgModel2, sky_corr, models)

        # Mosaics and QA.
        bad_planes = list(config.bgModel1.mask)
        corrected = []
        for exposure in work:
            image = exposure.image.astype(np.float64)
            image[exposure.mask.get_plane(bad_planes, missing_ok=True)] = np.nan
            corrected.append(image)
        sorted_detectors = [detectors[k] for k in order]
        calexp_mosaic, origin, pixel = focal_plane_mosaic(corrected, sorted_detectors, camera, config.binning)
        bkg_mosaic, _, _ = focal_plane_mosaic(models, sorted_detectors, camera, config.binning)
        self._residual_metadata(work, corrected)

        self.metadata["skyFrameScale"] = float(scale)
        self.metadata["nDetectors"] = len(work)
        self.metadata["missingDetectors"] = ",".join(str(d) for d in missing)
        self.metadata["mosaicOriginX"], self.metadata["mosaicOriginY"] = origin
        self.metadata["mosaicPixelSize"] = pixel
        if missing:
            self.log.warning("Visit has no calexp for detector(s) %s: corrected the other %d", missing, len(work))
        self.log.info(
            "Sky-corrected %d detectors: bgModel1 sky level %.2f, sky frame scale %.4f, residual RMS %.2f x noise",
            len(work), self.metadata["bgModel1SkyLevel"], scale, self.metadata["residualRms"],
        )
        # Back to the input order.
        sky_corr_in_order: list[BackgroundList] = [BackgroundList()] * len(exposures)
        for position, k in enumerate(order):
            sky_corr_in_order[k] = sky_corr[position]
        return Struct(
            skyFrameScale=float(scale),
            skyCorr=sky_corr_in_order,
            calExpMosaic=calexp_mosaic,
            calBkgMosaic=bkg_mosaic,
            mosaicOrigin=origin,
            mosaicPixelSize=pixel,
            missingDetectors=missing,
        )

    # Helpers -------------------------------------------------------------------------------------------------

    @staticmethod
    def _detectors(exposures: list[Exposure], camera: Camera) -> list[Detector]:
        """The camera's detector of every exposure; errors for a missing, unknown or repeated detector."""
        detectors = []
        for k, exposure in enumerate(exposures):
            if exposure.detector is None:
                raise SkyCorrectionError(
                    f"calexp {k} has no detector: set exposure.detector (camera[detector_id]) so it can be placed "
                    "on the focal plane."
                )
            if exposure.detector.id not in camera:
                raise SkyCorrectionError(
                    f"calexp {k} is on detector {exposure.detector.id}, which camera {camera.name!r} does not have "
                    f"(detectors {camera.ids})."
                )
            detectors.append(camera[exposure.detector.id])
        ids = [d.id for d in detectors]
        repeated = sorted({d for d in ids if ids.count(d) > 1})
        if repeated:
            raise SkyCorrectionError(f"detector(s) {repeated} appear more than once among the calexps of the visit.")
        return detectors

    @staticmethod
    def _sky_frames(sky_frames: Sequence[Any], exposures: list[Exposure], detectors: list[Detector]) -> list[Background]:
        """One `Background` per exposure, checked against its bbox."""
        if len(sky_frames) != len(exposures):
            raise SkyCorrectionError(
                f"doSky needs one sky frame per calexp: got {len(sky_frames)} for {len(exposures)} calexps "
                f"(detectors {[d.id for d in detectors]})."
            )
        out = []
        for frame, exposure, detector in zip(sky_frames, exposures, detectors, strict=True):
            if frame is None:
                raise SkyCorrectionError(
                    f"no sky frame for detector {detector.id} ({detector.name}); certify a skyFrame for it in the "
                    "input calibration collection, or set doSky=False."
                )
            if isinstance(frame, BackgroundList):
                if len(frame) != 1:
                    raise SkyCorrectionError(
                        f"the sky frame of detector {detector.id} holds {len(frame)} models; a sky frame is one binned model."
                    )
                frame = frame[0]
            if frame.bbox != exposure.bbox:
                raise SkyCorrectionError(
                    f"the sky frame of detector {detector.id} covers {frame.bbox}, its calexp {exposure.bbox}: "
                    "was it made for another camera or binning?"
                )
            out.append(frame)
        return out

    def _subtract_focal_plane(
        self,
        exposures: list[Exposure],
        camera: Camera,
        config: FocalPlaneBackgroundConfig,
        sky_corr: list[BackgroundList],
        models: list[np.ndarray],
    ) -> FocalPlaneBackground:
        """Fit one `FocalPlaneBackground` to all exposures, subtract it from each and append it to skyCorr."""
        background = FocalPlaneBackground.fromCamera(config, camera)
        for exposure in exposures:
            background.addCcd(exposure)
        for exposure, corr, model in zip(exposures, sky_corr, models, strict=True):
            ccd_background = background.toCcdBackground(exposure.detector, exposure.bbox)
            image = ccd_background.get_image(exposure.bbox)
            exposure.image[...] -= image
            model += image
            corr.append(ccd_background)
        return background

    def _fit_sky_frame_scale(self, exposures: list[Exposure], frames: list[Background]) -> float:
        """The sky frame scale ``k`` [counts per sky-frame unit] (step 4 of the module docstring).

        Each image (bgModel1 already subtracted) is binned on its sky frame's grid (``sky.mask`` pixels left out,
        clipped means), and every bin with pixels contributes ``(b, F, w)``: its residual, the sky frame value and
        its pixel count.
        """
        sky = self.config.sky
        b_all, f_all, w_all = [], [], []
        for exposure, frame in zip(exposures, frames, strict=True):
            try:
                residual, _ = fit_background_fast(
                    exposure.masked_image,
                    bin_size=frame.bin_size,
                    bad_mask_planes=tuple(sky.mask),
                    clip=sky.clip,
                    n_iter=sky.nIter,
                )
            except NoUsableBinsError:
                self.log.warning("detector %d: too few unmasked pixels for the sky frame fit", exposure.detector.id)
                continue
            use = residual.counts > 0
            b_all.append(residual.values[use])
            f_all.append(frame.values[use])
            w_all.append(residual.counts[use])
        if not b_all:
            raise SkyCorrectionError("no detector has enough unmasked pixels to fit the sky frame scale.")
        b, f, w = (np.concatenate(a) for a in (b_all, f_all, w_all))
        normalised = np.sqrt(w / np.median(w))
        keep = np.ones(len(b), dtype=bool)
        scale = 0.0
        for _ in range(sky.skyIter):
            denominator = float(np.sum(w[keep] * f[keep] ** 2))
            if not denominator > 0:
                raise SkyCorrectionError(
                    "the sky frames are zero wherever the images have usable bins: nothing to scale; set "
                    "doSky=False or rebuild the sky frames."
                )
            scale = float(np.sum(w[keep] * b[keep] * f[keep])) / denominator
            residuals = (b - scale * f) * normalised
            centre = np.median(residuals[keep])
            sigma = _MAD_TO_SIGMA * np.median(np.abs(residuals[keep] - centre))
            if not sigma > 0:
                break
            new_keep = np.abs(residuals - centre) <= sky.skyRej * sigma
            if np.array_equal(new_keep, keep):
                break
            keep = new_keep
        self.metadata["skyFrameBinsUsed"] = int(keep.sum())
        return scale

    def _residual_metadata(self, exposures: list[Exposure], corrected: list[np.ndarray]) -> None:
        """``residualRms`` and ``residualRmsPixelSigma`` from the binned corrected images."""
        binning = self.config.binning
        ratios, in_sigma = [], []
        for exposure, image in zip(exposures, corrected, strict=True):
            sums, n = _block_sums(image, binning)
            variance = np.where(np.isfinite(image), exposure.variance, np.nan)
            var_sums, _ = _block_sums(variance, binning)
            good = n > 0
            mean = sums[good] / n[good]
            noise = np.sqrt(var_sums[good]) / n[good]
            pixel_sigma = math.sqrt(float(np.nanmedian(variance))) if np.isfinite(variance).any() else math.nan
            ratios.append(mean / noise)
            in_sigma.append(mean / pixel_sigma)
        ratio = np.concatenate(ratios)
        sigma_units = np.concatenate(in_sigma)
        ratio, sigma_units = ratio[np.isfinite(ratio)], sigma_units[np.isfinite(sigma_units)]
        self.metadata["residualRms"] = _robust_rms(ratio)
        self.metadata["residualRmsPixelSigma"] = _robust_rms(sigma_units)


def _robust_rms(values: np.ndarray) -> float:
    """Root mean square about zero from the median of the squares (Gaussian-calibrated); NaN when empty."""
    if values.size == 0:
        return math.nan
    return float(math.sqrt(np.median(values**2) / _MEDIAN_SQUARE_TO_VARIANCE))
