"""PSF measurement: select stars from a source catalogue and fit a spatially varying pixelised PSF.

`MeasurePsfTask` (the role of ``lsst.meas.algorithms.MeasurePsfTask``) runs two retargetable subtasks:

* ``starSelector`` (`ObjectSizeStarSelectorTask`): keeps unflagged, bright, isolated sources on the stellar
  locus, the narrow clump of the smallest objects in second-moment width ``sqrt((Ixx + Iyy) / 2)``;
* ``psfDeterminer`` (`PcaPsfDeterminerTask`): cuts centred, background-free stamps of the stars (shifted to
  the pixel grid by spline interpolation, masked neighbours and bad pixels filled with the current model),
  fits a `~tasks.image.PcaPsf` (mean image + principal components with 2-D Chebyshev amplitudes), rejects
  stars that the model fits badly, and iterates.

A random fraction of the selected stars is reserved (not used in the fit) for validation.  The catalogue's
``calib_psf_candidate``, ``calib_psf_used`` and ``calib_psf_reserved`` columns record the outcome.

`psf_effective_fwhm` gives the width of any PSF model from its effective number of pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from graph import AlgorithmError, Config, ConfigurableField, Field, Struct, Task, timeMethod

from .image import Box2I, Exposure, PcaPsf, Psf
from .image._chebyshev import chebyshev_terms, n_chebyshev_terms
from .image.psf import FWHM_PER_SIGMA
from .image.spatial_cells import CandidateStatus, PsfCandidate, SpatialCellSet

__all__ = [
    "MeasurePsfConfig",
    "MeasurePsfTask",
    "ObjectSizeStarSelectorConfig",
    "ObjectSizeStarSelectorTask",
    "PcaPsfDeterminerConfig",
    "PcaPsfDeterminerTask",
    "fit_pca_psf",
    "psf_effective_fwhm",
]

#: FWHM of a Gaussian in units of ``sqrt(n_eff)``: ``2.3548 / (2 sqrt(pi)) = 0.66428``.
NEFF_FWHM_FACTOR = FWHM_PER_SIGMA / (2.0 * math.sqrt(math.pi))

_FLAG_COLUMNS = ("calib_psf_candidate", "calib_psf_used", "calib_psf_reserved")


def psf_effective_fwhm(psf: Psf, x: float, y: float) -> float:
    """Effective FWHM of a PSF model from its effective number of pixels [pixels].

    ``FWHM_eff = 0.6643 * sqrt(n_eff)`` with ``n_eff = 1 / sum(p**2)`` over the pixels of the kernel image
    ``p`` normalised to unit sum (`Psf.compute_kernel_image`): for a well-sampled Gaussian this is its FWHM,
    and for any profile it sets the noise of PSF photometry (the SDSS ``psf_width`` convention).

    Parameters
    ----------
    psf : `~tasks.image.Psf`
        The PSF model.
    x, y : `float`
        Parent pixel position [pixels].

    Returns
    -------
    fwhm : `float`
        Effective FWHM [pixels]; multiply by the pixel scale for arcseconds.  Includes the pixel response
        (a pixel-integrated Gaussian of standard deviation ``s`` has ``FWHM_eff ~ 2.3548 sqrt(s**2 + 1/12)``).
    """
    kernel = np.asarray(psf.compute_kernel_image(float(x), float(y)), dtype=float)
    p = kernel / kernel.sum()
    return float(NEFF_FWHM_FACTOR * math.sqrt(1.0 / np.sum(p * p)))


def fit_pca_psf(
    stamps: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    bbox: Box2I,
    *,
    weights: np.ndarray | None = None,
    variances: np.ndarray | None = None,
    n_components: int = 4,
    degree: int = 2,
    pc_significance: float = 3.0,
) -> PcaPsf:
    """Fit a `~tasks.image.PcaPsf` to centred star stamps with per-star weights.

    The weighted version of `PcaPsf.fit`: the mean image, the principal components and the spatial fit of
    the components' amplitudes all weight star ``i`` by ``weights[i]``, so faint (noisy) stars neither set
    the components nor dominate their spatial variation.

    Parameters
    ----------
    stamps : `numpy.ndarray`, shape (n_star, h, w)
        Background-subtracted star images centred on their central pixel (h, w odd), each normalised to unit
        flux (they are not renormalised here, so a noisy stamp sum does not scale the star).
    x, y : `numpy.ndarray`, shape (n_star,)
        Parent pixel positions of the stars [pixels].
    bbox : `Box2I`
        Domain of the model (parent pixels).
    weights : `numpy.ndarray`, shape (n_star,), optional
        Non-negative weights, e.g. the stars' S/N^2; default equal.
    variances : `numpy.ndarray`, shape (n_star, h, w), optional
        Variances of the normalised stamps.  When given, each pixel ``m`` of the mean image is shrunk towards
        zero by its signal-to-noise, ``m max(0, 1 - var(m) / m^2)`` (James-Stein): the far wings that the
        stars do not constrain lose most of their noise, well-measured pixels are unchanged.  And a principal
        component is kept only if the chi^2 of its fitted spatial variation against zero (with the noise of
        its amplitudes) exceeds ``pc_significance`` times the number of polynomial terms (its expectation for
        noise), so that noise is not modelled as PSF variation.
    n_components : `int`, optional
        Number of components (the weighted mean image plus ``n_components - 1`` principal components,
        limited to ``n_star - 1``).
    degree : `int`, optional
        Total degree of the Chebyshev amplitudes; lowered while the stars are fewer than the terms.
    pc_significance : `float`, optional
        See ``variances``.

    Returns
    -------
    psf : `~tasks.image.PcaPsf`
    """
    stamps = np.asarray(stamps, dtype=float)
    n_star, h, w = stamps.shape
    weights = np.ones(n_star) if weights is None else np.asarray(weights, dtype=float)
    weights = weights / weights.sum()
    flat = stamps.reshape(n_star, -1)
    mean = weights @ flat
    residuals = flat - mean
    if variances is not None:
        mean_var = (weights**2) @ np.asarray(variances, dtype=float).reshape(n_star, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = mean * np.clip(1.0 - mean_var / (mean * mean), 0.0, 1.0)
    n_pc = max(0, min(n_components - 1, n_star - 1))
    while degree > 0 and n_chebyshev_terms(degree) > n_star:
        degree -= 1
    coefficients = np.zeros((1 + n_pc, n_chebyshev_terms(degree)))
    coefficients[0, 0] = 1.0
    pcs = np.zeros((0, h * w))
    if n_pc:
        root_w = np.sqrt(weights)[:, None]
        scaled = root_w * residuals
        # Principal components from the (n_star x n_star) Gram matrix: cheaper than an SVD of the pixels.
        eigenvalues, eigenvectors = np.linalg.eigh(scaled @ scaled.T)
        order = np.argsort(eigenvalues)[::-1][:n_pc]
        order = order[eigenvalues[order] > 1e-12 * max(float(eigenvalues.max()), 1e-300)]
        pcs = eigenvectors[:, order].T @ scaled
        pcs /= np.linalg.norm(pcs, axis=1, keepdims=True)
        n_pc = len(pcs)
        coefficients = coefficients[: 1 + n_pc]
    if n_pc:
        amplitudes = residuals @ pcs.T  # (n_star, n_pc)
        terms = chebyshev_terms(np.asarray(x, float), np.asarray(y, float), degree, bbox).T  # (n_star, n_terms)
        coefficients[1:] = np.linalg.lstsq(root_w * terms, root_w * amplitudes, rcond=None)[0].T
        if variances is not None and pc_significance > 0:
            # Keep a component only if its fitted spatial variation stands out of the noise of its amplitudes:
            # chi^2 of the fit against zero above pc_significance times the number of terms (1 for noise).
            amplitude_var = np.asarray(variances, dtype=float).reshape(n_star, -1) @ (pcs * pcs).T  # (n_star, n_pc)
            fitted = terms @ coefficients[1:].T
            with np.errstate(divide="ignore", invalid="ignore"):
                chi2 = np.nansum(fitted**2 / amplitude_var, axis=0)
            keep = chi2 > pc_significance * terms.shape[1]
            pcs, coefficients = pcs[keep], np.concatenate([coefficients[:1], coefficients[1:][keep]])
            n_pc = len(pcs)
    components = np.concatenate([mean[None], pcs]).reshape(1 + n_pc, h, w)
    return PcaPsf(components, coefficients, degree, bbox)


def _shift_variance_factor(shift: tuple[float, float], order: int) -> float:
    """Factor by which shifting white noise with a spline of ``order`` (`scipy.ndimage.shift`) scales its variance."""
    factor = 1.0
    for offset in shift:
        delta = np.zeros(41)
        delta[20] = 1.0
        h = ndimage.shift(delta, offset, order=order, mode="constant")
        factor *= float(np.sum(h * h))
    return factor


def _dilation_template(kernel: np.ndarray) -> np.ndarray:
    """Derivative of a unit-sum kernel with respect to the log of its scale, ``-(2 k + x dk/dx + y dk/dy)``.

    ``k_s(x) = k(x / s) / s^2`` keeps unit flux, so ``k + delta D`` is the kernel widened by ``1 + delta``
    (to first order); central differences, with x and y about the central pixel.
    """
    n_y, n_x = kernel.shape
    gy, gx = np.gradient(kernel)
    x = np.arange(n_x, dtype=float) - n_x // 2
    y = np.arange(n_y, dtype=float) - n_y // 2
    return -(2.0 * kernel + x[None, :] * gx + y[:, None] * gy)


def _amplitude_scatter(
    psf: PcaPsf, stamps: np.ndarray, x: np.ndarray, y: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Normal matrix and residual scatter of the spatial fit of a `PcaPsf`'s principal-component amplitudes.

    Returns ``(g_inv, s2)``: ``g_inv`` the inverse of ``G = T^T W T`` (``T`` the Chebyshev terms at the stars,
    ``W`` their weights normalised to unit sum) and ``s2[c] = sum_j w_j r_jc^2 / (n - n_terms)`` the variance
    of unit weight of the amplitudes' residuals ``r`` about their fit, so that ``s2[c] t^T g_inv t`` is the
    variance of the fitted amplitude of component ``c`` at terms ``t``.  The residuals hold the amplitudes'
    pixel noise *and* whatever else scatters the stars about the model (contamination, a spatial variation
    the polynomials do not follow).  None without principal components or degrees of freedom.
    """
    n_pc = len(psf.components) - 1
    n_star = len(stamps)
    terms = chebyshev_terms(np.asarray(x, float), np.asarray(y, float), psf.degree, psf.bbox).T
    dof = n_star - terms.shape[1]
    if n_pc < 1 or dof < 1:
        return None
    w = np.asarray(weights, dtype=float) / float(np.sum(weights))
    flat = stamps.reshape(n_star, -1)
    pcs = psf.components[1:].reshape(n_pc, -1)
    amplitudes = (flat - w @ flat) @ pcs.T
    residuals = amplitudes - terms @ psf.coefficients[1:].T
    s2 = (w @ residuals**2) / dof
    g_inv = np.linalg.pinv(terms.T @ (w[:, None] * terms))
    return g_inv, s2


