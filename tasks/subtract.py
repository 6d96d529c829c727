"""PSF-matched image subtraction: `AlardLuptonSubtractTask`, with the decorrelation afterburner.

For one ``(visit, detector)`` the task subtracts a template (``GetTemplateTask``'s coadd warped onto the
detector, in nJy) from the science exposure (``calexp``, in counts), following
``lsst.ip.diffim.subtractImages.AlardLuptonSubtractTask``:

1. select kernel sources from the science ``src`` catalogue (isolated, unflagged, ``psfFlux`` S/N above
   ``kernelSourceSignalToNoiseMin``);
2. choose which image to convolve (``mode``): the template (``convolveTemplate``), the science image
   (``convolveScience``) or, with ``auto``, whichever has the narrower PSF, so the kernel never deconvolves;
3. solve for the spatially varying Alard & Lupton (1998) PSF-matching kernel (`MakeKernelTask`) and convolve
   the chosen image with it (`tasks.image.convolve_masked_image`: one FFT per spatial term of the kernel);
4. subtract: ``D = S - K (x) T - b`` (convolveTemplate) or ``D = (K (x) S + b - T) / k`` (convolveScience, ``k``
   the kernel sum, so ``D`` stays in the science image's counts);  the variance planes add, the convolved one
   convolved with ``K^2``;
5. `finalize`: merge the template's mask planes (`updateMasks`) and remove the noise correlations the
   convolution introduced (`decorrelation_kernel`, Reiss & Lupton 2016, arXiv:1609.04370 -- the ZOGY-style
   "afterburner"), constant or on a grid of positions (``spatiallyVaryingDecorrelation``);
6. correct the difference's variance plane to the noise measured on its sky pixels (``doScaleDiffimVariance``,
   `variance_scale`: the propagated variance of a coadd template's correlated noise is only approximate).

The difference is in the science image's units with its `PhotoCalib`; its PSF is the science PSF
(convolveTemplate) or the template PSF (convolveScience).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.table import Table
from scipy import fft as sp_fft
from scipy import ndimage, signal

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

from .errors import PsfMatchingError
from .image import Exposure, Kernel, Mask, MaskedImage, PcaPsf
from .image.convolve import (
    convolve_masked_image,
    convolve_on_grid,
    convolved_mask,
    grid_nodes,
    kernel_radius,
    node_weights,
)
from .psf_match import MakeKernelTask, _table_column
from .visit_summary import visit_photo_calib

__all__ = [
    "AlardLuptonSubtractConfig",
    "AlardLuptonSubtractConnections",
    "AlardLuptonSubtractTask",
    "decorrelated_variance",
    "decorrelation_kernel",
    "difference_footprint_ratio",
    "noise_correlation",
    "variance_scale",
    "template_coverage",
    "difference_noise_ratio",
]

_DIMENSIONS = ("instrument", "visit", "detector")
_MODES = ("convolveTemplate", "convolveScience", "auto")


class AlardLuptonSubtractConnections(PipelineTaskConnections, dimensions=_DIMENSIONS):
    template = Input(
        name="template",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="Template warped onto the science exposure's pixels (GetTemplateTask) [nJy].",
    )
    science = Input(
        name="calexp",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="Science exposure to subtract the template from (background-subtracted, calibrated).",
    )
    sources = Input(
        name="src",
        storageClass="ArrowAstropy",
        dimensions=_DIMENSIONS,
        doc="Sources measured on the science exposure; the kernel sources are selected from them.",
    )
    difference = Output(
        name="difference",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="Decorrelated difference image, science minus template [science counts].",
    )
    matchedTemplate = Output(  # noqa: N815 - the LSST stack's name
        name="matchedTemplate",
        storageClass="ExposureF",
        dimensions=_DIMENSIONS,
        doc="The template as subtracted: PSF-matched (convolveTemplate) or scaled to science counts.",
    )
    psfMatchingKernel = Output(  # noqa: N815
        name="psfMatchingKernel",
        storageClass="MatchingKernel",
        dimensions=_DIMENSIONS,
        doc="The spatially varying PSF-matching kernel.",
    )
    kernelSources = Output(  # noqa: N815
        name="kernelSources",
        storageClass="ArrowAstropy",
        dimensions=_DIMENSIONS,
        doc="The stars that constrained the PSF-matching kernel, with their kernel sums and residuals.",
    )


class AlardLuptonSubtractConfig(PipelineTaskConfig, pipelineConnections=AlardLuptonSubtractConnections):
    """Configuration of `AlardLuptonSubtractTask` (names as in ``lsst.ip.diffim`` where it has them)."""

    mode: str = Field(
        "auto",
        description="Image to convolve: 'convolveTemplate', 'convolveScience', or 'auto' (the one with the "
        "narrower PSF, so the kernel never deconvolves; the LSST stack defaults to convolveTemplate).",
    )
    makeKernel: MakeKernelTask.ConfigClass = ConfigurableField(  # noqa: N815
        target=MakeKernelTask, doc="Solve for the PSF-matching kernel."
    )
    doDecorrelation: bool = Field(  # noqa: N815
        True, description="Remove the noise correlations of the convolution (Reiss & Lupton 2016)."
    )
    spatiallyVaryingDecorrelation: bool = Field(  # noqa: N815
        False,
        description="Compute the decorrelation kernel on a grid (decorrelationGridSpacing) from the local "
        "kernel and variances, instead of once for the whole image.",
    )
    doMeasureNoiseCorrelation: bool = Field(  # noqa: N815
        True,
        description="Measure both images' noise on sky pixels (noise_correlation): scale their variances to the "
        "measured per-pixel variance (as the LSST stack's ScaleVarianceTask) and propagate their measured "
        "correlations into the difference's variance plane (decorrelated_variance).  False: white noise that "
        "the variance planes describe exactly.  Templates resampled from coadds have correlated noise.",
    )
    doScaleDiffimVariance: bool = Field(  # noqa: N815
        True,
        description="Correct the difference's variance plane to its measured sky noise (`variance_scale` on sky "
        "pixels, as the LSST stack's ScaleVarianceTask on the difference): the sky-level part of each pixel's "
        "variance is multiplied by the measured factor (diffimVarianceScale), what sources add above it is kept.",
    )
    noiseCorrelationRadius: int = Field(  # noqa: N815
        5, ge=0, description="Largest lag [pixels] of the measured noise autocovariance."
    )
    decorrelationGridSpacing: int = Field(  # noqa: N815
        512, ge=32, description="Spacing [pixels] of the grid of spatially varying decorrelation kernels."
    )
    requiredTemplateFraction: float = Field(  # noqa: N815
        0.1,
        ge=0.0,
        le=1.0,
        description="Minimum fraction of the science pixels the template must cover (else NoWorkFound).",
    )
    minTemplateFractionForExpectedSuccess: float = Field(  # noqa: N815
        0.2,
        ge=0.0,
        le=1.0,
        description="When the kernel cannot be solved and the template covers less than this fraction, the "
        "quantum ends with NoWorkFound instead of an error.",
    )
    kernelSourceSignalToNoiseMin: float = Field(  # noqa: N815
        10.0, gt=0, description="Minimum psfFlux / psfFluxErr of a kernel source."
    )
    kernelSourceSignalToNoiseMax: float | None = Field(  # noqa: N815
        None, description="Maximum psfFlux / psfFluxErr of a kernel source (None: no limit)."
    )
    badSourceFlags: list[str] = Field(  # noqa: N815
        default_factory=lambda: [
            "flag_edge", "flag_saturated", "flag_bad", "flag_interpolated", "flag_cr", "centroid_flag",
            "psfFlux_flag",
        ],
        description="Source flags (boolean columns of src) that exclude a kernel source; absent ones are ignored.",
    )
    requireIsolatedKernelSources: bool = Field(  # noqa: N815
        True, description="Only sources that are not deblended (parent == 0 and no children) are kernel sources."
    )
    maxKernelSources: int = Field(  # noqa: N815
        1000, ge=1, description="At most this many kernel sources (the highest S/N ones)."
    )
    minKernelSources: int = Field(  # noqa: N815
        3, ge=1, description="Fewer selected kernel sources than this is an error."
    )
    preserveTemplateMask: list[str] = Field(  # noqa: N815
        default_factory=lambda: ["NO_DATA", "BAD"],
        description="Mask planes of the (matched) template ORed into the difference under the same name.",
    )
    renameTemplateMask: list[str] = Field(  # noqa: N815
        default_factory=lambda: ["SAT", "INJECTED", "INJECTED_CORE"],
        description="Mask planes of the (matched) template ORed into the difference as '<PLANE>_TEMPLATE'.",
    )
    varianceMaskPlanes: list[str] = Field(  # noqa: N815
        default_factory=lambda: ["NO_DATA", "BAD", "SAT", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "CR"],
        description="Pixels excluded from the mean variances of the decorrelation and the sky statistics.",
    )

    def validate(self) -> None:  # type: ignore[override]
        super().validate()
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {self.mode!r}.")


# Decorrelation -----------------------------------------------------------------------------------------------


_MIN_SKY_PIXELS = 1000  # fewer sky pixels than this give no noise measurement


def _sky_residuals(image: np.ndarray, variance: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``z = (image - median) / sqrt(variance)`` on the sky pixels (0 elsewhere) and the sky-pixel mask."""
    good = ~exclude & np.isfinite(image) & np.isfinite(variance) & (variance > 0)
    z = np.zeros(image.shape)
    if good.any():
        z[good] = (image[good] - np.median(image[good])) / np.sqrt(variance[good])
    return z, good


