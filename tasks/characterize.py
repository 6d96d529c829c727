"""Characterize a science image: repair cosmic rays, subtract the background, detect and measure bright
sources, and estimate the PSF.

`CharacterizeImageTask` takes a ``postISRCCD`` exposure (defects masked and interpolated by ISR) and

1. installs a simple circular Gaussian PSF (``installSimplePsf``: FWHM in arcsec, converted to pixels with
   the WCS pixel scale) when ``doMeasurePsf`` (and ``useSimplePsf``) or when the exposure has no PSF;
2. repeats ``psfIterations`` times (once without ``doMeasurePsf``) `detectMeasureAndEstimatePsf`:
   cosmic-ray detection (``repair``, CRs flagged but kept), background subtraction (``background``: on the
   first pass the whole sky, on later passes a refinement of the residual with the detected sources masked),
   detection smoothed with the current PSF (``detection``), optional deblending (``deblend``), measurement
   (``measurement``) and PSF estimation (``measurePsf``);
3. interpolates over the cosmic rays (``repair``) and measures the sources again with the final PSF.

The returned background is everything subtracted from the exposure: the input ``background`` (if any)
followed by every model fit here, so adding ``background.get_image()`` back restores the input pixels.

This follows ``lsst.pipe.tasks.characterizeImage.CharacterizeImageTask`` (see the seed documentation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
from astropy.table import Table

from graph import (
    Config,
    ConfigurableField,
    Field,
    Input,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    Struct,
    Task,
    timeMethod,
)
from graph.errors import AlgorithmError, NoWorkFound

from .background import SubtractBackgroundConfig, SubtractBackgroundTask
from .deblend import SourceDeblendConfig, SourceDeblendTask
from .detection import SourceDetectionConfig, SourceDetectionTask
from .image import BackgroundList, Exposure, GaussianPsf
from .image.psf import FWHM_PER_SIGMA
from .measure_psf import MeasurePsfConfig, MeasurePsfTask, psf_effective_fwhm
from .measurement import SingleFrameMeasurementConfig, SingleFrameMeasurementTask
from .repair import RepairConfig, RepairTask

__all__ = [
    "CharacterizeImageConfig",
    "CharacterizeImageConnections",
    "CharacterizeImageTask",
    "ExposureIdInfo",
    "InstallGaussianPsfConfig",
    "InstallGaussianPsfTask",
    "pixel_scale_arcsec",
]

_DIMENSIONS = ("instrument", "visit", "detector")


# Exposure ids -> source ids --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExposureIdInfo:
    """A unique integer id of an exposure (visit + detector) and the number of bits it needs.

    Source ids are ``expId << (63 - expBits) | n`` with ``n = 1, 2, ...``: unique over the repository when
    every exposure id is below ``2**expBits``, and positive int64.

    Attributes
    ----------
    expId : `int`
        Id of the exposure (>= 0), e.g. ``visit * detector_max + detector``.
    expBits : `int`
        Bits reserved for exposure ids, 0..62.
    """

    expId: int  # noqa: N815 - the LSST stack's name
    expBits: int  # noqa: N815

    def __post_init__(self) -> None:
        if not 0 <= self.expBits <= 62:
            raise ValueError(f"ExposureIdInfo.expBits must be in 0..62, got {self.expBits}.")
        if not 0 <= self.expId < (1 << self.expBits) or (self.expBits == 0 and self.expId != 0):
            raise ValueError(f"exposure id {self.expId} does not fit in {self.expBits} bits.")

    @property
    def source_bits(self) -> int:
        """Bits left for the sequence number of a source (``63 - expBits``)."""
        return 63 - self.expBits

    def make_source_ids(self, local_ids: np.ndarray) -> np.ndarray:
        """Globally unique ids of sources numbered ``local_ids`` (>= 0) on this exposure, int64.

        Raises
        ------
        ValueError
            If a local id needs more than ``source_bits`` bits.
        """
        local_ids = np.asarray(local_ids, dtype=np.int64)
        if local_ids.size and (local_ids.min() < 0 or local_ids.max() >= (1 << self.source_bits)):
            raise ValueError(f"source numbers must be in 0..2**{self.source_bits} - 1 for exposure {self.expId}.")
        return (np.int64(self.expId) << np.int64(self.source_bits)) | local_ids

    #: Bits of the detector in `from_data_id` ids (detector ids below 1024) and of the whole id (visits
    #: below 2**32): 21 bits (2 million sources) are left for the sources of one detector.
    DETECTOR_BITS: ClassVar[int] = 10
    DATA_ID_BITS: ClassVar[int] = 42

    @classmethod
    def from_data_id(cls, data_id: Any) -> ExposureIdInfo:
        """The id of a (visit, detector) data ID: ``visit * 1024 + detector`` in 42 bits.

        The same for every instrument and independent of dimension records, so a quantum's source ids do not
        depend on how its data ID was obtained.

        Raises
        ------
        ValueError
            If the detector id is not in 0..1023 or the visit id not in 0..2**32 - 1.
        """
        visit, detector = int(data_id["visit"]), int(data_id["detector"])
        if not 0 <= detector < (1 << cls.DETECTOR_BITS):
            raise ValueError(f"detector id {detector} is outside 0..{(1 << cls.DETECTOR_BITS) - 1}: cannot make source ids.")
        if not 0 <= visit < (1 << (cls.DATA_ID_BITS - cls.DETECTOR_BITS)):
            raise ValueError(f"visit id {visit} is outside 0..2**32 - 1: cannot make source ids.")
        return cls((visit << cls.DETECTOR_BITS) | detector, cls.DATA_ID_BITS)


# Simple PSF -------------------------------------------------------------------------------------------------


def pixel_scale_arcsec(exposure: Exposure) -> float | None:
    """Mean pixel scale [arcsec/pixel] of an exposure's WCS at its centre, or None without a celestial WCS."""
    wcs = exposure.wcs
    if wcs is None or not getattr(wcs, "has_celestial", False):
        return None
    x, y = exposure.bbox.center
    # Finite differences at the centre: SIP distortions and non-square pixels are accounted for.
    sky = wcs.pixel_to_world(np.array([x, x + 1.0, x]), np.array([y, y, y + 1.0]))
    dx = sky[0].separation(sky[1]).arcsec
    dy = sky[0].separation(sky[2]).arcsec
    scale = math.sqrt(float(dx) * float(dy))
    return scale if math.isfinite(scale) and scale > 0 else None


