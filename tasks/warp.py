"""Warp the calibrated exposures of a visit onto a patch of a skymap tract: direct and PSF-matched warps.

`MakeWarpTask` follows ``lsst.drp.tasks.make_direct_warp.MakeDirectWarpTask`` and the PSF-matched warps of
``lsst.pipe.tasks.makeWarp.MakeWarpTask``.  For every detector of the visit that overlaps the patch:

1. calibrate the ``calexp`` to nJy, optionally adding its subtracted background back first
   (``doRevertOldBackground``: background-unsubtracted warps, as background matching needs).  The calibration
   is the calexp's own ``photo_calib``, or with ``useVisitSummaryPhotoCalib`` the visit-level calibration of
   the ``visitSummary`` (`tasks.visit_summary.ConsolidateVisitSummaryTask`), the same for every detector of
   the visit, so that independent per-detector zero-point errors do not make steps in the sky level between
   the detectors of a warp;
2. ``directWarp``: resample it onto the patch's outer box in the tract frame (`warp_exposure`);
3. ``psfMatchedWarp``: first convolve it with a spatially varying kernel that matches its PSF to a circular
   Gaussian model PSF of FWHM ``modelPsfFwhm`` [arcsec] in the tract frame (`match_to_model_psf`), then
   resample it.  A detector whose PSF is wider than the model contributes nothing to this warp (metadata
   ``psfTooWideDetectors``);
4. combine the detectors: each output pixel comes from the first detector (in input order) that covers it.

Warps are in nJy per tract pixel with ``PhotoCalib(1.0)``; pixels without data are ``NO_DATA`` and NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import fft as sp_fft

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
from graph.errors import NoWorkFound

from .errors import WarpingError
from .image import Exposure, GaussianPsf, MaskedImage, PatchInfo, PcaPsf, PhotoCalib
from .image.convolve import convolve_on_grid, convolved_mask, grid_nodes, kernel_radius
from .image.geom import Box2I
from .image.mask import Mask
from .image.psf import FWHM_PER_SIGMA
from .image.warping import WARPING_KERNELS, PixelMapping, warp_exposure
from .visit_summary import visit_photo_calib

__all__ = [
    "MakeWarpConfig",
    "MakeWarpConnections",
    "MakeWarpTask",
    "gaussian_image",
    "match_to_model_psf",
    "psf_matching_kernel",
]

_DIMENSIONS = ("skymap", "tract", "patch", "visit", "instrument")
_CALEXP_DIMENSIONS = ("instrument", "visit", "detector")


# PSF matching ----------------------------------------------------------------------------------------------


def gaussian_image(covariance: np.ndarray, half_size: int) -> np.ndarray:
    """An elliptical Gaussian sampled at pixel centres, centred on the central pixel, unit sum.

    Parameters
    ----------
    covariance : `numpy.ndarray`, shape (2, 2)
        ``[[Ixx, Ixy], [Ixy, Iyy]]`` [pixels^2]; positive definite.
    half_size : `int`
        The image has shape (2 half_size + 1, 2 half_size + 1).
    """
    inv = np.linalg.inv(np.asarray(covariance, dtype=float))
    u = np.arange(-half_size, half_size + 1, dtype=float)
    x, y = np.meshgrid(u, u)
    image = np.exp(-0.5 * (inv[0, 0] * x * x + 2 * inv[0, 1] * x * y + inv[1, 1] * y * y))
    return image / image.sum()


def psf_matching_kernel(
    psf_image: np.ndarray, target_image: np.ndarray, *, half_size: int, regularization: float = 1e-5
) -> np.ndarray:
    """The kernel that convolves a PSF into a (wider) target PSF: a Wiener-regularised Fourier ratio.

    Parameters
    ----------
    psf_image, target_image : `numpy.ndarray`, shape (h, w)
        Odd-sized images centred on their central pixel (any sizes).
    half_size : `int`
        Half-width of the returned kernel [pixels].
    regularization : `float`, optional
        ``lambda`` of ``K = T P* / (|P|^2 + lambda max|P|^2)``: damps the frequencies where the PSF has no power.

    Returns
    -------
    kernel : `numpy.ndarray`, shape (2 half_size + 1, 2 half_size + 1), float64
        Normalised to unit sum (flux conserving), centred.

    Notes
    -----
    Wiener deconvolution (e.g. Gonzalez & Woods, Digital Image Processing, sec. 5.8) of the target by the PSF.
    """
    psf_image = np.asarray(psf_image, dtype=float)
    target_image = np.asarray(target_image, dtype=float)
    size = max(max(psf_image.shape), max(target_image.shape), 2 * half_size + 1)
    n = sp_fft.next_fast_len(2 * size)
    c = n // 2

    def padded(image: np.ndarray) -> np.ndarray:
        out = np.zeros((n, n))
        h, w = image.shape
        out[c - h // 2 : c - h // 2 + h, c - w // 2 : c - w // 2 + w] = image / image.sum()
        return sp_fft.ifftshift(out)

    fp = sp_fft.rfft2(padded(psf_image))
    ft = sp_fft.rfft2(padded(target_image))
    power = np.abs(fp) ** 2
    ratio = ft * np.conj(fp) / (power + regularization * power.max())
    kernel = sp_fft.fftshift(sp_fft.irfft2(ratio, s=(n, n)))
    kernel = kernel[c - half_size : c + half_size + 1, c - half_size : c + half_size + 1]
    total = kernel.sum()
    if not total > 0:
        raise WarpingError("the PSF-matching kernel sums to <= 0: the PSF cannot be matched to the model.")
    return kernel / total


def match_to_model_psf(
    exposure: Exposure,
    target_covariance: Any,
    *,
    grid_spacing: int = 512,
    kernel_half_size: int = 15,
    regularization: float = 1e-5,
    flux_radius_threshold: float = 1e-3,
) -> Struct:
    """Convolve an exposure so that its PSF becomes a given Gaussian, with a spatially varying kernel.

    Parameters
    ----------
    exposure : `Exposure`
        Input with a ``psf``; not modified.
    target_covariance : callable
        ``f(x, y) -> (2, 2) array``: covariance [input pixels^2] of the target Gaussian at a parent position.
    grid_spacing : `int`, optional
        Spacing [pixels] of the grid of kernel positions (cell centres of a tiling of the image).
    kernel_half_size : `int`, optional
        Half-width of the matching kernels [pixels].
    regularization : `float`, optional
        See `psf_matching_kernel`.
    flux_radius_threshold : `float`, optional
        Mask bits are ORed, and the image border is flagged ``NO_DATA``, over the square where the kernel
        exceeds this fraction of its peak.

    Returns
    -------
    result : `Struct`
        ``exposure`` (the convolved copy, psf None), ``psfTooWide`` (bool: the PSF is at least as wide as the
        target somewhere -- then ``exposure`` is None), ``psfSigma`` and ``targetSigma`` (largest determinant
        radii over the grid [pixels]), ``radius`` (mask dilation radius [pixels]).

    Notes
    -----
    The image is split into the supports of the bilinear (hat) weights of the grid nodes; each support is
    convolved (`scipy.signal.fftconvolve`) with its node's kernel and the results are blended with the hat
    weights, so the kernel varies bilinearly between nodes (as ``lsst.ip.diffim``'s spatially varying kernels).
    The variance is convolved with the squared kernel.  Missing pixels are zero-filled and flagged afterwards.
    """
    if exposure.psf is None:
        raise WarpingError("cannot PSF-match an exposure without a PSF.")
    bbox = exposure.bbox
    h, w = bbox.shape
    xnodes = grid_nodes(w, grid_spacing)
    ynodes = grid_nodes(h, grid_spacing)
    kernels: dict[tuple[int, int], np.ndarray] = {}
    psf_sigma = target_sigma = 0.0
    too_wide = False
    for j, yn in enumerate(ynodes):
        for i, xn in enumerate(xnodes):
            x, y = xn + bbox.x0, yn + bbox.y0
            psf_image = exposure.psf.compute_kernel_image(x, y)
            cov = np.asarray(target_covariance(x, y), dtype=float)
            t_sigma = float(np.linalg.det(cov)) ** 0.25
            p_sigma = exposure.psf.determinant_radius(x, y)
            psf_sigma, target_sigma = max(psf_sigma, p_sigma), max(target_sigma, t_sigma)
            if not p_sigma < t_sigma:
                too_wide = True
                continue
            half_target = max(kernel_half_size, int(math.ceil(5 * math.sqrt(max(cov[0, 0], cov[1, 1])))))
            target = gaussian_image(cov, half_target)
            kernels[(j, i)] = psf_matching_kernel(psf_image, target, half_size=kernel_half_size,
                                                  regularization=regularization)
    result = Struct(exposure=None, psfTooWide=too_wide, psfSigma=psf_sigma, targetSigma=target_sigma, radius=0)
    if too_wide:
        return result
    radius = max(kernel_radius(kernel, flux_radius_threshold) for kernel in kernels.values())

    image = exposure.image.astype(np.float32, copy=True)
    variance = exposure.variance.astype(np.float32, copy=True)
    missing = ~(np.isfinite(image) & np.isfinite(variance))
    missing |= exposure.mask.get_plane("NO_DATA", missing_ok=True)
    image[missing] = 0.0
    variance[missing] = 0.0
    out_image, out_var = convolve_on_grid(
        [image, variance], {node: [k, k * k] for node, k in kernels.items()}, xnodes, ynodes
    )
    mask = convolved_mask(exposure.mask, missing, radius)
    bad = mask.get_plane("NO_DATA")
    out_image[bad] = np.nan
    out_var[bad] = np.nan
    convolved = Exposure(
        MaskedImage(out_image.astype(np.float32), mask, out_var.astype(np.float32), xy0=bbox.xy0),
        wcs=exposure.wcs,
        psf=None,
        photo_calib=exposure.photo_calib,
        visit_info=exposure.visit_info,
        detector=exposure.detector,
        filter=exposure.filter,
        metadata=exposure.metadata.copy(),
    )
    result.exposure = convolved
    result.radius = radius
    return result


# The task ---------------------------------------------------------------------------------------------------


class MakeWarpConnections(PipelineTaskConnections, dimensions=_DIMENSIONS):
    calExpList = Input(  # noqa: N815 - the LSST stack's name
        name="calexp",
        storageClass="ExposureF",
        dimensions=_CALEXP_DIMENSIONS,
        multiple=True,
        deferLoad=True,
        doc="Calibrated exposures of the visit (every detector overlapping the patch).",
    )
    backgroundList = Input(  # noqa: N815
        name="calexpBackground",
        storageClass="Background",
        dimensions=_CALEXP_DIMENSIONS,
        multiple=True,
        doc="Backgrounds subtracted from the calexps, added back when doRevertOldBackground.",
    )
    skyMap = Input(  # noqa: N815
        name="skyMap",
        storageClass="SkyMap",
        dimensions=("skymap",),
        doc="The skymap that defines the patch's pixel grid.",
    )
    visitSummary = Input(  # noqa: N815
        name="visitSummary",
        storageClass="AstropyFitsTable",
        dimensions=("instrument", "visit"),
        doc="The visit's consolidated calibration (ConsolidateVisitSummaryTask), when useVisitSummaryPhotoCalib.",
    )
    directWarp = Output(  # noqa: N815
        name="directWarp",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="The visit resampled onto the patch's outer box (tract frame, nJy).",
    )
    psfMatchedWarp = Output(  # noqa: N815
        name="psfMatchedWarp",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="The visit PSF-matched to the Gaussian model PSF, resampled onto the patch's outer box (nJy).",
    )

    def __init__(self, *, config: Any = None):
        super().__init__(config=config)
        if config is None:
            return
        if not config.doRevertOldBackground:
            del self.backgroundList
        if not config.useVisitSummaryPhotoCalib:
            del self.visitSummary
        if not config.makeDirect:
            del self.directWarp
        if not config.makePsfMatched:
            del self.psfMatchedWarp


class MakeWarpConfig(PipelineTaskConfig, pipelineConnections=MakeWarpConnections):
    """Configuration of `MakeWarpTask`."""

    makeDirect: bool = Field(True, description="Make the directWarp.")  # noqa: N815
    makePsfMatched: bool = Field(True, description="Make the psfMatchedWarp.")  # noqa: N815
    doRevertOldBackground: bool = Field(  # noqa: N815
        False, description="Add the calexp's subtracted background back before warping (background-unsubtracted warps)."
    )
    useVisitSummaryPhotoCalib: bool = Field(  # noqa: N815
        False,
        description="Calibrate every calexp with the visit-level calibration of the visitSummary input instead of "
        "its own photo_calib (no steps between detectors).",
    )
    warpingKernelName: str = Field(  # noqa: N815
        "lanczos3", description=f"Warping kernel: one of {', '.join(WARPING_KERNELS)}."
    )
    interpLength: int = Field(  # noqa: N815
        32, ge=1, description="Spacing [tract pixels] of the grid on which the WCS mapping is computed exactly."
    )
    psfGridSpacing: int = Field(  # noqa: N815
        256, ge=1, description="Spacing [tract pixels] of the positions at which the warped PSF is realised."
    )
    modelPsfFwhm: float = Field(  # noqa: N815
        2.0, gt=0, description="FWHM [arcsec] of the circular Gaussian model PSF of the psfMatchedWarp."
    )
    modelPsfSize: int = Field(  # noqa: N815
        0, ge=0, description="Side [tract pixels] of the model PSF image, odd; 0: 2 * ceil(5 sigma) + 1."
    )
    matchingKernelSize: int = Field(  # noqa: N815
        31, ge=3, description="Side [calexp pixels] of the PSF-matching kernel, odd."
    )
    matchingKernelGridSpacing: int = Field(  # noqa: N815
        512, ge=16, description="Spacing [calexp pixels] of the grid of PSF-matching kernels (bilinearly blended)."
    )
    matchingRegularization: float = Field(  # noqa: N815
        1e-5, gt=0, description="Wiener regularisation of the PSF-matching kernel (fraction of the peak PSF power)."
    )


class MakeWarpTask(PipelineTask):
    """Resample the calexps of one visit onto one patch: ``directWarp`` and ``psfMatchedWarp``.

    See the module docstring.  Metadata: ``nInputs`` (detectors given), ``nDirectInputs`` /
    ``nPsfMatchedInputs`` (detectors contributing pixels), ``directCoveredFraction`` /
    ``psfMatchedCoveredFraction`` (fraction of the patch's outer box with data), ``psfTooWideDetectors``
    (detector ids whose PSF is wider than the model), ``modelPsfFwhmPixels`` [tract pixels],
    ``photoCalibSource`` (``calexp`` or ``visitSummary``) and, with the visit summary, ``visitCalibrationMean``
    [nJy/count].
    """

    ConfigClass = MakeWarpConfig
    _DefaultName = "makeWarp"

    # Quantum I/O -------------------------------------------------------------------------------------------

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        """Read the patch geometry and the calexps that overlap it, warp, write the warps that have data."""
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.data_id
        sky_map = inputs["skyMap"]
        patch_info = sky_map[int(data_id["tract"])].patch_info(int(data_id["patch"]))
        handles = list(inputs["calExpList"])
        backgrounds = None
        if self.config.doRevertOldBackground:
            by_detector = {
                int(ref.data_id["detector"]): bg for ref, bg in zip(inputRefs.backgroundList, inputs["backgroundList"])
            }
            backgrounds = []
            for handle in handles:
                detector = int(handle.data_id["detector"])
                if detector not in by_detector:
                    raise WarpingError(f"no calexpBackground for detector {detector} of visit {data_id['visit']}.")
                backgrounds.append(by_detector[detector])
        # Read only the detectors whose outline reaches the patch.
        keep = [k for k, hd in enumerate(handles) if _overlaps(hd.get(component="wcs"), hd.get(component="bbox"), patch_info)]
        if not keep:
            raise NoWorkFound(f"no calexp of visit {data_id['visit']} overlaps patch {patch_info.id}.")
        calexps = [handles[k].get() for k in keep]
        detector_ids = [int(handles[k].data_id["detector"]) for k in keep]
        if backgrounds is not None:
            backgrounds = [backgrounds[k] for k in keep]
        outputs = self.run(calexps, patch_info, backgroundList=backgrounds, visitId=int(data_id["visit"]),
                           detectorIds=detector_ids, visitSummary=inputs.get("visitSummary"))
        for name in ("directWarp", "psfMatchedWarp"):
            value = getattr(outputs, name)
            if value is not None and hasattr(outputRefs, name):
                butlerQC.put(value, getattr(outputRefs, name))

    # The algorithm -----------------------------------------------------------------------------------------

    @timeMethod
    def run(
        self,
        calExpList: list[Exposure],  # noqa: N803
        patchInfo: PatchInfo,  # noqa: N803
        *,
        backgroundList: list[Any] | None = None,  # noqa: N803
        visitId: int,  # noqa: N803
        detectorIds: list[int] | None = None,  # noqa: N803
        visitSummary: Any = None,  # noqa: N803
    ) -> Struct:
        """Warp the calexps of a visit onto a patch.

        Parameters
        ----------
        calExpList : `list` [`Exposure`]
            Calibrated exposures (counts, with ``photo_calib``, ``wcs`` and ``psf``), or deferred handles
            (objects with ``get()``).
        patchInfo : `PatchInfo`
            The patch: output box ``patchInfo.outer_bbox`` in the tract frame ``patchInfo.wcs``.
        backgroundList : `list` [`BackgroundList`], optional
            The backgrounds subtracted from the calexps (same order); added back when
            ``doRevertOldBackground``.
        visitId : `int`
            The visit (recorded in the warps' metadata as ``VISIT``).
        detectorIds : `list` [`int`], optional
            Detector ids of the calexps (for the metadata); default from ``exposure.detector`` or the index.
        visitSummary : `astropy.table.Table`, optional
            The visit's ``visitSummary``: needed when ``useVisitSummaryPhotoCalib``; then every calexp is
            calibrated with ``PhotoCalib(visit_calibration_mean)`` rather than its own ``photo_calib``.

        Returns
        -------
        result : `Struct`
            ``directWarp`` and ``psfMatchedWarp`` (`Exposure`, nJy, or None when not made or without data).

        Raises
        ------
        NoWorkFound
            If no calexp covers any pixel of the patch.
        WarpingError
            If ``doRevertOldBackground`` and ``backgroundList`` is missing or of a different length, a calexp
            has no ``photo_calib`` (unless the visit summary's is used) or ``wcs``, or
            ``useVisitSummaryPhotoCalib`` and ``visitSummary`` is missing or not a valid summary of ``visitId``.
        """
        config = self.config
        calexps = [c.get() if hasattr(c, "get") and not isinstance(c, Exposure) else c for c in calExpList]
        if config.doRevertOldBackground and (backgroundList is None or len(backgroundList) != len(calexps)):
            raise WarpingError(
                "doRevertOldBackground needs one background per calexp: got "
                f"{0 if backgroundList is None else len(backgroundList)} for {len(calexps)} calexps."
            )
        if detectorIds is None:
            detectorIds = [c.detector.id if c.detector is not None else k for k, c in enumerate(calexps)]
        visit_calib = None
        if config.useVisitSummaryPhotoCalib:
            if visitSummary is None:
                raise WarpingError(f"useVisitSummaryPhotoCalib needs the visitSummary of visit {visitId}: got None.")
            try:
                visit_calib = visit_photo_calib(visitSummary, visitId)
            except ValueError as err:
                raise WarpingError(f"bad visitSummary for visit {visitId}: {err}") from err
            self.metadata["visitCalibrationMean"] = visit_calib.calibration_mean
        self.metadata["photoCalibSource"] = "calexp" if visit_calib is None else "visitSummary"
        bbox = patchInfo.outer_bbox
        wcs = patchInfo.wcs
        tract_scale = _pixel_scale(wcs, bbox)
        model_sigma = config.modelPsfFwhm / tract_scale / FWHM_PER_SIGMA  # [tract pixels]
        model_size = config.modelPsfSize or 2 * int(math.ceil(5 * model_sigma)) + 1
        if model_size % 2 == 0:
            model_size += 1
        self.metadata["nInputs"] = len(calexps)
        self.metadata["modelPsfFwhmPixels"] = float(model_sigma * FWHM_PER_SIGMA)

        direct_parts: list[Exposure] = []
        matched_parts: list[Exposure] = []
        too_wide: list[int] = []
        for k, calexp in enumerate(calexps):
            calibrated = self._calibrate(calexp, None if backgroundList is None else backgroundList[k], visit_calib)
            if config.makeDirect:
                warp = warp_exposure(calibrated, wcs, bbox, kernel=config.warpingKernelName,
                                     interp_length=config.interpLength, psf_grid_spacing=config.psfGridSpacing)
                direct_parts.append(warp)
            if config.makePsfMatched:
                matched = self._psf_match(calibrated, wcs, model_sigma)
                if matched.psfTooWide:
                    too_wide.append(int(detectorIds[k]))
                    self.log.warning(
                        "detector %s: PSF sigma %.2f px is wider than the model's %.2f px: not in the psfMatchedWarp",
                        detectorIds[k], matched.psfSigma, matched.targetSigma,
                    )
                else:
                    warp = warp_exposure(matched.exposure, wcs, bbox, kernel=config.warpingKernelName,
                                         interp_length=config.interpLength, psf_grid_spacing=config.psfGridSpacing)
                    matched_parts.append(warp)

        direct = self._combine(direct_parts, bbox, visitId, "direct") if config.makeDirect else None
        psf_matched = self._combine(matched_parts, bbox, visitId, "psfMatched") if config.makePsfMatched else None
        if psf_matched is not None:
            psf_matched.psf = GaussianPsf(model_size, model_size, model_sigma)
        self.metadata["psfTooWideDetectors"] = too_wide
        if direct is None and psf_matched is None:
            raise NoWorkFound(f"no calexp of visit {visitId} covers any pixel of patch {patchInfo.id}.")
        return Struct(directWarp=direct, psfMatchedWarp=psf_matched)

    # Helpers -------------------------------------------------------------------------------------------------

    def _calibrate(self, calexp: Exposure, background: Any, photo_calib: PhotoCalib | None = None) -> Exposure:
        """A copy of the calexp in nJy (background restored first when given), with ``photo_calib`` if given,
        else the calexp's own."""
        if photo_calib is None:
            photo_calib = calexp.photo_calib
        if photo_calib is None:
            raise WarpingError(f"calexp {calexp} has no photo_calib: cannot calibrate it to nJy.")
        masked = calexp.masked_image
        if background is not None:
            masked = masked.copy()
            masked.image[...] += background.get_image(calexp.bbox)
        calibrated = photo_calib.calibrate_image(masked)
        return Exposure(
            calibrated,
            wcs=calexp.wcs,
            psf=calexp.psf,
            photo_calib=PhotoCalib(1.0),
            visit_info=calexp.visit_info,
            detector=calexp.detector,
            filter=calexp.filter,
            metadata=calexp.metadata,
        )

    def _psf_match(self, calibrated: Exposure, wcs: Any, model_sigma: float) -> Struct:
        """Convolve a calibrated calexp to the model PSF (covariance mapped to calexp pixels)."""
        mapping = PixelMapping(calibrated.wcs, wcs)
        model_cov = model_sigma**2 * np.eye(2)

        def target_covariance(x: float, y: float) -> np.ndarray:
            xo, yo = mapping.inverse(np.array([x]), np.array([y]))
            _, _, jac = mapping.jacobian(xo, yo)
            j = jac[0]
            return j @ model_cov @ j.T

        half = self.config.matchingKernelSize // 2
        return match_to_model_psf(
            calibrated,
            target_covariance,
            grid_spacing=self.config.matchingKernelGridSpacing,
            kernel_half_size=half,
            regularization=self.config.matchingRegularization,
        )

    def _combine(self, parts: list[Exposure], bbox: Box2I, visit_id: int, kind: str) -> Exposure | None:
        """Merge detector warps: each pixel from the first warp with data there; None without data."""
        key = "nDirectInputs" if kind == "direct" else "nPsfMatchedInputs"
        frac_key = "directCoveredFraction" if kind == "direct" else "psfMatchedCoveredFraction"
        self.metadata[key] = 0
        self.metadata[frac_key] = 0.0
        if not parts:
            return None
        out = parts[0]
        filled = np.isfinite(out.image)
        source = np.where(filled, 0, -1).astype(np.int16)
        n_used = int(filled.any())
        for k, part in enumerate(parts[1:], start=1):
            for name in part.mask.planes:
                out.mask.add_plane(name)
            take = ~filled & np.isfinite(part.image)
            if not take.any():
                continue
            n_used += 1
            out.image[take] = part.image[take]
            out.variance[take] = part.variance[take]
            out.mask.array[take] = _remap_bits(part.mask, out.mask)[take]
            source[take] = k
            filled |= take
        if not filled.any():
            return None
        if len(parts) > 1 and kind == "direct":
            out.psf = _merge_psfs(parts, source, bbox, self.config.psfGridSpacing)
        out.metadata["VISIT"] = int(visit_id)
        out.metadata["WARPTYPE"] = kind
        self.metadata[key] = n_used
        self.metadata[frac_key] = float(filled.mean())
        return out


def _remap_bits(mask: Mask, target: Mask) -> np.ndarray:
    """The bits of ``mask`` re-expressed with ``target``'s plane numbering (planes added to target already)."""
    if all(target.planes.get(n) == b for n, b in mask.planes.items()):
        return mask.array
    out = np.zeros_like(mask.array)
    for name, bit in mask.planes.items():
        out |= ((mask.array >> bit) & 1).astype(np.int32) << target.planes[name]
    return out


def _merge_psfs(parts: list[Exposure], source: np.ndarray, bbox: Box2I, spacing: int) -> PcaPsf | None:
    """One PSF for a merged warp: each grid point takes the PSF of the detector that supplied its pixel."""
    xs = bbox.x0 + grid_nodes(bbox.width, spacing)
    ys = bbox.y0 + grid_nodes(bbox.height, spacing)
    stamps, px, py = [], [], []
    for y in ys:
        for x in xs:
            k = int(source[int(round(y)) - bbox.y0, int(round(x)) - bbox.x0])
            if k < 0 or parts[k].psf is None:
                continue
            stamps.append(parts[k].psf.compute_kernel_image(float(x), float(y)))
            px.append(x)
            py.append(y)
    if not stamps:
        return parts[0].psf
    half = max(max(s.shape) // 2 for s in stamps)
    padded = np.zeros((len(stamps), 2 * half + 1, 2 * half + 1))
    for i, s in enumerate(stamps):
        hy, hx = s.shape[0] // 2, s.shape[1] // 2
        padded[i, half - hy : half + hy + 1, half - hx : half + hx + 1] = s
    return PcaPsf.fit(padded, np.array(px), np.array(py), bbox)


def _pixel_scale(wcs: Any, bbox: Box2I) -> float:
    """Mean pixel scale [arcsec/pixel] of a WCS at the centre of a box."""
    x, y = bbox.center
    sky = wcs.pixel_to_world(np.array([x, x + 1.0, x]), np.array([y, y, y + 1.0]))
    return math.sqrt(float(sky[0].separation(sky[1]).arcsec) * float(sky[0].separation(sky[2]).arcsec))


def _overlaps(wcs: Any, bbox: Box2I, patch_info: PatchInfo) -> bool:
    """Whether a detector's outline (mapped to the tract frame) reaches the patch's outer box."""
    if wcs is None:
        return False
    mapping = PixelMapping(wcs, patch_info.wcs)
    corners = bbox.corners()
    ex = np.concatenate([np.linspace(c0[0], c1[0], 9) for c0, c1 in zip(corners, np.roll(corners, -1, axis=0))])
    ey = np.concatenate([np.linspace(c0[1], c1[1], 9) for c0, c1 in zip(corners, np.roll(corners, -1, axis=0))])
    xo, yo = mapping.inverse(ex, ey)
    good = np.isfinite(xo) & np.isfinite(yo)
    if not good.any():
        return False
    out = patch_info.outer_bbox
    return bool(
        xo[good].max() >= out.x0 - 3 and xo[good].min() <= out.x1 + 2
        and yo[good].max() >= out.y0 - 3 and yo[good].min() <= out.y1 + 2
    )
