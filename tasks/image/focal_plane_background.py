"""Sky backgrounds over a whole focal plane: `FocalPlaneBackground`.

A `FocalPlaneBackground` divides the focal plane of a camera into rectangular *superpixels* of ``xSize`` x
``ySize`` mm and accumulates in each, over any number of detectors of one visit, the count-weighted mean of
binned, sigma-clipped statistics of the detectors' unmasked pixels:

1. `FocalPlaneBackground.addCcd`: each detector is binned into ``binning`` x ``binning`` pixel bins (a
   clipped mean of the pixels without a ``mask`` plane, `tasks.background.fit_background_fast`); each bin's
   centre is mapped to the focal plane (`Detector.pixels_to_focal_plane`, so any detector position and yaw
   work) and the bin is added to the superpixel containing it with a weight equal to its number of pixels
   (``np.bincount``).
2. `FocalPlaneBackground.getStatsImage`: the superpixel means; superpixels whose usable pixels cover less
   than ``minFrac`` of their area are holes (NaN).
3. The model: the superpixel means located at the superpixel centres, holes filled from the valid
   superpixels (linear interpolation inside their hull, linear extrapolation outside), interpolated
   (``interpolation``: tensor-product linear or cubic not-a-knot splines, extrapolated beyond the outer
   centres) at any focal-plane position (`FocalPlaneBackground.evaluate`).
4. `FocalPlaneBackground.toCcdBackground`: the model sampled at the centres of a ``binning``-pixel grid over
   a detector, as a `Background` (cubic spline).  Adjacent detectors sample one continuous focal-plane
   function, so the model has no step at detector edges.

A superpixel only partly covered by detectors (at the edge of the focal plane, across a gap between
detectors) would place its mean at the centroid of its pixels rather than at its centre, and bias a
gradient by (centroid offset x gradient): the means are therefore shifted to the superpixel centres with
the gradient measured from the neighbouring superpixels (`FocalPlaneBackground.getModelImage`).

This is the role of ``lsst.pipe.drivers.background.FocalPlaneBackground`` (Sky correction, Bosch et al. 2018,
PASJ 70, S5, sec. 3.3), written anew with numpy: statistics first per detector bin, then per superpixel.
Values are in the image's units (counts for calexps).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.interpolate import griddata, make_interp_spline
from scipy.spatial import QhullError

from graph import Config, Field

from ..errors import FocalPlaneBackgroundError, NoUsableBinsError
from .background import Background, _bin_centers
from .camera import Camera, Detector
from .exposure import Exposure
from .geom import Box2I

__all__ = ["FocalPlaneBackground", "FocalPlaneBackgroundConfig"]

DEFAULT_MASK_PLANES = ["BAD", "SAT", "INTRP", "DETECTED", "DETECTED_NEGATIVE", "EDGE", "NO_DATA", "CR", "SUSPECT"]


class FocalPlaneBackgroundConfig(Config):
    """Configuration of a `FocalPlaneBackground` (names as in ``lsst.pipe.drivers.background``)."""

    xSize: float = Field(
        5.12, gt=0, description="Superpixel size along the focal-plane x axis [mm]; 5.12 mm is half a SimCam "
        "detector (512 pixels of 10 microns)."
    )
    ySize: float = Field(5.12, gt=0, description="Superpixel size along the focal-plane y axis [mm].")
    minFrac: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Minimum fraction of a superpixel's area covered by usable pixels for it to be used; "
        "others are filled from their neighbours.",
    )
    mask: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MASK_PLANES),
        description="Mask planes whose pixels are ignored; planes an exposure does not define are skipped.",
    )
    interpolation: Literal["linear", "cubic"] = Field(
        "cubic",
        description="Interpolation of the superpixel values at a focal-plane position: tensor-product linear "
        "or cubic (not-a-knot) splines through the superpixel centres, extrapolated beyond the outer ones.",
    )
    binning: int = Field(
        64,
        ge=1,
        description="Side of the square pixel bins of the per-detector statistics and of the Background "
        "that toCcdBackground returns [pixels].",
    )
    statistic: Literal["meanclip", "median"] = Field(
        "meanclip", description="Statistic of each bin's unmasked pixels after sigma clipping."
    )
    clip: float = Field(3.0, gt=0, description="Clipping threshold of the bin statistics [standard deviations].")
    nIter: int = Field(3, ge=1, le=20, description="Number of clipping passes of the bin statistics.")


class FocalPlaneBackground:
    """Binned background statistics over a focal plane and their interpolated model (see the module docstring).

    Parameters
    ----------
    config : `FocalPlaneBackgroundConfig`
        Superpixel size, statistics and interpolation settings.
    origin : `tuple` [`float`, `float`]
        Focal-plane position (x, y) [mm] of the lower-left corner of superpixel (0, 0).
    shape : `tuple` [`int`, `int`]
        Superpixel grid shape (ny, nx); superpixel (iy, ix) covers
        ``[x0 + ix xSize, x0 + (ix + 1) xSize) x [y0 + iy ySize, y0 + (iy + 1) ySize)``.

    Raises
    ------
    FocalPlaneBackgroundError
        If the grid shape is not positive.

    Notes
    -----
    Most users build one with `fromCamera`.  The accumulators are count-weighted sums, so backgrounds of the
    same grid built from different detectors can be combined with `merge`.
    """

    def __init__(self, config: FocalPlaneBackgroundConfig, origin: tuple[float, float], shape: tuple[int, int]) -> None:
        ny, nx = (int(v) for v in shape)
        if ny < 1 or nx < 1:
            raise FocalPlaneBackgroundError(f"a FocalPlaneBackground needs a superpixel grid of >= 1x1, got {shape}.")
        self.config = config
        self.origin = (float(origin[0]), float(origin[1]))
        self.shape = (ny, nx)
        # Per superpixel: pixels n, sum n * value, sum n * focal-plane x and y [mm], covered area [mm^2].
        self._n = np.zeros(self.shape)
        self._sum = np.zeros(self.shape)
        self._sum_x = np.zeros(self.shape)
        self._sum_y = np.zeros(self.shape)
        self._area = np.zeros(self.shape)
        # Per detector: (usable pixels, pixels).
        self._detector_pixels: dict[int, tuple[float, float]] = {}

    @classmethod
    def fromCamera(cls, config: FocalPlaneBackgroundConfig, camera: Camera) -> FocalPlaneBackground:  # noqa: N802
        """A background whose superpixel grid covers every detector of a camera.

        The grid has ``ceil(extent / size)`` superpixels along each axis, centred on the box enclosing every
        detector's focal-plane corners, so partly covered superpixels are shared evenly by both edges.

        Parameters
        ----------
        config : `FocalPlaneBackgroundConfig`
            Settings; ``xSize`` and ``ySize`` give the superpixel size [mm].
        camera : `Camera`
            The camera (`tasks.instruments.get_instrument(name).camera`).

        Raises
        ------
        FocalPlaneBackgroundError
            If the camera has no detector.
        """
        if len(camera) == 0:
            raise FocalPlaneBackgroundError(f"camera {camera.name!r} has no detector to build a focal plane from.")
        corners = np.concatenate([detector.focal_plane_corners() for detector in camera])
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        sizes = np.array([config.xSize, config.ySize])
        n = np.maximum(np.ceil((hi - lo) / sizes - 1e-9).astype(int), 1)
        origin = 0.5 * (lo + hi) - 0.5 * n * sizes
        return cls(config, (float(origin[0]), float(origin[1])), (int(n[1]), int(n[0])))

    # ------------------------------------------------------------------ geometry
    def superpixelCenters(self) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802
        """Focal-plane centres ``(y (ny,), x (nx,))`` [mm] of the superpixel rows and columns."""
        ny, nx = self.shape
        return (
            self.origin[1] + (np.arange(ny) + 0.5) * self.config.ySize,
            self.origin[0] + (np.arange(nx) + 0.5) * self.config.xSize,
        )

    def _same_grid(self, other: FocalPlaneBackground) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.origin, other.origin)
            and math.isclose(self.config.xSize, other.config.xSize)
            and math.isclose(self.config.ySize, other.config.ySize)
        )

    # ------------------------------------------------------------------ accumulation
    def addCcd(self, exposure: Exposure) -> None:  # noqa: N802
        """Add the binned statistics of one detector's unmasked pixels.

        Parameters
        ----------
        exposure : `Exposure`
            The detector's exposure [image units, e.g. counts], with ``exposure.detector`` set; parent pixel
            coordinates are the detector's pixel coordinates.  Pixels with a ``config.mask`` plane or NaN are
            ignored.  Not modified.

        Raises
        ------
        FocalPlaneBackgroundError
            If the exposure has no detector.

        Notes
        -----
        A detector with fewer than 4 usable bins contributes nothing (its `coverage` is 0).
        """
        from ..background import fit_background_fast  # tasks.background imports tasks.image

        detector = exposure.detector
        if detector is None:
            raise FocalPlaneBackgroundError(
                "FocalPlaneBackground.addCcd needs exposure.detector to map pixels to the focal plane; set it from "
                "the instrument's camera (get_instrument(name).camera[detector_id])."
            )
        config = self.config
        try:
            stats, _ = fit_background_fast(
                exposure.masked_image,
                bin_size=config.binning,
                bad_mask_planes=tuple(config.mask),
                statistic=config.statistic,
                clip=config.clip,
                n_iter=config.nIter,
            )
        except NoUsableBinsError:
            self._record(detector, 0.0, exposure.bbox.area)
            return
        self.addBackground(detector, stats, n_pixels=exposure.bbox.area)

    def addBackground(self, detector: Detector, background: Background, *, n_pixels: float | None = None) -> None:  # noqa: N802
        """Add already binned statistics of a detector (e.g. a sky frame) weighted by their pixel counts.

        Parameters
        ----------
        detector : `Detector`
            The detector the background's pixel coordinates belong to.
        background : `Background`
            Bin values [image units] located at the bin centres; bins are weighted by ``background.counts``
            (bins with count 0, i.e. filled from neighbours, are ignored), or by their areas when it has no
            counts.
        n_pixels : `float`, optional
            Number of pixels of the detector, for `coverage`; default the background's bbox area.
        """
        yc, xc = background.bin_centers()
        if background.counts is None:
            bin_h = np.diff(np.minimum(background.bbox.y0 + np.arange(len(yc) + 1) * background.bin_size[0],
                                       background.bbox.y1))
            bin_w = np.diff(np.minimum(background.bbox.x0 + np.arange(len(xc) + 1) * background.bin_size[1],
                                       background.bbox.x1))
            counts = np.outer(bin_h, bin_w).astype(np.float64)
        else:
            counts = np.asarray(background.counts, dtype=np.float64)
        values = background.values
        use = (counts > 0) & np.isfinite(values)
        fx, fy = detector.pixels_to_focal_plane(*np.meshgrid(xc, yc))
        fx, fy, n, v = fx[use], fy[use], counts[use], values[use]
        ix = np.floor((fx - self.origin[0]) / self.config.xSize).astype(np.int64)
        iy = np.floor((fy - self.origin[1]) / self.config.ySize).astype(np.int64)
        ny, nx = self.shape
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        index = (iy * nx + ix)[inside]
        n, v, fx, fy = n[inside], v[inside], fx[inside], fy[inside]
        size = ny * nx
        self._n += np.bincount(index, weights=n, minlength=size).reshape(self.shape)
        self._sum += np.bincount(index, weights=n * v, minlength=size).reshape(self.shape)
        self._sum_x += np.bincount(index, weights=n * fx, minlength=size).reshape(self.shape)
        self._sum_y += np.bincount(index, weights=n * fy, minlength=size).reshape(self.shape)
        self._area += np.bincount(index, weights=n * detector.pixel_size**2, minlength=size).reshape(self.shape)
        self._record(detector, float(n.sum()), background.bbox.area if n_pixels is None else float(n_pixels))

    def _record(self, detector: Detector, used: float, total: float) -> None:
        old_used, old_total = self._detector_pixels.get(detector.id, (0.0, 0.0))
        self._detector_pixels[detector.id] = (old_used + used, old_total + total)

    def merge(self, other: FocalPlaneBackground) -> FocalPlaneBackground:
        """Add the statistics of another background of the same superpixel grid to this one.

        Returns
        -------
        self : `FocalPlaneBackground`

        Raises
        ------
        FocalPlaneBackgroundError
            If the grids (origin, shape, superpixel size) differ.
        """
        if not self._same_grid(other):
            raise FocalPlaneBackgroundError(
                f"cannot merge a FocalPlaneBackground of {other.shape} superpixels of "
                f"{other.config.xSize}x{other.config.ySize} mm at {other.origin} into one of {self.shape} of "
                f"{self.config.xSize}x{self.config.ySize} mm at {self.origin}; build both with fromCamera and one config."
            )
        for name in ("_n", "_sum", "_sum_x", "_sum_y", "_area"):
            getattr(self, name)[...] += getattr(other, name)
        for detector_id, (used, total) in other._detector_pixels.items():
            old_used, old_total = self._detector_pixels.get(detector_id, (0.0, 0.0))
            self._detector_pixels[detector_id] = (old_used + used, old_total + total)
        return self

    # ------------------------------------------------------------------ statistics
    @property
    def coverage(self) -> dict[int, float]:
        """Per detector id, the fraction of its pixels used (unmasked, unclipped, in usable bins)."""
        return {k: (used / total if total > 0 else 0.0) for k, (used, total) in self._detector_pixels.items()}

    @property
    def counts(self) -> np.ndarray:
        """Pixels used per superpixel, shape (ny, nx)."""
        return self._n.copy()

    def coveredFraction(self) -> np.ndarray:  # noqa: N802
        """Fraction of each superpixel's area covered by usable pixels, shape (ny, nx)."""
        return self._area / (self.config.xSize * self.config.ySize)

    def _valid(self) -> np.ndarray:
        return (self._n > 0) & (self.coveredFraction() >= self.config.minFrac)

    def getStatsImage(self) -> np.ndarray:  # noqa: N802
        """Superpixel means [image units], shape (ny, nx), float64; NaN where coverage < ``minFrac``."""
        valid = self._valid()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(valid, self._sum / self._n, np.nan)

    def skyLevel(self) -> float:  # noqa: N802
        """Median of the valid superpixel means [image units].

        Raises
        ------
        FocalPlaneBackgroundError
            If no superpixel is valid.
        """
        stats = self.getStatsImage()
        if not np.isfinite(stats).any():
            raise self._no_data_error()
        return float(np.nanmedian(stats))

    def _no_data_error(self) -> FocalPlaneBackgroundError:
        return FocalPlaneBackgroundError(
            f"no superpixel of the {self.shape[0]}x{self.shape[1]} focal-plane grid ({self.config.xSize}x"
            f"{self.config.ySize} mm) has usable pixels covering minFrac={self.config.minFrac} of its area "
            f"(detectors added: {sorted(self._detector_pixels) or 'none'}); add detectors with addCcd, mask fewer "
            "planes, or lower minFrac."
        )

    # ------------------------------------------------------------------ model
    def getModelImage(self) -> np.ndarray:  # noqa: N802
        """The model's values at the superpixel centres [image units], shape (ny, nx), all finite.

        Valid superpixel means are moved from the centroid of their pixels to the superpixel centre with the
        local gradient (a plane through the superpixel and its valid 4-neighbours, located at their centroids);
        holes are then filled by linear interpolation between valid superpixels and, outside their convex hull,
        by linear extrapolation from the nearest valid superpixel with its local gradient (so a plane is
        filled exactly everywhere).

        Raises
        ------
        FocalPlaneBackgroundError
            If no superpixel is valid.
        """
        stats = self.getStatsImage()
        valid = np.isfinite(stats)
        if not valid.any():
            raise self._no_data_error()
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = np.where(valid, self._sum_x / self._n, np.nan)
            cy = np.where(valid, self._sum_y / self._n, np.nan)
        yc, xc = self.superpixelCenters()
        slope_x, slope_y = _gradient(stats, cx, cy)
        corrected = np.where(valid, stats + slope_x * (xc[None, :] - cx) + slope_y * (yc[:, None] - cy), np.nan)
        if valid.all():
            return corrected
        return _fill_holes(corrected, valid, xc, yc, (self.config.ySize, self.config.xSize))

    def evaluate(self, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
        """The model at focal-plane positions.

        Parameters
        ----------
        fx, fy : `numpy.ndarray`
            Focal-plane coordinates [mm] (broadcast together).

        Returns
        -------
        values : `numpy.ndarray`, float64
            The model [image units], broadcast shape of ``fx`` and ``fy``.

        Raises
        ------
        FocalPlaneBackgroundError
            If no superpixel is valid.
        """
        fx, fy = np.broadcast_arrays(np.asarray(fx, dtype=np.float64), np.asarray(fy, dtype=np.float64))
        model = self.getModelImage()
        yc, xc = self.superpixelCenters()
        # Tensor-product spline: interpolate every superpixel row at the points' x, then combine the rows with
        # the (cardinal) interpolation weights of the points' y.
        rows = _spline(xc, model, fx.ravel(), axis=1, method=self.config.interpolation)  # (ny, n_points)
        weights = _spline(yc, np.eye(len(yc)), fy.ravel(), axis=1, method=self.config.interpolation)  # (ny, n)
        return np.einsum("ip,ip->p", rows, weights).reshape(fx.shape)

    def toCcdBackground(self, detector: Detector, bbox: Box2I) -> Background:  # noqa: N802
        """The focal-plane model as a detector `Background`.

        Parameters
        ----------
        detector : `Detector`
            The detector (its focal-plane position and yaw).
        bbox : `Box2I`
            Detector pixel box to cover (normally ``exposure.bbox``).

        Returns
        -------
        background : `Background`
            Bins of ``config.binning`` pixels over ``bbox`` whose values are the model at the bin centres
            [image units], cubic-spline interpolated (``"spline"``); counts are the pixels per bin.

        Raises
        ------
        FocalPlaneBackgroundError
            If no superpixel is valid.
        """
        b = self.config.binning
        yc = _bin_centers(bbox.y0, bbox.height, b)
        xc = _bin_centers(bbox.x0, bbox.width, b)
        fx, fy = detector.pixels_to_focal_plane(*np.meshgrid(xc, yc))
        values = self.evaluate(fx, fy)
        return Background(bbox, b, values, interpolation="spline")

    def __repr__(self) -> str:
        return (
            f"FocalPlaneBackground({self.shape[0]}x{self.shape[1]} superpixels of {self.config.xSize}x"
            f"{self.config.ySize} mm at {self.origin}, valid={int(self._valid().sum())}, "
            f"detectors={sorted(self._detector_pixels)})"
        )


def _gradient(values: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local gradient (d/dx, d/dy) of values located at positions (x, y), from each entry's 4-neighbours.

    Least squares over the valid neighbours ``n`` of ``v_n - v = gx (x_n - x) + gy (y_n - y)`` (central
    differences on a regular grid; exact for a plane with any two non-collinear neighbours).  With neighbours
    along one axis only, the slope along that axis and 0 along the other; 0 without valid neighbours.  NaN
    marks invalid entries of ``values``, ``x`` and ``y``.
    """
    shape = values.shape
    sums = {key: np.zeros(shape) for key in ("xx", "xy", "yy", "xv", "yv")}
    padded = [np.pad(a, 1, constant_values=np.nan) for a in (values, x, y)]
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        window = (slice(1 + dy, 1 + dy + shape[0]), slice(1 + dx, 1 + dx + shape[1]))
        nv, nx, ny = (a[window] - b for a, b in zip(padded, (values, x, y), strict=True))
        use = np.isfinite(nv) & np.isfinite(nx) & np.isfinite(ny)
        nv, nx, ny = (np.where(use, a, 0.0) for a in (nv, nx, ny))
        sums["xx"] += nx * nx
        sums["xy"] += nx * ny
        sums["yy"] += ny * ny
        sums["xv"] += nx * nv
        sums["yv"] += ny * nv
    det = sums["xx"] * sums["yy"] - sums["xy"] ** 2
    scale = np.maximum(sums["xx"] * sums["yy"], 1e-300)
    solvable = det > 1e-9 * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        gx = np.where(solvable, (sums["yy"] * sums["xv"] - sums["xy"] * sums["yv"]) / det,
                      np.where(sums["xx"] > 0, sums["xv"] / sums["xx"], 0.0))
        gy = np.where(solvable, (sums["xx"] * sums["yv"] - sums["xy"] * sums["xv"]) / det,
                      np.where(sums["yy"] > 0, sums["yv"] / sums["yy"], 0.0))
    return np.where(np.isfinite(gx), gx, 0.0), np.where(np.isfinite(gy), gy, 0.0)


def _fill_holes(
    values: np.ndarray, valid: np.ndarray, xc: np.ndarray, yc: np.ndarray, sizes: tuple[float, float]
) -> np.ndarray:
    """Fill the invalid superpixels: linear interpolation inside the hull of the valid ones, linear
    extrapolation from the nearest valid superpixel (with its local gradient) outside."""
    iy, ix = np.nonzero(valid)
    hy, hx = np.nonzero(~valid)
    filled = np.full(len(hy), np.nan)
    if len(iy) >= 3:
        try:
            filled = griddata(
                np.column_stack([yc[iy], xc[ix]]), values[iy, ix], np.column_stack([yc[hy], xc[hx]]), method="linear"
            )
        except QhullError:  # collinear valid superpixels: extrapolate from the nearest below
            pass
    outside = ~np.isfinite(filled)
    if outside.any():
        x_grid = np.broadcast_to(xc[None, :], values.shape)
        y_grid = np.broadcast_to(yc[:, None], values.shape)
        slope_x, slope_y = _gradient(values, np.where(valid, x_grid, np.nan), np.where(valid, y_grid, np.nan))
        _, (ny, nx) = ndimage.distance_transform_edt(~valid, sampling=sizes, return_indices=True)
        ty, tx = hy[outside], hx[outside]
        sy, sx = ny[ty, tx], nx[ty, tx]
        filled[outside] = (
            values[sy, sx] + slope_x[sy, sx] * (xc[tx] - xc[sx]) + slope_y[sy, sx] * (yc[ty] - yc[sy])
        )
    out = values.copy()
    out[hy, hx] = filled
    return out


def _spline(
    centers: np.ndarray, values: np.ndarray, positions: np.ndarray, *, axis: int, method: str
) -> np.ndarray:
    """Interpolate ``values`` (nodes along ``axis`` at ``centers``) at ``positions``; one node: constant."""
    n = len(centers)
    if n == 1:
        return np.repeat(np.take(values, [0], axis=axis), len(positions), axis=axis)
    k = 1 if method == "linear" else min(3, n - 1)
    return make_interp_spline(centers, values, k=k, axis=axis)(positions, extrapolate=True)

