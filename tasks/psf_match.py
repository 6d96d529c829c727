"""PSF matching: the Alard & Lupton kernel that makes one image look as if taken with another's PSF.

Given a *template* and a *science* image of the same field on the same pixel grid, find the convolution kernel
``K`` (and optionally a smooth differential background ``b``) such that

    science(x, y) ~= (K_{x,y} * template)(x, y) + b(x, y)

where ``*`` is the true convolution ``(K * T)(p) = sum_u K(u) T(p - u)`` (`scipy.signal.convolve`, and the
kernel image's central pixel is the zero offset).  ``K`` is a linear combination of fixed basis images --
Gaussians of a few widths times polynomials (Alard & Lupton 1998, ApJ 503, 325) -- whose coefficients vary
over the image as 2-D Chebyshev polynomials (Alard 2000, A&AS 144, 363), except the kernel sum (the
photometric scaling) which is constant.

The fit uses postage stamps around stars (`KernelCandidate`) spread over the image by a `SpatialCellSet`:

1. each star gets its own least-squares kernel (the "LOCAL" solution);
2. stars whose kernel sum is an outlier (variable stars, bad pixels) are rejected (``kernelSumClipping``),
   and so are stars whose own solution leaves large normalised residuals (``singleKernelClipping``);
3. the spatial model is fitted to all good stars at once, from the sum of their normal equations;
4. stars that the spatial model fits badly ("SPATIAL" residuals) are rejected and the model refitted
   (``spatialKernelClipping``, ``maxSpatialIterations``).

This is the role of ``lsst.ip.diffim``'s ``PsfMatchTask`` and ``MakeKernelTask``; `MakeKernelTask.run` is the
entry point.  `count_false_positives` is a helper for difference-image source diagnostics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from astropy.table import Table
from numpy.polynomial import chebyshev
from scipy import fft as sfft
from scipy import signal
from scipy.spatial import cKDTree

from graph import Config, Field, Struct, Task, timeMethod

from .errors import PsfMatchingError
from .image import Box2I, Exposure, LinearCombinationKernel, MaskedImage
from .image._chebyshev import chebyshev_terms, n_chebyshev_terms, normalize_to_box
from .image.psf import FWHM_PER_SIGMA
from .image.spatial_cells import CandidateStatus, SpatialCellImageCandidate, SpatialCellSet

__all__ = [
    "BackgroundModel",
    "KernelCandidate",
    "MakeKernelConfig",
    "MakeKernelTask",
    "PsfMatchConfig",
    "PsfMatchTask",
    "alard_lupton_widths",
    "count_false_positives",
    "generate_alard_lupton_basis",
]

#: Names of the residual statistics of a candidate (see `KernelCandidate.residual_stats`).
RESIDUAL_STATISTICS = ("KCDiffimMean", "KCDiffimMedian", "KCDiffimStDev", "KCDiffimIQR", "KCDiffimChiSq")

#: A basis term whose part independent of the earlier terms is below this fraction of its norm is dropped.
_DEPENDENCE_TOLERANCE = 1e-8

#: Fewest good candidates a kernel solution needs.
_MIN_CANDIDATES = 3


# The basis ----------------------------------------------------------------------------------------------------------


def generate_alard_lupton_basis(
    kernel_size: int, sig_gauss: Sequence[float], deg_gauss: Sequence[int]
) -> np.ndarray:
    """The Alard & Lupton basis: Gaussians times polynomials, renormalised so only the first carries flux.

    For Gaussian ``i`` of standard deviation ``sig_gauss[i]`` the terms are
    ``exp(-(x^2 + y^2) / (2 s_i^2)) x^p y^q`` with ``p + q <= deg_gauss[i]`` (x, y the pixel offsets from the
    central pixel), ordered by Gaussian, then by total degree ``p + q``, then by increasing ``q``.  Then:

    * ``basis[0]`` (the first Gaussian) is scaled to unit sum;
    * every other term ``t`` becomes zero-sum, ``t - sum(t) basis[0]``;
    * those are orthonormalised in order (Gram-Schmidt, unit L2 norm); a term that depends linearly on the
      earlier ones and ``basis[0]`` (the part orthogonal to them is below 1e-8 of the term's norm, e.g. a
      repeated width or a kernel too small for the polynomial degree) is dropped.

    So the sum of a kernel ``sum_i c_i basis[i]`` is ``c_0`` alone: the photometric scaling is one coefficient.

    Parameters
    ----------
    kernel_size : `int`
        Side of the kernel images [pixels]; odd, >= 1.
    sig_gauss : sequence of `float`
        Gaussian standard deviations [pixels]; > 0.
    deg_gauss : sequence of `int`
        Polynomial degree of each Gaussian; >= 0; same length as ``sig_gauss``.

    Returns
    -------
    basis : `numpy.ndarray`, shape (n_basis, kernel_size, kernel_size), float64
        ``n_basis <= sum_i (d_i + 1)(d_i + 2) / 2`` (equal unless terms were dependent).

    Raises
    ------
    ValueError
        If the size is not odd and positive, the lists are empty or differ in length, a width is not positive
        or a degree is negative.

    Notes
    -----
    The basis of Alard & Lupton (1998, ApJ 503, 325); the renormalisation follows Alard (2000, A&AS 144, 363),
    which makes the kernel sum a single parameter that can be held constant over the image.
    """
    kernel_size = int(kernel_size)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"the kernel size must be odd and positive, got {kernel_size}.")
    if len(sig_gauss) == 0 or len(sig_gauss) != len(deg_gauss):
        raise ValueError(
            f"need one degree per Gaussian width and at least one of each, got {len(sig_gauss)} widths and "
            f"{len(deg_gauss)} degrees."
        )
    half = kernel_size // 2
    offsets = np.arange(-half, half + 1, dtype=float)
    x, y = offsets[None, :], offsets[:, None]
    terms = []
    for sigma, degree in zip(sig_gauss, deg_gauss):
        sigma, degree = float(sigma), int(degree)
        if not sigma > 0 or degree < 0:
            raise ValueError(f"Gaussian widths must be > 0 and degrees >= 0, got sigma={sigma}, degree={degree}.")
        gaussian = np.exp(-0.5 * (x * x + y * y) / sigma**2)
        # Offsets in units of sigma keep the polynomial values O(1); the spanned space is the same.
        xs, ys = x / sigma, y / sigma
        terms.extend(gaussian * xs ** (total - q) * ys**q for total in range(degree + 1) for q in range(total + 1))
    raw = np.reshape(terms, (len(terms), -1))
    first = raw[0] / raw[0].sum()
    kept = [first]
    ortho = np.zeros((0, raw.shape[1]))
    for term in raw[1:]:
        vector = term - term.sum() * first
        for _ in range(2):  # Gram-Schmidt twice: orthogonal to rounding even for nearly dependent terms
            vector = vector - ortho.T @ (ortho @ vector)
        norm = float(np.linalg.norm(vector))
        if not norm > _DEPENDENCE_TOLERANCE * float(np.linalg.norm(term)):
            continue
        vector /= norm
        ortho = np.vstack([ortho, vector])
        kept.append(vector)
    return np.reshape(kept, (len(kept), kernel_size, kernel_size))


def alard_lupton_widths(
    config: PsfMatchConfig, reference_fwhm: float, target_fwhm: float
) -> tuple[list[float], list[int], int]:
    """Gaussian widths, degrees and kernel size of the basis that matches a reference PSF to a target PSF.

    With ``config.scaleByFwhm`` and both FWHMs finite and positive:

    * if the target is wider (convolution), the matching kernel of two Gaussians has
      ``sigma_match = sqrt(s_t^2 - s_r^2)`` (``s = fwhm / 2.3548``) and the ``alardNGauss`` widths are
      ``sigma_match * alardGaussBeta ** (k - (n - 1) / 2)``, k = 0..n-1 (the middle one is ``sigma_match``),
      with degrees ``alardDegGauss``.  When the narrowest would be below ``alardMinSig`` the whole sequence is
      moved up so that it equals ``alardMinSig`` (keeping the ratio ``alardGaussBeta``, so no two widths
      coincide);
    * otherwise (deconvolution, or equal PSFs) the ``alardNGaussDeconv`` widths are
      ``alardMinSigDeconv * alardGaussBeta ** k``, all of degree ``alardDegGaussDeconv``;
    * the kernel size is ``int(kernelSizeFwhmScaling * max(reference_fwhm, target_fwhm))``, made odd and
      clamped to ``[kernelSizeMin, kernelSizeMax]``.

    Without ``scaleByFwhm``, or when a FWHM is unknown (NaN), the fixed ``alardSigGauss``, ``alardDegGauss``
    and ``kernelSize`` are used.

    Parameters
    ----------
    config : `PsfMatchConfig`
        The configuration.
    reference_fwhm : `float`
        FWHM of the PSF of the image that is convolved (the template) [pixels].
    target_fwhm : `float`
        FWHM of the PSF to match (the science image's) [pixels].

    Returns
    -------
    sigmas : `list` [`float`]
        Gaussian standard deviations [pixels].
    degrees : `list` [`int`]
        Polynomial degree of each Gaussian.
    kernel_size : `int`
        Odd kernel side [pixels].
    """
    reference_fwhm, target_fwhm = float(reference_fwhm), float(target_fwhm)
    known = all(math.isfinite(f) and f > 0 for f in (reference_fwhm, target_fwhm))
    if not (config.scaleByFwhm and known):
        return [float(s) for s in config.alardSigGauss], [int(d) for d in config.alardDegGauss], config.kernelSize
    beta = config.alardGaussBeta
    s_ref, s_target = reference_fwhm / FWHM_PER_SIGMA, target_fwhm / FWHM_PER_SIGMA
    if s_target > s_ref:
        n = config.alardNGauss
        sigma_match = math.sqrt(s_target**2 - s_ref**2)
        narrowest = max(sigma_match * beta ** (-(n - 1) / 2.0), config.alardMinSig)
        sigmas = [narrowest * beta**k for k in range(n)]
        degrees = [int(d) for d in config.alardDegGauss]
    else:
        n = config.alardNGaussDeconv
        sigmas = [config.alardMinSigDeconv * beta**k for k in range(n)]
        degrees = [config.alardDegGaussDeconv] * n
    size = int(config.kernelSizeFwhmScaling * max(reference_fwhm, target_fwhm)) | 1
    return sigmas, degrees, min(max(size, config.kernelSizeMin), config.kernelSizeMax)


class _BasisTransforms:
    """Fourier transforms of the basis images, for convolving template stamps of any (square) size.

    A template stamp of side ``L = N + 2h`` convolved with a kernel of side ``2h + 1`` is exact on the central
    ``N x N`` pixels (the "valid" region); a circular convolution of any size ``F >= L`` gives those pixels
    without wrap-around, so ``F`` is the next fast FFT length.
    """

    def __init__(self, basis: np.ndarray) -> None:
        self.basis = basis
        self.half = basis.shape[-1] // 2
        self._ffts: dict[int, np.ndarray] = {}

    def fft_size(self, template_size: int) -> int:
        return sfft.next_fast_len(template_size, real=True)

    def basis_fft(self, size: int) -> np.ndarray:
        """rfft2 of the basis images zero-padded to ``(size, size)``; shape (n_basis, size, size // 2 + 1)."""
        if size not in self._ffts:
            self._ffts[size] = sfft.rfft2(self.basis, s=(size, size))
        return self._ffts[size]

    @staticmethod
    def forward(image: np.ndarray, size: int) -> np.ndarray:
        return sfft.rfft2(image, s=(size, size))

    def valid(self, product: np.ndarray, size: int, n: int) -> np.ndarray:
        """Inverse transform of ``product`` (..., size, size // 2 + 1) cut to the valid ``n x n`` pixels.

        The rows outside the valid region are dropped between the two 1-D passes (a third less work).
        """
        lo = 2 * self.half
        rows = sfft.ifft(product, axis=-2)[..., lo : lo + n, :]
        return sfft.irfft(rows, n=size, axis=-1)[..., lo : lo + n]


# Candidates -------------------------------------------------------------------------------------------------------


class _UnusableCandidate(Exception):
    """A candidate whose stamps cannot constrain a kernel (too few unmasked pixels, singular system)."""


def _box_any(mask: np.ndarray, size: int) -> np.ndarray:
    """For each ``size x size`` window of ``mask`` (n + size - 1 square), whether any pixel is set; shape (n, n)."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    counts = table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]
    return counts > 0


def _solve_symmetric(matrix: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Solve a symmetric positive-definite system by eigen-decomposition after scaling to unit diagonal.

    Returns
    -------
    solution : `numpy.ndarray`
        The solution of ``matrix @ solution = rhs``.
    inverse : `numpy.ndarray`
        The inverse of ``matrix`` (the covariance of the solution when ``matrix`` is a Fisher matrix).
    condition : `float`
        Ratio of the largest to the smallest eigenvalue of the matrix scaled to unit diagonal (independent of
        the units of the parameters).

    `None` when the matrix is singular (a non-positive diagonal element or eigenvalue).
    """
    diagonal = np.diag(matrix)
    if not np.all(diagonal > 0):
        return None
    scale = 1.0 / np.sqrt(diagonal)
    values, vectors = np.linalg.eigh(matrix * scale[:, None] * scale[None, :])
    if not values[0] > 0:
        return None
    scaled_vectors = scale[:, None] * vectors
    solution = scaled_vectors @ ((scaled_vectors.T @ rhs) / values)
    inverse = (scaled_vectors / values) @ scaled_vectors.T
    return solution, inverse, float(values[-1] / values[0])


class KernelCandidate(SpatialCellImageCandidate):
    """A star for the PSF-matching fit: a science stamp and the larger template stamp around it.

    Parameters
    ----------
    x, y : `float`
        Parent pixel position of the star [pixels]; the position of the candidate in the spatial model.
    template_stamp : `MaskedImage`
        Template pixels around the star, side ``N + 2h`` (``h`` the kernel half-size), concentric with the
        science stamp; every science pixel's model uses only these pixels.
    science_stamp : `MaskedImage`
        Science pixels, square, odd side ``N``.
    rating : `float`
        Sort key within its spatial cell (e.g. the star's flux): the brightest are used first.
    source_id : `int`, optional
        The ``id`` of the star's source record (-1 when unknown).

    Attributes
    ----------
    coefficients : `numpy.ndarray` or `None`, shape (n_basis,)
        The candidate's own (LOCAL) kernel coefficients, once fitted.
    kernel_sum : `float`
        Sum of the LOCAL kernel (its first coefficient): the flux ratio science / template.
    kernel_sum_error : `float`
        Standard error of ``kernel_sum`` from the noise of both stamps (see `_kernel_sum_error`).
    background : `float`
        LOCAL differential background [science units] (0 unless fitted).
    condition_number : `float`
        Condition number of the candidate's normal matrix (scaled to unit diagonal).
    residual_stats : `dict` [`str`, `dict` [`str`, `float`]]
        For ``"LOCAL"`` and ``"SPATIAL"`` (once assessed): statistics of the normalised residual
        ``(S - K * T - b) / sqrt(var)`` over the unmasked science pixels, ``var`` the science variance plus the
        template variance convolved with ``K^2``: ``KCDiffimMean``, ``KCDiffimMedian``, ``KCDiffimStDev``,
        ``KCDiffimIQR`` (75th - 25th percentile; 1.349 for unit-normal residuals) and ``KCDiffimChiSq`` (mean
        square).

    Raises
    ------
    PsfMatchingError
        If the stamps are not square, odd and concentric with the template the larger.

    Notes
    -----
    The basis convolutions of the template stamp ``C_i = basis_i * T`` are computed once per candidate with one
    batched FFT; the candidate keeps only their normal matrix ``C^T W C`` and vector ``C^T W S`` (all the
    spatial fit needs) and the template's transform, from which any other kernel's model is one more FFT --
    so hundreds of candidates stay small in memory.
    """

    def __init__(
        self,
        x: float,
        y: float,
        template_stamp: MaskedImage,
        science_stamp: MaskedImage,
        *,
        rating: float,
        source_id: int = -1,
    ) -> None:
        n_y, n_x = science_stamp.shape
        t_y, t_x = template_stamp.shape
        half = (t_x - n_x) // 2
        if (
            n_x != n_y
            or t_x != t_y
            or n_x % 2 == 0
            or t_x < n_x
            or template_stamp.bbox != science_stamp.bbox.dilated(half)
        ):
            raise PsfMatchingError(
                "a kernel candidate needs a square, odd science stamp and a concentric, larger square template "
                f"stamp; got science {science_stamp.bbox} and template {template_stamp.bbox}."
            )
        super().__init__(x, y, width=n_x, height=n_y, rating=rating)
        self.template_stamp = template_stamp
        self.science_stamp = science_stamp
        self.source_id = int(source_id)
        self.kernel_half_size = half
        self.coefficients: np.ndarray | None = None
        self.kernel_sum = math.nan
        self.kernel_sum_error = math.nan
        self.background = 0.0
        self.condition_number = math.nan
        self.residual_stats: dict[str, dict[str, float]] = {}
        self._system: dict[str, Any] | None = None

    def _is_fitted_with(self, transforms: _BasisTransforms) -> bool:
        """True when the candidate's own kernel has been fitted with this basis."""
        return self._system is not None and self._system["transforms"] is transforms

    def _fit_local(
        self,
        transforms: _BasisTransforms,
        bad_mask_planes: Sequence[str],
        *,
        constant_variance_weighting: bool,
        fit_background: bool,
    ) -> None:
        """Convolve the template stamp with the basis, form the weighted normal equations and solve the
        candidate's own kernel: sets `coefficients`, `kernel_sum`, `kernel_sum_error`, `background`,
        `condition_number` and the LOCAL `residual_stats`.

        Pixels are unusable where the science pixel is masked (``bad_mask_planes``), not finite or has a
        variance <= 0, or where the kernel footprint reaches a masked or non-finite template pixel.

        Raises
        ------
        PsfMatchingError
            If the basis size does not match the stamps.
        _UnusableCandidate
            If no more usable pixels than parameters remain, or the normal matrix is singular.
        """
        half = transforms.half
        if half != self.kernel_half_size:
            raise PsfMatchingError(
                f"candidate {self.id}'s template stamp is {self.kernel_half_size} pixels wider than its science "
                f"stamp on each side, but the basis kernels have half-size {half}; cut the stamps for this basis."
            )
        n = self.width
        template, t_var, t_bad = _stamp_arrays(self.template_stamp, bad_mask_planes)
        science, s_var, s_bad = _stamp_arrays(self.science_stamp, bad_mask_planes)
        template[t_bad] = 0.0
        t_var[t_bad] = 0.0
        fit_variance = s_var + t_var[half : half + n, half : half + n]
        with np.errstate(invalid="ignore"):
            s_bad |= ~((s_var > 0) & (fit_variance > 0))
        good = ~(s_bad | _box_any(t_bad, 2 * half + 1))
        n_basis = len(transforms.basis)
        n_cols = n_basis + int(fit_background)
        n_good = int(good.sum())
        if n_good <= n_cols:
            raise _UnusableCandidate(f"only {n_good} usable pixels for {n_cols} parameters")
        size = transforms.fft_size(template.shape[0])
        template_fft = transforms.forward(template, size)
        convolved = transforms.valid(template_fft[None] * transforms.basis_fft(size), size, n)
        design = convolved.reshape(n_basis, -1)[:, good.ravel()]
        if fit_background:
            design = np.vstack([design, np.ones((1, n_good))])
        fit_variance = fit_variance[good]
        if constant_variance_weighting:
            weights = np.full(n_good, 1.0 / fit_variance.mean())
        else:
            weights = 1.0 / fit_variance
        weighted = design * weights
        normal, rhs = weighted @ design.T, weighted @ science[good]
        solved = _solve_symmetric(normal, rhs)
        if solved is None:
            raise _UnusableCandidate("singular normal matrix")
        solution, inverse, self.condition_number = solved
        self._system = {
            "normal": normal,
            "rhs": rhs,
            "template_fft": template_fft,
            "variance_fft": transforms.forward(t_var, size),
            "science": science,
            "variance": s_var,
            "good": good,
            "transforms": transforms,
            "size": size,
        }
        self.coefficients = solution[:n_basis]
        self.kernel_sum = float(solution[0])
        self.background = float(solution[n_basis]) if fit_background else 0.0
        model = np.tensordot(self.coefficients, convolved, axes=1)[good]
        self.kernel_sum_error = self._kernel_sum_error(weights * (inverse[0] @ design), t_var, s_var[good])
        variance = self._residual_variance(self.coefficients)
        self._record("LOCAL", (science[good] - model - self.background) / np.sqrt(variance))

    @property
    def _normal(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._system is not None
        return self._system["normal"], self._system["rhs"]

    def _kernel_sum_error(self, gain: np.ndarray, template_variance: np.ndarray, science_variance: np.ndarray) -> float:
        """Standard error of the LOCAL kernel sum, to first order in the noise of both stamps.

        The kernel sum's error is ``sum_p g_p n_p`` with ``n`` the noise of ``S - K * T`` on the usable pixels and
        ``g = W D^T M^-1 e_0`` (``gain``), whatever the weights (a "sandwich" estimate: with constant weights
        ``M^-1`` alone would miss the stars' Poisson noise).  The science noise adds ``sum_p g_p^2 var_S(p)``; the
        template noise, correlated by the kernel, ``sum_q var_T(q) h_q^2`` with ``h = g`` correlated with ``K``
        over the template stamp -- ~``(sum K)^2 / sum K^2`` times more than a per-pixel variance would say.
        """
        system = self._system
        assert system is not None and self.coefficients is not None
        gain_image = np.zeros((self.width, self.width))
        gain_image[system["good"]] = gain
        kernel = np.tensordot(self.coefficients, system["transforms"].basis, axes=1)
        spread = signal.fftconvolve(gain_image, kernel[::-1, ::-1], mode="full")  # d kernel_sum / d T, (N + 2h)^2
        return math.sqrt(float(np.sum(gain * gain * science_variance) + np.sum(template_variance * spread**2)))

    def _residual_variance(self, coefficients: np.ndarray) -> np.ndarray:
        """Variance of the usable pixels of ``S - K * T`` for the kernel ``sum_i coefficients[i] basis_i``: the
        science variance plus the template variance convolved with ``K^2``; shape (n_usable,)."""
        system = self._system
        assert system is not None
        transforms: _BasisTransforms = system["transforms"]
        kernel = np.tensordot(coefficients, transforms.basis, axes=1)
        product = system["variance_fft"] * transforms.forward(kernel * kernel, system["size"])
        convolved = transforms.valid(product, system["size"], self.width)
        return (system["variance"] + convolved)[system["good"]]

    def _assess(self, kind: str, coefficients: np.ndarray, background: float) -> dict[str, float]:
        """Residual statistics of the kernel ``sum_i coefficients[i] basis_i`` and ``background``; stored under
        ``kind`` in `residual_stats` and returned."""
        system = self._system
        assert system is not None
        transforms: _BasisTransforms = system["transforms"]
        size, good = system["size"], system["good"]
        product = system["template_fft"] * np.tensordot(coefficients, transforms.basis_fft(size), axes=1)
        model = transforms.valid(product, size, self.width)[good]
        variance = self._residual_variance(coefficients)
        return self._record(kind, (system["science"][good] - model - background) / np.sqrt(variance))

    def _record(self, kind: str, residual: np.ndarray) -> dict[str, float]:
        """Store the statistics of the normalised residual (usable pixels) under ``kind``; set ``chi2``."""
        q25, median, q75 = np.percentile(residual, [25.0, 50.0, 75.0])
        chi2 = residual * residual
        stats = {
            "KCDiffimMean": float(residual.mean()),
            "KCDiffimMedian": float(median),
            "KCDiffimStDev": float(residual.std()),
            "KCDiffimIQR": float(q75 - q25),
            "KCDiffimChiSq": float(chi2.mean()),
        }
        self.chi2 = float(chi2.sum())
        self.residual_stats[kind] = stats
        return stats


def _stamp_arrays(stamp: MaskedImage, bad_mask_planes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 copies of a stamp's image and variance, and where it is masked or not finite."""
    image = stamp.image.astype(np.float64)
    variance = stamp.variance.astype(np.float64)
    bad = (stamp.mask.array & stamp.mask.get_plane_bitmask(bad_mask_planes, missing_ok=True)) != 0
    bad |= ~(np.isfinite(image) & np.isfinite(variance))
    return image, variance, bad


# Background model -------------------------------------------------------------------------------------------------


class BackgroundModel:
    """A differential background ``b(x, y)``: a 2-D Chebyshev polynomial over a box (zero when not fitted).

    Parameters
    ----------
    coefficients : `numpy.ndarray`, shape (n_terms,)
        Coefficients of the terms of `~tasks.image._chebyshev.chebyshev_terms` [image units];
        ``n_terms = (degree + 1)(degree + 2) / 2``.
    degree : `int`
        Total degree (>= 0).
    bbox : `Box2I`
        Domain in parent pixels (normalised to [-1, 1]).

    Raises
    ------
    ValueError
        If the number of coefficients does not match the degree.
    """

    def __init__(self, coefficients: np.ndarray, degree: int, bbox: Box2I) -> None:
        self.coefficients = np.array(coefficients, dtype=np.float64).ravel()
        self.degree = int(degree)
        self.bbox = bbox
        if len(self.coefficients) != n_chebyshev_terms(self.degree):
            raise ValueError(
                f"a degree-{self.degree} background needs {n_chebyshev_terms(self.degree)} coefficients, got "
                f"{len(self.coefficients)}."
            )

    @classmethod
    def zero(cls, bbox: Box2I) -> BackgroundModel:
        """The model of no differential background."""
        return cls(np.zeros(1), 0, bbox)

    def __call__(self, x: Any, y: Any) -> np.ndarray:
        """``b`` at parent position(s) (x, y) [image units]; the broadcast shape of x and y."""
        return np.tensordot(self.coefficients, chebyshev_terms(x, y, self.degree, self.bbox), axes=1)

    def get_image(self, bbox: Box2I | None = None) -> np.ndarray:
        """``b`` on the pixels of ``bbox`` (default the model's), float32, shape (height, width)."""
        bbox = self.bbox if bbox is None else bbox
        xn, yn = normalize_to_box(np.arange(bbox.x0, bbox.x1), np.arange(bbox.y0, bbox.y1), self.bbox)
        tx = chebyshev.chebvander(xn, self.degree)  # (w, degree + 1)
        ty = chebyshev.chebvander(yn, self.degree)  # (h, degree + 1)
        grid = np.zeros((self.degree + 1, self.degree + 1))  # [j, i]: coefficient of T_i(x) T_j(y)
        k = 0
        for total in range(self.degree + 1):
            for j in range(total + 1):
                grid[j, total - j] = self.coefficients[k]
                k += 1
        return (ty @ grid @ tx.T).astype(np.float32)

    def __repr__(self) -> str:
        return f"BackgroundModel(degree={self.degree}, coefficients={np.array2string(self.coefficients, precision=4)})"


# Configuration ----------------------------------------------------------------------------------------------------


def _odd(value: int, name: str) -> None:
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd (a kernel has a central pixel), got {value}.")


class PsfMatchConfig(Config):
    """Configuration of `PsfMatchTask` (names and defaults of ``lsst.ip.diffim``)."""

    kernelBasisSet: Literal["alard-lupton"] = Field(
        "alard-lupton", description="Kernel basis: Gaussians times polynomials (Alard & Lupton 1998)."
    )
    alardNGauss: int = Field(3, ge=1, description="Number of Gaussians of the convolution basis.")
    alardSigGauss: list[float] = Field(
        default_factory=lambda: [0.7, 1.5, 3.0],
        description="Gaussian widths [pixels] when not scaled by the PSFs' FWHM; one per Gaussian.",
    )
    alardDegGauss: list[int] = Field(
        default_factory=lambda: [4, 2, 2], description="Polynomial degree of each Gaussian; one per Gaussian."
    )
    alardGaussBeta: float = Field(2.0, gt=1, description="Ratio of the widths of successive Gaussians.")
    alardMinSig: float = Field(0.7, gt=0, description="Minimum Gaussian width of the convolution basis [pixels].")
    alardNGaussDeconv: int = Field(3, ge=1, description="Number of Gaussians of the deconvolution basis.")
    alardDegGaussDeconv: int = Field(3, ge=0, description="Polynomial degree of the deconvolution Gaussians.")
    alardMinSigDeconv: float = Field(
        0.4, gt=0, description="Width of the narrowest deconvolution Gaussian [pixels]."
    )
    scaleByFwhm: bool = Field(
        True, description="Choose the Gaussian widths and kernel size from the two PSFs' FWHM (alard_lupton_widths)."
    )
    kernelSize: int = Field(21, ge=1, description="Kernel side without scaleByFwhm [pixels]; odd.")
    kernelSizeFwhmScaling: float = Field(
        6.0, gt=0, description="With scaleByFwhm, the kernel side is this many times the larger FWHM."
    )
    kernelSizeMin: int = Field(21, ge=1, description="Minimum kernel side with scaleByFwhm [pixels]; odd.")
    kernelSizeMax: int = Field(35, ge=1, description="Maximum kernel side with scaleByFwhm [pixels]; odd.")
    spatialKernelOrder: int = Field(
        2, ge=0, description="Maximum total degree of the Chebyshev polynomials of the kernel's spatial variation."
    )
    spatialBgOrder: int = Field(
        1, ge=0, description="Maximum total degree of the differential background (with fitForBackground)."
    )
    fitForBackground: bool = Field(False, description="Fit a differential background with the kernel.")
    sizeCellX: int = Field(128, ge=16, description="Width of the spatial cells that spread the stars [pixels].")
    sizeCellY: int = Field(128, ge=16, description="Height of the spatial cells [pixels].")
    nStarPerCell: int = Field(3, ge=1, description="Best good candidates of each cell used in the fit.")
    maxKsumSigma: float = Field(
        3.0,
        gt=0,
        description="Reject candidates whose kernel sum is this many sigma off the clipped mean; sigma is the "
        "candidate's own kernel-sum error and the clipped extra scatter of the kernel sums in quadrature.",
    )
    kernelSumClipping: bool = Field(True, description="Reject kernel-sum outliers (variable stars).")
    singleKernelClipping: bool = Field(True, description="Reject candidates with large residuals of their own kernel.")
    spatialKernelClipping: bool = Field(
        True, description="Reject candidates with large residuals of the spatial kernel, and refit."
    )
    candidateResidualMeanMax: float = Field(
        0.25, gt=0, description="Reject a candidate whose mean normalised residual exceeds this in absolute value."
    )
    candidateResidualStdMax: float = Field(
        1.5, gt=0, description="Reject a candidate whose normalised residual's standard deviation exceeds this."
    )
    maxSpatialIterations: int = Field(3, ge=1, description="Spatial fit / reject iterations.")
    maxConditionNumber: float = Field(
        5.0e7,
        gt=1,
        description="Largest condition number of the spatial normal matrix (scaled to unit diagonal) before the "
        "solution is declared singular.",
    )
    constantVarianceWeighting: bool = Field(
        True,
        description="Weight each candidate's pixels by 1 / its mean variance (True), or each pixel by 1 / its "
        "variance (False; down-weights star cores by their own Poisson noise).",
    )
    badMaskPlanes: list[str] = Field(
        default_factory=lambda: ["NO_DATA", "EDGE", "SAT", "BAD"],
        description="Mask planes of pixels left out of the fit (in either image).",
    )
    minCandidatesPerSpatialTerm: float = Field(
        3.0,
        gt=0,
        description="The spatial order used is the largest <= spatialKernelOrder (spatialBgOrder) with at least this "
        "many good candidates per Chebyshev term; so a handful of stars gives a constant kernel.",
    )

    def validate(self) -> None:  # type: ignore[override]
        super().validate()
        for name in ("alardSigGauss", "alardDegGauss"):
            if len(getattr(self, name)) != self.alardNGauss:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries but alardNGauss is {self.alardNGauss}; give one "
                    "per Gaussian."
                )
        if any(not s > 0 for s in self.alardSigGauss):
            raise ValueError(f"alardSigGauss must be > 0 pixels, got {self.alardSigGauss}.")
        if any(d < 0 for d in self.alardDegGauss):
            raise ValueError(f"alardDegGauss must be >= 0, got {self.alardDegGauss}.")
        for name in ("kernelSize", "kernelSizeMin", "kernelSizeMax"):
            _odd(getattr(self, name), name)
        if self.kernelSizeMin > self.kernelSizeMax:
            raise ValueError(
                f"kernelSizeMin ({self.kernelSizeMin}) must not exceed kernelSizeMax ({self.kernelSizeMax})."
            )


# The solver -------------------------------------------------------------------------------------------------------


def _spatial_order(n_candidates: int, max_order: int, per_term: float) -> int:
    """Largest order <= max_order with at least ``per_term`` candidates per Chebyshev term (0 at least)."""
    order = max_order
    while order > 0 and n_candidates < per_term * n_chebyshev_terms(order):
        order -= 1
    return order


class PsfMatchTask(Task):
    """Base of the PSF-matching tasks: the Alard & Lupton spatial kernel from a cell set of candidates.

    Not run directly: `MakeKernelTask.run` cuts the candidates and calls `_solve`, which

    1. visits the best ``nStarPerCell`` non-BAD candidates of each cell and solves each one's own kernel
       (weights ``1 / mean variance`` with ``constantVarianceWeighting``, else ``1 / variance`` per pixel;
       ``badMaskPlanes`` pixels weigh 0), computing its LOCAL residual statistics;
    2. rejects (marks BAD) candidates whose kernel sum is more than ``maxKsumSigma`` sigma from the clipped mean
       (``kernelSumClipping``; sigma combines the candidate's own error and the extra scatter of all, see
       `_clip_kernel_sums`), and those whose LOCAL ``KCDiffimMean`` exceeds
       ``candidateResidualMeanMax`` in absolute value or ``KCDiffimStDev`` exceeds ``candidateResidualStdMax``
       (``singleKernelClipping``); rejected candidates are replaced by the next best of their cell;
    3. fits the spatial model: the first basis amplitude (the kernel sum) constant, the others Chebyshev
       polynomials of the largest order <= ``spatialKernelOrder`` with ``minCandidatesPerSpatialTerm`` candidates
       per term, plus a differential background of order <= ``spatialBgOrder`` (``fitForBackground``), as one
       normal-equation system ``sum_j A_j^T M_j A_j`` built from the candidates' normal matrices ``M_j`` (``A_j``
       maps the spatial coefficients to the candidate's kernel coefficients: ``kron(M_j, t_j t_j^T)`` restricted
       to the terms each amplitude has), solved by eigen-decomposition after scaling to unit diagonal;
    4. computes every candidate's SPATIAL residual statistics; with ``spatialKernelClipping`` those beyond the
       same thresholds are rejected and steps 1-4 repeat, at most ``maxSpatialIterations`` times (then one last
       fit without the last rejected).

    Metadata (set by `_diagnostic`): ``spatialConditionNum``, ``spatialKernelSum`` (at the box centre),
    ``spatialKernelOrder``, ``spatialBgOrder`` (used), ``nCandidates``, ``nGoodCandidates`` (in the final fit),
    ``nRejectedKernelSum``, ``nRejectedLocal`` (residuals of the own kernel, or unusable stamps),
    ``nRejectedSpatial``, and ``{stat}_{LOCAL|SPATIAL}_{MEAN|MEDIAN|STDEV}`` of each residual statistic over
    the final candidates (see `KernelCandidate`).
    """

    ConfigClass = PsfMatchConfig
    _DefaultName = "psfMatch"
    config: PsfMatchConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.validate()

    def _solve(self, kernelCellSet: SpatialCellSet, basis: np.ndarray) -> Struct:  # noqa: N803 - LSST name
        """Fit the spatially varying kernel (and background) to the candidates of a cell set.

        Parameters
        ----------
        kernelCellSet : `SpatialCellSet` of `KernelCandidate`
            The candidates; their statuses are updated (GOOD for those in the final fit, BAD for rejected).
        basis : `numpy.ndarray`, shape (n_basis, k, k)
            Kernel basis, ``basis[0]`` of unit sum and the others of zero sum
            (`generate_alard_lupton_basis`); ``k = 2h + 1`` with ``h`` the candidates' kernel half-size.

        Returns
        -------
        result : `Struct`
            ``psfMatchingKernel`` (`LinearCombinationKernel` over the cell set's box), ``backgroundModel``
            (`BackgroundModel`), ``spatialKernelOrder``, ``spatialBgOrder``, ``spatialConditionNum``,
            ``nGoodCandidates`` and ``candidates`` (the `KernelCandidate` s of the final fit).

        Raises
        ------
        PsfMatchingError
            If fewer than 3 good candidates remain at any stage (the message counts the rejections of each
            stage), or the spatial normal matrix is singular or its condition number exceeds
            ``maxConditionNumber``.
        """
        cfg = self.config
        transforms = _BasisTransforms(np.asarray(basis, dtype=np.float64))
        counts = {"kernelSum": 0, "local": 0, "spatial": 0}
        n_total = kernelCellSet.n_candidates()
        for _ in range(cfg.maxSpatialIterations):
            active = self._good_candidates(kernelCellSet, transforms, counts, n_total)
            fit = self._fit_spatial(active, transforms, kernelCellSet.bbox)
            n_rejected = self._assess_spatial(active, fit, reject=cfg.spatialKernelClipping)
            counts["spatial"] += n_rejected
            if n_rejected == 0:
                break
        else:
            active = self._good_candidates(kernelCellSet, transforms, counts, n_total)
            fit = self._fit_spatial(active, transforms, kernelCellSet.bbox)
            self._assess_spatial(active, fit, reject=False)
        self._diagnostic(fit, active, counts, n_total)
        return fit

    # -- steps 1 and 2 -------------------------------------------------------------------------------------------

    def _good_candidates(
        self, cell_set: SpatialCellSet, transforms: _BasisTransforms, counts: dict[str, int], n_total: int
    ) -> list[KernelCandidate]:
        """The best ``nStarPerCell`` candidates per cell that pass the local tests (built and solved as needed)."""
        cfg = self.config
        while True:
            chosen: list[KernelCandidate] = []
            cell_set.visit_candidates(chosen.append, cfg.nStarPerCell)
            n_rejected = 0
            for candidate in chosen:
                if candidate._is_fitted_with(transforms):
                    continue
                try:
                    candidate._fit_local(
                        transforms,
                        cfg.badMaskPlanes,
                        constant_variance_weighting=cfg.constantVarianceWeighting,
                        fit_background=cfg.fitForBackground,
                    )
                except _UnusableCandidate as err:
                    self.log.debug(
                        "candidate %d at (%.1f, %.1f) is unusable: %s", candidate.id, candidate.x, candidate.y, err
                    )
                    candidate.status = CandidateStatus.BAD
                    n_rejected += 1
                    continue
                candidate.status = CandidateStatus.GOOD
                if cfg.singleKernelClipping and self._residuals_too_large(candidate.residual_stats["LOCAL"]):
                    candidate.status = CandidateStatus.BAD
                    n_rejected += 1
            counts["local"] += n_rejected
            good = [c for c in chosen if not c.is_bad]
            if len(good) < _MIN_CANDIDATES:
                raise self._too_few(len(good), counts, n_total)
            if cfg.kernelSumClipping:
                n_clipped = self._clip_kernel_sums(good)
                counts["kernelSum"] += n_clipped
                n_rejected += n_clipped
            if n_rejected == 0:
                return good

    def _residuals_too_large(self, stats: dict[str, float]) -> bool:
        return bool(
            abs(stats["KCDiffimMean"]) > self.config.candidateResidualMeanMax
            or stats["KCDiffimStDev"] > self.config.candidateResidualStdMax
        )

    def _clip_kernel_sums(self, candidates: list[KernelCandidate]) -> int:
        """Mark BAD the candidates whose kernel sum is more than ``maxKsumSigma`` sigma off; return how many.

        A candidate's sigma is its own kernel-sum error ``e_j`` and the scatter ``s`` of the kernel sums beyond
        their errors (colours, PSF-model errors) in quadrature, ``sqrt(e_j^2 + s^2)``: faint stars, whose kernel
        sums scatter more, are not rejected for their noise, nor bright stars for a tiny error, while a variable
        star is many of its sigmas off.  The mean (weights ``1 / (e_j^2 + s^2)``) and ``s`` (the DerSimonian &
        Laird 1986, Control. Clin. Trials 7, 177, moment estimate, in which noisy kernel sums weigh little) are
        iterated with 3-sigma clipping, starting from the median and the MAD.
        """
        sums = np.array([c.kernel_sum for c in candidates])
        # A floor at the rounding level keeps exact (noise-free) kernel sums comparable.
        errors2 = np.array([c.kernel_sum_error for c in candidates]) ** 2 + (1e-12 * np.abs(sums).max()) ** 2
        mean = float(np.median(sums))
        extra2 = max(0.0, float((1.4826 * np.median(np.abs(sums - mean))) ** 2 - np.median(errors2)))
        keep = np.abs(sums - mean) <= 3.0 * np.sqrt(errors2 + extra2)
        for _ in range(10):
            if keep.sum() < _MIN_CANDIDATES:
                break
            inverse = 1.0 / errors2[keep]
            fixed_mean = np.sum(inverse * sums[keep]) / np.sum(inverse)
            q = float(np.sum(inverse * (sums[keep] - fixed_mean) ** 2))
            extra2 = max(0.0, (q - (keep.sum() - 1)) / float(np.sum(inverse) - np.sum(inverse**2) / np.sum(inverse)))
            weights = 1.0 / (errors2[keep] + extra2)
            mean = float(np.sum(weights * sums[keep]) / np.sum(weights))
            new_keep = np.abs(sums - mean) <= 3.0 * np.sqrt(errors2 + extra2)
            if np.array_equal(new_keep, keep):
                break
            keep = new_keep
        sigma = np.sqrt(errors2 + extra2)
        outliers = np.abs(sums - mean) > self.config.maxKsumSigma * sigma
        for candidate, bad, error in zip(candidates, outliers, sigma):
            if bad:
                self.log.debug(
                    "candidate %d at (%.1f, %.1f): kernel sum %.4f vs %.4f +- %.4f; rejected",
                    candidate.id, candidate.x, candidate.y, candidate.kernel_sum, mean, error,
                )
                candidate.status = CandidateStatus.BAD
        return int(outliers.sum())

    def _too_few(self, n_good: int, counts: dict[str, int], n_total: int) -> PsfMatchingError:
        cfg = self.config
        return PsfMatchingError(
            f"too few good kernel candidates to fit a PSF-matching kernel: {n_good} (need at least "
            f"{_MIN_CANDIDATES}) of {n_total} candidates; rejected {counts['kernelSum']} for their kernel sum "
            f"(maxKsumSigma={cfg.maxKsumSigma}), {counts['local']} for the residuals of their own kernel or unusable "
            f"stamps (candidateResidualMeanMax={cfg.candidateResidualMeanMax}, candidateResidualStdMax="
            f"{cfg.candidateResidualStdMax}), {counts['spatial']} for the residuals of the spatial kernel.  Give "
            "more (unsaturated, isolated) stars, check that the template and science images are aligned and "
            "overlap, set fitForBackground=True if their backgrounds differ, or loosen the clipping "
            "(kernelSumClipping, singleKernelClipping, spatialKernelClipping)."
        )

    # -- step 3 --------------------------------------------------------------------------------------------------

    def _fit_spatial(self, candidates: list[KernelCandidate], transforms: _BasisTransforms, bbox: Box2I) -> Struct:
        """Fit the spatial kernel (and background) to the candidates' normal equations (step 3 of `_solve`)."""
        cfg = self.config
        n = len(candidates)
        n_basis = len(transforms.basis)
        fit_bg = cfg.fitForBackground
        kernel_order = _spatial_order(n, cfg.spatialKernelOrder, cfg.minCandidatesPerSpatialTerm)
        bg_order = _spatial_order(n, cfg.spatialBgOrder, cfg.minCandidatesPerSpatialTerm) if fit_bg else 0
        n_kernel, n_bg = n_chebyshev_terms(kernel_order), n_chebyshev_terms(bg_order)
        max_order = max(kernel_order, bg_order)
        n_terms = n_chebyshev_terms(max_order)
        n_cols = n_basis + int(fit_bg)
        x = np.array([c.x for c in candidates])
        y = np.array([c.y for c in candidates])
        terms = chebyshev_terms(x, y, max_order, bbox).T  # (n, n_terms)
        normals = np.stack([c._normal[0] for c in candidates])  # (n, n_cols, n_cols)
        rhs = np.stack([c._normal[1] for c in candidates])  # (n, n_cols)
        outer = (terms[:, :, None] * terms[:, None, :]).reshape(n, n_terms * n_terms)
        # sum_j kron(M_j, t_j t_j^T), indexed [(column a, term s), (column b, term t)].
        full = (normals.reshape(n, n_cols * n_cols).T @ outer).reshape(n_cols, n_cols, n_terms, n_terms)
        full = full.transpose(0, 2, 1, 3).reshape(n_cols * n_terms, n_cols * n_terms)
        full_rhs = (rhs.T @ terms).ravel()
        # Parameters: basis 0 constant, the other basis amplitudes n_kernel terms, the background n_bg terms.
        index = [0] + [i * n_terms + t for i in range(1, n_basis) for t in range(n_kernel)]
        if fit_bg:
            index += [n_basis * n_terms + t for t in range(n_bg)]
        index_array = np.asarray(index)
        solved = _solve_symmetric(full[np.ix_(index_array, index_array)], full_rhs[index_array])
        solution, condition = (None, math.inf) if solved is None else (solved[0], solved[2])
        if solution is None or condition > cfg.maxConditionNumber:
            raise PsfMatchingError(
                f"the spatial kernel fit to {n} candidates is singular: condition number {condition:.3g} > "
                f"maxConditionNumber={cfg.maxConditionNumber:.3g} (spatial order {kernel_order}, {n_basis} basis "
                "kernels).  Lower spatialKernelOrder or the basis degrees (alardDegGauss), or give more stars."
            )
        spatial = np.zeros((n_basis, n_kernel))
        spatial[0, 0] = solution[0]
        spatial[1:] = solution[1 : 1 + (n_basis - 1) * n_kernel].reshape(n_basis - 1, n_kernel)
        background = (
            BackgroundModel(solution[1 + (n_basis - 1) * n_kernel :], bg_order, bbox)
            if fit_bg
            else BackgroundModel.zero(bbox)
        )
        return Struct(
            psfMatchingKernel=LinearCombinationKernel(transforms.basis, spatial, kernel_order, bbox),
            backgroundModel=background,
            spatialKernelOrder=kernel_order,
            spatialBgOrder=bg_order,
            spatialConditionNum=condition,
            nGoodCandidates=n,
            candidates=candidates,
        )

    # -- step 4 --------------------------------------------------------------------------------------------------

    def _assess_spatial(self, candidates: list[KernelCandidate], fit: Struct, *, reject: bool) -> int:
        """Set the SPATIAL statistics of the candidates; with ``reject`` mark the bad ones BAD; how many."""
        kernel: LinearCombinationKernel = fit.psfMatchingKernel
        x = np.array([c.x for c in candidates])
        y = np.array([c.y for c in candidates])
        coefficients = kernel.basis_coefficients(x, y).T  # (n, n_basis)
        backgrounds = np.atleast_1d(fit.backgroundModel(x, y))
        n_rejected = 0
        for candidate, coeffs, background in zip(candidates, coefficients, backgrounds):
            stats = candidate._assess("SPATIAL", coeffs, float(background))
            if reject and self._residuals_too_large(stats):
                candidate.status = CandidateStatus.BAD
                n_rejected += 1
        return n_rejected

    def _diagnostic(self, fit: Struct, candidates: list[KernelCandidate], counts: dict[str, int], n_total: int) -> None:
        """Record the quality of the solution in the metadata and the log."""
        md = self.metadata
        kernel: LinearCombinationKernel = fit.psfMatchingKernel
        cx, cy = kernel.bbox.center
        kernel_sum = float(kernel.kernel_sum(cx, cy))
        md["spatialConditionNum"] = float(fit.spatialConditionNum)
        md["spatialKernelSum"] = kernel_sum
        md["spatialKernelOrder"] = int(fit.spatialKernelOrder)
        md["spatialBgOrder"] = int(fit.spatialBgOrder)
        md["nCandidates"] = int(n_total)
        md["nGoodCandidates"] = len(candidates)
        md["nRejectedKernelSum"] = counts["kernelSum"]
        md["nRejectedLocal"] = counts["local"]
        md["nRejectedSpatial"] = counts["spatial"]
        for kind in ("LOCAL", "SPATIAL"):
            for name in RESIDUAL_STATISTICS:
                values = np.array([c.residual_stats[kind][name] for c in candidates])
                md[f"{name}_{kind}_MEAN"] = float(values.mean())
                md[f"{name}_{kind}_MEDIAN"] = float(np.median(values))
                md[f"{name}_{kind}_STDEV"] = float(values.std())
        self.log.info(
            "PSF-matching kernel from %d of %d candidates (rejected: %d kernel sum, %d local, %d spatial): "
            "spatial order %d, kernel sum %.4f, condition number %.3g; spatial residuals mean %.3f, stdev %.3f",
            len(candidates), n_total, counts["kernelSum"], counts["local"], counts["spatial"], fit.spatialKernelOrder,
            kernel_sum, fit.spatialConditionNum, md["KCDiffimMean_SPATIAL_MEDIAN"], md["KCDiffimStDev_SPATIAL_MEDIAN"],
        )


# MakeKernelTask ---------------------------------------------------------------------------------------------------


class MakeKernelConfig(PsfMatchConfig):
    """Configuration of `MakeKernelTask`."""

    fpGrowKernelScaling: float = Field(
        1.0,
        ge=0,
        description="Science stamps have half-size h + ceil(fpGrowKernelScaling * h), h the kernel half-size "
        "(near the edges of the image they shrink, down to ceil(h / 2)).",
    )


def _min_stamp_half(half: int) -> int:
    """Smallest science-stamp half-size [pixels] for a kernel of half-size ``half``: ``ceil(half / 2)``."""
    return (half + 1) // 2


def _psf_fwhm(exposure: Exposure, x: float, y: float) -> float:
    return math.nan if exposure.psf is None else float(exposure.psf.fwhm(x, y))


def _table_column(table: Table, name: str, *, fill: Any = np.nan, dtype: Any = np.float64) -> np.ndarray:
    """A column as a plain array of ``dtype``, masked (null) entries replaced by ``fill``."""
    column = table[name]
    if hasattr(column, "filled"):
        column = column.filled(fill)
    return np.asarray(column, dtype=dtype)


class MakeKernelTask(PsfMatchTask):
    """Compute the PSF-matching kernel that convolves a template to a science image's PSF, from stars.

    See `PsfMatchTask` for the fit and the metadata; this task also records ``ALBasisNGauss``,
    ``ALBasisDegGauss``, ``ALBasisSigGauss`` [pixels] and ``ALKernelSize`` [pixels] of the basis used.
    """

    ConfigClass = MakeKernelConfig
    _DefaultName = "makeKernel"
    config: MakeKernelConfig

    @timeMethod
    def run(
        self, template: Exposure, science: Exposure, kernelSources: Table, *, preconvolved: bool = False  # noqa: N803
    ) -> Struct:
        """Solve for ``K`` (and ``b``) such that ``science ~= K * template + b``.

        Parameters
        ----------
        template : `~tasks.image.Exposure`
            The image that gets convolved (the caller swaps the two to convolve the science image), on the
            same pixel grid as ``science``; only the overlap of the two boxes is used.  Its PSF sets the reference
            FWHM.
        science : `~tasks.image.Exposure`
            The image to match; its PSF sets the target FWHM.
        kernelSources : `astropy.table.Table`
            Stars: ``centroid_x``, ``centroid_y`` [parent pixels] and a rating (``rating`` if present, else
            ``psfFlux``; the brightest of each cell are used first); ``id`` if present.
        preconvolved : `bool`, optional
            The science image was convolved with its own PSF (the target FWHM is ``sqrt(2)`` times its PSF's).

        Returns
        -------
        result : `Struct`
            ``psfMatchingKernel`` (`LinearCombinationKernel`), ``backgroundModel`` (`BackgroundModel`),
            ``kernelCellSet`` (the `SpatialCellSet` of `KernelCandidate` s, with their statuses), and
            ``kernelSources``: a table of the stars of the final fit with ``id`` (if the input has it),
            ``centroid_x``, ``centroid_y``, ``kernel_sum`` (of the star's own kernel), ``KCDiffimMean_SPATIAL``
            and ``KCDiffimStDev_SPATIAL``.

        Raises
        ------
        PsfMatchingError
            If the images do not overlap, the catalogue lacks the columns, fewer than 3 usable candidates
            remain, or the spatial solution is singular.

        Notes
        -----
        Stamps are centred on the star's pixel: the science stamp has half-size ``h + ceil(fpGrowKernelScaling
        h)`` and the template stamp ``h`` more, ``h`` the kernel half-size.  Near the edges of the overlap the
        stamps shrink (the science stamp down to half-size ``ceil(h / 2)``, still several PSF widths as ``h`` is
        about 3 FWHM); a star is skipped when even that does not fit, or when a ``badMaskPlanes`` or non-finite
        pixel lies in its core (the central ``2 ceil(h / 3) + 1`` pixels square, about the PSF's FWHM) in either
        image.  Other masked pixels only weigh 0.
        """
        cfg = self.config
        bbox = template.bbox.intersection(science.bbox)
        if bbox.is_empty:
            raise PsfMatchingError(
                f"the template {template.bbox} and science {science.bbox} images do not overlap; warp the template "
                "to the science image's pixel grid first."
            )
        cx, cy = bbox.center
        reference_fwhm = _psf_fwhm(template, cx, cy)
        target_fwhm = _psf_fwhm(science, cx, cy) * (math.sqrt(2.0) if preconvolved else 1.0)
        if cfg.scaleByFwhm and not (math.isfinite(reference_fwhm) and math.isfinite(target_fwhm)):
            self.log.warning("an image has no PSF; using the fixed basis (alardSigGauss, kernelSize)")
        sigmas, degrees, kernel_size = alard_lupton_widths(cfg, reference_fwhm, target_fwhm)
        basis = generate_alard_lupton_basis(kernel_size, sigmas, degrees)
        self.metadata["ALBasisNGauss"] = len(sigmas)
        self.metadata["ALBasisDegGauss"] = degrees
        self.metadata["ALBasisSigGauss"] = sigmas
        self.metadata["ALKernelSize"] = kernel_size
        self.log.info(
            "PSF FWHM %.2f px (template) -> %.2f px (science): %d basis kernels of %dx%d, sigmas %s, degrees %s",
            reference_fwhm, target_fwhm, len(basis), kernel_size, kernel_size,
            ", ".join(f"{s:.2f}" for s in sigmas), degrees,
        )
        half = kernel_size // 2
        cell_set, rows = self._make_candidates(template, science, kernelSources, bbox, half)
        if len(rows) < _MIN_CANDIDATES:
            raise PsfMatchingError(
                f"too few kernel candidates: {len(rows)} of {len(kernelSources)} sources (need at least "
                f"{_MIN_CANDIDATES}); the others lie within {half + _min_stamp_half(half)} pixels (1.5 kernel "
                f"half-sizes) of the edge of the overlap {bbox}, have masked ({', '.join(cfg.badMaskPlanes)}) or "
                "non-finite core pixels, or non-finite positions or ratings.  Give more stars."
            )
        fit = self._solve(cell_set, basis)
        used = Table()
        index = np.array([rows[c.id] for c in fit.candidates], dtype=int)
        if "id" in kernelSources.colnames:
            used["id"] = kernelSources["id"][index]
        used["centroid_x"] = _table_column(kernelSources, "centroid_x")[index]
        used["centroid_y"] = _table_column(kernelSources, "centroid_y")[index]
        used["kernel_sum"] = np.array([c.kernel_sum for c in fit.candidates])
        for name in ("KCDiffimMean", "KCDiffimStDev"):
            used[f"{name}_SPATIAL"] = np.array([c.residual_stats["SPATIAL"][name] for c in fit.candidates])
        return Struct(
            psfMatchingKernel=fit.psfMatchingKernel,
            backgroundModel=fit.backgroundModel,
            kernelCellSet=cell_set,
            kernelSources=used,
        )

    def _make_candidates(
        self, template: Exposure, science: Exposure, sources: Table, bbox: Box2I, half: int
    ) -> tuple[SpatialCellSet, dict[int, int]]:
        """The cell set of the usable stars and the map candidate id -> catalogue row."""
        cfg = self.config
        for name in ("centroid_x", "centroid_y"):
            if name not in sources.colnames:
                raise PsfMatchingError(
                    f"the kernel source catalogue has no {name!r} column; columns: {', '.join(sources.colnames)}."
                )
        rating_name = "rating" if "rating" in sources.colnames else "psfFlux"
        if rating_name not in sources.colnames:
            raise PsfMatchingError(
                "the kernel source catalogue needs a 'rating' or 'psfFlux' column to rank the stars; columns: "
                f"{', '.join(sources.colnames)}."
            )
        xs, ys = _table_column(sources, "centroid_x"), _table_column(sources, "centroid_y")
        ratings = _table_column(sources, rating_name)
        ids = np.asarray(sources["id"], dtype=np.int64) if "id" in sources.colnames else np.full(len(sources), -1)
        full_half = half + int(math.ceil(cfg.fpGrowKernelScaling * half))
        core = int(math.ceil(half / 3.0))
        cell_set: SpatialCellSet = SpatialCellSet(bbox, cfg.sizeCellX, cfg.sizeCellY)
        rows: dict[int, int] = {}
        n_skipped = 0
        for row in np.flatnonzero(np.isfinite(xs) & np.isfinite(ys) & np.isfinite(ratings)):
            x, y = float(xs[row]), float(ys[row])
            ix, iy = math.floor(x + 0.5), math.floor(y + 0.5)
            room = min(ix - bbox.x0, bbox.x1 - 1 - ix, iy - bbox.y0, bbox.y1 - 1 - iy) - half
            stamp_half = min(full_half, room)
            if stamp_half < _min_stamp_half(half) or self._core_is_bad(template, science, ix, iy, core):
                n_skipped += 1
                continue
            science_box = Box2I(ix - stamp_half, iy - stamp_half, 2 * stamp_half + 1, 2 * stamp_half + 1)
            candidate = KernelCandidate(
                x,
                y,
                template.masked_image[science_box.dilated(half)],
                science.masked_image[science_box],
                rating=float(ratings[row]),
                source_id=int(ids[row]),
            )
            cell_set.insert(candidate)
            rows[candidate.id] = int(row)
        self.log.info(
            "%d kernel candidates from %d sources (%d skipped: off the overlap or masked/non-finite core pixels)",
            len(rows), len(sources), n_skipped,
        )
        return cell_set, rows

    def _core_is_bad(self, template: Exposure, science: Exposure, ix: int, iy: int, core: int) -> bool:
        box = Box2I(ix - core, iy - core, 2 * core + 1, 2 * core + 1)
        for exposure in (template, science):
            stamp = exposure.masked_image[box]
            bitmask = stamp.mask.get_plane_bitmask(self.config.badMaskPlanes, missing_ok=True)
            if np.any(stamp.mask.array & bitmask) or not np.all(np.isfinite(stamp.image)):
                return True
        return False


# False positives --------------------------------------------------------------------------------------------------


def count_false_positives(
    dia_x: Any,
    dia_y: Any,
    sources_xy: tuple[np.ndarray, np.ndarray] | None,
    references_xy: tuple[np.ndarray, np.ndarray] | None,
    *,
    match_radius: float,
) -> dict[str, int]:
    """Count difference-image sources that coincide with known sources (likely subtraction artefacts).

    Parameters
    ----------
    dia_x, dia_y : array-like, shape (n,)
        Positions of the difference-image sources [parent pixels].
    sources_xy : (`numpy.ndarray`, `numpy.ndarray`) or `None`
        ``(x, y)`` of the sources of the science image [parent pixels]; None for none.
    references_xy : (`numpy.ndarray`, `numpy.ndarray`) or `None`
        ``(x, y)`` of reference-catalogue objects [parent pixels]; None for none.
    match_radius : `float`
        A difference-image source is associated with an object within this distance [pixels]; >= 0.

    Returns
    -------
    counts : `dict` [`str`, `int`]
        ``NFalsePositivesTotal`` (all difference-image sources), ``NFalsePositivesRefAssociated`` (within
        ``match_radius`` of a reference object), ``NFalsePositivesSrcAssociated`` (of a science source) and
        ``NFalsePositivesUnassociated`` (of neither).

    Raises
    ------
    ValueError
        If ``match_radius`` is negative or the coordinate arrays differ in length.
    """
    if not match_radius >= 0:
        raise ValueError(f"match_radius must be >= 0 pixels, got {match_radius}.")
    x, y = np.atleast_1d(np.asarray(dia_x, dtype=float)), np.atleast_1d(np.asarray(dia_y, dtype=float))
    if x.shape != y.shape:
        raise ValueError(f"dia_x and dia_y differ in shape: {x.shape} vs {y.shape}.")
    points = np.column_stack([x, y])

    def associated(catalog: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        if catalog is None or len(points) == 0:
            return np.zeros(len(points), dtype=bool)
        cx, cy = (np.atleast_1d(np.asarray(c, dtype=float)) for c in catalog)
        if cx.shape != cy.shape:
            raise ValueError(f"catalogue x and y differ in shape: {cx.shape} vs {cy.shape}.")
        finite = np.isfinite(cx) & np.isfinite(cy)
        if not finite.any():
            return np.zeros(len(points), dtype=bool)
        distance, _ = cKDTree(np.column_stack([cx[finite], cy[finite]])).query(points, k=1)
        return distance <= match_radius

    near_ref, near_src = associated(references_xy), associated(sources_xy)
    return {
        "NFalsePositivesTotal": len(points),
        "NFalsePositivesRefAssociated": int(near_ref.sum()),
        "NFalsePositivesSrcAssociated": int(near_src.sum()),
        "NFalsePositivesUnassociated": int((~(near_ref | near_src)).sum()),
    }