def _robust_variance_of(values: np.ndarray) -> float:
    """``(1.4826 MAD)^2``: the variance of Gaussian values, hardly moved by a few outliers."""
    return (1.4826 * float(np.median(np.abs(values - np.median(values))))) ** 2


def variance_scale(image: np.ndarray, variance: np.ndarray, exclude: np.ndarray) -> float:
    """An image's per-pixel noise variance relative to its variance plane, measured on sky pixels.

    The robust variance ``(1.4826 MAD)^2`` of ``z = (image - median) / sqrt(variance)`` over the pixels that are
    not ``exclude``, finite and with a positive variance: the image-based factor of the LSST stack's
    ScaleVarianceTask.  1 when the variance plane describes the noise exactly.

    Parameters
    ----------
    image, variance : `numpy.ndarray`, shape (h, w)
        Pixels [any unit] and their variance [unit^2].
    exclude : `numpy.ndarray`, shape (h, w), bool
        Pixels that are not sky (sources, bad pixels).

    Returns
    -------
    scale : `float`
        Noise variance / variance plane; NaN when fewer than 1000 pixels are sky.
    """
    z, good = _sky_residuals(image, variance, exclude)
    return _robust_variance_of(z[good]) if good.sum() >= _MIN_SKY_PIXELS else math.nan