class InstallGaussianPsfConfig(Config):
    """Configuration of `InstallGaussianPsfTask`."""

    fwhm: float = Field(1.5, gt=0, description="FWHM of the Gaussian [arcsec].")
    fallbackFwhmPixels: float = Field(
        3.5, gt=0, description="FWHM [pixels] used when the exposure has no celestial WCS (no pixel scale)."
    )
    width: int = Field(
        0, ge=0, description="Side of the kernel image [pixels], odd; 0: 2 * ceil(4 sigma) + 1, at least 11."
    )


class InstallGaussianPsfTask(Task):
    """Install a circular `GaussianPsf` on an exposure (replacing any PSF it has).

    Metadata: ``fwhmPixels`` [pixels], ``pixelScale`` [arcsec/pixel] (NaN without a WCS).
    """

    ConfigClass = InstallGaussianPsfConfig
    _DefaultName = "installSimplePsf"

    def run(self, exposure: Exposure) -> Struct:
        """Install the PSF.

        Parameters
        ----------
        exposure : `Exposure`
            Modified in place: ``exposure.psf`` is replaced.

        Returns
        -------
        result : `Struct`
            ``psf`` (`GaussianPsf`) and ``fwhm`` [pixels].
        """
        scale = pixel_scale_arcsec(exposure)
        fwhm = self.config.fwhm / scale if scale else self.config.fallbackFwhmPixels
        sigma = fwhm / FWHM_PER_SIGMA
        width = self.config.width or max(2 * math.ceil(4.0 * sigma) + 1, 11)
        if width % 2 == 0:
            width += 1
        psf = GaussianPsf(width, width, sigma)
        exposure.psf = psf
        self.metadata["fwhmPixels"] = float(fwhm)
        self.metadata["pixelScale"] = float(scale) if scale else float("nan")
        self.log.debug("installed a Gaussian PSF of FWHM %.2f pixels (%dx%d)", fwhm, width, width)
        return Struct(psf=psf, fwhm=float(fwhm))