def _column(sources: Table, name: str, dtype: Any = float) -> np.ndarray:
    if name not in sources.colnames:
        raise AlgorithmError(
            f"the source catalogue has no column {name!r} needed to measure the PSF; columns: "
            f"{', '.join(sources.colnames)}."
        )
    column = sources[name]
    if hasattr(column, "filled"):
        column = column.filled(np.nan if dtype is float else False)
    return np.asarray(column, dtype=dtype)


def _trace_width(sources: Table) -> np.ndarray:
    """``sqrt((Ixx + Iyy) / 2)`` [pixels] of every source (NaN when unmeasured)."""
    xx, yy = _column(sources, "shape_xx"), _column(sources, "shape_yy")
    with np.errstate(invalid="ignore"):
        return np.sqrt(0.5 * (xx + yy))


def _ellipticity(sources: Table) -> np.ndarray:
    """``|(Ixx - Iyy, 2 Ixy)| / (Ixx + Iyy)`` of every source (NaN when unmeasured)."""
    xx, yy, xy = _column(sources, "shape_xx"), _column(sources, "shape_yy"), _column(sources, "shape_xy")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.hypot(xx - yy, 2.0 * xy) / (xx + yy)


def _robust_sigma(values: np.ndarray) -> float:
    """1.4826 times the median absolute deviation (0 for fewer than 2 values)."""
    if values.size < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


# Star selector ---------------------------------------------------------------------------------------------------


class ObjectSizeStarSelectorConfig(Config):
    """Configuration of `ObjectSizeStarSelectorTask`."""

    sourceFluxField: str = Field(
        "psfFlux", description="Flux column [counts] used for the flux and S/N cuts; its error is '<name>Err'."
    )
    fluxMin: float = Field(0.0, ge=0, description="Minimum flux of a star [counts]; 0 for no limit.")
    fluxMax: float = Field(0.0, ge=0, description="Maximum flux of a star [counts]; 0 for no limit.")
    signalToNoiseMin: float = Field(20.0, ge=0, description="Minimum S/N (flux / flux error); 0 for no limit.")
    signalToNoiseMax: float = Field(0.0, ge=0, description="Maximum S/N; 0 for no limit.")
    widthMin: float = Field(
        0.5, ge=0, description="Minimum width sqrt((Ixx + Iyy) / 2) [pixels]: smaller objects are artefacts."
    )
    widthMax: float = Field(10.0, gt=0, description="Maximum width sqrt((Ixx + Iyy) / 2) of a star [pixels].")
    maxEllipticity: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Maximum ellipticity |(Ixx - Iyy, 2 Ixy)| / (Ixx + Iyy) of a star (rejects blends, trails and "
        "cosmic rays).",
    )
    locusWindow: float = Field(
        0.05,
        gt=0,
        le=0.5,
        description="Half-width of the window that finds the stellar clump, as a fraction of the width.",
    )
    locusMinCount: int = Field(
        3, ge=2, description="Fewest sources in a window of widths that can be the stellar locus."
    )
    locusMinFraction: float = Field(
        0.2,
        gt=0,
        le=1,
        description="The stellar locus is the narrowest clump holding at least this fraction of the densest "
        "clump's sources (and locusMinCount): stars are the smallest well-measured objects.",
    )
    locusSpatialOrder: int = Field(
        2,
        ge=0,
        le=4,
        description="Degree of the 2-D polynomial that follows the stars' width over the image (the PSF varies).",
    )
    locusStarsPerTerm: int = Field(
        5, ge=1, description="Lower locusSpatialOrder until there are this many locus sources per polynomial term."
    )
    nSigmaClip: float = Field(
        3.0,
        gt=0,
        description="Keep sources whose width is within this many standard deviations of the locus's width at "
        "their position (the locus's relative spread and the source's own relative width error, ~ 1 / (S/N), "
        "added in quadrature).",
    )
    widthStdAllowed: float = Field(
        0.15, gt=0, description="Upper bound on the locus's standard deviation used for clipping [pixels]."
    )
    widthStdMin: float = Field(
        0.01,
        gt=0,
        description="Lower bound on the locus's standard deviation used for clipping, as a fraction of its width.",
    )
    badFlags: list[str] = Field(
        default_factory=lambda: ["flag_edge", "flag_saturated", "centroid_flag", "shape_flag", "is_negative"],
        description="Boolean columns that exclude a source when true (columns absent from the catalogue are "
        "ignored).  Bad, cosmic-ray and interpolated pixels are handled per pixel by the PSF determiner (a star "
        "is only rejected when they reach its core).",
    )
    isolationRadius: float = Field(
        4.0,
        ge=0,
        description="Reject a star with another source closer than this many locus widths (neighbours farther "
        "away but inside the stamp are masked by the PSF determiner).",
    )
    isolationFluxRatio: float = Field(
        0.0,
        ge=0,
        description="Only neighbours brighter than this fraction of the star's flux spoil its isolation.",
    )