def noise_correlation(
    image: np.ndarray,
    variance: np.ndarray,
    exclude: np.ndarray,
    *,
    radius: int,
    max_size: int = 1024,
    clip: float = 5.0,
) -> tuple[float, np.ndarray]:
    """An image's noise relative to its variance plane, measured on sky pixels: variance scale and correlation.

    With ``z = (image - median) / sqrt(variance)`` on sky pixels (not ``exclude``, finite, ``|z| < clip``) of the
    central ``max_size`` x ``max_size`` pixels at most: the variance scale is the robust variance of ``z``,
    ``(1.4826 MAD)^2`` (the factor of the LSST stack's ScaleVarianceTask; faint undetected sources hardly move
    it), and the correlation ``C(dy, dx) = < z(x) z(x + d) > / < z^2 >`` over pixel pairs that are both sky.
    For white noise that the variance plane describes exactly both are 1 at lag 0 and ``C`` is 0 elsewhere;
    resampled images (warps, coadds of warps) have ``C(+-1, 0)`` of 0.1-0.5.

    Parameters
    ----------
    image, variance : `numpy.ndarray`, shape (h, w)
        Pixels [any unit] and their variance [unit^2].
    exclude : `numpy.ndarray`, shape (h, w), bool
        Pixels that are not sky (sources, bad pixels).
    radius : `int`
        Largest lag [pixels] (>= 0).
    max_size : `int`, optional
        Side of the central region used [pixels].
    clip : `float`, optional
        Pixels with ``|z|`` above this are left out (undetected sources, residual artefacts).

    Returns
    -------
    scale : `float`
        Per-pixel noise variance / variance plane (1.0 when fewer than 1000 sky pixels).
    correlation : `numpy.ndarray`, shape (2 radius + 1, 2 radius + 1), float64
        Centred on lag (0, 0), where it is 1; symmetric.  The identity when fewer than 1000 sky pixels.
    """
    identity = np.zeros((2 * radius + 1, 2 * radius + 1))
    identity[radius, radius] = 1.0
    h, w = image.shape
    y0, x0 = max(0, (h - max_size) // 2), max(0, (w - max_size) // 2)
    cut = np.s_[y0 : y0 + max_size, x0 : x0 + max_size]
    z, good = _sky_residuals(image[cut], variance[cut], exclude[cut])
    if good.sum() < _MIN_SKY_PIXELS:
        return 1.0, identity
    scale = _robust_variance_of(z[good])
    good &= np.abs(z) < clip
    z[~good] = 0.0
    shape = tuple(sp_fft.next_fast_len(n + radius, real=True) for n in z.shape)
    pairs = sp_fft.irfft2(np.abs(sp_fft.rfft2(good.astype(float), shape)) ** 2, shape)
    products = sp_fft.irfft2(np.abs(sp_fft.rfft2(z, shape)) ** 2, shape)
    lags = np.arange(-radius, radius + 1)
    index = np.ix_(lags % shape[0], lags % shape[1])
    counts = pairs[index]
    correlation = np.where(counts > 0.5, products[index] / np.maximum(counts, 1.0), 0.0)
    if not correlation[radius, radius] > 0 or not scale > 0:
        return 1.0, identity
    return scale, correlation / correlation[radius, radius]


def _centred_ft(image: np.ndarray, n: int) -> np.ndarray:
    """FFT on an n x n grid of an odd-sized image centred on its central pixel (placed at pixel (0, 0))."""
    padded = np.zeros((n, n))
    h, w = image.shape
    padded[:h, :w] = image
    return sp_fft.fft2(np.roll(padded, (-(h // 2), -(w // 2)), axis=(0, 1)))


def _grid_size(*images: np.ndarray | None, size: int = 1) -> int:
    return sp_fft.next_fast_len(2 * max([size, *(max(np.shape(a)) for a in images if a is not None)]))


def decorrelation_kernel(
    matching_kernel: np.ndarray,
    unconvolved_variance: float,
    convolved_variance: float,
    *,
    preconvolution_kernel: np.ndarray | None = None,
    size: int | None = None,
) -> np.ndarray:
    """The kernel that whitens the noise of a difference of two images one of which was convolved.

    For ``D = P (x) U - K (x) C`` with ``U`` and ``C`` white noise of variances ``u`` and ``c`` (and ``P`` an
    optional normalised pre-convolution of ``U``), the noise power of ``D`` is ``u |P^(k)|^2 + c |K^(k)|^2``.
    Convolving ``D`` with ``phi`` of Fourier transform

        ``phi^(k) = sqrt((u + c kappa^2) / (u |P^(k)|^2 + c |K^(k)|^2))``,   ``kappa = K^(0)`` (the kernel sum),

    makes it white with variance ``u + c kappa^2``, and leaves the flux of a point source unchanged
    (``phi^(0) = 1``).  Reiss & Lupton (2016, arXiv:1609.04370, eq. 4); for convolveScience, ``U`` is the
    template and ``C`` the science image (their difference divided by ``kappa`` does not change ``phi``).

    Parameters
    ----------
    matching_kernel : `numpy.ndarray`, shape (h, w), odd
        The PSF-matching kernel ``K`` (not normalised: its sum is ``kappa``).
    unconvolved_variance, convolved_variance : `float`
        Mean per-pixel variances ``u`` and ``c`` of the two images (each in its own units) [> 0].
    preconvolution_kernel : `numpy.ndarray`, optional, shape odd
        ``P``, normalised to unit sum (None: no pre-convolution).
    size : `int`, optional
        Side of the returned kernel (odd); default ``2 * max(h, w) + 1``.

    Returns
    -------
    phi : `numpy.ndarray`, shape (size, size), float64
        Centred, unit sum.

    Raises
    ------
    ValueError
        If a variance is not positive or ``size`` is not odd.
    """
    if not (unconvolved_variance > 0 and convolved_variance > 0):
        raise ValueError(
            f"the decorrelation needs positive variances, got {unconvolved_variance} and {convolved_variance}."
        )
    k = np.asarray(matching_kernel, dtype=np.float64)
    size = int(size) if size is not None else 2 * max(k.shape) + 1
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the decorrelation kernel size must be odd and positive, got {size}.")
    n = _grid_size(k, preconvolution_kernel, size=size)
    k_ft = _centred_ft(k, n)
    kappa = float(k.sum())
    u, c = float(unconvolved_variance), float(convolved_variance)
    p_power = 1.0 if preconvolution_kernel is None else np.abs(_centred_ft(np.asarray(preconvolution_kernel, float), n)) ** 2
    phi_ft = np.sqrt((u + c * kappa**2) / (u * p_power + c * np.abs(k_ft) ** 2))
    phi = np.roll(sp_fft.ifft2(phi_ft).real, (size // 2, size // 2), axis=(0, 1))[:size, :size]
    total = float(phi.sum())
    # phi^(0) = 1, so the untruncated kernel sums to 1; a truncated sum far from 1 means phi does not fit in
    # size x size pixels (typically 1 / |P^| growing without bound for a wide pre-convolution).
    if not abs(total - 1.0) < 0.1:
        raise ValueError(
            f"the decorrelation kernel does not fit in {size}x{size} pixels (its truncation sums to {total:.4g}, "
            f"not 1; |phi^| reaches {float(phi_ft.max()):.3g}): the difference has too little noise power at high "
            "frequencies to be whitened -- is the pre-convolution kernel much wider than the matching kernel allows?"
        )
    return phi / total


def decorrelated_variance(
    phi: np.ndarray,
    matching_kernel: np.ndarray,
    unconvolved_variance: float,
    convolved_variance: float,
    *,
    unconvolved_correlation: np.ndarray | None = None,
    convolved_correlation: np.ndarray | None = None,
    preconvolution_kernel: np.ndarray | None = None,
) -> float:
    """Per-pixel variance of the decorrelated difference ``phi (x) (P (x) U - K (x) C)``.

    By Parseval, ``(1/n^2) sum_k |phi^(k)|^2 (u A_U(k) |P^(k)|^2 + c A_C(k) |K^(k)|^2)`` with ``A`` the
    normalised noise power spectra of the inputs (Fourier transforms of their autocorrelations from
    `noise_correlation`; 1 for white noise).  For white inputs and the `decorrelation_kernel` ``phi``
    it equals ``u + c kappa^2``; resampled inputs (a template warped from a coadd) have less power at high
    frequencies and give less.

    Parameters
    ----------
    phi, matching_kernel : `numpy.ndarray`, odd shapes
        Decorrelation and PSF-matching kernels.
    unconvolved_variance, convolved_variance : `float`
        Per-pixel variances ``u`` and ``c`` of the inputs.
    unconvolved_correlation, convolved_correlation : `numpy.ndarray`, optional, odd shapes
        Autocorrelations (centre 1) of the inputs' noise; None for white noise.
    preconvolution_kernel : `numpy.ndarray`, optional
        ``P`` (None: none).

    Returns
    -------
    variance : `float`
    """
    n = _grid_size(phi, matching_kernel, preconvolution_kernel, unconvolved_correlation, convolved_correlation)

    def spectrum(correlation: np.ndarray | None) -> np.ndarray | float:
        if correlation is None:
            return 1.0
        return np.maximum(_centred_ft(np.asarray(correlation, float), n).real, 0.0)

    p_power = 1.0 if preconvolution_kernel is None else np.abs(_centred_ft(np.asarray(preconvolution_kernel, float), n)) ** 2
    noise = (float(unconvolved_variance) * spectrum(unconvolved_correlation) * p_power
             + float(convolved_variance) * spectrum(convolved_correlation)
             * np.abs(_centred_ft(np.asarray(matching_kernel, float), n)) ** 2)
    return float(np.mean(np.abs(_centred_ft(np.asarray(phi, float), n)) ** 2 * noise))


# Metrics ------------------------------------------------------------------------------------------------------


def template_coverage(template: Exposure) -> float:
    """Fraction of the template's pixels that hold data (finite and not ``NO_DATA``)."""
    good = np.isfinite(template.image) & ~template.mask.get_plane("NO_DATA", missing_ok=True)
    return float(good.mean()) if good.size else 0.0


def difference_footprint_ratio(
    science: Exposure, difference: Exposure, x: np.ndarray, y: np.ndarray, *, bad_mask_planes: Sequence[str]
) -> tuple[float, float]:
    """Mean and standard deviation over stars of the residual flux left in the difference image.

    For each star (parent position ``x, y``) the footprint is the connected ``DETECTED`` region of the
    science mask containing it; the ratio is ``(sum |D| - n mean_sky |D|) / sum S`` over the footprint's
    ``n`` pixels, with ``mean_sky |D|`` the mean absolute difference over pixels detected nowhere (the noise
    expectation), as ``lsst.ip.diffim.utils.computeDifferenceImageMetrics`` defines
    ``differenceFootprintRatioMean``.  0 for a perfect subtraction, 1 when nothing was subtracted.

    Returns
    -------
    mean, stdev : `float`
        NaN when no star has a usable footprint.
    """
    detected = science.mask.get_plane("DETECTED", missing_ok=True)
    bad = difference.mask.get_plane(bad_mask_planes, missing_ok=True) | ~np.isfinite(difference.image)
    sky = ~(detected | bad | difference.mask.get_plane(["DETECTED", "DETECTED_NEGATIVE"], missing_ok=True))
    abs_diff = np.abs(np.where(bad, 0.0, difference.image))
    if not sky.any() or not detected.any():
        return math.nan, math.nan
    sky_level = float(abs_diff[sky].mean())
    labels, n_labels = ndimage.label(detected, structure=np.ones((3, 3), bool))
    x0, y0 = science.xy0
    ix = np.round(np.asarray(x, float) - x0).astype(int)
    iy = np.round(np.asarray(y, float) - y0).astype(int)
    inside = (ix >= 0) & (iy >= 0) & (ix < labels.shape[1]) & (iy < labels.shape[0])
    ids = np.unique(labels[iy[inside], ix[inside]])
    ids = ids[ids > 0]
    if len(ids) == 0:
        return math.nan, math.nan
    index = np.arange(n_labels + 1)
    usable = ~bad
    sum_diff = ndimage.sum_labels(abs_diff * usable, labels, index)[ids]
    npix = ndimage.sum_labels(usable, labels, index)[ids]
    sum_sci = ndimage.sum_labels(np.where(usable, science.image, 0.0), labels, index)[ids]
    ok = sum_sci > 0
    if not ok.any():
        return math.nan, math.nan
    ratio = (sum_diff[ok] - npix[ok] * sky_level) / sum_sci[ok]
    return float(np.mean(ratio)), float(np.std(ratio))


def _decorrelated_psf(psf: Any, phi: np.ndarray, bbox: Any) -> Any:
    """The PSF of a difference image convolved with ``phi``: ``psf (x) phi``.

    A `PcaPsf` keeps its spatial model (each component convolved, convolution being linear); another PSF is
    realised at the centre of ``bbox``.
    """
    if psf is None:
        return None
    if isinstance(psf, PcaPsf):
        components = np.array([signal.fftconvolve(c, phi, mode="same") for c in psf.components])
        return PcaPsf(components, psf.coefficients, psf.degree, psf.bbox)
    image = signal.fftconvolve(psf.compute_kernel_image(*bbox.center), phi, mode="same")
    return PcaPsf(image[None], np.ones((1, 1)), 0, bbox)


def _robust_variance(variance: np.ndarray, exclude: np.ndarray) -> float:
    good = ~exclude & np.isfinite(variance) & (variance > 0)
    return float(np.median(variance[good])) if good.any() else math.nan


def _remap_planes(source: Mask, target: Mask, planes: Sequence[str], suffix: str = "") -> None:
    """OR the named planes of ``source`` (absent ones skipped) into ``target`` as ``<plane><suffix>``."""
    for name in planes:
        if name not in source.planes:
            continue
        bit = np.int32(1 << target.add_plane(name + suffix))
        target.array[source.get_plane(name)] |= bit


# The task -------------------------------------------------------------------------------------------------------


class AlardLuptonSubtractTask(PipelineTask):
    """Subtract a template from a science exposure by Alard & Lupton PSF matching (see the module docstring).

    Metadata: ``mode`` (the convolution used), ``templateCoverageFraction``, ``sciencePsfSize`` and
    ``templatePsfSize`` (FWHM at the centre [pixels]), ``nKernelSourcesSelected``, ``kernelSum`` (at the image
    centre), ``decorrelationKernelSize``, ``differenceFootprintRatioMean`` and ``differenceFootprintRatioStdev``
    (`difference_footprint_ratio` over the kernel sources), ``differenceNoiseRatio`` (robust standard deviation
    of difference / sqrt(variance) on sky pixels, before ``doScaleDiffimVariance``: how well the propagated
    variance predicted the noise), ``diffimVarianceScale`` (the factor applied to the variance plane); the
    kernel solution's metadata is under ``makeKernel``.
    """

    ConfigClass = AlardLuptonSubtractConfig
    _DefaultName = "subtractImages"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.makeSubtask("makeKernel")

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:  # noqa: N802,N803
        inputs = butlerQC.get(inputRefs)
        butlerQC.put(self.run(inputs["template"], inputs["science"], inputs["sources"]), outputRefs)

    @timeMethod
    def run(
        self,
        template: Exposure,
        science: Exposure,
        sources: Table,
        finalizedPsfApCorrCatalog: Table | None = None,  # noqa: N803 - the LSST stack's names
        visitSummary: Table | None = None,  # noqa: N803
    ) -> Struct:
        """PSF match, subtract, and decorrelate two images.

        Parameters
        ----------
        template : `Exposure`
            Template on the science exposure's pixel grid (its bbox contains the science bbox) [nJy].
        science : `Exposure`
            Background-subtracted science exposure [counts] with a PSF.  Not modified.
        sources : `astropy.table.Table`
            Sources measured on the science exposure (``centroid_x``, ``centroid_y``, ``psfFlux``,
            ``psfFluxErr`` and flag columns): the candidates for the kernel sources.
        finalizedPsfApCorrCatalog : `astropy.table.Table`, optional
            Deprecated name of ``visitSummary`` (used instead of it when given).
        visitSummary : `astropy.table.Table`, optional
            ``ConsolidateVisitSummaryTask`` output: its visit calibration replaces the science PhotoCalib.

        Returns
        -------
        results : `Struct`
            ``difference`` (`Exposure`, decorrelated unless ``doDecorrelation`` is off), ``matchedTemplate``
            (`Exposure`), ``backgroundModel`` (the differential background fitted with the kernel),
            ``psfMatchingKernel`` (`LinearCombinationKernel`), ``kernelSources`` (`astropy.table.Table`).

        Raises
        ------
        PsfMatchingError
            (a `RuntimeError`) If the mode is unsupported, the template does not contain the science bbox, the
            exposures lack PSFs, or there are too few kernel sources.
        NoWorkFound
            If the template covers less than ``requiredTemplateFraction`` of the science pixels (or less than
            ``minTemplateFractionForExpectedSuccess`` and the kernel cannot be solved).
        """
        config = self.config
        if config.mode not in _MODES:
            raise PsfMatchingError(f"unsupported convolution mode {config.mode!r}; use one of {', '.join(_MODES)}.")
        calibrations = finalizedPsfApCorrCatalog if finalizedPsfApCorrCatalog is not None else visitSummary
        if calibrations is not None:
            science = science.replace(photo_calib=visit_photo_calib(calibrations))
        if not template.bbox.contains(science.bbox):
            raise PsfMatchingError(
                f"the template {template.bbox} does not contain the science exposure {science.bbox}; warp the "
                "template onto the science pixels (GetTemplateTask) first."
            )
        template = template[science.bbox]
        if template.psf is None or science.psf is None:
            raise PsfMatchingError("PSF matching needs PSF models on both the template and the science exposure.")
        coverage = template_coverage(template)
        self.metadata["templateCoverageFraction"] = coverage
        if coverage < config.requiredTemplateFraction:
            raise NoWorkFound(
                f"the template covers {100 * coverage:.1f}% of the science pixels, less than the "
                f"requiredTemplateFraction of {100 * config.requiredTemplateFraction:.1f}%."
            )
        cx, cy = science.bbox.center
        science_fwhm = science.psf.fwhm(cx, cy)
        template_fwhm = template.psf.fwhm(cx, cy)
        self.metadata["sciencePsfSize"] = science_fwhm
        self.metadata["templatePsfSize"] = template_fwhm
        mode = config.mode
        if mode == "auto":
            mode = "convolveTemplate" if template_fwhm <= science_fwhm else "convolveScience"
        self.metadata["mode"] = mode
        try:
            selected = self._sourceSelector(sources, science)
            self.log.info(
                "%s: science PSF FWHM %.2f px, template %.2f px, %d kernel sources, template coverage %.1f%%",
                mode, science_fwhm, template_fwhm, len(selected), 100 * coverage,
            )
            if mode == "convolveTemplate":
                results = self.runConvolveTemplate(template, science, selected)
            else:
                results = self.runConvolveScience(template, science, selected)
        except PsfMatchingError as error:
            if coverage < config.minTemplateFractionForExpectedSuccess:
                raise NoWorkFound(
                    f"the template covers only {100 * coverage:.1f}% of the science pixels and the kernel "
                    f"failed: {error}"
                ) from error
            raise
        used = results.kernelSources
        ratio_mean, ratio_std = difference_footprint_ratio(
            science, results.difference, np.asarray(used["centroid_x"]), np.asarray(used["centroid_y"]),
            bad_mask_planes=config.varianceMaskPlanes,
        )
        self.metadata["differenceFootprintRatioMean"] = ratio_mean
        self.metadata["differenceFootprintRatioStdev"] = ratio_std
        scale, sky_variance = self._diffim_variance_scale(results.difference, science)
        self.metadata["differenceNoiseRatio"] = math.sqrt(scale)
        if config.doScaleDiffimVariance and scale > 0:
            # The correction is to the sky-level noise (the inputs' background noise propagated through the
            # convolution and decorrelation); the variance sources add above it (their Poisson noise, in the
            # science variance plane) is kept as it is.
            variance = results.difference.variance
            variance += np.float32(scale - 1.0) * np.minimum(variance, np.float32(sky_variance))
            self.metadata["diffimVarianceScale"] = scale
        self.log.info(
            "Residual flux at kernel stars: mean %.4f, stdev %.4f; difference noise / sqrt(variance) %.3f",
            ratio_mean, ratio_std, self.metadata["differenceNoiseRatio"],
        )
        return results

    def runConvolveTemplate(self, template: Exposure, science: Exposure, selectSources: Table) -> Struct:  # noqa: N802,N803
        """Convolve the template with a PSF-matching kernel and subtract it from the science image.

        Parameters
        ----------
        template : `Exposure`
            Template on the science pixel grid (same bbox) [nJy].
        science : `Exposure`
            Science exposure [counts].
        selectSources : `astropy.table.Table`
            Kernel sources (`_sourceSelector` output).

        Returns
        -------
        results : `Struct`
            ``difference`` (finalized, `finalize`), ``matchedTemplate`` (the convolved template: science PSF,
            science PhotoCalib, counts), ``backgroundModel``, ``psfMatchingKernel``, ``kernelSources``.
        """
        solution = self.makeKernel.run(template, science, selectSources)
        kernel = solution.psfMatchingKernel
        with self.timer("convolve"):
            convolved = convolve_masked_image(template.masked_image, kernel).masked_image
        matched = template.replace(convolved, psf=science.psf, photo_calib=science.photo_calib)
        background = solution.backgroundModel.get_image(science.bbox)
        image = science.image - convolved.image - background
        variance = science.variance + convolved.variance
        difference = science.replace(
            MaskedImage(image.astype(np.float32), science.mask.copy(), variance.astype(np.float32), xy0=science.xy0)
        )
        self._set_kernel_metadata(kernel, science)
        difference = self.finalize(template, science, difference, kernel, templateMatched=True,
                                   matchedTemplate=matched)
        return Struct(
            difference=difference,
            matchedTemplate=matched,
            backgroundModel=solution.backgroundModel,
            psfMatchingKernel=kernel,
            kernelSources=solution.kernelSources,
        )

    def runConvolveScience(self, template: Exposure, science: Exposure, selectSources: Table) -> Struct:  # noqa: N802,N803
        """Convolve the science image with a PSF-matching kernel and subtract the template from it.

        The kernel matches the science PSF to the template's (``K (x) S ~ T``); the difference
        ``(K (x) S + b - T) / k`` is divided by the kernel sum ``k`` to stay in science counts.

        Parameters
        ----------
        template, science, selectSources
            As for `runConvolveTemplate`.

        Returns
        -------
        results : `Struct`
            As `runConvolveTemplate`; ``matchedTemplate`` is the template divided by the kernel sum (science
            counts, template PSF, not convolved) and the difference has the template's PSF.
        """
        solution = self.makeKernel.run(science, template, selectSources)
        kernel = solution.psfMatchingKernel
        cx, cy = science.bbox.center
        kappa = float(kernel.kernel_sum(cx, cy))
        with self.timer("convolve"):
            convolved = convolve_masked_image(science.masked_image, kernel).masked_image
        background = solution.backgroundModel.get_image(science.bbox)
        matched = template.replace(
            MaskedImage((template.image / kappa).astype(np.float32), template.mask.copy(),
                        (template.variance / kappa**2).astype(np.float32), xy0=template.xy0),
            photo_calib=science.photo_calib,
        )
        image = (convolved.image + background) / kappa - matched.image
        variance = convolved.variance / kappa**2 + matched.variance
        difference = science.replace(
            MaskedImage(image.astype(np.float32), convolved.mask, variance.astype(np.float32), xy0=science.xy0),
            psf=template.psf,
        )
        self._set_kernel_metadata(kernel, science)
        difference = self.finalize(template, science, difference, kernel, templateMatched=False,
                                   matchedTemplate=matched)
        return Struct(
            difference=difference,
            matchedTemplate=matched,
            backgroundModel=solution.backgroundModel,
            psfMatchingKernel=kernel,
            kernelSources=solution.kernelSources,
        )

    def finalize(
        self,
        template: Exposure,
        science: Exposure,
        difference: Exposure,
        kernel: Kernel,
        templateMatched: bool = True,  # noqa: N803 - the LSST stack's names
        preConvMode: bool = False,  # noqa: N803
        preConvKernel: Any = None,  # noqa: N803
        spatiallyVarying: bool | None = None,  # noqa: N803
        *,
        matchedTemplate: Exposure | None = None,  # noqa: N803
    ) -> Exposure:
        """Decorrelate the difference image to undo the noise correlations caused by convolution.

        Parameters
        ----------
        template : `Exposure`
            Template on the science pixel grid, as given to the subtraction (not convolved) [nJy].
        science : `Exposure`
            Science exposure (not convolved) [counts].
        difference : `Exposure`
            Result of subtracting template and science (``runConvolveTemplate`` / ``runConvolveScience``).
        kernel : `Kernel`
            The (optionally spatially varying) PSF-matching kernel.
        templateMatched : `bool`, optional
            Was the template PSF-matched to the science image (True) or the science image to the template?
        preConvMode : `bool`, optional
            Was the science image pre-convolved with its own PSF before PSF matching the template?
        preConvKernel : `numpy.ndarray` or `Psf`, optional
            The pre-convolution kernel (normalised to unit sum); with ``preConvMode`` and None, the science PSF
            at the image centre.
        spatiallyVarying : `bool`, optional
            Compute the decorrelation kernel on a grid; default ``config.spatiallyVaryingDecorrelation``.
        matchedTemplate : `Exposure`, optional
            The template as subtracted: its mask planes are merged into the difference (`updateMasks`).

        Returns
        -------
        correctedExposure : `Exposure`
            The decorrelated difference (or ``difference`` with merged masks when ``doDecorrelation`` is off),
            with the variance plane of white noise: ``var_S + k^2 var_T`` (templateMatched) or
            ``var_S + var_T / k^2``, ``k`` the kernel sum.
        """
        self.updateMasks(matchedTemplate if matchedTemplate is not None else template, science, difference)
        if not self.config.doDecorrelation:
            return difference
        config = self.config
        spatially_varying = config.spatiallyVaryingDecorrelation if spatiallyVarying is None else spatiallyVarying
        preconv = None
        if preConvMode:
            if preConvKernel is None:
                preConvKernel = science.psf  # noqa: N806
            preconv = (
                preConvKernel.compute_kernel_image(*science.bbox.center)
                if hasattr(preConvKernel, "compute_kernel_image") else np.asarray(preConvKernel, dtype=float)
            )
            preconv = preconv / preconv.sum()
        exclude_s = science.mask.get_plane(config.varianceMaskPlanes, missing_ok=True)
        exclude_t = template.mask.get_plane(config.varianceMaskPlanes, missing_ok=True) | exclude_s
        # U: the image that was not convolved by K; C: the one that was.
        if templateMatched:
            u_image, c_image = science, template
        else:
            u_image, c_image = template, science
        exclude_u, exclude_c = (exclude_s, exclude_t) if templateMatched else (exclude_t, exclude_s)

        with self.timer("decorrelate"):
            # The inputs' noise: per-pixel variance relative to the variance plane (the LSST stack's
            # ScaleVarianceTask factor) and normalised autocorrelation (1 at the centre).
            scales = {"u": 1.0, "c": 1.0}
            correlations: dict[str, np.ndarray | None] = {"unconvolved_correlation": None, "convolved_correlation": None}
            if config.doMeasureNoiseCorrelation:
                for key, name, image, exclude in (("unconvolved_correlation", "u", u_image, exclude_u),
                                                  ("convolved_correlation", "c", c_image, exclude_c)):
                    scales[name], correlations[key] = noise_correlation(
                        image.image, image.variance, exclude, radius=config.noiseCorrelationRadius
                    )
            bbox = difference.bbox
            h, w = bbox.shape
            if spatially_varying:
                xnodes = grid_nodes(w, config.decorrelationGridSpacing)
                ynodes = grid_nodes(h, config.decorrelationGridSpacing)
            else:
                xnodes, ynodes = np.array([(w - 1) / 2.0]), np.array([(h - 1) / 2.0])
            wx, wy = node_weights(w, xnodes), node_weights(h, ynodes)
            kernels: dict[tuple[int, int], list[np.ndarray]] = {}
            gains: dict[tuple[int, int], float] = {}
            # A node whose cell is entirely excluded still needs a kernel (convolve_on_grid drops the weight of a
            # missing node, which would scale the image down around it): it takes the whole image's variances.
            whole_image: tuple[float, float] | None = None
            for j, yn in enumerate(ynodes):
                rows = wy[j] > 0
                for i, xn in enumerate(xnodes):
                    cols = wx[i] > 0
                    cell = np.ix_(rows, cols)
                    u = scales["u"] * _robust_variance(u_image.variance[cell], exclude_u[cell])
                    c = scales["c"] * _robust_variance(c_image.variance[cell], exclude_c[cell])
                    if not (u > 0 and c > 0):
                        if whole_image is None:
                            whole_image = (scales["u"] * _robust_variance(u_image.variance, exclude_u),
                                           scales["c"] * _robust_variance(c_image.variance, exclude_c))
                        u, c = whole_image
                    if not (u > 0 and c > 0):
                        continue
                    matching = kernel.compute_image(xn + bbox.x0, yn + bbox.y0)
                    phi = decorrelation_kernel(matching, u, c, preconvolution_kernel=preconv)
                    kernels[(j, i)] = [phi]
                    gains[(j, i)] = decorrelated_variance(
                        phi, matching, u, c, preconvolution_kernel=preconv, **correlations
                    ) / (u + c * float(matching.sum()) ** 2)
            if not kernels:
                raise PsfMatchingError("cannot decorrelate: no region has a positive variance in both images.")
            image = np.array(difference.image, dtype=np.float32)
            missing = ~np.isfinite(image) | difference.mask.get_plane("NO_DATA", missing_ok=True)
            image[missing] = 0.0
            (out,) = convolve_on_grid([image], kernels, xnodes, ynodes)
            radius = max(kernel_radius(k[0]) for k in kernels.values())
            mask = convolved_mask(difference.mask, missing, radius)
            kappa = float(kernel.kernel_sum(*bbox.center))
            # The variance of white inputs, u + k^2 c pixel by pixel, times the inputs' measured noise
            # (variance scale, and the correlations through decorrelated_variance: < 1 for a resampled template).
            s_scale, t_scale = (scales["u"], scales["c"]) if templateMatched else (scales["c"], scales["u"])
            factor = kappa**2 if templateMatched else 1.0 / kappa**2
            gain = float(np.mean(list(gains.values())))
            variance = gain * (s_scale * science.variance.astype(np.float64)
                               + factor * t_scale * template.variance.astype(np.float64))
            self.metadata["scienceVarianceScale"] = s_scale
            self.metadata["templateVarianceScale"] = t_scale
            self.metadata["decorrelatedVarianceGain"] = gain
            bad = mask.get_plane("NO_DATA")
            out[bad] = np.nan
            variance[bad] = np.nan
        self.metadata["decorrelationKernelSize"] = int(next(iter(kernels.values()))[0].shape[0])
        # Point sources of the decorrelated image have the profile PSF (x) phi (phi of the node nearest the centre).
        centre = min(kernels, key=lambda ji: (ynodes[ji[0]] - (h - 1) / 2) ** 2 + (xnodes[ji[1]] - (w - 1) / 2) ** 2)
        return difference.replace(
            MaskedImage(out.astype(np.float32), mask, variance.astype(np.float32), xy0=bbox.xy0),
            psf=_decorrelated_psf(difference.psf, kernels[centre][0], bbox),
        )

    def updateMasks(self, template: Exposure, science: Exposure, difference: Exposure) -> None:  # noqa: N802
        """Update the mask planes of the difference image for finalizing (in place).

        The science image's ``DETECTED`` and ``DETECTED_NEGATIVE`` planes are cleared (they describe the science
        image; DIA detection sets its own).  The template's ``preserveTemplateMask`` planes are ORed into the
        planes of the same name, its ``renameTemplateMask`` planes into ``<PLANE>_TEMPLATE``.

        Parameters
        ----------
        template : `Exposure`
            The template as subtracted (its mask is read).
        science : `Exposure`
            The science exposure (unused: its planes are already the difference's).
        difference : `Exposure`
            The difference; its mask is updated.
        """
        mask = difference.mask
        for name in ("DETECTED", "DETECTED_NEGATIVE"):
            if name in mask.planes:
                mask.clear_plane(name)
        template_mask = template.mask[difference.bbox] if template.bbox != difference.bbox else template.mask
        _remap_planes(template_mask, mask, self.config.preserveTemplateMask)
        _remap_planes(template_mask, mask, self.config.renameTemplateMask, "_TEMPLATE")

    def _sourceSelector(self, sources: Table, science: Exposure) -> Table:  # noqa: N802
        """The kernel sources: unflagged, isolated sources on the image with S/N in the configured range.

        Raises
        ------
        PsfMatchingError
            If fewer than ``minKernelSources`` remain.
        """
        config = self.config
        n = len(sources)
        keep = np.ones(n, dtype=bool)
        reasons: dict[str, int] = {}
        for flag in config.badSourceFlags:
            if flag in sources.colnames:
                flagged = _table_column(sources, flag, fill=True, dtype=bool)
                reasons[flag] = int((keep & flagged).sum())
                keep &= ~flagged
        if config.requireIsolatedKernelSources:
            isolated = np.ones(n, dtype=bool)
            if "parent" in sources.colnames:
                isolated &= np.asarray(sources["parent"]) == 0
            if "deblend_nChild" in sources.colnames:
                isolated &= np.asarray(sources["deblend_nChild"]) == 0
            reasons["not isolated"] = int((keep & ~isolated).sum())
            keep &= isolated
        flux = _table_column(sources, "psfFlux")
        err = _table_column(sources, "psfFluxErr")
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.where(err > 0, flux / err, np.nan)
        good_snr = np.isfinite(snr) & (snr >= config.kernelSourceSignalToNoiseMin)
        if config.kernelSourceSignalToNoiseMax is not None:
            good_snr &= snr <= config.kernelSourceSignalToNoiseMax
        reasons["S/N out of range"] = int((keep & ~good_snr).sum())
        keep &= good_snr
        bbox = science.bbox
        x, y = np.asarray(sources["centroid_x"], float), np.asarray(sources["centroid_y"], float)
        on = (x >= bbox.x0) & (x <= bbox.x1 - 1) & (y >= bbox.y0) & (y <= bbox.y1 - 1)
        keep &= on
        selected = sources[keep]
        order = np.argsort(-snr[keep], kind="stable")[: config.maxKernelSources]
        selected = selected[order]
        self.metadata["nKernelSourcesSelected"] = len(selected)
        if len(selected) < config.minKernelSources:
            detail = ", ".join(f"{count} {why}" for why, count in reasons.items() if count)
            raise PsfMatchingError(
                f"too few kernel sources: {len(selected)} of {n} sources are usable (need "
                f"minKernelSources = {config.minKernelSources}; rejected: {detail or 'none'}). Check the science "
                "source catalogue, or lower kernelSourceSignalToNoiseMin."
            )
        return selected

    def _set_kernel_metadata(self, kernel: Kernel, science: Exposure) -> None:
        self.metadata["kernelSum"] = float(kernel.kernel_sum(*science.bbox.center))

    def _diffim_variance_scale(self, difference: Exposure, science: Exposure) -> tuple[float, float]:
        """`variance_scale` of the difference, and its median variance, on the pixels where neither it nor the
        science image has a ``varianceMaskPlanes`` bit."""
        bad = difference.mask.get_plane(self.config.varianceMaskPlanes, missing_ok=True)
        bad |= science.mask.get_plane(self.config.varianceMaskPlanes, missing_ok=True)
        return variance_scale(difference.image, difference.variance, bad), _robust_variance(difference.variance, bad)


def difference_noise_ratio(
    difference: Exposure, *, planes: Sequence[str], usable: np.ndarray | None = None
) -> tuple[float, int]:
    """std(image / sqrt(variance)) of a difference image over its sky pixels.

    Parameters
    ----------
    difference : `Exposure`
        A difference image with its variance plane and mask (``DETECTED`` / ``DETECTED_NEGATIVE`` set by the
        detection on it, as in ``subtractedMeasuredExposure``).
    planes : sequence of `str`
        Mask planes of the pixels left out (planes the mask lacks are ignored).
    usable : `numpy.ndarray`, shape (ny, nx), bool, optional
        Only these pixels may be used (e.g. a simulation's source-free pixels).

    Returns
    -------
    ratio : `float`
        The standard deviation of the pixels normalised by their predicted noise (1 when the variance plane
        predicts the noise); NaN without sky pixels.
    pixels : `int`
        Number of sky pixels used: finite, with a positive variance, none of ``planes`` set (and ``usable``).
    """
    sky = ~difference.mask.get_plane(list(planes), missing_ok=True)
    sky &= np.isfinite(difference.image) & (difference.variance > 0)
    if usable is not None:
        sky &= usable
    if not sky.any():
        return float("nan"), 0
    z = difference.image[sky] / np.sqrt(difference.variance[sky])
    return float(np.std(z)), int(sky.sum())
