"""Binned backgrounds over a whole tract, and their smooth fits: `TractBackground`.

A `TractBackground` divides a tract's pixel box into square bins of ``binSize`` tract pixels starting at the
tract origin and accumulates, bin by bin, a sigma-clipped mean of the unmasked pixels of any number of images
in the tract frame (the warps of one visit, one patch at a time, or their differences with a reference visit).
Pieces of a bin from different images are merged by pixel count.  Each bin also records the centroid of the
pixels it used, so a partly covered bin (at a footprint edge or a patch boundary) is located where its
pixels are, not at the bin centre: with a gradient of ``g`` per pixel, placing a half-covered bin of 128
pixels at its centre would bias it by ``32 g``.

`TractBackground.fit` then fits a smooth model to the bins: by default a 2-D Chebyshev polynomial of total
degree ``order`` (the terms of `tasks.image._chebyshev.chebyshev_terms`) over a ``domain`` box, weighted by
the inverse bin variances, with iterative rejection of outlying bins (residual beyond ``fitClip`` robust
standard deviations of the normalised residuals); with ``usePolynomial=False`` the bins are interpolated
instead (``interpStyle``, as `Background`).  `TractBackground.get_image` evaluates the model on any box of the
tract frame, extrapolating beyond the bins.  This follows ``lsst.pipe.tasks.background.TractBackground`` and
the polynomial branch of ``lsst.pipe.tasks.matchBackgrounds`` (afw ``Approximate``), written with numpy.

`TractBackgroundFitsFormatter` writes one as FITS: an empty primary HDU and a ``TRACTBG`` binary table
(`TractBackground.to_table`: one row per bin with data, the geometry, fit and diagnostics in ``meta``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.table import Table
from numpy.polynomial import chebyshev

from butler.errors import FormatterError
from graph import Config, Field

from ..errors import ImageError, NoUsableBinsError
from ._chebyshev import chebyshev_terms, n_chebyshev_terms, normalize_to_box
from .background import Background, _fill_bins
from .fits import _primary, _table_to_hdu, _TablesFitsFormatter
from .geom import Box2I
from .masked_image import MaskedImage

__all__ = ["TractBackground", "TractBackgroundConfig", "TractBackgroundFitsFormatter"]

DEFAULT_BAD_MASK_PLANES = ["NO_DATA", "DETECTED", "BAD", "SAT", "INTRP", "EDGE", "SUSPECT", "CR"]

_MAD_TO_SIGMA = 1.4826


class TractBackgroundConfig(Config):
    """Configuration of a `TractBackground` (names as in ``lsst.pipe.tasks.background.TractBackgroundConfig``
    and ``MatchBackgroundsConfig``)."""

    binSize: int = Field(
        128,
        ge=8,
        description="Side of a square bin [tract pixels]; bins start at the tract origin. 128 px is 26\" at "
        "SimCam's 0.2\"/px (a 3x3 mosaic of 1024 px detectors spans ~24x24 bins) and 51\" for SDSS frames "
        "(~16x12 bins per 2048x1489 frame).",
    )
    badMaskPlanes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BAD_MASK_PLANES),
        description="Mask planes whose pixels are ignored; planes an image does not define are skipped.",
    )
    statistic: Literal["meanclip", "median"] = Field(
        "meanclip", description="Per-bin statistic of the unmasked pixels after sigma clipping."
    )
    numSigmaClip: float = Field(3.0, gt=0, description="Per-bin pixel clipping threshold [standard deviations].")
    numIter: int = Field(3, ge=1, le=20, description="Number of per-bin clipping passes.")
    usePolynomial: bool = Field(
        True,
        description="Fit a Chebyshev polynomial of degree `order` to the bins (else interpolate them with "
        "`interpStyle`, which extrapolates poorly beyond the bins).",
    )
    order: int = Field(
        2,
        ge=0,
        le=10,
        description="Total degree of the Chebyshev polynomial; 2 holds offsets, gradients and mild curvature "
        "across a focal plane.",
    )
    interpStyle: Literal["constant", "linear", "spline", "akima"] = Field(
        "akima", description="Interpolation of the bins when usePolynomial is False."
    )
    undersampleStyle: Literal["REDUCE_INTERP_ORDER", "THROW_EXCEPTION"] = Field(
        "REDUCE_INTERP_ORDER",
        description="With fewer than minBinsPerTerm good bins per polynomial term: lower the degree until "
        "there are enough, or raise NoUsableBinsError.",
    )
    minBinsPerTerm: float = Field(
        3.0, ge=1.0, description="Good bins needed per polynomial term (degree d has (d+1)(d+2)/2 terms)."
    )
    fitClip: float = Field(
        4.0,
        gt=0,
        description="Bins whose normalised fit residual is beyond fitClip robust standard deviations (1.4826 "
        "MAD) are rejected and the fit repeated.",
    )
    fitNumIter: int = Field(3, ge=0, le=20, description="Maximum number of bin-rejection passes of the fit.")


def _coverage_box(bbox: Box2I, bin_size: int, good: np.ndarray) -> Box2I:
    """The pixel box of the bins flagged ``good`` (clipped to ``bbox``)."""
    iy, ix = np.nonzero(good)
    x0 = bbox.x0 + int(ix.min()) * bin_size
    y0 = bbox.y0 + int(iy.min()) * bin_size
    x1 = min(bbox.x0 + (int(ix.max()) + 1) * bin_size, bbox.x1)
    y1 = min(bbox.y0 + (int(iy.max()) + 1) * bin_size, bbox.y1)
    return Box2I(x0, y0, x1 - x0, y1 - y0)


class TractBackground:
    """Binned background statistics over a tract and their smooth model, in the tract pixel frame.

    Parameters
    ----------
    bbox : `Box2I`
        The tract's pixel box (``TractInfo.bbox``); bins of ``config.binSize`` start at its origin (the last
        row and column may be partial).
    config : `TractBackgroundConfig`, optional
        Binning, statistics and fit settings; default `TractBackgroundConfig()`.

    Attributes
    ----------
    bbox : `Box2I`
    config : `TractBackgroundConfig`
    order : `int` or None
        Degree of the fitted polynomial (None before `fit`, or for an interpolated model).
    coefficients : `numpy.ndarray`, shape (n_terms,), or None
        Chebyshev coefficients over `domain` [image units], ordered as `chebyshev_terms`.
    domain : `Box2I` or None
        Box normalised to [-1, 1] by the polynomial (the footprint the model is meant for).
    used : `numpy.ndarray`, shape (ny_bins, nx_bins), bool
        Bins kept by the fit (good and not rejected).
    chi2 : `float`
        Reduced chi^2 of the kept bins (sum of squared normalised residuals / degrees of freedom); NaN
        before a fit or without degrees of freedom.
    dof : `int`
        Degrees of freedom of the fit (kept bins - terms).
    rms : `float`
        Root mean square of the residuals of the kept bins about the model [image units].
    """

    def __init__(self, bbox: Box2I, *, config: TractBackgroundConfig | None = None) -> None:
        if bbox.is_empty:
            raise ImageError("a TractBackground needs a non-empty tract bbox.")
        self.bbox = bbox
        self.config = TractBackgroundConfig() if config is None else config
        b = self.config.binSize
        shape = (math.ceil(bbox.height / b), math.ceil(bbox.width / b))
        # Running sums per bin: pixels n, n * value, n * x, n * y, n^2 * var(value).
        self._n = np.zeros(shape)
        self._sum = np.zeros(shape)
        self._sum_x = np.zeros(shape)
        self._sum_y = np.zeros(shape)
        self._sum_var = np.zeros(shape)
        self._reset_fit()

    def _reset_fit(self) -> None:
        self.order: int | None = None
        self.coefficients: np.ndarray | None = None
        self.domain: Box2I | None = None
        self.used = np.zeros(self._n.shape, dtype=bool)
        self.chi2 = math.nan
        self.dof = 0
        self.rms = math.nan
        self._interpolant: Background | None = None

    @classmethod
    def zero(cls, bbox: Box2I, *, config: TractBackgroundConfig | None = None) -> TractBackground:
        """A model that is 0 everywhere and has no bins (the reference visit's difference background)."""
        background = cls(bbox, config=config)
        background.order = 0
        background.coefficients = np.zeros(1)
        background.domain = bbox
        background.chi2, background.dof, background.rms = 0.0, 0, 0.0
        return background

    # ------------------------------------------------------------------ bins
    @property
    def bin_size(self) -> int:
        """Side of a bin [tract pixels]."""
        return self.config.binSize

    @property
    def n_bins(self) -> tuple[int, int]:
        """Bin-grid shape (ny_bins, nx_bins)."""
        return self._n.shape  # type: ignore[return-value]

    @property
    def counts(self) -> np.ndarray:
        """Pixels used per bin (after masking and clipping), shape (ny_bins, nx_bins)."""
        return self._n.copy()

    @property
    def good(self) -> np.ndarray:
        """Bins holding data, shape (ny_bins, nx_bins), bool."""
        return self._n > 0

    @property
    def values(self) -> np.ndarray:
        """Clipped mean (or median) of each bin [image units]; NaN for bins without data."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.good, self._sum / self._n, np.nan)

    @property
    def variances(self) -> np.ndarray:
        """Variance of each bin value [image units^2]; NaN for bins without data."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.good, self._sum_var / self._n**2, np.nan)

    def centroids(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(x, y)`` tract pixel position of the pixels of each bin; NaN for bins without data."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (
                np.where(self.good, self._sum_x / self._n, np.nan),
                np.where(self.good, self._sum_y / self._n, np.nan),
            )

    def add_image(self, masked_image: MaskedImage, *, bbox: Box2I | None = None) -> int:
        """Accumulate the binned statistics of an image in the tract frame.

        Parameters
        ----------
        masked_image : `MaskedImage`
            Pixels in tract coordinates (e.g. a warp or a difference of warps) [image units]; NaN pixels and
            pixels with a ``config.badMaskPlanes`` bit are ignored.
        bbox : `Box2I`, optional
            Use only the pixels in this box (e.g. the patch's inner box, so that overlapping warps of adjacent
            patches do not count their shared pixels twice); default the whole image.

        Returns
        -------
        n_pixels : `int`
            Number of pixels added (after masking and clipping); bins with fewer than 5 usable pixels, or fewer
            than 5% of the bin, are not added.

        Notes
        -----
        The statistic of each bin piece is computed by `tasks.background.fit_background_fast` (sigma-clipped
        mean about a running centre, vectorised over bins); pieces of a bin from several calls are averaged
        with weights equal to their pixel counts, and their variances combined accordingly.
        """
        from ..background import fit_background_fast  # tasks.background imports tasks.image

        region = masked_image.bbox.intersection(self.bbox)
        if bbox is not None:
            region = region.intersection(bbox)
        if region.is_empty:
            return 0
        b = self.bin_size
        gx0 = (region.x0 - self.bbox.x0) // b
        gy0 = (region.y0 - self.bbox.y0) // b
        gx1 = -(-(region.x1 - self.bbox.x0) // b)
        gy1 = -(-(region.y1 - self.bbox.y0) // b)
        aligned = Box2I(self.bbox.x0 + gx0 * b, self.bbox.y0 + gy0 * b, (gx1 - gx0) * b, (gy1 - gy0) * b)

        sub = masked_image[region]
        pixels = np.array(sub.image, dtype=np.float32)
        mask = sub.mask
        pixels[mask.get_plane(self.config.badMaskPlanes, missing_ok=True)] = np.nan
        data = np.full(aligned.shape, np.nan, dtype=np.float32)
        data[region.slices(aligned)] = pixels
        ny_b, nx_b = gy1 - gy0, gx1 - gx0
        valid = np.isfinite(data).reshape(ny_b, b, nx_b, b)
        n_valid = valid.sum(axis=(1, 3)).astype(np.float64)
        if not n_valid.any():
            return 0
        x = (aligned.x0 + np.arange(aligned.width, dtype=np.float64)).reshape(nx_b, b)
        y = (aligned.y0 + np.arange(aligned.height, dtype=np.float64)).reshape(ny_b, b)
        sum_x = np.einsum("iajb,jb->ij", valid, x, dtype=np.float64)
        sum_y = np.einsum("iajb,ia->ij", valid, y, dtype=np.float64)

        try:
            stats, _ = fit_background_fast(
                MaskedImage(data, xy0=aligned.xy0),
                bin_size=b,
                bad_mask_planes=(),
                statistic=self.config.statistic,
                clip=self.config.numSigmaClip,
                n_iter=self.config.numIter,
                interpolation="constant",
            )
        except NoUsableBinsError:
            return 0
        n = np.asarray(stats.counts, dtype=np.float64)
        use = (n > 0) & np.isfinite(stats.values) & np.isfinite(stats.variances) & (n_valid > 0)
        if not use.any():
            return 0
        n = np.where(use, n, 0.0)
        # Centroids are those of the valid pixels (clipping removes few, symmetrically).
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = np.where(use, sum_x / n_valid, 0.0)
            cy = np.where(use, sum_y / n_valid, 0.0)
        target = (slice(gy0, gy1), slice(gx0, gx1))
        self._n[target] += n
        self._sum[target] += np.where(use, n * stats.values, 0.0)
        self._sum_x[target] += n * cx
        self._sum_y[target] += n * cy
        self._sum_var[target] += np.where(use, n**2 * stats.variances, 0.0)
        self._reset_fit()
        return int(n.sum())

    def merge(self, other: TractBackground) -> None:
        """Add the bins of another `TractBackground` of the same tract and bin size to this one.

        Raises
        ------
        ImageError
            If the tract boxes or bin sizes differ.
        """
        if other.bbox != self.bbox or other.bin_size != self.bin_size:
            raise ImageError(
                f"cannot merge a TractBackground over {other.bbox} with {other.bin_size} px bins into one over "
                f"{self.bbox} with {self.bin_size} px bins."
            )
        for name in ("_n", "_sum", "_sum_x", "_sum_y", "_sum_var"):
            getattr(self, name)[...] += getattr(other, name)
        self._reset_fit()

    def binned_difference(self, other: TractBackground) -> TractBackground:
        """The unfitted binned difference ``self - other`` on the bins both hold.

        Each common bin keeps the smaller pixel count, the difference of the values, the sum of the
        variances and the mean of the two centroids.

        Raises
        ------
        ImageError
            If the tract boxes or bin sizes differ.
        """
        if other.bbox != self.bbox or other.bin_size != self.bin_size:
            raise ImageError(
                f"cannot difference a TractBackground over {other.bbox} with {other.bin_size} px bins and one over "
                f"{self.bbox} with {self.bin_size} px bins."
            )
        out = TractBackground(self.bbox, config=self.config)
        common = self.good & other.good
        n = np.where(common, np.minimum(self.counts, other.counts), 0.0)
        ax, ay = self.centroids()
        bx, by = other.centroids()
        with np.errstate(invalid="ignore"):
            out._n[...] = n
            out._sum[...] = np.where(common, n * (self.values - other.values), 0.0)
            out._sum_var[...] = np.where(common, n**2 * (self.variances + other.variances), 0.0)
            out._sum_x[...] = np.where(common, n * 0.5 * (ax + bx), 0.0)
            out._sum_y[...] = np.where(common, n * 0.5 * (ay + by), 0.0)
        return out

    # ------------------------------------------------------------------ fitting
    def fit(self, *, domain: Box2I | None = None) -> TractBackground:
        """Fit the smooth model to the good bins (in place).

        Parameters
        ----------
        domain : `Box2I`, optional
            Box the Chebyshev polynomial normalises to [-1, 1]: the region where the model will be evaluated
            (e.g. the visit's footprint, which may extend beyond the bins); default the box of the good bins.
            Keeping it tight keeps the fit well conditioned.

        Returns
        -------
        self : `TractBackground`

        Raises
        ------
        NoUsableBinsError
            If no bin has data, or (``undersampleStyle="THROW_EXCEPTION"``) too few for ``order``.

        Notes
        -----
        Weighted least squares ``min sum_i (v_i - m(x_i, y_i))^2 / var_i`` over the bin centroids ``(x_i,
        y_i)``; each pass rejects the bins whose normalised residual ``r_i / sqrt(var_i)`` is further than
        ``fitClip`` times 1.4826 MAD from the median, so residual sources or artefacts do not pull the model
        and correlated pixel noise (which makes ``var_i`` too small) does not reject good bins.
        """
        config = self.config
        good = self.good & np.isfinite(self.variances) & (self.variances > 0)
        n_good = int(good.sum())
        if n_good == 0:
            raise NoUsableBinsError("no background bin has unmasked pixels; nothing to fit.")
        if domain is None:
            domain = _coverage_box(self.bbox, self.bin_size, good)
        self._reset_fit()
        self.domain = domain
        values = self.values[good]
        sigma = np.sqrt(self.variances[good])
        cx, cy = self.centroids()
        x, y = cx[good], cy[good]
        if not config.usePolynomial:
            self._fit_interpolant(good, domain)
            keep = np.ones(n_good, dtype=bool)
            residuals = values - self._evaluate_points(x, y)
            n_terms = 0
        else:
            order = config.order
            while n_good < config.minBinsPerTerm * n_chebyshev_terms(order):
                if config.undersampleStyle == "THROW_EXCEPTION" or order == 0:
                    if order == 0:
                        break
                    raise NoUsableBinsError(
                        f"{n_good} good background bins cannot constrain a degree-{order} polynomial "
                        f"({n_chebyshev_terms(order)} terms x minBinsPerTerm={config.minBinsPerTerm}); lower "
                        "order or binSize, or set undersampleStyle='REDUCE_INTERP_ORDER'."
                    )
                order -= 1
            n_terms = n_chebyshev_terms(order)
            design = chebyshev_terms(x, y, order, domain).T / sigma[:, None]  # (n_good, n_terms)
            rhs = values / sigma
            keep = np.ones(n_good, dtype=bool)
            coefficients = np.zeros(n_terms)
            for iteration in range(config.fitNumIter + 1):
                coefficients = np.linalg.lstsq(design[keep], rhs[keep], rcond=None)[0]
                normalised = rhs - design @ coefficients
                if iteration == config.fitNumIter or keep.sum() <= n_terms + 1:
                    break
                centre = np.median(normalised[keep])
                spread = _MAD_TO_SIGMA * np.median(np.abs(normalised[keep] - centre))
                if not spread > 0:
                    break
                new_keep = np.abs(normalised - centre) <= config.fitClip * spread
                if np.array_equal(new_keep, keep) or new_keep.sum() <= n_terms:
                    break
                keep = new_keep
            self.order = order
            self.coefficients = coefficients
            residuals = values - self._evaluate_points(x, y)
        used = np.zeros(self.n_bins, dtype=bool)
        used[good] = keep
        self.used = used
        self.dof = int(keep.sum()) - n_terms
        chi2 = float(np.sum((residuals[keep] / sigma[keep]) ** 2))
        self.chi2 = chi2 / self.dof if self.dof > 0 else math.nan
        self.rms = float(np.sqrt(np.mean(residuals[keep] ** 2)))
        return self

    def _fit_interpolant(self, good: np.ndarray, domain: Box2I) -> None:
        """Interpolate the good bins inside the domain's bin grid (others filled from their neighbours)."""
        b = self.bin_size
        gx0 = (domain.x0 - self.bbox.x0) // b
        gy0 = (domain.y0 - self.bbox.y0) // b
        gx1 = -(-(domain.x1 - self.bbox.x0) // b)
        gy1 = -(-(domain.y1 - self.bbox.y0) // b)
        window = (slice(gy0, gy1), slice(gx0, gx1))
        sub_good = good[window]
        grid_box = Box2I(
            self.bbox.x0 + gx0 * b,
            self.bbox.y0 + gy0 * b,
            min((gx1 - gx0) * b, self.bbox.x1 - (self.bbox.x0 + gx0 * b)),
            min((gy1 - gy0) * b, self.bbox.y1 - (self.bbox.y0 + gy0 * b)),
        )
        if not sub_good.any():
            raise NoUsableBinsError(f"no background bin with data inside the domain {domain}.")
        values = self.values[window]
        if sub_good.sum() == 1:
            values = np.full(sub_good.shape, values[sub_good][0])
        elif not sub_good.all():
            values = _fill_bins(np.where(sub_good, values, np.nan), sub_good)
        self._interpolant = Background(grid_box, b, values, interpolation=self.config.interpStyle)

    # ------------------------------------------------------------------ evaluation
    @property
    def is_fitted(self) -> bool:
        """Whether `fit` (or `zero`) made a model."""
        return self.coefficients is not None or self._interpolant is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ImageError("this TractBackground has no model yet; call fit() first.")

    def _evaluate_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.coefficients is not None:
            assert self.order is not None and self.domain is not None
            return np.tensordot(self.coefficients, chebyshev_terms(x, y, self.order, self.domain), axes=1)
        assert self._interpolant is not None
        # The interpolant is separable on the pixel grid: evaluate it on the box of the points (rounded to
        # pixel centres) and pick them out.
        ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        box = Box2I.from_corners(int(ix.min()), int(iy.min()), int(ix.max()), int(iy.max()))
        image = self._interpolant.get_image(box)
        return image[iy - box.y0, ix - box.x0].astype(np.float64)

    def get_image(self, bbox: Box2I | None = None) -> np.ndarray:
        """Evaluate the model at the pixel centres of a box of the tract frame.

        Parameters
        ----------
        bbox : `Box2I`, optional
            Tract-pixel box (e.g. a warp's bbox, the patch's outer box); may extend beyond the bins, where the
            model is extrapolated.  Default the tract box.

        Returns
        -------
        image : `numpy.ndarray`, shape ``bbox.shape``, float32
            The model [image units, nJy for warps].

        Raises
        ------
        ImageError
            If the model has not been fitted.
        """
        self._check_fitted()
        bbox = self.bbox if bbox is None else bbox
        if bbox.is_empty:
            return np.zeros(bbox.shape, dtype=np.float32)
        if self.coefficients is None:
            assert self._interpolant is not None
            return self._interpolant.get_image(bbox)
        # Separable evaluation: image = Ty C Tx^T.
        tx, ty, matrix = self._separable(bbox)
        return (ty @ matrix @ tx.T).astype(np.float32)

    def get_mean(self, bbox: Box2I | None = None) -> float:
        """Mean of the model over the pixel centres of a box (default the tract box) [image units].

        Raises
        ------
        ImageError
            If the model has not been fitted.
        """
        self._check_fitted()
        bbox = self.bbox if bbox is None else bbox
        if bbox.is_empty:
            return 0.0
        if self.coefficients is None:
            return float(np.mean(self.get_image(bbox), dtype=np.float64))
        tx, ty, matrix = self._separable(bbox)
        return float(ty.mean(axis=0) @ matrix @ tx.mean(axis=0))

    def _separable(self, bbox: Box2I) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Chebyshev values along the box's columns (nx, d+1) and rows (ny, d+1), and the coefficient matrix
        ``C[j, i]`` of ``T_i(x) T_j(y)``, so that the model is ``Ty C Tx^T``."""
        assert self.order is not None and self.domain is not None and self.coefficients is not None
        order = self.order
        xn, _ = normalize_to_box(np.arange(bbox.x0, bbox.x1, dtype=float), 0.0, self.domain)
        _, yn = normalize_to_box(0.0, np.arange(bbox.y0, bbox.y1, dtype=float), self.domain)
        tx = chebyshev.chebvander(np.atleast_1d(xn), order)
        ty = chebyshev.chebvander(np.atleast_1d(yn), order)
        matrix = np.zeros((order + 1, order + 1))
        k = 0
        for d in range(order + 1):
            for j in range(d + 1):
                matrix[j, d - j] = self.coefficients[k]
                k += 1
        return tx, ty, matrix

    # ------------------------------------------------------------------ persistence
    def to_table(self) -> Table:
        """One row per bin with data, the geometry, model and diagnostics in ``meta``.

        Columns: ``iy``, ``ix`` (bin indices), ``count`` (pixels), ``value`` [image units], ``variance``
        [image units^2], ``x``, ``y`` (centroid [tract pixels]), ``used`` (kept by the fit).  Meta keys (FITS
        compatible): BGTYPE (``"TRACT"``), BBOX_X0, BBOX_Y0, BBOX_W, BBOX_H, BINSIZE, NBIN_X, NBIN_Y, STAT,
        FITTYPE (``"CHEBYSHEV"``, ``"INTERP"`` or ``"NONE"``), INTERP, ORDER, DOM_X0, DOM_Y0, DOM_W, DOM_H,
        COEFFS (list), CHI2, DOF, RMS, NGOOD.
        """
        good = self.good
        iy, ix = np.nonzero(good)
        cx, cy = self.centroids()
        table = Table(
            {
                "iy": iy.astype(np.int32),
                "ix": ix.astype(np.int32),
                "count": self._n[good],
                "value": self.values[good],
                "variance": self.variances[good],
                "x": cx[good],
                "y": cy[good],
                "used": self.used[good],
            }
        )
        if self.coefficients is not None:
            fit_type = "CHEBYSHEV"
        elif self._interpolant is not None:
            fit_type = "INTERP"
        else:
            fit_type = "NONE"
        domain = self.domain or self.bbox
        table.meta.update(
            {
                "BGTYPE": "TRACT",
                "BBOX_X0": self.bbox.x0,
                "BBOX_Y0": self.bbox.y0,
                "BBOX_W": self.bbox.width,
                "BBOX_H": self.bbox.height,
                "BINSIZE": self.bin_size,
                "NBIN_X": self.n_bins[1],
                "NBIN_Y": self.n_bins[0],
                "STAT": self.config.statistic.upper(),
                "FITTYPE": fit_type,
                "INTERP": self.config.interpStyle.upper(),
                "ORDER": -1 if self.order is None else int(self.order),
                "DOM_X0": domain.x0,
                "DOM_Y0": domain.y0,
                "DOM_W": domain.width,
                "DOM_H": domain.height,
                "COEFFS": [] if self.coefficients is None else [float(c) for c in self.coefficients],
                "CHI2": float(self.chi2),
                "DOF": int(self.dof),
                "RMS": float(self.rms),
                "NGOOD": int(self.used.sum()),
            }
        )
        return table

    @classmethod
    def from_table(cls, table: Table) -> TractBackground:
        """Inverse of `to_table`.

        Raises
        ------
        ImageError
            If the table lacks a required meta key or column, or is not a tract background.
        """
        meta = {str(k).upper(): v for k, v in table.meta.items()}
        if meta.get("BGTYPE") != "TRACT":
            raise ImageError(f"not a TractBackground table (BGTYPE={meta.get('BGTYPE')!r}).")
        try:
            bbox = Box2I(int(meta["BBOX_X0"]), int(meta["BBOX_Y0"]), int(meta["BBOX_W"]), int(meta["BBOX_H"]))
            fit_type = str(meta["FITTYPE"])
            order = int(meta["ORDER"])
            config = TractBackgroundConfig(
                binSize=int(meta["BINSIZE"]),
                statistic=str(meta.get("STAT", "MEANCLIP")).lower(),
                interpStyle=str(meta.get("INTERP", "AKIMA")).lower(),
                usePolynomial=fit_type != "INTERP",
                order=max(order, 0),
            )
            background = cls(bbox, config=config)
            iy = np.asarray(table["iy"], dtype=np.int64)
            ix = np.asarray(table["ix"], dtype=np.int64)
            n = np.asarray(table["count"], dtype=np.float64)
            background._n[iy, ix] = n
            background._sum[iy, ix] = n * np.asarray(table["value"], dtype=np.float64)
            background._sum_var[iy, ix] = n**2 * np.asarray(table["variance"], dtype=np.float64)
            background._sum_x[iy, ix] = n * np.asarray(table["x"], dtype=np.float64)
            background._sum_y[iy, ix] = n * np.asarray(table["y"], dtype=np.float64)
            used = np.zeros(background.n_bins, dtype=bool)
            used[iy, ix] = np.asarray(table["used"], dtype=bool)
            domain = Box2I(int(meta["DOM_X0"]), int(meta["DOM_Y0"]), int(meta["DOM_W"]), int(meta["DOM_H"]))
            if fit_type == "CHEBYSHEV":
                background.order = order
                background.coefficients = np.asarray(meta["COEFFS"], dtype=np.float64)
                background.domain = domain
                if len(background.coefficients) != n_chebyshev_terms(order):
                    raise ImageError(
                        f"TractBackground table has {len(background.coefficients)} coefficients for degree {order}."
                    )
            elif fit_type == "INTERP":
                background.domain = domain
                background._fit_interpolant(used, domain)
            background.used = used
            background.chi2 = float(meta.get("CHI2", math.nan))
            background.dof = int(meta.get("DOF", 0))
            background.rms = float(meta.get("RMS", math.nan))
        except KeyError as err:
            raise ImageError(f"TractBackground table lacks {err.args[0]!r}; was it written by to_table()?") from None
        except IndexError as err:
            raise ImageError(f"TractBackground table has a bin outside its grid: {err}.") from None
        return background

    def copy(self) -> TractBackground:
        """A deep copy."""
        return TractBackground.from_table(self.to_table()) if self.is_fitted else self._copy_bins()

    def _copy_bins(self) -> TractBackground:
        out = TractBackground(self.bbox, config=self.config)
        out.merge(self)
        return out

    def __repr__(self) -> str:
        model = f"order={self.order}" if self.coefficients is not None else (
            "interpolated" if self._interpolant is not None else "unfitted"
        )
        return (
            f"TractBackground(bbox={self.bbox}, binSize={self.bin_size}, goodBins={int(self.good.sum())}, {model})"
        )


class TractBackgroundFitsFormatter(_TablesFitsFormatter):
    """A `TractBackground` as FITS: an empty primary HDU (``BPFORMAT = 'TractBackground'``) and one ``TRACTBG``
    binary table (`TractBackground.to_table`)."""

    kind = "TractBackground"
    what = "a tract background"

    def write(self, obj: Any, path: Path) -> None:
        """Write a tract background.

        Raises
        ------
        FormatterError
            If ``obj`` is not a `TractBackground`.
        """
        if not isinstance(obj, TractBackground):
            raise FormatterError(
                f"TractBackgroundFitsFormatter writes TractBackground objects, got {type(obj).__name__}."
            )
        from astropy.io import fits

        hdus = [_primary(self.kind), _table_to_hdu(obj.to_table(), "TRACTBG", "tract background")]
        fits.HDUList(hdus).writeto(path, output_verify="exception")

    def _read(self, file: Any) -> Any:
        from ..errors import FitsFormatError

        hdu = file.find("TRACTBG")
        if hdu is None:
            raise FitsFormatError(f"{file.path} has no TRACTBG table; the file is truncated or damaged.")
        table = self._read_table(file, hdu, "reading the tract background table")
        try:
            return TractBackground.from_table(table)
        except ImageError as err:
            raise FitsFormatError(f"{file.path}: {err}") from None