class ObjectSizeStarSelectorTask(Task):
    """Select PSF stars by second-moment size and flux (the role of ``ObjectSizeStarSelectorTask``).

    Sources pass the quality cuts if they are unflagged (``badFlags``), have a finite centroid and shape, a
    flux and S/N within the limits, a width ``w = sqrt((Ixx + Iyy) / 2)`` in ``[widthMin, widthMax]`` and an
    ellipticity below ``maxEllipticity``.  Among them the stellar locus is the narrowest clump of widths (a
    window of relative half-width ``locusWindow``) holding at least ``locusMinCount`` sources and
    ``locusMinFraction`` of the densest clump's -- stars are the smallest objects and pile up at one width,
    galaxies spread to larger widths -- re-centred on the median of the window until it converges.  The
    locus's width is then followed over the image with a 2-D polynomial (``locusSpatialOrder``; the PSF
    varies), and a source is selected when its width relative to the locus's at its position is within
    ``nSigmaClip`` standard deviations (the locus's robust relative spread, clamped to ``[widthStdMin,
    widthStdAllowed / width]``, and the source's relative width error ``1 / (S/N)`` added in quadrature) and
    no other source lies within ``isolationRadius`` locus widths.
    """

    ConfigClass = ObjectSizeStarSelectorConfig
    _DefaultName = "starSelector"
    config: ObjectSizeStarSelectorConfig

    @timeMethod
    def run(self, exposure: Exposure, sources: Table) -> Struct:
        """Select stars.

        Parameters
        ----------
        exposure : `~tasks.image.Exposure`
            The exposure the sources were measured on (unused by this selector; part of the interface).
        sources : `astropy.table.Table`
            Source catalogue with ``centroid_x/y``, ``shape_xx/yy/xy``, the flux column and the flag columns.

        Returns
        -------
        result : `Struct`
            ``selected`` (bool array, one per source), ``width`` (per source [pixels]), ``locusWidth`` and
            ``locusSigma`` (the stellar locus's width and spread [pixels]; NaN when no locus was found) and
            ``preselected`` (bool array of the sources passing the quality cuts).
        """
        cfg = self.config
        n = len(sources)
        width = _trace_width(sources)
        x, y = _column(sources, "centroid_x"), _column(sources, "centroid_y")
        flux = _column(sources, cfg.sourceFluxField)
        flux_err_name = f"{cfg.sourceFluxField}Err"
        flux_err = _column(sources, flux_err_name) if flux_err_name in sources.colnames else np.full(n, np.nan)
        good = np.isfinite(x) & np.isfinite(y) & np.isfinite(width) & np.isfinite(flux) & (flux > 0)
        for flag in cfg.badFlags:
            if flag in sources.colnames:
                good &= ~_column(sources, flag, bool)
            else:
                self.log.debug("flag column %s is not in the catalogue; not used", flag)
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = flux / flux_err
            if cfg.fluxMin > 0:
                good &= flux >= cfg.fluxMin
            if cfg.fluxMax > 0:
                good &= flux <= cfg.fluxMax
            if cfg.signalToNoiseMin > 0:
                good &= snr >= cfg.signalToNoiseMin
            if cfg.signalToNoiseMax > 0:
                good &= snr <= cfg.signalToNoiseMax
            good &= (width >= cfg.widthMin) & (width <= cfg.widthMax)
            good &= _ellipticity(sources) <= cfg.maxEllipticity

        locus, _ = self._find_locus(width[good])
        selected = np.zeros(n, dtype=bool)
        sigma = math.nan
        if math.isfinite(locus):
            with np.errstate(invalid="ignore", divide="ignore"):
                rel_err = np.where(np.isfinite(snr) & (snr > 0), 1.0 / snr, 0.0)  # relative width error
            relative, sigma = self._relative_widths(x, y, width, good, locus, exposure.bbox)
            tolerance = cfg.nSigmaClip * np.sqrt(sigma**2 + rel_err**2)
            with np.errstate(invalid="ignore"):
                selected = good & (np.abs(relative) <= tolerance)
            selected &= self._isolated(x, y, flux, selected, cfg.isolationRadius * locus)
            sigma *= locus
        self.metadata["numPreselected"] = int(good.sum())
        self.metadata["numSelected"] = int(selected.sum())
        self.metadata["locusWidth"] = float(locus)
        self.metadata["locusSigma"] = float(sigma)
        self.log.info(
            "selected %d stars of %d sources (%d passed the quality cuts; locus width %.3f +- %.3f px)",
            int(selected.sum()), n, int(good.sum()), locus, sigma,
        )
        return Struct(selected=selected, width=width, locusWidth=locus, locusSigma=sigma, preselected=good)

    def _find_locus(self, width: np.ndarray) -> tuple[float, float]:
        """Width and spread of the stellar locus (NaN, NaN if none)."""
        cfg = self.config
        w = np.sort(width)
        if w.size < cfg.locusMinCount:
            return math.nan, math.nan
        half = cfg.locusWindow * w
        counts = np.searchsorted(w, w + half, side="right") - np.searchsorted(w, w - half, side="left")
        threshold = max(cfg.locusMinCount, int(math.ceil(cfg.locusMinFraction * counts.max())))
        if counts.max() < threshold:
            return math.nan, math.nan
        # The narrowest well-populated window, re-centred on its median until it stops moving.
        first = int(np.argmax(counts >= threshold))
        members = w[np.abs(w - w[first]) <= half[first]]
        centre = float(np.median(members))
        for _ in range(20):
            members = w[np.abs(w - centre) <= cfg.locusWindow * centre]
            new_centre = float(np.median(members))
            if abs(new_centre - centre) < 1e-6 * centre:
                break
            centre = new_centre
        sigma = float(np.clip(_robust_sigma(members), cfg.widthStdMin * centre, cfg.widthStdAllowed))
        return centre, sigma

    def _relative_widths(
        self, x: np.ndarray, y: np.ndarray, width: np.ndarray, good: np.ndarray, locus: float, bbox: Box2I
    ) -> tuple[np.ndarray, float]:
        """Widths relative to the stellar locus's width at each position, and the locus's relative spread.

        The PSF (so the stars' width) varies over the image: the widths of the sources within ``locusWindow`` of
        the locus are fitted with 2-D Chebyshev polynomials of degree up to ``locusSpatialOrder`` (at least
        ``locusStarsPerTerm`` sources per term, 3-sigma clipped), and the fit and the members are iterated.

        Returns
        -------
        relative : `numpy.ndarray`
            ``width / locus_width(x, y) - 1`` for every source (NaN where unmeasured).
        sigma : `float`
            Robust standard deviation of ``relative`` over the locus members, clamped to
            ``[widthStdMin, widthStdAllowed / locus]``.
        """
        cfg = self.config
        model = np.full(len(width), locus)
        finite = good & np.isfinite(x) & np.isfinite(y)
        with np.errstate(invalid="ignore"):
            members = finite & (np.abs(width / locus - 1.0) <= cfg.locusWindow)
        terms = None
        for _ in range(5):
            degree = cfg.locusSpatialOrder
            while degree > 0 and n_chebyshev_terms(degree) * cfg.locusStarsPerTerm > members.sum():
                degree -= 1
            if degree == 0:
                model = np.full(len(width), float(np.median(width[members])) if members.any() else locus)
            else:
                terms = chebyshev_terms(np.where(finite, x, 0.0), np.where(finite, y, 0.0), degree, bbox).T
                use = members.copy()
                for _ in range(3):
                    coefficients = np.linalg.lstsq(terms[use], width[use], rcond=None)[0]
                    residual = width / (terms @ coefficients) - 1.0
                    scatter = max(_robust_sigma(residual[use]), cfg.widthStdMin)
                    use = members & (np.abs(residual) <= 3.0 * scatter)
                model = terms @ coefficients
            with np.errstate(invalid="ignore", divide="ignore"):
                relative = width / model - 1.0
                new_members = finite & (np.abs(relative) <= cfg.locusWindow)
            if np.array_equal(new_members, members):
                break
            members = new_members
        sigma = float(np.clip(_robust_sigma(relative[members]), cfg.widthStdMin, cfg.widthStdAllowed / locus))
        return relative, sigma

    def _isolated(self, x: np.ndarray, y: np.ndarray, flux: np.ndarray, which: np.ndarray, radius: float) -> np.ndarray:
        """True for sources of ``which`` without another (finite-position) source within ``radius``."""
        isolated = np.ones(len(x), dtype=bool)
        if radius <= 0 or not which.any():
            return isolated
        finite = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
        tree = cKDTree(np.column_stack([x[finite], y[finite]]))
        for i in np.flatnonzero(which):
            neighbours = finite[tree.query_ball_point([x[i], y[i]], radius)]
            neighbours = neighbours[neighbours != i]
            if self.config.isolationFluxRatio > 0:
                with np.errstate(invalid="ignore"):
                    neighbours = neighbours[~(flux[neighbours] < self.config.isolationFluxRatio * flux[i])]
            if neighbours.size:
                isolated[i] = False
        return isolated