# The task ---------------------------------------------------------------------------------------------------


class CharacterizeImageConnections(PipelineTaskConnections, dimensions=_DIMENSIONS):
    exposure = Input(
        name="postISRCCD",
        storageClass="ExposureF",
        dimensions=("instrument", "exposure", "detector"),
        doc="ISR-corrected exposure to characterize (the visit's single exposure, via visit_definition).",
    )
    characterized = Output(
        name="icExp",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="Background-subtracted exposure with cosmic rays interpolated, DETECTED mask and the measured PSF.",
    )
    backgroundModel = Output(  # noqa: N815 - the LSST stack's name
        name="icExpBackground",
        storageClass="Background",
        dimensions=_DIMENSIONS,
        doc="Every background model subtracted from the exposure (a BackgroundList) [image units].",
    )
    sourceCat = Output(  # noqa: N815
        name="icSrc",
        storageClass="ArrowAstropy",
        dimensions=_DIMENSIONS,
        doc="Bright sources measured with the final PSF, with calib_psf_candidate/used/reserved flags.",
    )


class CharacterizeImageConfig(PipelineTaskConfig, pipelineConnections=CharacterizeImageConnections):
    """Configuration of `CharacterizeImageTask`."""

    doMeasurePsf: bool = Field(True, description="Measure the PSF (otherwise keep the exposure's, or a simple one).")
    psfIterations: int = Field(
        2, ge=1, description="Number of repair/background/detect/measure/PSF passes when doMeasurePsf."
    )
    useSimplePsf: bool = Field(
        True, description="With doMeasurePsf, start from the simple Gaussian PSF even if the exposure has a PSF."
    )
    doDeblend: bool = Field(False, description="Deblend the detected footprints before measurement.")
    minUsableFraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Fewest finite, not-NO_DATA pixels (fraction of the image) to attempt a characterization; "
        "below it the quantum has no work (NoWorkFound).",
    )
    psfFwhmGridSize: int = Field(
        5, ge=1, description="The PSF FWHM metadata are computed over an N x N grid of positions on the image."
    )
    installSimplePsf: InstallGaussianPsfConfig = ConfigurableField(
        target=InstallGaussianPsfTask, doc="Install the initial Gaussian PSF."
    )
    repair: RepairConfig = ConfigurableField(target=RepairTask, doc="Detect and interpolate cosmic rays.")
    background: SubtractBackgroundConfig = ConfigurableField(
        target=SubtractBackgroundTask, doc="Fit and subtract the sky background."
    )
    detection: SourceDetectionConfig = ConfigurableField(target=SourceDetectionTask, doc="Detect sources.")
    deblend: SourceDeblendConfig = ConfigurableField(target=SourceDeblendTask, doc="Deblend footprints (doDeblend).")
    measurement: SingleFrameMeasurementConfig = ConfigurableField(
        target=SingleFrameMeasurementTask, doc="Measure centroids, shapes and fluxes."
    )
    measurePsf: MeasurePsfConfig = ConfigurableField(  # noqa: N815
        target=MeasurePsfTask, doc="Select PSF stars and fit a spatially varying PSF."
    )


