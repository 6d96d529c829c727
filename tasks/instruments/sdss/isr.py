"""ISR of SDSS corrected frames: soft bias, variance, mask and photometric calibration.

SDSS fpC frames are already bias-subtracted, flat-fielded and cleaned of bad columns by the SDSS photo
pipeline; what an LSST-style ``postISRCCD`` still needs is

1. the 1000 DN soft bias removed (header ``SOFTBIAS``);
2. a variance plane, ``variance = max(image, 0) / gain + dark_variance`` [DN^2], with the gain
   [e-/DN] and the dark variance [DN^2 per pixel: read noise and dark current] of the frame's CCD from
   the psField (HDU 6) -- the SDSS noise model (SDSS DR7 data model, "fpC"; ``sigma^2 = counts / gain
   + dark_variance`` in DN);
3. the SDSS mask (fpM): SATUR -> ``SAT``, INTERP -> ``INTRP``, CR -> ``CR`` (optionally every SDSS plane);
4. a `PhotoCalib` from the tsField: a source of ``c`` DN per exposure time ``t`` has
   ``f / f0 = c / t * 10**(0.4 * (aa + kk * airmass))`` with ``f0 = 3631 Jy``, so the calibration is
   ``3631e9 * 10**(0.4 * (aa + kk * airmass)) / t`` nJy per DN (Stoughton et al. 2002, AJ 123, 485); without a
   tsField, the frame's ``FLUX20`` (DN of a 20th-magnitude source) is used.

Pixel values stay in DN (``doConvertToElectrons`` multiplies by the gain, as the generic `tasks.isr.IsrTask`
produces electrons).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from graph import Field, Input, Output, PipelineTask, PipelineTaskConfig, PipelineTaskConnections, Struct, timeMethod

from ...errors import IsrError
from ...image import Exposure, Mask, MaskedImage, PhotoCalib

__all__ = [
    "SdssIsrConfig",
    "SdssIsrConnections",
    "SdssIsrTask",
    "photo_calib_from_flux20",
    "photo_calib_from_tsfield",
    "sdss_variance",
]

_DIMENSIONS = ("instrument", "exposure", "detector")
AB_FLUX0_NJY = 3631.0e9  # nJy of an AB magnitude 0 source


def photo_calib_from_tsfield(tsfield: dict[str, Any], band: str, exposure_time: float) -> PhotoCalib:
    """The `PhotoCalib` [nJy per DN] of one band from a tsField (see `read_tsfield`).

    Raises
    ------
    IsrError
        If the band or its aa, kk, airmass are missing.
    """
    try:
        values = tsfield["bands"][band]
        aa, kk, airmass = float(values["aa"]), float(values["kk"]), float(values["airmass"])
    except KeyError as err:
        raise IsrError(f"the tsField has no {err} for band {band!r}; bands: {sorted(tsfield.get('bands', {}))}.") from None
    if not exposure_time > 0:
        raise IsrError(f"cannot calibrate with exposure time {exposure_time!r} s.")
    mean = AB_FLUX0_NJY * 10.0 ** (0.4 * (aa + kk * airmass)) / exposure_time
    mag_err = math.hypot(float(values.get("aaErr", 0.0)), float(values.get("kkErr", 0.0)) * airmass)
    return PhotoCalib(mean, mean * 0.4 * math.log(10.0) * mag_err)


def photo_calib_from_flux20(flux20: float) -> PhotoCalib:
    """The `PhotoCalib` [nJy per DN] given the DN of a 20th-magnitude source (fpC ``FLUX20``)."""
    if not (math.isfinite(flux20) and flux20 > 0):
        raise IsrError(f"FLUX20 = {flux20!r} is not a usable zero point; ingest the tsField.")
    return PhotoCalib(10.0 ** ((31.4 - 20.0) / 2.5) / flux20)


def sdss_variance(image: np.ndarray, gain: float, dark_variance: float) -> np.ndarray:
    """SDSS noise model: ``max(image, 0) / gain + dark_variance`` [DN^2], float32.

    Parameters
    ----------
    image : `numpy.ndarray`, shape (ny, nx)
        Pixels in DN with the soft bias removed (sky included).
    gain : `float`
        Electrons per DN; > 0.
    dark_variance : `float`
        Read noise and dark current variance [DN^2 per pixel]; >= 0.
    """
    if not (gain > 0 and dark_variance >= 0):
        raise IsrError(f"cannot compute a variance with gain {gain!r} (> 0) and dark_variance {dark_variance!r} (>= 0).")
    return (np.maximum(np.asarray(image, dtype=np.float64), 0.0) / gain + dark_variance).astype(np.float32)


class SdssIsrConnections(PipelineTaskConnections, dimensions=_DIMENSIONS):
    ccdExposure = Input(  # noqa: N815 - the LSST stack's name
        name="raw",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="SDSS fpC corrected frame [DN, with the 1000 DN soft bias].",
    )
    fpM = Input(  # noqa: N815
        name="fpM", storageClass="MaskX", dimensions=_DIMENSIONS, doc="SDSS mask of the frame (fpM spans)."
    )
    psField = Input(  # noqa: N815
        name="psField",
        storageClass="StructuredDataDict",
        dimensions=_DIMENSIONS,
        doc="SDSS psField: gain and dark variance per band (and PSF).",
    )
    tsField = Input(  # noqa: N815
        name="tsField",
        storageClass="StructuredDataDict",
        dimensions=_DIMENSIONS,
        doc="SDSS tsField: photometric zero point (aa), extinction (kk) and airmass per band.",
    )
    exposure = Output(
        name="postISRCCD",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="Soft-bias-subtracted frame [DN] with variance [DN^2], SDSS mask planes and PhotoCalib [nJy/DN].",
    )


class SdssIsrConfig(PipelineTaskConfig, pipelineConnections=SdssIsrConnections):
    """Configuration of `SdssIsrTask`."""

    softBias: float | None = Field(
        None, description="DN subtracted from every pixel; None: the header's SOFTBIAS (1000 for fpC)."
    )
    doSetVariance: bool = Field(True, description="Set variance = max(image, 0) / gain + dark_variance [DN^2].")
    doMask: bool = Field(True, description="Copy the fpM planes into the mask.")
    fpmPlanes: list[str] = Field(
        default_factory=lambda: ["SAT", "INTRP", "CR"],
        description="fpM planes copied (LSST names: SAT, INTRP, CR; SDSS ones: OBJECT, BRIGHTOBJECT, "
        "NOTCHECKED, BINOBJECT, CATOBJECT, SUBTRACTED, GHOST); ['*'] copies every plane.",
    )
    doPhotoCalib: bool = Field(True, description="Attach a PhotoCalib from the tsField (FLUX20 if absent).")
    doConvertToElectrons: bool = Field(
        False, description="Multiply the image by the gain (variance by gain^2, calibration divided by it)."
    )


class SdssIsrTask(PipelineTask):
    """ISR of one SDSS corrected frame (see the module docstring).

    Metadata: ``softBias`` [DN], ``gain`` [e-/DN], ``darkVariance`` [DN^2], ``nSaturated``,
    ``nInterpolated``, ``nCosmicRay`` [pixels], ``calibrationMean`` [nJy/DN].
    """

    ConfigClass = SdssIsrConfig
    _DefaultName = "isr"

    @timeMethod
    def run(
        self,
        ccdExposure: Exposure,  # noqa: N803
        fpM: Mask | None = None,  # noqa: N803
        psField: dict[str, Any] | None = None,  # noqa: N803
        tsField: dict[str, Any] | None = None,  # noqa: N803
    ) -> Struct:
        """Process one fpC frame.

        Parameters
        ----------
        ccdExposure : `Exposure`
            The raw fpC [DN incl. soft bias]; not modified.
        fpM : `Mask`, optional
            The frame's fpM mask (same shape).
        psField : `dict`, optional
            From the psField formatter; needed for the variance.
        tsField : `dict`, optional
            From the tsField formatter; the calibration falls back to FLUX20 without it.

        Returns
        -------
        result : `Struct`
            ``exposure``: the processed `Exposure`.

        Raises
        ------
        IsrError
            If the variance is requested without a psField for the frame's band, or the fpM's shape
            differs from the frame's.
        """
        config = self.config
        band = ccdExposure.filter.band if ccdExposure.filter is not None else None
        metadata = ccdExposure.metadata.copy()
        soft_bias = config.softBias if config.softBias is not None else float(metadata.get("SOFTBIAS", 0.0))

        image = ccdExposure.image.astype(np.float64) - soft_bias
        mask = Mask(ccdExposure.mask.array.copy(), ccdExposure.mask.planes, xy0=ccdExposure.xy0)
        if config.doMask and fpM is not None:
            self._copy_fpm(mask, fpM)

        gain = dark_variance = None
        if psField is not None and band is not None:
            values = psField.get("bands", {}).get(band)
            if values is not None:
                gain, dark_variance = float(values["gain"]), float(values["dark_variance"])
        if config.doSetVariance and gain is None:
            raise IsrError(
                f"the variance of an SDSS frame needs the gain and dark variance of band {band!r} from its "
                "psField; ingest the psField with the fpC (or set doSetVariance=False)."
            )
        variance = sdss_variance(image, gain, dark_variance) if config.doSetVariance else ccdExposure.variance.copy()

        photo_calib = ccdExposure.photo_calib
        exposure_time = ccdExposure.visit_info.exposure_time if ccdExposure.visit_info is not None else None
        if config.doPhotoCalib:
            if tsField is not None and band is not None and exposure_time:
                photo_calib = photo_calib_from_tsfield(tsField, band, exposure_time)
            else:
                photo_calib = photo_calib_from_flux20(float(metadata.get("FLUX20", float("nan"))))
        visit_info = ccdExposure.visit_info
        if tsField is not None and band is not None and visit_info is not None:
            airmass = tsField.get("bands", {}).get(band, {}).get("airmass")
            if airmass is not None:
                visit_info = dataclasses.replace(visit_info, airmass=float(airmass))

        unit = "DN"
        if config.doConvertToElectrons:
            if gain is None:
                raise IsrError("doConvertToElectrons needs the gain from the psField.")
            image *= gain
            variance = (variance.astype(np.float64) * gain**2).astype(np.float32)
            if photo_calib is not None:
                photo_calib = PhotoCalib(photo_calib.calibration_mean / gain, photo_calib.calibration_err / gain)
            unit = "electron"

        masked_image = MaskedImage(image.astype(np.float32), mask, variance, xy0=ccdExposure.xy0)
        metadata["BUNIT"] = (unit, "Unit of the pixel values")
        metadata["SOFTBIAS"] = (0, "soft bias removed by SdssIsrTask")
        if gain is not None:
            metadata["GAIN"] = (gain, "[e-/DN] from the psField")
            metadata["DARKVAR"] = (dark_variance, "[DN^2] dark variance from the psField")
        self.metadata["softBias"] = soft_bias
        self.metadata["gain"] = gain if gain is not None else float("nan")
        self.metadata["darkVariance"] = dark_variance if dark_variance is not None else float("nan")
        for key, plane in (("nSaturated", "SAT"), ("nInterpolated", "INTRP"), ("nCosmicRay", "CR")):
            self.metadata[key] = int(mask.get_plane(plane).sum()) if plane in mask.planes else 0
        if photo_calib is not None:
            self.metadata["calibrationMean"] = photo_calib.calibration_mean
        self.log.info(
            "ISR of SDSS %s: soft bias %.0f DN, gain %.3f e-/DN, %d SAT / %d INTRP / %d CR pixels",
            getattr(ccdExposure.detector, "name", "?"), soft_bias, gain, self.metadata["nSaturated"],
            self.metadata["nInterpolated"], self.metadata["nCosmicRay"],
        )
        exposure = Exposure(
            masked_image,
            wcs=None if ccdExposure.wcs is None else ccdExposure.wcs.deepcopy(),
            psf=ccdExposure.psf,
            photo_calib=photo_calib,
            visit_info=visit_info,
            detector=ccdExposure.detector,
            filter=ccdExposure.filter,
            metadata=metadata,
        )
        return Struct(exposure=exposure)

    def _copy_fpm(self, mask: Mask, fpm: Mask) -> None:
        if fpm.shape != mask.shape:
            raise IsrError(f"the fpM mask has shape {fpm.shape} but the frame has {mask.shape}.")
        planes = list(fpm.planes) if "*" in self.config.fpmPlanes else list(self.config.fpmPlanes)
        for name in planes:
            if name not in fpm.planes:
                raise IsrError(f"fpmPlanes names {name!r}, which the fpM does not have; planes: {sorted(fpm.planes)}.")
            mask.set_plane(name, fpm.get_plane(name))