# PSF determiner ---------------------------------------------------------------------------------------------------


class PcaPsfDeterminerConfig(Config):
    """Configuration of `PcaPsfDeterminerTask`."""

    nEigenComponents: int = Field(4, ge=1, description="Components of the model: the mean star + (n - 1) PCs.")
    spatialOrder: int = Field(
        2, ge=0, le=6, description="Total degree of the Chebyshev polynomials of the components' amplitudes."
    )
    kernelSize: float = Field(
        10.0, gt=0, description="Side of the PSF image in units of the stars' width sqrt((Ixx + Iyy) / 2)."
    )
    kernelSizeMin: int = Field(25, ge=5, description="Minimum side of the PSF image [pixels] (made odd).")
    kernelSizeMax: int = Field(45, ge=5, description="Maximum side of the PSF image [pixels] (made odd).")
    cellSize: int = Field(256, ge=16, description="Side of the spatial cells that spread the stars [pixels].")
    nStarPerCell: int = Field(3, ge=1, description="Brightest good stars of each cell used in the fit.")
    nIterForPsf: int = Field(3, ge=1, description="Fit / reject iterations.")
    spatialReject: float = Field(
        3.0,
        gt=0,
        description="Reject a star whose excess residual, flux excess or size excess about the model exceeds the "
        "median star's by this many times its noise (see residualFloor, fluxExcessFloor, sizeExcessFloor).",
    )
    residualFloor: float = Field(
        0.03,
        ge=0,
        description="A star is never rejected with an RMS residual about the model (beyond the pixel noise) below "
        "this fraction of the model's RMS: model imperfections shared by all stars are not outliers.",
    )
    fluxExcessFloor: float = Field(
        0.02,
        ge=0,
        description="A star is never rejected for light in its stamp beyond its PSF-fit flux (relative to the "
        "median star) below this fraction of its flux.",
    )
    sizeExcessFloor: float = Field(
        0.02,
        ge=0,
        description="A star is never rejected for being wider than the model (relative to the median star) by "
        "less than this fraction of its width (see PcaPsfDeterminerTask._evaluate).",
    )
    maxRejectFraction: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Reject at most this fraction of the fitted stars (and at least one) per iteration, worst "
        "first, so that a model spoiled by a few bad stars does not condemn good ones.",
    )
    minStars: int = Field(3, ge=1, description="Fewest good stars needed to fit a PSF.")
    leaveOneOutMaxStars: int = Field(
        30,
        ge=0,
        description="With at most this many stars, judge each star against a model refitted without it (a few "
        "stars' model can bend to fit a contaminated one); with more, a star's own share of the fit is divided out.",
    )
    starsPerComponent: int = Field(
        4, ge=1, description="Use at most one principal component per this many stars (besides the mean)."
    )
    starsPerSpatialTerm: float = Field(
        2.0, gt=0, description="Lower the spatial order until there are this many stars per polynomial term."
    )
    coreRadius: float = Field(
        1.5, gt=0, description="Stars with a masked pixel within this many widths of their centre are rejected."
    )
    badMaskPlanes: list[str] = Field(
        default_factory=lambda: ["BAD", "SAT", "CR", "INTRP", "EDGE", "NO_DATA", "SUSPECT"],
        description="Mask planes of pixels replaced by the model (and that reject a star in its core).",
    )
    maskNeighbours: bool = Field(
        True,
        description="Replace by the model the pixels of other DETECTED footprints in a star's stamp, and the "
        "pixels nearer to a secondary peak of its own footprint (a blended neighbour) than to the star.",
    )
    neighbourGrow: int = Field(
        2, ge=0, description="Grow the other footprints masked in a stamp by this many pixels (their halos)."
    )
    neighbourThreshold: float = Field(
        5.0,
        gt=0,
        description="Significance of a secondary peak (in the stamp smoothed by the stars' width) [noise sigma].",
    )
    neighbourMinDistance: float = Field(
        3.0,
        gt=0,
        description="A star with a secondary peak closer than this many widths is rejected instead of masked.",
    )
    doLocalBackground: bool = Field(
        True,
        description="Subtract from each stamp the local level of its edge: the 3-sigma clipped mean of the unmasked "
        "pixels of an annulus at the stamp's edge.  The model is then the PSF relative to its level at the "
        "kernel's edge (a far, flat aureole goes to the aperture correction, as in SDSS's PSF widths).",
    )
    localBackgroundWidth: int = Field(
        6, ge=1, description="Width of the local-background annulus, ending at the stamp's border [pixels]."
    )
    weightSnrCap: float = Field(
        50.0,
        gt=0,
        description="Stars weigh in the fit as the S/N^2 of their stamp's sum up to this S/N, and equally above "
        "it: noise matters for faint stars, star-to-star systematics for bright ones.",
    )
    shrinkNoise: bool = Field(
        True,
        description="Shrink each pixel of the mean star image towards zero by its signal-to-noise (see "
        "fit_pca_psf): removes the noise of the far wings, which few or faint stars leave in the model.",
    )
    interpolationOrder: int = Field(
        5, ge=1, le=5, description="Order of the spline that shifts stars to the pixel grid (scipy.ndimage.shift)."
    )