class CharacterizeImageTask(PipelineTask):
    """Measure bright sources and use them to estimate the background and PSF of an exposure.

    See the module docstring for the steps.  Subtasks: ``installSimplePsf``, ``repair``, ``background``,
    ``detection``, ``deblend``, ``measurement``, ``measurePsf``.

    Metadata: ``numSources`` (final catalogue), ``numPsfStarsUsed``, ``numPsfStarsReserved``,
    ``numPsfStarsRejected`` (candidates the PSF fit rejected), ``psfFwhmMedian`` and ``psfFwhmSpread``
    [pixels] (median and max - min of the effective FWHM, `psf_effective_fwhm`, of the final PSF at the
    centres of a ``psfFwhmGridSize`` x ``psfFwhmGridSize`` tiling of the image), ``bgMean`` [image units]
    (mean of the total subtracted background model), ``bgRms`` [image units] (robust RMS, 1.4826 MAD, of the
    background-subtracted pixels outside sources and masked pixels: the sky noise).
    """

    ConfigClass = CharacterizeImageConfig
    _DefaultName = "characterizeImage"

    def __init__(self, *, config: Config | None = None, **kwargs: Any):
        super().__init__(config=config, **kwargs)
        for name in ("installSimplePsf", "repair", "background", "detection", "deblend", "measurement", "measurePsf"):
            self.makeSubtask(name)

    # Quantum I/O -------------------------------------------------------------------------------------------

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        """Read the exposure, characterize it with source ids unique to the visit and detector, write outputs."""
        inputs = butlerQC.get(inputRefs)
        exposure_id_info = ExposureIdInfo.from_data_id(butlerQC.quantum.data_id)
        outputs = self.run(exposure=inputs["exposure"], exposureIdInfo=exposure_id_info)
        butlerQC.put(outputs, outputRefs)

    # The algorithm -----------------------------------------------------------------------------------------

    @timeMethod
    def run(
        self,
        exposure: Exposure,
        exposureIdInfo: ExposureIdInfo | None = None,  # noqa: N803
        background: BackgroundList | None = None,
    ) -> Struct:
        """Characterize a science image.

        Parameters
        ----------
        exposure : `Exposure`
            ISR-corrected exposure; modified in place (background subtracted, cosmic rays interpolated, mask
            planes CR/INTRP/DETECTED set, PSF installed) and returned.
        exposureIdInfo : `ExposureIdInfo`, optional
            Id of the exposure; without it, source ids are 1..N (not unique across exposures).
        background : `BackgroundList`, optional
            Background models already subtracted from ``exposure``.

        Returns
        -------
        result : `Struct`
            ``exposure`` (the characterized `Exposure`), ``sourceCat`` (`astropy.table.Table`, the columns of
            `SingleFrameMeasurementTask` plus ``calib_psf_*``), ``background`` (`BackgroundList`: ``background``
            plus the models subtracted here), ``psfCellSet`` (`SpatialCellSet` of PSF candidates, None without
            ``doMeasurePsf``), and the aliases ``characterized`` and ``backgroundModel``.

        Raises
        ------
        NoWorkFound
            If fewer than ``minUsableFraction`` of the pixels are finite and not NO_DATA.
        AlgorithmError
            If no sources are detected, or too few PSF stars are found (from ``measurePsf``), or too many
            pixels are cosmic rays (from ``repair``).
        RuntimeError
            If the PSF sigma is NaN.
        """
        self._check_usable(exposure)
        if exposure.psf is None or (self.config.doMeasurePsf and self.config.useSimplePsf):
            self.log.info("PSF estimation initialized with a simple Gaussian PSF")
            self.installSimplePsf.run(exposure)
        background = BackgroundList(background or [])
        n_iter = self.config.psfIterations if self.config.doMeasurePsf else 1
        dme: Struct | None = None
        for i in range(n_iter):
            dme = self.detectMeasureAndEstimatePsf(exposure, exposureIdInfo, background)
            background = dme.background
            sigma = self._psf_sigma(exposure)
            if not math.isfinite(sigma):
                raise RuntimeError(
                    f"PSF sigma is NaN after iteration {i + 1} of {n_iter}: cannot continue the PSF determination "
                    "loop (check the PSF stars and the measurePsf configuration)."
                )
            self.log.info(
                "iteration %d: PSF sigma %.3f px (FWHM %.3f px), %d sources", i + 1, sigma, sigma * FWHM_PER_SIGMA,
                len(dme.sourceCat),
            )
        assert dme is not None
        # Final repair (interpolate the cosmic rays now that the PSF is known) and measurement with the final PSF.
        self.repair.run(exposure, keepCRs=False)
        source_cat = self.measurement.run(exposure, dme.sources, dme.footprints)
        source_cat = self._carry_psf_flags(source_cat, dme.sourceCat)
        source_cat = self._finalize_catalog(source_cat, exposureIdInfo)
        self._record_metadata(exposure, source_cat, background)
        return Struct(
            exposure=exposure,
            sourceCat=source_cat,
            background=background,
            psfCellSet=dme.psfCellSet,
            characterized=exposure,
            backgroundModel=background,
        )

    @timeMethod
    def detectMeasureAndEstimatePsf(  # noqa: N802
        self,
        exposure: Exposure,
        exposureIdInfo: ExposureIdInfo | None,  # noqa: N803
        background: BackgroundList | None,
    ) -> Struct:
        """Perform one iteration of detect, measure and estimate PSF.

        Installs the simple PSF if the exposure has none; flags cosmic rays (kept: ``keepCRs=True``);
        estimates and subtracts the background (a refinement when ``background`` is not empty and sources
        were detected before); detects (smoothing with the current PSF), optionally deblends and measures
        sources; with ``doMeasurePsf`` measures the PSF and installs it on the exposure.

        Parameters
        ----------
        exposure : `Exposure`
            Exposure to characterize; modified in place.
        exposureIdInfo : `ExposureIdInfo` or None
            Its ``expId`` seeds the choice of reserved PSF stars (ids are assigned to the final catalogue by
            `run`).
        background : `BackgroundList` or None
            Models already subtracted from the exposure.

        Returns
        -------
        result : `Struct`
            ``exposure``, ``sourceCat`` (measured catalogue with ``calib_psf_*`` flags), ``background``
            (``background`` plus the models subtracted here), ``psfCellSet`` (or None), and for the final
            measurement ``sources`` (the detection table) and ``footprints`` (`FootprintSet`).

        Raises
        ------
        AlgorithmError
            If no source is detected, too many pixels are cosmic rays, or too few PSF stars are found.
        """
        if exposure.psf is None:
            self.log.info("the exposure has no PSF: installing a simple Gaussian PSF")
            self.installSimplePsf.run(exposure)
        background = BackgroundList(background or [])
        self.repair.run(exposure, keepCRs=True)
        background = self.background.run(exposure, background).background
        self._zero_no_data(exposure)
        detections = self.detection.run(exposure, doSmooth=True)
        if detections.background:
            background.extend(detections.background)
            self._zero_no_data(exposure)
        sources, footprints = detections.sources, detections.footprints
        n_positive = int(np.count_nonzero(~np.asarray(sources["is_negative"], dtype=bool))) if len(sources) else 0
        if n_positive == 0:
            raise AlgorithmError(
                f"no sources detected above {self.config.detection.thresholdValue} sigma: cannot characterize the "
                "image (no stars to measure a PSF from). Check the image (all sky? wrong units?) or lower "
                "detection.thresholdValue."
            )
        if self.config.doDeblend:
            deblended = self.deblend.run(exposure, sources, footprints)
            sources, footprints = deblended.sources, deblended.footprints
        source_cat = self.measurement.run(exposure, sources, footprints)
        psf_cell_set = None
        if self.config.doMeasurePsf:
            exp_id = exposureIdInfo.expId if exposureIdInfo is not None else 0
            psf_result = self.measurePsf.run(exposure, source_cat, expId=exp_id)
            exposure.psf = psf_result.psf
            psf_cell_set = getattr(psf_result, "cellSet", None)
        return Struct(
            exposure=exposure,
            sourceCat=source_cat,
            background=background,
            psfCellSet=psf_cell_set,
            sources=sources,
            footprints=footprints,
        )

    # Helpers -------------------------------------------------------------------------------------------------

    def _check_usable(self, exposure: Exposure) -> None:
        """Flag non-finite pixels NO_DATA (image set to 0) and raise NoWorkFound if too few pixels are usable."""
        bad = ~np.isfinite(exposure.image) | ~np.isfinite(exposure.variance)
        if bad.any():
            exposure.mask.set_plane("NO_DATA", bad)
            exposure.image[bad] = 0.0
            finite_variance = exposure.variance[~bad]
            exposure.variance[bad] = float(np.median(finite_variance)) if finite_variance.size else 1.0
        no_data = exposure.mask.get_plane("NO_DATA") if "NO_DATA" in exposure.mask.planes else bad
        usable = exposure.image.size - int(np.count_nonzero(no_data | bad))
        fraction = usable / max(exposure.image.size, 1)
        if usable == 0 or fraction < self.config.minUsableFraction:
            raise NoWorkFound(
                f"only {usable} of {exposure.image.size} pixels ({100 * fraction:.2f}%) are finite and not NO_DATA "
                f"(minUsableFraction = {self.config.minUsableFraction}): nothing to characterize."
            )

    @staticmethod
    def _zero_no_data(exposure: Exposure) -> None:
        """Reset NO_DATA pixels to 0 after a background subtraction (they carry no sky)."""
        if "NO_DATA" in exposure.mask.planes:
            no_data = exposure.mask.get_plane("NO_DATA")
            if no_data.any():
                exposure.image[no_data] = 0.0

    def _psf_sigma(self, exposure: Exposure) -> float:
        """Determinant radius [pixels] of the exposure's PSF at the image centre (NaN if it cannot be computed)."""
        if exposure.psf is None:
            return float("nan")
        try:
            sigma = exposure.psf.determinant_radius(*exposure.bbox.center)
        except (ValueError, ArithmeticError):
            return float("nan")
        return float(sigma) if sigma > 0 else float("nan")

    @staticmethod
    def _background_mean(background: BackgroundList, exposure: Exposure) -> float:
        if not len(background):
            return 0.0
        return float(np.mean(background.get_image(exposure.bbox), dtype=np.float64))

    @staticmethod
    def _carry_psf_flags(final: Table, measured: Table) -> Table:
        """Copy the ``calib_psf_*`` flags of the last PSF iteration's catalogue onto the final one (by id)."""
        names = [n for n in ("calib_psf_candidate", "calib_psf_used", "calib_psf_reserved") if n in measured.colnames]
        if not names:
            for name in ("calib_psf_candidate", "calib_psf_used", "calib_psf_reserved"):
                if name not in final.colnames:
                    final[name] = np.zeros(len(final), dtype=bool)
            return final
        index = {int(i): k for k, i in enumerate(np.asarray(measured["id"]))}
        rows = np.array([index.get(int(i), -1) for i in np.asarray(final["id"])], dtype=np.int64)
        found = rows >= 0
        for name in names:
            values = np.zeros(len(final), dtype=bool)
            values[found] = np.asarray(measured[name], dtype=bool)[rows[found]]
            final[name] = values
        return final

    @staticmethod
    def _finalize_catalog(catalog: Table, exposure_id_info: ExposureIdInfo | None) -> Table:
        """Make ids unique over the repository (with an `ExposureIdInfo`) and the metadata JSON-safe."""
        if exposure_id_info is not None and len(catalog):
            old = np.asarray(catalog["id"], dtype=np.int64)
            new = exposure_id_info.make_source_ids(old)
            mapping = dict(zip(old.tolist(), new.tolist()))
            catalog["id"] = new
            if "parent" in catalog.colnames:
                parent = np.asarray(catalog["parent"], dtype=np.int64)
                catalog["parent"] = np.array([mapping.get(int(p), 0) if p else 0 for p in parent], dtype=np.int64)
        if exposure_id_info is not None:
            catalog.meta["exposure_id"] = int(exposure_id_info.expId)
        catalog.meta = {k: _json_safe(v) for k, v in catalog.meta.items()}
        return catalog

    def _record_metadata(self, exposure: Exposure, catalog: Table, background: BackgroundList) -> None:
        md = self.metadata
        md["numSources"] = len(catalog)
        used = _count(catalog, "calib_psf_used")
        reserved = _count(catalog, "calib_psf_reserved")
        candidates = _count(catalog, "calib_psf_candidate")
        md["numPsfStarsUsed"] = used
        md["numPsfStarsReserved"] = reserved
        rejected = self.measurePsf.metadata.get("numRejected") if self.config.doMeasurePsf else None
        md["numPsfStarsRejected"] = int(rejected) if rejected is not None else max(candidates - used - reserved, 0)
        fwhm = self.psf_fwhm_grid(exposure, self.config.psfFwhmGridSize)
        good = fwhm[np.isfinite(fwhm)]
        md["psfFwhmMedian"] = float(np.median(good)) if good.size else float("nan")
        md["psfFwhmSpread"] = float(good.max() - good.min()) if good.size else float("nan")
        md["bgMean"] = self._background_mean(background, exposure)
        ignore = [p for p in ("DETECTED", "DETECTED_NEGATIVE", "BAD", "SAT", "CR", "EDGE", "NO_DATA", "INTRP")
                  if p in exposure.mask.planes]
        # Every other pixel in x and y: plenty for a robust RMS, 4x cheaper.
        image = exposure.image[::2, ::2]
        sky = image[~exposure.mask.get_plane(ignore)[::2, ::2]] if ignore else image.ravel()
        if sky.size:
            sky = sky.astype(np.float64)
            md["bgRms"] = float(1.4826 * np.median(np.abs(sky - np.median(sky))))
        else:
            md["bgRms"] = float("nan")
        self.log.info(
            "characterized: %d sources, %d PSF stars used, PSF FWHM %.3f px (spread %.3f), sky %.2f +- %.2f",
            md["numSources"], used, md["psfFwhmMedian"], md["psfFwhmSpread"], md["bgMean"], md["bgRms"],
        )

    @staticmethod
    def psf_fwhm_grid(exposure: Exposure, n: int = 5) -> np.ndarray:
        """Effective FWHM [pixels] of the exposure's PSF on an ``n`` x ``n`` grid spanning the image.

        Returns
        -------
        fwhm : `numpy.ndarray`, shape (n, n)
            ``fwhm[j, i]`` at the centre of cell (i, j) of an ``n`` x ``n`` tiling of the image; NaN where the
            PSF cannot be evaluated.
        """
        bbox = exposure.bbox
        xs = bbox.x0 - 0.5 + (np.arange(n) + 0.5) * bbox.width / n
        ys = bbox.y0 - 0.5 + (np.arange(n) + 0.5) * bbox.height / n
        out = np.full((len(ys), len(xs)), np.nan)
        if exposure.psf is None:
            return out
        for j, y in enumerate(ys):
            for i, x in enumerate(xs):
                try:
                    out[j, i] = psf_effective_fwhm(exposure.psf, float(x), float(y))
                except (ValueError, ArithmeticError):
                    pass
        return out


def _count(catalog: Table, name: str) -> int:
    return int(np.count_nonzero(np.asarray(catalog[name], dtype=bool))) if name in catalog.colnames else 0


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
