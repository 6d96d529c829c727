"""Smooth sky backgrounds: binned, sigma-clipped statistics and their interpolants.

A `Background` divides its bbox into bins of ``(by, bx)`` pixels starting at the bbox origin (the last row and
column of bins may be partial), holds one value per bin located at the bin's geometric centre, and evaluates a
separable interpolant of those values at pixel centres.  A `BackgroundList` sums several backgrounds, e.g. the
successive fits of a calibration pipeline; its `BackgroundList.inverted` undoes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, SupportsIndex

import numpy as np
from astropy.table import Table
from scipy.interpolate import Akima1DInterpolator, griddata, make_interp_spline

from ..errors import ImageError, NoUsableBinsError
from .geom import Box2I
from .masked_image import MaskedImage

__all__ = ["INTERPOLATIONS", "STATISTICS", "Background", "BackgroundList"]

INTERPOLATIONS: tuple[str, ...] = ("constant", "linear", "spline", "akima")
"""Valid ``interpolation`` styles: nearest bin, linear, cubic spline (not-a-knot), Akima."""

STATISTICS: tuple[str, ...] = ("meanclip", "median")
"""Valid per-bin statistics of `Background.fit` (both computed after iterative sigma clipping)."""

DEFAULT_BAD_MASK_PLANES: tuple[str, ...] = ("BAD", "SAT", "NO_DATA", "DETECTED", "EDGE")

_MIN_USABLE_FRACTION = 0.05
"""A bin is usable when at least this fraction of its pixels (and at least `_MIN_USABLE_PIXELS`) survive
masking and clipping; other bins are interpolated from their neighbours."""
_MIN_USABLE_PIXELS = 5


def _pair(bin_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(bin_size, (int, np.integer)):
        pair = (int(bin_size), int(bin_size))
    else:
        values = tuple(int(v) for v in bin_size)
        if len(values) != 2:
            raise ImageError(f"bin_size must be an int or a pair (by, bx), got {bin_size!r}.")
        pair = (values[0], values[1])
    if pair[0] < 1 or pair[1] < 1:
        raise ImageError(f"bin_size must be >= 1 pixel, got {pair}.")
    return pair


def _check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise ImageError(
            f"unknown background interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}."
        )
    return interpolation


def _n_bins(bbox: Box2I, bin_size: tuple[int, int]) -> tuple[int, int]:
    return (math.ceil(bbox.height / bin_size[0]), math.ceil(bbox.width / bin_size[1]))


def _bin_centers(start: int, length: int, size: int) -> np.ndarray:
    """Geometric centres of the bins along one axis, in parent pixel coordinates."""
    lo = start + np.arange(0, length, size)
    hi = np.minimum(lo + size, start + length)
    return (lo + hi - 1) / 2.0


def _interp_axis(
    centers: np.ndarray, values: np.ndarray, positions: np.ndarray, axis: int, method: str, start: int, size: int
) -> np.ndarray:
    """Interpolate ``values`` (bins along ``axis``) at ``positions`` (pixel centres, parent coordinates)."""
    n = len(centers)
    if n == 1 or method == "constant":
        index = np.clip(np.floor((positions - start) / size).astype(np.int64), 0, n - 1)
        return np.take(values, index, axis=axis)
    if method == "akima" and n >= 3:
        return Akima1DInterpolator(centers, values, axis=axis, extrapolate=True)(positions)
    k = 1 if method in ("linear", "akima") else min(3, n - 1)
    return make_interp_spline(centers, values, k=k, axis=axis)(positions, extrapolate=True)


class Background:
    """A binned background model and its interpolant.

    Parameters
    ----------
    bbox : `Box2I`
        Parent-coordinate pixel box that the bins tile.
    bin_size : `int` or `tuple` [`int`, `int`]
        Bin size (by, bx) [pixels]; bins start at the bbox origin, the last ones may be partial.
    values : `numpy.ndarray`, shape (ny_bins, nx_bins)
        Background level of each bin (image units), at the bin's geometric centre; must be finite.
    counts : `numpy.ndarray`, shape (ny_bins, nx_bins), optional
        Number of pixels used for each bin (0 for bins filled from their neighbours).
    variances : `numpy.ndarray`, shape (ny_bins, nx_bins), optional
        Variance of each bin value (image units squared).
    interpolation : `str`, optional
        One of `INTERPOLATIONS`: ``"constant"`` (each bin's value over its pixels), ``"linear"``,
        ``"spline"`` (cubic, not-a-knot) or ``"akima"``.  Beyond the outermost bin centres the interpolant is
        extrapolated.

    Raises
    ------
    ImageError
        If the arrays do not have the bin-grid shape ``(ceil(height / by), ceil(width / bx))``, a value is not
        finite, or the interpolation is unknown.
    """

    def __init__(
        self,
        bbox: Box2I,
        bin_size: int | tuple[int, int],
        values: np.ndarray,
        *,
        counts: np.ndarray | None = None,
        variances: np.ndarray | None = None,
        interpolation: str = "spline",
    ) -> None:
        if bbox.is_empty:
            raise ImageError("a Background needs a non-empty bbox.")
        self.bbox = bbox
        self.bin_size = _pair(bin_size)
        self.interpolation = _check_interpolation(interpolation)
        grid = _n_bins(bbox, self.bin_size)
        self.values = self._grid_array(values, grid, "values")
        if not np.all(np.isfinite(self.values)):
            raise ImageError("Background values must all be finite; fill empty bins before building a Background.")
        self.counts = None if counts is None else self._grid_array(counts, grid, "counts")
        self.variances = None if variances is None else self._grid_array(variances, grid, "variances")

    @staticmethod
    def _grid_array(array: Any, grid: tuple[int, int], name: str) -> np.ndarray:
        array = np.array(array, dtype=np.float64)
        if array.shape != grid:
            raise ImageError(
                f"Background {name} must have the bin-grid shape (ny_bins, nx_bins) = {grid}, got {array.shape}."
            )
        return array

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        masked_image: MaskedImage,
        *,
        bin_size: int | tuple[int, int] = 128,
        bad_mask_planes: Iterable[str] = DEFAULT_BAD_MASK_PLANES,
        statistic: str = "meanclip",
        clip: float = 3.0,
        n_iter: int = 3,
        interpolation: str = "spline",
    ) -> Background:
        """Fit a background by sigma-clipped statistics in bins.

        Parameters
        ----------
        masked_image : `MaskedImage`
            Image to model (counts); NaN pixels are ignored.
        bin_size : `int` or `tuple` [`int`, `int`], optional
            Bin size (by, bx) [pixels].
        bad_mask_planes : iterable of `str`, optional
            Mask planes whose pixels are ignored; planes the mask does not define are skipped.
        statistic : `str`, optional
            ``"meanclip"`` (clipped mean) or ``"median"`` (clipped median).
        clip : `float`, optional
            Clipping threshold in standard deviations about the median.
        n_iter : `int`, optional
            Maximum number of clipping iterations (0: no clipping).
        interpolation : `str`, optional
            One of `INTERPOLATIONS`.

        Returns
        -------
        background : `Background`
            ``values`` hold the statistics, ``counts`` the number of pixels used and ``variances`` the variance
            of each value (clipped variance / count).  Bins with fewer than 5 usable pixels (or fewer than 5% of
            their pixels) are interpolated from the usable bins and get count 0.

        Raises
        ------
        NoUsableBinsError
            If fewer than 4 bins (or, on an image with fewer than 4 bins, not every bin) are usable.
        ImageError
            For an unknown statistic or interpolation, or a non-positive ``clip``.
        """
        if statistic not in STATISTICS:
            raise ImageError(f"unknown background statistic {statistic!r}; choose one of {', '.join(STATISTICS)}.")
        _check_interpolation(interpolation)
        if not clip > 0:
            raise ImageError(f"clip must be > 0 standard deviations, got {clip}.")
        by, bx = _pair(bin_size)
        bbox = masked_image.bbox
        if bbox.is_empty:
            raise ImageError("cannot fit a background to an empty image.")
        ny_b, nx_b = _n_bins(bbox, (by, bx))
        mask = masked_image.mask
        bad = mask.get_plane(bad_mask_planes, missing_ok=True)

        # Pad to whole bins with NaN and reshape to (ny_b, nx_b, by * bx); NaN marks unusable pixels.
        data = np.full((ny_b * by, nx_b * bx), np.nan)
        data[: bbox.height, : bbox.width] = masked_image.image
        data[: bbox.height, : bbox.width][bad] = np.nan
        blocks = data.reshape(ny_b, by, nx_b, bx).transpose(0, 2, 1, 3).reshape(ny_b, nx_b, by * bx)
        values, counts, variances = _clipped_statistics(blocks, statistic=statistic, clip=clip, n_iter=n_iter)

        # Pixels per bin (partial edge bins are smaller) and the usable-bin criterion.
        bin_h = np.minimum(by, bbox.height - by * np.arange(ny_b))
        bin_w = np.minimum(bx, bbox.width - bx * np.arange(nx_b))
        n_pix = bin_h[:, None] * bin_w[None, :]
        usable = (counts >= np.maximum(_MIN_USABLE_PIXELS, _MIN_USABLE_FRACTION * n_pix)) & np.isfinite(values)
        n_required = min(4, ny_b * nx_b)
        n_usable = int(usable.sum())
        if n_usable < n_required:
            raise NoUsableBinsError(
                f"only {n_usable} of {ny_b * nx_b} background bins of {by}x{bx} pixels have enough unmasked "
                f"pixels (need {n_required}; masked planes: {', '.join(p for p in bad_mask_planes if p in mask.planes) or 'none'}). Use a smaller "
                "bin_size or fewer bad_mask_planes."
            )
        if not usable.all():
            values = _fill_bins(values, usable)
            counts = np.where(usable, counts, 0)
            variances = np.where(usable, variances, np.nan)
        return cls(bbox, (by, bx), values, counts=counts, variances=variances, interpolation=interpolation)

    # ------------------------------------------------------------------ evaluation
    @property
    def n_bins(self) -> tuple[int, int]:
        """Bin-grid shape (ny_bins, nx_bins)."""
        return self.values.shape  # type: ignore[return-value]

    def bin_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Geometric bin centres ``(y_centers (ny_bins,), x_centers (nx_bins,))`` in parent pixel coordinates."""
        return (
            _bin_centers(self.bbox.y0, self.bbox.height, self.bin_size[0]),
            _bin_centers(self.bbox.x0, self.bbox.width, self.bin_size[1]),
        )

    def get_image(self, bbox: Box2I | None = None, *, interpolation: str | None = None) -> np.ndarray:
        """Evaluate the background at the pixel centres of ``bbox``.

        Parameters
        ----------
        bbox : `Box2I`, optional
            Parent-coordinate box to evaluate (may extend beyond `bbox`, which is extrapolated); default `bbox`.
        interpolation : `str`, optional
            Override the model's interpolation style.

        Returns
        -------
        image : `numpy.ndarray`, shape ``bbox.shape``, float32
        """
        bbox = self.bbox if bbox is None else bbox
        method = self.interpolation if interpolation is None else _check_interpolation(interpolation)
        if bbox.is_empty:
            return np.zeros(bbox.shape, dtype=np.float32)
        yc, xc = self.bin_centers()
        x = np.arange(bbox.x0, bbox.x1, dtype=float)
        y = np.arange(bbox.y0, bbox.y1, dtype=float)
        rows = _interp_axis(xc, self.values, x, 1, method, self.bbox.x0, self.bin_size[1])  # (ny_bins, nx)
        image = _interp_axis(yc, rows, y, 0, method, self.bbox.y0, self.bin_size[0])  # (ny, nx)
        return image.astype(np.float32)

    def scaled(self, factor: float) -> Background:
        """A copy with values multiplied by ``factor`` (variances by ``factor**2``)."""
        return Background(
            self.bbox,
            self.bin_size,
            self.values * factor,
            counts=self.counts,
            variances=None if self.variances is None else self.variances * factor**2,
            interpolation=self.interpolation,
        )

    def inverted(self) -> Background:
        """The negated background: adding it undoes a subtraction of this one."""
        return self.scaled(-1.0)

    # ------------------------------------------------------------------ persistence
    def to_table(self) -> Table:
        """One row per bin (``iy``, ``ix``, ``value``, ``count``, ``variance``) with the geometry in ``meta``.

        Meta keys (FITS compatible): BGTYPE, INTERP, BBOX_X0, BBOX_Y0, BBOX_W, BBOX_H, BIN_X, BIN_Y, NBIN_X,
        NBIN_Y.  ``count`` and ``variance`` are absent when the model has none.
        """
        ny_b, nx_b = self.n_bins
        iy, ix = np.divmod(np.arange(ny_b * nx_b), nx_b)
        columns: dict[str, np.ndarray] = {
            "iy": iy.astype(np.int32),
            "ix": ix.astype(np.int32),
            "value": self.values.ravel(),
        }
        if self.counts is not None:
            columns["count"] = self.counts.ravel()
        if self.variances is not None:
            columns["variance"] = self.variances.ravel()
        table = Table(columns)
        table.meta.update(
            {
                "BGTYPE": "BINNED",
                "INTERP": self.interpolation.upper(),
                "BBOX_X0": self.bbox.x0,
                "BBOX_Y0": self.bbox.y0,
                "BBOX_W": self.bbox.width,
                "BBOX_H": self.bbox.height,
                "BIN_X": self.bin_size[1],
                "BIN_Y": self.bin_size[0],
                "NBIN_X": nx_b,
                "NBIN_Y": ny_b,
            }
        )
        return table

    @classmethod
    def from_table(cls, table: Table) -> Background:
        """Inverse of `to_table`.

        Raises
        ------
        ImageError
            If the table lacks a required meta key or column.
        """
        meta = {str(k).upper(): v for k, v in table.meta.items()}
        try:
            bbox = Box2I(int(meta["BBOX_X0"]), int(meta["BBOX_Y0"]), int(meta["BBOX_W"]), int(meta["BBOX_H"]))
            bin_size = (int(meta["BIN_Y"]), int(meta["BIN_X"]))
            grid = (int(meta["NBIN_Y"]), int(meta["NBIN_X"]))
            iy = np.asarray(table["iy"], dtype=np.int64)
            ix = np.asarray(table["ix"], dtype=np.int64)
            interpolation = str(meta.get("INTERP", "SPLINE")).lower()

            def grid_of(name: str) -> np.ndarray | None:
                if name not in table.colnames:
                    return None
                out = np.full(grid, np.nan)
                out[iy, ix] = np.asarray(table[name], dtype=np.float64)
                return out

            values = grid_of("value")
        except KeyError as error:
            raise ImageError(f"not a Background table: missing {error}.") from None
        return cls(
            bbox, bin_size, values, counts=grid_of("count"), variances=grid_of("variance"), interpolation=interpolation
        )

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Background):
            return NotImplemented

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            return (a is None and b is None) or (
                a is not None and b is not None and np.array_equal(a, b, equal_nan=True)
            )

        return (
            self.bbox == other.bbox
            and self.bin_size == other.bin_size
            and self.interpolation == other.interpolation
            and same(self.values, other.values)
            and same(self.counts, other.counts)
            and same(self.variances, other.variances)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Background(bbox={self.bbox}, bin_size={self.bin_size}, n_bins={self.n_bins}, "
            f"interpolation={self.interpolation!r})"
        )


def _clipped_statistics(
    blocks: np.ndarray, *, statistic: str, clip: float, n_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped mean or median of each bin.

    ``blocks`` has shape (ny_b, nx_b, n) with NaN for unusable pixels.  Values are sorted once per bin; every
    clipping pass keeps a contiguous range ``[lo, hi)`` of the sorted values, so means and variances come
    from cumulative sums and medians from indexing, all vectorised over bins.

    Returns
    -------
    values, counts, variances : `numpy.ndarray`, shape (ny_b, nx_b)
        The statistic (NaN for empty bins), the number of pixels kept, and the variance of the statistic.
    """
    ordered = np.sort(blocks, axis=2)  # NaN sort last
    n_valid = np.isfinite(ordered).sum(axis=2)
    lo = np.zeros_like(n_valid)
    hi = n_valid.copy()
    n = ordered.shape[2]

    def at(index: np.ndarray) -> np.ndarray:
        return np.take_along_axis(ordered, np.clip(index, 0, n - 1)[..., None], axis=2)[..., 0]

    def median(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return 0.5 * (at((lo + hi - 1) // 2) + at((lo + hi) // 2))

    # Cumulative sums relative to a per-bin reference reduce cancellation in the variance.
    reference = np.where(n_valid > 0, median(lo, hi), 0.0)
    shifted = np.nan_to_num(ordered - reference[..., None], nan=0.0)
    cs1 = np.concatenate([np.zeros(shifted.shape[:2] + (1,)), np.cumsum(shifted, axis=2)], axis=2)
    cs2 = np.concatenate([np.zeros(shifted.shape[:2] + (1,)), np.cumsum(shifted**2, axis=2)], axis=2)

    def moments(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = hi - lo
        safe = np.maximum(count, 1)
        s1 = (
            np.take_along_axis(cs1, hi[..., None], axis=2)[..., 0]
            - np.take_along_axis(cs1, lo[..., None], axis=2)[..., 0]
        )
        s2 = (
            np.take_along_axis(cs2, hi[..., None], axis=2)[..., 0]
            - np.take_along_axis(cs2, lo[..., None], axis=2)[..., 0]
        )
        mean = s1 / safe
        var = np.maximum(s2 / safe - mean**2, 0.0) * safe / np.maximum(count - 1, 1)
        return count, mean + reference, var

    for _ in range(max(int(n_iter), 0)):
        count, _, var = moments(lo, hi)
        centre = median(lo, hi)
        half = clip * np.sqrt(var)
        # Indices into the sorted values: first >= centre - half, first > centre + half (NaN compare False).
        new_lo = (ordered < (centre - half)[..., None]).sum(axis=2)
        new_hi = (ordered <= (centre + half)[..., None]).sum(axis=2)
        keep = (count > 2) & (new_hi > new_lo)
        new_lo = np.where(keep, new_lo, lo)
        new_hi = np.where(keep, new_hi, hi)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi

    count, mean, var = moments(lo, hi)
    if statistic == "median":
        value = median(lo, hi)
        stat_var = var * (np.pi / 2.0) / np.maximum(count, 1)
    else:
        value = mean
        stat_var = var / np.maximum(count, 1)
    empty = count == 0
    value = np.where(empty, np.nan, value)
    stat_var = np.where(empty, np.nan, stat_var)
    return value, count.astype(np.float64), stat_var


def _fill_bins(values: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Replace unusable bins by linear interpolation between usable bins (nearest outside their hull)."""
    iy, ix = np.nonzero(usable)
    by, bx = np.nonzero(~usable)
    points = np.column_stack([iy, ix]).astype(float)
    targets = np.column_stack([by, bx]).astype(float)
    known = values[iy, ix]
    filled = np.full(len(targets), np.nan)
    try:
        filled = griddata(points, known, targets, method="linear")
    except Exception:  # noqa: BLE001 - Qhull fails on collinear points; fall back to nearest below
        pass
    missing = ~np.isfinite(filled)
    if missing.any():
        filled[missing] = griddata(points, known, targets[missing], method="nearest")
    out = values.copy()
    out[by, bx] = filled
    return out


class BackgroundList(list):
    """An ordered list of `Background` models whose sum is the total background.

    Parameters
    ----------
    iterable : iterable of `Background`, optional
        Initial models.
    """

    def __init__(self, iterable: Iterable[Background] = ()) -> None:
        items = list(iterable)
        for item in items:
            self._check(item)
        super().__init__(items)

    @staticmethod
    def _check(item: Any) -> None:
        if not isinstance(item, Background):
            raise ImageError(f"a BackgroundList holds Background objects, got {type(item).__name__}.")

    def append(self, item: Background) -> None:
        self._check(item)
        super().append(item)

    def insert(self, index: SupportsIndex, item: Background) -> None:
        self._check(item)
        super().insert(index, item)

    def extend(self, items: Iterable[Background]) -> None:
        items = list(items)
        for item in items:
            self._check(item)
        super().extend(items)

    def get_image(self, bbox: Box2I | None = None) -> np.ndarray:
        """Sum of the models at the pixel centres of ``bbox`` (default: the first model's bbox), float32.

        Raises
        ------
        ImageError
            If the list is empty and no bbox is given.
        """
        if bbox is None:
            if not self:
                raise ImageError("an empty BackgroundList has no bbox; pass one to get_image.")
            bbox = self[0].bbox
        total = np.zeros(bbox.shape, dtype=np.float64)
        for background in self:
            total += background.get_image(bbox)
        return total.astype(np.float32)

    def inverted(self) -> BackgroundList:
        """The inverted models in reverse order: adding its image undoes subtracting this list's image."""
        return BackgroundList(background.inverted() for background in reversed(self))

    def to_tables(self) -> list[Table]:
        """One table per model (see `Background.to_table`)."""
        return [background.to_table() for background in self]

    @classmethod
    def from_tables(cls, tables: Iterable[Table]) -> BackgroundList:
        """Inverse of `to_tables`."""
        return cls(Background.from_table(table) for table in tables)

    def __repr__(self) -> str:
        return f"BackgroundList({list.__repr__(self)})"