class PcaPsfDeterminerTask(Task):
    """Fit a `~tasks.image.PcaPsf` to stars (the role of ``PcaPsfDeterminerTask``).

    Every candidate star gets a `~tasks.image.spatial_cells.PsfCandidate` in a `SpatialCellSet` of
    ``cellSize`` cells, rated by flux.  Each iteration takes the ``nStarPerCell`` best good candidates of each
    cell and, for each:

    1. cuts a stamp of ``kernelSize`` widths (odd, clamped to ``[kernelSizeMin, kernelSizeMax]``) plus a
       border for the shift;
    2. masks pixels of ``badMaskPlanes``, of other DETECTED footprints (grown by ``neighbourGrow``), and on the
       far side of blended neighbours (significant secondary peaks); a masked pixel within ``coreRadius``
       widths of the centre or a blend closer than ``neighbourMinDistance`` widths rejects the star;
    3. subtracts the level of the stamp's edge (``doLocalBackground``), fits the star's flux with the current
       model (a Gaussian of the stars' width on the first iteration), replaces the masked pixels by the scaled
       model, and shifts the stamp by the sub-pixel offset of its centroid with a spline of
       ``interpolationOrder``, so the star is centred on the stamp's central pixel;

    then fits the PCA model with Chebyshev amplitudes (`fit_pca_psf`; stars weighted by the S/N^2 of their
    stamps' sums, capped at ``weightSnrCap``; at most one principal component per ``starsPerComponent`` stars
    and a spatial degree lowered to ``starsPerSpatialTerm`` stars per term; noisy wings shrunk with
    ``shrinkNoise``), and judges every star against the model without it: stars whose residual power beyond
    the noise (and beyond the model's own uncertainty at the star, from the other stars' scatter about the
    spatial fit), whose light beyond the PSF-fit flux, or whose width is significantly above the median star's
    (``spatialReject``, ``residualFloor``, ``fluxExcessFloor``, ``sizeExcessFloor``) are rejected, worst first
    and at most ``maxRejectFraction`` per iteration.  It stops when nothing is rejected, and refits after the last
    rejection.
    """

    ConfigClass = PcaPsfDeterminerConfig
    _DefaultName = "psfDeterminer"
    config: PcaPsfDeterminerConfig

    _BORDER = 4  # extra pixels around the stamp for the sub-pixel shift

    def kernel_size(self, width: float) -> int:
        """Odd side of the PSF image [pixels] for stars of width ``sqrt((Ixx + Iyy) / 2)`` [pixels]."""
        cfg = self.config
        lo = cfg.kernelSizeMin | 1
        hi = max(cfg.kernelSizeMax | 1, lo)
        size = int(round(cfg.kernelSize * width)) if math.isfinite(width) else lo
        return int(min(max(size | 1, lo), hi))

    @timeMethod
    def run(self, exposure: Exposure, sources: Table, indices: Sequence[int]) -> Struct:
        """Fit a PSF to the given stars.

        Parameters
        ----------
        exposure : `~tasks.image.Exposure`
            Background-subtracted exposure; its mask's DETECTED plane (if any) locates neighbours.
        sources : `astropy.table.Table`
            Source catalogue (``id``, ``centroid_x/y``, ``shape_xx/yy``, ``psfFlux`` or ``apFlux_*``).
        indices : sequence of `int`
            Rows of ``sources`` to use as PSF stars.

        Returns
        -------
        result : `Struct`
            ``psf`` (`~tasks.image.PcaPsf`), ``cellSet`` (`SpatialCellSet` of `PsfCandidate`; the used stars
            are GOOD, the rejected ones BAD), ``used`` (bool array over the sources: stars in the final fit),
            ``kernelSize`` [pixels], ``chi2`` (total chi^2 of the used stars about the model) and
            ``numRejected``.

        Raises
        ------
        AlgorithmError
            If fewer than ``minStars`` stars survive.
        """
        cfg = self.config
        indices = np.asarray(indices, dtype=int)
        width = _trace_width(sources)[indices]
        star_width = float(np.nanmedian(width)) if np.isfinite(width).any() else math.nan
        size = self.kernel_size(star_width)
        self._star_width = star_width if math.isfinite(star_width) else 2.0
        x, y = _column(sources, "centroid_x")[indices], _column(sources, "centroid_y")[indices]
        flux = self._fluxes(sources)[indices]
        ids = _column(sources, "id", np.int64)[indices] if "id" in sources.colnames else indices.astype(np.int64)

        bbox = exposure.bbox
        cell_set: SpatialCellSet[PsfCandidate] = SpatialCellSet(bbox, cfg.cellSize, cfg.cellSize)
        for i, row in enumerate(indices):
            if not (np.isfinite(x[i]) and np.isfinite(y[i]) and bbox.contains_point(x[i], y[i])):
                continue
            rating = flux[i] if np.isfinite(flux[i]) else 0.0
            cell_set.insert(
                PsfCandidate(x[i], y[i], rating, source_index=int(row), source_id=int(ids[i]), width=size, height=size)
            )
        n_avail = cell_set.n_candidates()
        self.metadata["numAvailStars"] = n_avail
        self.metadata["kernelSize"] = size
        if n_avail < cfg.minStars:
            raise AlgorithmError(
                f"too few PSF stars: {n_avail} (need {cfg.minStars}); the star selector found too few isolated, "
                "unflagged point sources on the stellar locus."
            )
        psf: PcaPsf | None = None
        rejected_last = True
        for iteration in range(cfg.nIterForPsf):
            fit_set = self._fit_stars(exposure, cell_set, psf)
            psf = self._fit(fit_set, bbox)
            n_rejected = self._reject(fit_set, psf)
            rejected_last = n_rejected > 0
            self.log.debug("PSF iteration %d: %d stars, %d rejected", iteration, len(fit_set), n_rejected)
            if not rejected_last and iteration > 0:
                break
        if rejected_last:
            fit_set = self._fit_stars(exposure, cell_set, psf)
            psf = self._fit(fit_set, bbox)
            self._evaluate(fit_set, psf)
        for candidate in fit_set:
            candidate.status = CandidateStatus.GOOD
        used = np.zeros(len(sources), dtype=bool)
        used[[c.source_index for c in fit_set]] = True
        chi2 = float(sum(c.chi2 for c in fit_set))
        n_rejected = cell_set.n_candidates(CandidateStatus.BAD)
        self.metadata["numGoodStars"] = len(fit_set)
        self.metadata["numRejected"] = n_rejected
        self.metadata["spatialFitChi2"] = chi2
        return Struct(psf=psf, cellSet=cell_set, used=used, kernelSize=size, chi2=chi2, numRejected=n_rejected)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _fluxes(sources: Table) -> np.ndarray:
        for name in ("psfFlux", "apFlux_12_0", "apFlux_9_0"):
            if name in sources.colnames:
                return _column(sources, name)
        return np.ones(len(sources))

    def _fit_stars(self, exposure: Exposure, cell_set: SpatialCellSet, psf: PcaPsf | None) -> list[PsfCandidate]:
        """The best ``nStarPerCell`` good candidates of each cell, with fresh stamps (unusable ones made BAD)."""
        done: set[int] = set()
        while True:
            chosen: list[PsfCandidate] = []
            cell_set.visit_candidates(chosen.append, self.config.nStarPerCell)
            fresh = [c for c in chosen if c.id not in done]
            if not fresh:
                break
            for candidate in fresh:
                done.add(candidate.id)
                if not self._make_stamp(exposure, candidate, psf):
                    candidate.status = CandidateStatus.BAD
        fit_set = chosen
        if len(fit_set) < self.config.minStars:
            raise AlgorithmError(
                f"too few PSF stars: {len(fit_set)} (need {self.config.minStars}); "
                f"{cell_set.n_candidates(CandidateStatus.BAD)} of {cell_set.n_candidates()} candidates were "
                "rejected (stamp off the image, masked core, close neighbour, or poor fit to the PSF model)."
            )
        return fit_set

    def _model_on_grid(self, psf: PcaPsf | None, candidate: PsfCandidate, half: int) -> np.ndarray:
        """Unit-sum model of the star on the (2 half + 1)^2 pixel grid around its nearest pixel."""
        ix, iy = candidate.center_pixel
        dx, dy = candidate.x - ix, candidate.y - iy
        n = 2 * half + 1
        if psf is None:
            sigma = self._star_width
            coords = np.arange(-half, half + 1, dtype=float)
            gx = np.exp(-0.5 * ((coords - dx) / sigma) ** 2)
            gy = np.exp(-0.5 * ((coords - dy) / sigma) ** 2)
            model = np.outer(gy, gx)
            return model / model.sum()
        kernel = psf.compute_kernel_image(candidate.x, candidate.y)
        kh, kw = kernel.shape
        model = np.zeros((n, n))
        ch, cw = min(kh // 2, half), min(kw // 2, half)
        model[half - ch : half + ch + 1, half - cw : half + cw + 1] = kernel[
            kh // 2 - ch : kh // 2 + ch + 1, kw // 2 - cw : kw // 2 + cw + 1
        ]
        model = ndimage.shift(model, (dy, dx), order=self.config.interpolationOrder, mode="constant", cval=0.0)
        return model / model.sum()

    @staticmethod
    def _local_background(values: np.ndarray, usable: np.ndarray) -> tuple[float, float]:
        """3-sigma clipped (about the median, MAD sigma) mean of ``values[usable]`` and its variance.

        (0, 0) when fewer than 20 pixels are usable.
        """
        sky = values[usable]
        if sky.size < 20:
            return 0.0, 0.0
        centre = np.median(sky)
        sigma = 1.4826 * np.median(np.abs(sky - centre))
        if sigma > 0:
            sky = sky[np.abs(sky - centre) < 3.0 * sigma]
        return float(np.mean(sky)), float(np.var(sky) / sky.size)

    def _blend_mask(
        self, data: np.ndarray, noise: float, dx: float, dy: float, neighbours: np.ndarray
    ) -> np.ndarray | None:
        """Pixels nearer to a significant secondary peak than to the star; None if a blend is too close.

        ``neighbours`` marks the pixels of other footprints (already masked): a peak next to them is the
        halo of a known neighbour, which is masked the same way but never rejects the star.
        """
        cfg = self.config
        width = self._star_width
        smooth = ndimage.gaussian_filter(data, width, mode="nearest")
        smooth_noise = noise / (2.0 * math.sqrt(math.pi) * width)
        n = data.shape[0]
        coords = np.arange(n, dtype=float) - n // 2
        r_star2 = (coords[None, :] - dx) ** 2 + (coords[:, None] - dy) ** 2
        peaks = (smooth == ndimage.maximum_filter(smooth, size=5, mode="nearest")) & (
            smooth > cfg.neighbourThreshold * smooth_noise
        )
        peaks &= r_star2 > (2.0 * width) ** 2
        peaks[:2, :] = peaks[-2:, :] = peaks[:, :2] = peaks[:, -2:] = False  # edge maxima are the star's wings
        near_known = ndimage.binary_dilation(neighbours, iterations=2) if neighbours.any() else neighbours
        mask = np.zeros(data.shape, dtype=bool)
        for py, px in zip(*np.nonzero(peaks)):
            if r_star2[py, px] < (cfg.neighbourMinDistance * width) ** 2 and not near_known[py, px]:
                return None
            r_peak2 = (coords[None, :] - coords[px]) ** 2 + (coords[:, None] - coords[py]) ** 2
            mask |= r_peak2 < r_star2
        return mask

    def _make_stamp(self, exposure: Exposure, candidate: PsfCandidate, psf: PcaPsf | None) -> bool:
        """Set the candidate's centred stamp, variance, weights and model; False if it cannot be used."""
        cfg = self.config
        border = self._BORDER
        half = candidate.width // 2 + border
        outer = candidate.stamp_bbox(border)
        if not exposure.bbox.contains(outer):
            return False
        mi = exposure.masked_image[outer]
        data = mi.image.astype(np.float64)
        variance = mi.variance.astype(np.float64)
        mask = mi.mask
        bad = mask.get_plane(cfg.badMaskPlanes, missing_ok=True)
        bad |= ~np.isfinite(data) | ~(variance > 0)
        neighbours = np.zeros(data.shape, dtype=bool)
        if cfg.maskNeighbours and "DETECTED" in mask.planes:
            detected = mask.get_plane("DETECTED")
            labels, _ = ndimage.label(detected)
            own = labels[half, half]
            if own:
                neighbours = detected & (labels != own)
                if cfg.neighbourGrow and neighbours.any():
                    neighbours = ndimage.binary_dilation(neighbours, iterations=cfg.neighbourGrow) & (labels != own)
                bad |= neighbours
        data = np.where(bad, 0.0, data)
        ix, iy = candidate.center_pixel
        dx, dy = candidate.x - ix, candidate.y - iy
        coords = np.arange(-half, half + 1, dtype=float)
        r2 = (coords[None, :] - dx) ** 2 + (coords[:, None] - dy) ** 2
        core = r2 <= (cfg.coreRadius * self._star_width) ** 2
        if np.any(bad & core):
            return False
        model = self._model_on_grid(psf, candidate, half)

        def fit_amplitude(values: np.ndarray) -> float:
            """Weighted least-squares amplitude of the model on the unmasked pixels."""
            weight = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, variance))
            denominator = float(np.sum(weight * model * model))
            return float(np.sum(weight * values * model)) / denominator if denominator > 0 else 0.0

        noise = math.sqrt(float(np.median(variance[~bad])))
        amplitude = fit_amplitude(data)
        if not amplitude > 0:
            return False
        if cfg.maskNeighbours:
            blends = self._blend_mask(np.where(bad, amplitude * model, data), noise, dx, dy, neighbours)
            if blends is None or np.any(blends & core):
                return False
            bad |= blends
        background, background_var = 0.0, 0.0
        if cfg.doLocalBackground:
            ring = r2 >= (half - cfg.localBackgroundWidth) ** 2
            background, background_var = self._local_background(data, ring & ~bad)
        data = np.where(bad, 0.0, data - background)
        amplitude = fit_amplitude(data)
        if not amplitude > 0:
            return False
        filled = np.where(bad, amplitude * model, data)
        variance = np.where(bad, noise * noise, variance)
        # Centre the star on the central pixel.
        shift = (-dy, -dx)
        order = cfg.interpolationOrder
        stamp = ndimage.shift(filled, shift, order=order, mode="nearest")
        # Interpolation averages neighbouring pixels: the shifted noise has variance sum(h^2) var for the
        # interpolation filter h of this shift (separable).
        shifted_var = variance * _shift_variance_factor(shift, order)  # the variance varies slowly: not shifted
        shifted_bad = ndimage.binary_dilation(bad) if bad.any() else bad
        b = border
        candidate.stamp = stamp[b:-b, b:-b]
        candidate.variance = shifted_var[b:-b, b:-b]
        candidate.weight = np.where(shifted_bad[b:-b, b:-b], 0.0, 1.0 / candidate.variance)
        candidate.amplitude = amplitude
        candidate.background = background
        # Variance of the stamp's sum: pixel noise plus the local background's error over every pixel.
        n_pix = candidate.stamp.size
        candidate.sum_variance = float(np.sum(variance[b:-b, b:-b])) + n_pix * n_pix * background_var
        return bool(candidate.stamp.sum() > 0)

    def _fit(self, fit_set: list[PsfCandidate], bbox: Box2I, *, exclude: int | None = None) -> PcaPsf:
        """Fit the model to the stars of ``fit_set`` (all but the ``exclude``-th); set their fit weights."""
        return self._fit_with_scatter(fit_set, bbox, exclude=exclude)[0]

    def _fit_with_scatter(
        self, fit_set: list[PsfCandidate], bbox: Box2I, *, exclude: int | None = None
    ) -> tuple[PcaPsf, tuple[np.ndarray, np.ndarray] | None]:
        """`_fit`, and the scatter of the stars' component amplitudes about it (`_amplitude_scatter`)."""
        cfg = self.config
        stars = [c for i, c in enumerate(fit_set) if i != exclude]
        stamps = np.stack([c.stamp / c.amplitude for c in stars])
        # S/N^2 of each star's stamp sum (pixel noise and local-background error), which sets the noise of its
        # normalised image -- the far pixels' noise counts as much as the core's for the model's normalisation.
        weights = np.array([c.amplitude**2 / c.sum_variance for c in stars])
        weights = np.minimum(weights, cfg.weightSnrCap**2)
        if exclude is None:
            for candidate, weight in zip(stars, weights / weights.sum()):
                candidate.fit_weight = float(weight)
                candidate.norm = candidate.amplitude
        x = np.array([c.x for c in stars])
        y = np.array([c.y for c in stars])
        n_star = len(stars)
        n_components = min(cfg.nEigenComponents, 1 + (n_star - 1) // cfg.starsPerComponent)
        degree = cfg.spatialOrder
        while degree > 0 and n_chebyshev_terms(degree) * cfg.starsPerSpatialTerm > n_star:
            degree -= 1
        variances = np.stack([c.variance / c.amplitude**2 for c in stars]) if cfg.shrinkNoise else None
        psf = fit_pca_psf(
            stamps, x, y, bbox, weights=weights, variances=variances, n_components=n_components, degree=degree
        )
        return psf, _amplitude_scatter(psf, stamps, x, y, weights)

    def _evaluate(self, fit_set: list[PsfCandidate], psf: PcaPsf) -> Struct:
        """Fit each star's amplitude, set its chi^2 and relative residual, and return its outlier statistics.

        Returns a `Struct` of arrays, one value per star: ``excess``, ``excess_noise``, ``excess_allowance``,
        ``flux_excess``, ``flux_noise``, ``size_excess``, ``size_noise``.

        The residual of a star is taken about the model fitted without it: refitted for up to
        ``leaveOneOutMaxStars`` stars, else approximated by ``r = (d - a k) / (1 - w)`` as for a weighted mean of
        the stars (``d`` the stamp, ``k`` the unit-sum model, ``a`` the fitted amplitude, ``w`` the star's share
        of the fit weights).  Its expected square is ``var + a^2 var_model`` (the pixel noise and the noise of
        the mean image from the other stars).  The model is also uncertain at the star through its
        principal-component amplitudes: ``V_c = s2_c t^T G^-1 t`` from the scatter of the (other) stars'
        amplitudes about their spatial fit (`_amplitude_scatter`; divided by ``(1 - w)^2`` for the
        approximation) -- a prediction interval: where the other stars only extrapolate to a star (a corner
        held by one bright star), the model is as uncertain there as they scatter about it, and a large
        residual there is no evidence against the star.

        * The excess residual ``e = (sum r^2 - sum E[r^2]) / sum (a k)^2`` over the unmasked pixels is the
          fraction of the model's power left beyond the noise, whatever the star's flux; ``excess_allowance``
          ``a^2 sum_c V_c / sum (a k)^2`` is the part of it the model's amplitude uncertainty explains (`_reject`
          discounts it star by star), and its noise is ``sqrt(2 sum E[r^2]^2 + 2 sum_c (a^2 V_c)^2) /
          sum (a k)^2`` (each component a chi^2 of one degree of freedom).
        * The flux excess ``sum(d) / a - 1`` is the light in the stamp that the PSF does not explain (an
          underlying galaxy, a blend), with noise ``sqrt(var(sum d)) / a``.
        * The size excess ``delta`` is the fractional widening of the model that fits the star best: the
          weighted least-squares fit ``d = a' k + b D`` with ``D = dk / d ln(scale)`` (`_dilation_template`) and
          ``delta = b / a'``.  An unresolved galaxy or companion under a star widens it; this matched test
          concentrates the residual in one direction, so it finds widened stars at a modest S/N, where the
          excess residual is lost in the noise of the whole stamp.  Its noise (``~1 / (S/N)`` for a
          Gaussian) adds the pixel noise of the fit and the model's amplitude uncertainty projected on ``D``.
        """
        n = len(fit_set)
        shares = np.array([c.fit_weight for c in fit_set])
        # Variance of the weighted-mean model image, from the stars' normalised stamps.
        model_var = sum(
            share**2 * c.variance / c.norm**2 for share, c in zip(shares, fit_set) if share > 0 and c.norm > 0
        )
        excess, excess_noise, excess_allowance = np.full(n, math.inf), np.ones(n), np.zeros(n)
        flux_excess, flux_noise = np.full(n, math.inf), np.ones(n)
        size_excess, size_noise = np.full(n, math.inf), np.ones(n)
        exact = 2 < n <= self.config.leaveOneOutMaxStars
        full_scatter = None if exact else self._fit_with_scatter(fit_set, psf.bbox)[1]
        for i, candidate in enumerate(fit_set):
            kernel = psf.compute_kernel_image(candidate.x, candidate.y)
            w, data, var = candidate.weight, candidate.stamp, candidate.variance
            if exact:
                others_psf, scatter = self._fit_with_scatter(fit_set, psf.bbox, exclude=i)
                others = others_psf.compute_kernel_image(candidate.x, candidate.y)
            else:
                others_psf, scatter, others = psf, full_scatter, kernel
            denominator = float(np.sum(w * kernel * kernel))
            amplitude = float(np.sum(w * data * kernel)) / denominator if denominator > 0 else math.nan
            use = w > 0
            model = amplitude * kernel[use]
            diff = data[use] - model
            power = float(np.sum(model * model))
            candidate.amplitude = amplitude
            candidate.chi2 = float(np.sum(w[use] * diff * diff))
            if not (power > 0 and amplitude > 0):
                continue
            share = min(shares[i], 0.95)
            others_var = np.maximum(model_var - share**2 * var / candidate.norm**2, 0.0) / (1.0 - share) ** 2
            expected = var[use] + amplitude**2 * np.asarray(others_var)[use] if np.ndim(others_var) else var[use]
            # Variance of the model's component amplitudes at the star (a prediction interval).
            amplitude_var = np.zeros(0)
            if scatter is not None:
                g_inv, s2 = scatter
                t = chebyshev_terms(candidate.x, candidate.y, others_psf.degree, psf.bbox)
                amplitude_var = s2 * float(t @ g_inv @ t)
                if not exact:
                    amplitude_var = amplitude_var / (1.0 - share) ** 2
            component_power = amplitude**2 * amplitude_var
            if exact:
                loo = data[use] - amplitude * others[use]
            else:
                loo = diff / (1.0 - share)
            excess[i] = (float(np.sum(loo * loo)) - float(np.sum(expected))) / power
            excess_allowance[i] = float(np.sum(component_power)) / power
            excess_noise[i] = (
                math.sqrt(2.0 * float(np.sum(expected**2)) + 2.0 * float(np.sum(component_power**2))) / power
            )
            flux_excess[i] = float(data.sum()) / amplitude - 1.0
            flux_noise[i] = math.sqrt(candidate.sum_variance) / amplitude
            candidate.residual = math.sqrt(max(excess[i], 0.0))
            size_excess[i], size_noise[i] = self._size_excess(
                data[use], expected, others, use, others_psf.components[1:], amplitude_var
            )
            if not exact:
                size_excess[i] /= 1.0 - share
        return Struct(
            excess=excess,
            excess_noise=excess_noise,
            excess_allowance=excess_allowance,
            flux_excess=flux_excess,
            flux_noise=flux_noise,
            size_excess=size_excess,
            size_noise=size_noise,
        )

    @staticmethod
    def _size_excess(
        data: np.ndarray,
        expected: np.ndarray,
        kernel: np.ndarray,
        use: np.ndarray,
        pcs: np.ndarray,
        amplitude_var: np.ndarray,
    ) -> tuple[float, float]:
        """Fractional widening of the unit-sum ``kernel`` that fits ``data`` (on the ``use`` pixels), and its noise.

        Weighted least squares of ``data = a k + b D`` (``D`` from `_dilation_template`, weights
        ``1 / expected``); ``delta = b / a``, with the variance of ``b / a`` from the fit plus the model's:
        the amplitude variances ``amplitude_var`` of the components ``pcs`` times their dilation coefficients.
        (inf, 1) when the fit is degenerate or the amplitude not positive.
        """
        design = np.stack([kernel[use], _dilation_template(kernel)[use]], axis=1)
        normal = design.T @ (design / expected[:, None])
        try:
            covariance = np.linalg.inv(normal)
        except np.linalg.LinAlgError:
            return math.inf, 1.0
        a, b = covariance @ (design.T @ (data / expected))
        if not (a > 0 and np.all(np.isfinite(covariance))):
            return math.inf, 1.0
        variance = float(covariance[1, 1]) / (a * a)
        if len(amplitude_var):
            # How far each component widens the model: its dilation coefficient (unweighted projection).
            projection = np.linalg.lstsq(design, pcs.reshape(len(pcs), -1)[:, use.ravel()].T, rcond=None)[0][1]
            variance += float(np.sum(projection**2 * amplitude_var))
        return float(b / a), math.sqrt(variance)

    def _reject(self, fit_set: list[PsfCandidate], psf: PcaPsf) -> int:
        """Mark the worst outliers BAD (never leaving fewer than ``minStars``); return how many.

        A star is an outlier when its excess residual (less its own ``excess_allowance``), its flux excess or its
        size excess (see `_evaluate`) is more than ``spatialReject`` times its noise above the median star's, and
        that difference is above ``residualFloor`` (squared), ``fluxExcessFloor`` or ``sizeExcessFloor``.  The
        allowance is taken after the median, which stands for the model's imperfections common to all stars.  All three are one-sided:
        contamination adds residual power, light and width; a star narrower than the model is the model's
        error (and shows in the excess residual if it is large).
        """
        cfg = self.config
        stats = self._evaluate(fit_set, psf)
        n = len(fit_set)
        badness = np.zeros(n)
        outlier = np.zeros(n, dtype=bool)
        for values, noise, allowance, floor in (
            (stats.excess, stats.excess_noise, stats.excess_allowance, cfg.residualFloor**2),
            (stats.flux_excess, stats.flux_noise, np.zeros(n), cfg.fluxExcessFloor),
            (stats.size_excess, stats.size_noise, np.zeros(n), cfg.sizeExcessFloor),
        ):
            finite = np.isfinite(values)
            reference = float(np.median(values[finite])) if finite.any() else 0.0
            beyond = np.where(finite, values - reference - allowance, np.inf)
            z = beyond / noise
            outlier |= ~finite | ((z > cfg.spatialReject) & (beyond > floor))
            badness = np.maximum(badness, beyond / max(floor, 1e-12))
        n_max = min(len(fit_set) - cfg.minStars, max(1, int(cfg.maxRejectFraction * len(fit_set))))
        n_rejected = 0
        # Worst first by how far beyond the floors, not by significance: a bright clean star measured against a
        # model spoiled by a contaminated one is significant too, but less far off.
        for i in np.argsort(-badness):
            if n_rejected >= n_max:
                break
            if not outlier[i]:
                continue
            fit_set[i].status = CandidateStatus.BAD
            n_rejected += 1
        return n_rejected


# The task ------------------------------------------------------------------------------------------------------------


class MeasurePsfConfig(Config):
    """Configuration of `MeasurePsfTask`."""

    starSelector: ObjectSizeStarSelectorConfig = ConfigurableField(
        target=ObjectSizeStarSelectorTask, doc="Star selector: picks PSF candidates from the source catalogue."
    )
    psfDeterminer: PcaPsfDeterminerConfig = ConfigurableField(
        target=PcaPsfDeterminerTask, doc="PSF determiner: fits a PSF model to the candidates."
    )
    reserveFraction: float = Field(
        0.1, ge=0, lt=1, description="Fraction of the candidates reserved from the fit (for validation)."
    )
    reserveSeed: int = Field(1, ge=0, description="Seed of the reserve selection (combined with expId).")


class MeasurePsfTask(Task):
    """Measure the PSF of an exposure from its bright stars (the role of ``lsst.meas.algorithms.MeasurePsfTask``).

    Selects PSF candidates with the ``starSelector`` subtask, reserves a random ``reserveFraction`` of them,
    fits a PSF to the rest with the ``psfDeterminer`` subtask, installs it on the exposure and flags the
    catalogue (``calib_psf_candidate``, ``calib_psf_used``, ``calib_psf_reserved``).

    Metadata: ``numCandidates``, ``numReserved``, ``numAvailStars`` (candidates given to the determiner),
    ``numGoodStars`` (stars in the final fit), ``numRejected`` (candidates the determiner rejected),
    ``spatialFitChi2`` (total chi^2 of the used stars about the model), ``psfFwhm`` (effective FWHM at the
    exposure centre [pixels]).
    """

    ConfigClass = MeasurePsfConfig
    _DefaultName = "measurePsf"
    config: MeasurePsfConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.makeSubtask("starSelector")
        self.makeSubtask("psfDeterminer")

    @timeMethod
    def run(self, exposure: Exposure, sources: Table, *, expId: int = 0) -> Struct:  # noqa: N803 - LSST name
        """Measure the PSF and install it on the exposure.

        Parameters
        ----------
        exposure : `~tasks.image.Exposure`
            Background-subtracted exposure with DETECTED footprints; ``exposure.psf`` is replaced.
        sources : `astropy.table.Table`
            Source catalogue measured on the exposure (see the module docstring for the columns used); its
            ``calib_psf_candidate``, ``calib_psf_used`` and ``calib_psf_reserved`` columns are set in place.
        expId : `int`, optional
            Exposure identifier, combined with ``reserveSeed`` so each exposure reserves different stars.

        Returns
        -------
        result : `Struct`
            ``psf`` (`~tasks.image.PcaPsf`), ``cellSet`` (`SpatialCellSet` of the candidates),
            ``starCat`` (the rows of ``sources`` used in the fit), and the bool arrays over ``sources``:
            ``candidates``, ``used``, ``reserved``.

        Raises
        ------
        AlgorithmError
            ``"too few PSF stars: N (need M)"`` when the selector or the fit leaves fewer than
            ``psfDeterminer.minStars`` stars, or when a needed column is missing.
        """
        n = len(sources)
        for name in _FLAG_COLUMNS:
            sources[name] = np.zeros(n, dtype=bool)
        selection = self.starSelector.run(exposure, sources)
        candidates = np.asarray(selection.selected, dtype=bool)
        sources["calib_psf_candidate"] = candidates
        candidate_rows = np.flatnonzero(candidates)
        reserved = np.zeros(n, dtype=bool)
        n_reserve = int(math.floor(self.config.reserveFraction * candidate_rows.size))
        if n_reserve:
            rng = np.random.default_rng(np.random.SeedSequence([self.config.reserveSeed, int(expId) & 0x7FFFFFFF]))
            reserved[rng.choice(candidate_rows, size=n_reserve, replace=False)] = True
        sources["calib_psf_reserved"] = reserved
        self.metadata["numCandidates"] = int(candidate_rows.size)
        self.metadata["numReserved"] = n_reserve
        min_stars = self.config.psfDeterminer.minStars
        n_avail = int(candidate_rows.size - n_reserve)
        if n_avail < min_stars:
            raise AlgorithmError(
                f"too few PSF stars: {n_avail} (need {min_stars}); {candidate_rows.size} of {n} sources were "
                f"selected as stars ({n_reserve} reserved) -- no stars on the stellar locus "
                f"(locus width {selection.locusWidth:.2f} px) pass the quality, S/N and isolation cuts."
            )
        result = self.psfDeterminer.run(exposure, sources, np.flatnonzero(candidates & ~reserved))
        used = np.asarray(result.used, dtype=bool)
        sources["calib_psf_used"] = used
        exposure.psf = result.psf
        cx, cy = exposure.bbox.center
        fwhm = psf_effective_fwhm(result.psf, cx, cy)
        for key in ("numAvailStars", "numGoodStars", "numRejected", "spatialFitChi2", "kernelSize"):
            self.metadata[key] = self.psfDeterminer.metadata[key]
        self.metadata["psfFwhm"] = fwhm
        self.log.info(
            "PSF from %d stars (%d candidates, %d reserved, %d rejected): FWHM_eff %.3f px at the centre",
            int(used.sum()), int(candidate_rows.size), n_reserve, result.numRejected, fwhm,
        )
        return Struct(
            psf=result.psf,
            cellSet=result.cellSet,
            starCat=sources[used],
            candidates=candidates,
            used=used,
            reserved=reserved,
        )
