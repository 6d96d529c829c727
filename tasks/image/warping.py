"""Resampling exposures onto another pixel grid: Lanczos / bilinear warping with flux conservation.

`warp_exposure` follows ``lsst.afw.math.warpExposure``: the position in the input image of every output pixel
is computed exactly (through the two celestial WCSs) on a coarse grid every ``interp_length`` output pixels and
bilinearly interpolated in between (afw's ``interpLength``); the image is resampled with a separable kernel
(Lanczos of order 3 by default, or bilinear) evaluated in input pixel coordinates, multiplied by the ratio of
output to input pixel area (the local Jacobian determinant) so that fluxes are conserved; the variance is
resampled with the squared kernel weights and the squared area ratio; the mask is the OR of the input masks
under the central 2 x 2 pixels of the kernel (the bilinear footprint, afw's default
``maskWarpingKernelName="bilinear"``); the PSF is transformed to the output frame (`warp_psf`).

Everything is vectorised: the kernel taps of a block of output pixels are gathered at once from an
interleaved (image, variance) copy of the input through a strided "window" view, and the kernel weights come
from a precomputed table of 4096 sub-pixel phases (positions rounded to 1/4096 pixel).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from ..errors import WarpingError
from .exposure import Exposure
from .geom import Box2I
from .mask import Mask
from .masked_image import MaskedImage
from .psf import PcaPsf, Psf

if TYPE_CHECKING:
    from astropy.wcs import WCS

__all__ = ["PixelMapping", "WARPING_KERNELS", "resample_kernel_image", "warp_exposure", "warp_psf"]

#: Supported warping kernels and their half-widths ``a`` [input pixels]: ``2 a`` taps per axis.
WARPING_KERNELS: dict[str, int] = {"lanczos3": 3, "bilinear": 1}

_PHASE_BITS = 12
_N_PHASES = 1 << _PHASE_BITS  # sub-pixel phases of the kernel weight table (4096)
_MIN_PSF_GRID = 4  # fewest PSF grid points per axis
_BLOCK_PIXELS = 8192  # output pixels gathered per block (keeps the taps in cache)


# Kernel weights -------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _weight_table(kernel: str) -> np.ndarray:
    """Normalised kernel weights of the ``2a`` taps for ``_N_PHASES`` sub-pixel phases.

    Row ``p`` holds the weights of taps ``ix - a + 1 .. ix + a`` for a source position ``ix + p / _N_PHASES``
    (``ix`` its floor), normalised to unit sum (as afw normalises its warping kernels), float32.
    """
    a = WARPING_KERNELS[kernel]
    phase = np.arange(_N_PHASES, dtype=np.float64) / _N_PHASES
    offsets = np.arange(-a + 1, a + 1, dtype=np.float64)
    d = phase[:, None] - offsets[None, :]  # distance from each tap to the source position
    if kernel == "bilinear":
        weights = np.clip(1.0 - np.abs(d), 0.0, None)
    else:
        weights = np.sinc(d) * np.sinc(d / a)
        weights[np.abs(d) >= a] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


# Pixel mapping --------------------------------------------------------------------------------------------


class PixelMapping:
    """The exact map from output parent pixel coordinates to input parent pixel coordinates.

    Parameters
    ----------
    in_wcs, out_wcs : `astropy.wcs.WCS`
        Celestial WCSs of the input and output images (0-based parent pixel coordinates).  Different
        celestial frames (ICRS, FK5...) are converted through `astropy.coordinates.SkyCoord`.
    """

    def __init__(self, in_wcs: WCS, out_wcs: WCS) -> None:
        for name, w in (("input", in_wcs), ("output", out_wcs)):
            if w is None or not getattr(w, "has_celestial", False):
                raise WarpingError(f"the {name} WCS is missing or not celestial: cannot warp without sky coordinates.")
        self.in_wcs = in_wcs
        self.out_wcs = out_wcs

    def __call__(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Input pixel coordinates (x_in, y_in) of output pixel coordinates (x, y); arrays of any shape.

        Points that do not project (e.g. beyond the tangent-plane horizon) give NaN.
        """
        x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        sky = self.out_wcs.pixel_to_world(x.ravel(), y.ravel())
        with np.errstate(invalid="ignore"):
            xin, yin = self.in_wcs.world_to_pixel(sky)
        return np.asarray(xin, dtype=float).reshape(x.shape), np.asarray(yin, dtype=float).reshape(x.shape)

    def inverse(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Output pixel coordinates of input pixel coordinates (the inverse map)."""
        x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        sky = self.in_wcs.pixel_to_world(x.ravel(), y.ravel())
        with np.errstate(invalid="ignore"):
            xo, yo = self.out_wcs.world_to_pixel(sky)
        return np.asarray(xo, dtype=float).reshape(x.shape), np.asarray(yo, dtype=float).reshape(x.shape)

    def jacobian(self, x: Any, y: Any, *, step: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Input positions and Jacobian ``d(x_in, y_in) / d(x, y)`` at output positions (centred differences).

        Returns
        -------
        xin, yin : `numpy.ndarray`, shape S
            Input pixel coordinates of the points.
        jac : `numpy.ndarray`, shape S + (2, 2)
            ``[[dxin/dx, dxin/dy], [dyin/dx, dyin/dy]]``.
        """
        x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        xs = np.stack([x, x + step, x - step, x, x])
        ys = np.stack([y, y, y, y + step, y - step])
        xin, yin = self(xs, ys)
        jac = np.empty(x.shape + (2, 2))
        jac[..., 0, 0] = (xin[1] - xin[2]) / (2 * step)
        jac[..., 1, 0] = (yin[1] - yin[2]) / (2 * step)
        jac[..., 0, 1] = (xin[3] - xin[4]) / (2 * step)
        jac[..., 1, 1] = (yin[3] - yin[4]) / (2 * step)
        return xin[0], yin[0], jac


def _covered_box(mapping: PixelMapping, in_bbox: Box2I, out_bbox: Box2I) -> Box2I:
    """The part of ``out_bbox`` inside the bounding box of the input's outline mapped to the output.

    The input's pixel-edge outline is sampled every 16 pixels; the result is grown by 2 pixels.
    """
    x0, x1 = in_bbox.x0 - 0.5, in_bbox.x1 - 0.5
    y0, y1 = in_bbox.y0 - 0.5, in_bbox.y1 - 0.5
    nx = max(2, int(math.ceil(in_bbox.width / 16)) + 1)
    ny = max(2, int(math.ceil(in_bbox.height / 16)) + 1)
    ex = np.linspace(x0, x1, nx)
    ey = np.linspace(y0, y1, ny)
    px = np.concatenate([ex, ex, np.full(ny, x0), np.full(ny, x1)])
    py = np.concatenate([np.full(nx, y0), np.full(nx, y1), ey, ey])
    xo, yo = mapping.inverse(px, py)
    good = np.isfinite(xo) & np.isfinite(yo)
    if not good.any():
        return Box2I(out_bbox.x0, out_bbox.y0, 0, 0)
    box = Box2I.from_corners(
        int(math.floor(xo[good].min())) - 2,
        int(math.floor(yo[good].min())) - 2,
        int(math.ceil(xo[good].max())) + 2,
        int(math.ceil(yo[good].max())) + 2,
    )
    return box.intersection(out_bbox)


def _grid_axis(start: int, length: int, step: int) -> np.ndarray:
    """Grid coordinates ``start, start + step, ...`` reaching at least ``start + length - 1``."""
    n_cells = max(1, int(math.ceil((length - 1) / step)))
    return start + step * np.arange(n_cells + 1, dtype=float)


def _interp_axis(values: np.ndarray, n: int, step: int) -> np.ndarray:
    """Linearly interpolate grid values (..., n_grid) every ``step`` pixels to ``n`` pixels (..., n)."""
    # The last grid cell also holds its end point (length - 1 a multiple of ``step``): t = 1 there.
    k = np.minimum(np.arange(n) // step, values.shape[-1] - 2)
    t = (np.arange(n) - k * step) / step
    lo = values[..., k]
    return lo + (values[..., k + 1] - lo) * t


# Warping --------------------------------------------------------------------------------------------------


def _window_view(array: np.ndarray, n_taps: int) -> np.ndarray:
    """A strided view ``win[base]`` -> the ``n_taps`` x ``n_taps`` block at flat index ``base`` of ``array``.

    ``array`` is C-contiguous of shape (H, W, c) (c interleaved planes); the result has shape
    (n_base, n_taps) and a void dtype holding ``n_taps * c`` elements (one block row), so that fancy indexing
    gathers whole block rows with one copy each.
    """
    h, w = array.shape[:2]
    item = array.strides[1]
    n_base = (h - n_taps) * w + (w - n_taps) + 1
    return np.ndarray(
        shape=(n_base, n_taps),
        dtype=np.dtype(f"V{n_taps * item}"),
        buffer=array,
        strides=(item, w * item),
    )


def _resample_block(
    sx: np.ndarray,
    sy: np.ndarray,
    area: np.ndarray,
    data_win: np.ndarray,
    mask_win: np.ndarray,
    shape: tuple[int, int],
    kernel: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resample one block of output pixels at input array positions (sx, sy), all shape (n,).

    Returns image, variance (float32, NaN where invalid), mask bits (int32) and the valid flags.
    """
    a = WARPING_KERNELS[kernel]
    n_taps = 2 * a
    h, w = shape
    table = _weight_table(kernel)
    # Positions in units of 1 / _N_PHASES pixel: integer part = the tap below, remainder = the table row.
    with np.errstate(invalid="ignore"):
        qx = np.rint(sx * _N_PHASES)
        qy = np.rint(sy * _N_PHASES)
        valid = (qx >= (a - 1) * _N_PHASES) & (qx < (w - a) * _N_PHASES) & (qy >= (a - 1) * _N_PHASES) & (
            qy < (h - a) * _N_PHASES
        )
    qx = np.where(valid, qx, (a - 1) * _N_PHASES).astype(np.int64)
    qy = np.where(valid, qy, (a - 1) * _N_PHASES).astype(np.int64)
    ix = (qx >> _PHASE_BITS).astype(np.intp)
    iy = (qy >> _PHASE_BITS).astype(np.intp)
    wx = table[qx & (_N_PHASES - 1)]
    wy = table[qy & (_N_PHASES - 1)]
    base = (iy - (a - 1)) * w + (ix - (a - 1))
    taps = data_win[base].view(np.float32).reshape(-1, n_taps, n_taps, 2)
    # Separable sums: over the taps of each row (x weights), then over the rows (y weights).
    image = np.einsum("nj,nj->n", np.einsum("nji,ni->nj", taps[..., 0], wx), wy)
    variance = np.einsum("nj,nj->n", np.einsum("nji,ni->nj", taps[..., 1], wx * wx), wy * wy)
    area32 = area.astype(np.float32)
    image *= area32
    variance *= area32 * area32
    mbase = iy * w + ix
    bits = mask_win[mbase].view(np.int32).reshape(-1, 4)
    bits = (bits[:, 0] | bits[:, 1]) | (bits[:, 2] | bits[:, 3])
    valid &= np.isfinite(image) & np.isfinite(variance)
    return image, variance, bits, valid


def warp_exposure(
    exposure: Exposure,
    wcs: WCS,
    bbox: Box2I,
    *,
    kernel: str = "lanczos3",
    interp_length: int = 32,
    psf_grid_spacing: int = 256,
) -> Exposure:
    """Resample an exposure onto the pixel grid ``bbox`` of another WCS, conserving flux.

    Parameters
    ----------
    exposure : `Exposure`
        Input exposure with a celestial ``wcs``; any units.  Pixels that are NaN (image or variance) or
        flagged ``NO_DATA`` are treated as missing.
    wcs : `astropy.wcs.WCS`
        Celestial WCS of the output grid (0-based parent pixel coordinates).
    bbox : `Box2I`
        Output pixel box in the parent coordinates of ``wcs``; the output has shape ``bbox.shape`` (ny, nx).
    kernel : `str`, optional
        ``"lanczos3"`` (LSST's default warping kernel, 6 x 6 taps) or ``"bilinear"`` (2 x 2 taps).
    interp_length : `int`, optional
        Spacing [output pixels] of the grid on which the pixel mapping and its Jacobian are computed exactly
        through the WCSs; bilinearly interpolated in between (afw's ``interpLength``); >= 1.
    psf_grid_spacing : `int`, optional
        Spacing [output pixels] of the positions at which the PSF is transformed (see `warp_psf`); >= 1.

    Returns
    -------
    warped : `Exposure`
        Image in the input's units per output pixel: the input resampled at the mapped position times the
        ratio of output to input pixel area (``|det J|``, ``J = d(x_in, y_in) / d(x_out, y_out)``); variance
        resampled with the squared weights times ``det J ** 2``; mask the OR of the input bits under the central
        2 x 2 input pixels, plus ``NO_DATA`` (image and variance NaN) wherever the kernel footprint touches a
        pixel outside the input or a missing input pixel.  Carries ``wcs``, the input's ``photo_calib``,
        ``visit_info``, ``filter`` and a copy of its metadata, ``detector=None``, and ``psf`` = the input PSF
        transformed to the output frame (`warp_psf`; None without an input PSF or without coverage).

    Raises
    ------
    WarpingError
        If the kernel name is unknown, ``interp_length`` or ``psf_grid_spacing`` is < 1, a WCS is missing or
        not celestial, or the input is smaller than the kernel.

    Notes
    -----
    Algorithm of ``lsst.afw.math.warpExposure`` (Lanczos kernel: Duchon 1979, J. Appl. Meteor. 18, 1016);
    the mapping error of the interpolation is ``~ interp_length**2 / 8`` times the second derivative of the
    mapping (< 1e-4 pixel for tangent-plane WCSs of a few arcminutes).  Only the part of ``bbox`` the input
    outline maps onto is resampled; the rest is ``NO_DATA``.
    """
    if kernel not in WARPING_KERNELS:
        raise WarpingError(f"unknown warping kernel {kernel!r}; choose one of {', '.join(WARPING_KERNELS)}.")
    if int(interp_length) < 1:
        raise WarpingError(f"interp_length must be >= 1 output pixel, got {interp_length}.")
    if int(psf_grid_spacing) < 1:
        raise WarpingError(f"psf_grid_spacing must be >= 1 output pixel, got {psf_grid_spacing}.")
    interp_length = int(interp_length)
    mapping = PixelMapping(exposure.wcs, wcs)
    a = WARPING_KERNELS[kernel]
    in_bbox = exposure.bbox
    if in_bbox.width < 2 * a or in_bbox.height < 2 * a:
        raise WarpingError(f"the input exposure {in_bbox} is smaller than the {kernel} kernel ({2 * a} x {2 * a}).")

    in_mask = exposure.mask
    planes = dict(in_mask.planes)
    out_mask = Mask(bbox.shape, planes, xy0=bbox.xy0)
    no_data = np.int32(1 << out_mask.add_plane("NO_DATA"))
    out_image = np.full(bbox.shape, np.nan, dtype=np.float32)
    out_var = np.full(bbox.shape, np.nan, dtype=np.float32)
    out_mask.array[...] = no_data

    sub = _covered_box(mapping, in_bbox, bbox)
    if not sub.is_empty:
        _warp_pixels(exposure, mapping, sub, bbox, kernel, interp_length, out_image, out_var, out_mask.array, no_data)

    warped = Exposure(
        MaskedImage(out_image, out_mask, out_var, xy0=bbox.xy0),
        wcs=wcs,
        photo_calib=exposure.photo_calib,
        visit_info=exposure.visit_info,
        filter=exposure.filter,
        detector=None,
        metadata=exposure.metadata.copy(),
    )
    if exposure.psf is not None and not sub.is_empty:
        valid = ~np.isnan(out_image)
        warped.psf = warp_psf(exposure.psf, mapping, in_bbox, sub, grid_spacing=psf_grid_spacing,
                              valid=valid[sub.slices(bbox)])
    return warped


def _warp_pixels(
    exposure: Exposure,
    mapping: PixelMapping,
    sub: Box2I,
    bbox: Box2I,
    kernel: str,
    interp_length: int,
    out_image: np.ndarray,
    out_var: np.ndarray,
    out_mask: np.ndarray,
    no_data: np.int32,
) -> None:
    """Fill the pixels of ``sub`` (a part of ``bbox``) of the output planes in place."""
    a = WARPING_KERNELS[kernel]
    in_bbox = exposure.bbox
    h, w = in_bbox.shape
    # Interleaved (image, variance) copy with missing pixels as NaN: any tap on one gives NaN.
    data = np.empty((h, w, 2), dtype=np.float32)
    data[..., 0] = exposure.image
    data[..., 1] = exposure.variance
    if "NO_DATA" in exposure.mask.planes:
        missing = exposure.mask.get_plane("NO_DATA")
        if missing.any():
            data[missing] = np.nan
    data_win = _window_view(data, 2 * a)
    mask_arr = np.ascontiguousarray(exposure.mask.array)[..., None]
    mask_win = _window_view(mask_arr, 2)

    # Exact mapping (and area ratio) on the coarse grid, relative to the input array origin.
    gx = _grid_axis(sub.x0, sub.width, interp_length)
    gy = _grid_axis(sub.y0, sub.height, interp_length)
    gxx, gyy = np.meshgrid(gx, gy)
    sx_g, sy_g, jac = mapping.jacobian(gxx, gyy)
    sx_g -= in_bbox.x0
    sy_g -= in_bbox.y0
    area_g = np.abs(np.linalg.det(jac))

    # Grid cells whose corners come near the input: only those are resampled.
    margin = interp_length * float(np.nanmax(np.sqrt(np.abs(area_g)))) * 1.5 + a + 2
    with np.errstate(invalid="ignore"):
        near = (sx_g > -margin) & (sx_g < w + margin) & (sy_g > -margin) & (sy_g < h + margin)
    cell_near = near[:-1, :-1] | near[1:, :-1] | near[:-1, 1:] | near[1:, 1:]

    # Interpolate along x once per grid row (bilinear = separable), then along y row by row.
    nx = sub.width
    rows_x = _interp_axis(np.stack([sx_g, sy_g, area_g]), nx, interp_length)  # (3, n_gy, nx)
    sub_slices = sub.slices(bbox)
    img_sub = out_image[sub_slices]
    var_sub = out_var[sub_slices]
    msk_sub = out_mask[sub_slices]
    for ky in range(len(gy) - 1):
        cells = np.flatnonzero(cell_near[ky])
        if cells.size == 0:
            continue
        c0 = int(cells[0]) * interp_length
        c1 = min(nx, (int(cells[-1]) + 1) * interp_length + 1)
        r0 = ky * interp_length
        # The last grid row ends the box: it also takes the row on the last grid line.
        r1 = sub.height if ky == len(gy) - 2 else min(sub.height, r0 + interp_length)
        if r1 <= r0:
            continue
        lo = rows_x[:, ky, c0:c1]
        hi = rows_x[:, ky + 1, c0:c1]
        ncols = c1 - c0
        step = max(1, _BLOCK_PIXELS // ncols)
        for b0 in range(r0, r1, step):
            b1 = min(r1, b0 + step)
            t = ((np.arange(b0, b1) - r0) / interp_length)[:, None]
            sx = (lo[0] + (hi[0] - lo[0]) * t).ravel()
            sy = (lo[1] + (hi[1] - lo[1]) * t).ravel()
            area = (lo[2] + (hi[2] - lo[2]) * t).ravel()
            image, variance, bits, valid = _resample_block(sx, sy, area, data_win, mask_win, (h, w), kernel)
            image[~valid] = np.nan
            variance[~valid] = np.nan
            bits = np.where(valid, bits, bits | no_data)
            shape = (b1 - b0, ncols)
            img_sub[b0:b1, c0:c1] = image.reshape(shape)
            var_sub[b0:b1, c0:c1] = variance.reshape(shape)
            msk_sub[b0:b1, c0:c1] = bits.reshape(shape)


# PSFs -----------------------------------------------------------------------------------------------------


def resample_kernel_image(kernel: np.ndarray, jacobian: np.ndarray, *, half_size: int | None = None) -> np.ndarray:
    """Transform a centred PSF kernel image by a local affine map.

    Parameters
    ----------
    kernel : `numpy.ndarray`, shape (h, w)
        Input kernel image, odd-sized, centred on its central pixel (input pixel units).
    jacobian : `numpy.ndarray`, shape (2, 2)
        ``d(x_in, y_in) / d(x_out, y_out)`` at the kernel's position.
    half_size : `int`, optional
        Half-width of the square output kernel [output pixels]; default the input half-width scaled by the
        largest stretch of the inverse map (``||J^-1||_2``), at least 1.

    Returns
    -------
    resampled : `numpy.ndarray`, shape (2 half_size + 1, 2 half_size + 1), float64
        ``K_out(u) = K_in(J u)`` sampled by a cubic B-spline interpolant (`scipy.ndimage.map_coordinates`),
        normalised to unit sum.

    Raises
    ------
    WarpingError
        If the Jacobian is singular or the resampled kernel sums to <= 0.
    """
    kernel = np.asarray(kernel, dtype=float)
    jacobian = np.asarray(jacobian, dtype=float)
    if not abs(np.linalg.det(jacobian)) > 0:
        raise WarpingError(f"singular pixel-mapping Jacobian {jacobian.tolist()}: cannot transform the PSF.")
    h, w = kernel.shape
    if half_size is None:
        stretch = float(np.linalg.norm(np.linalg.inv(jacobian), 2))
        half_size = max(1, int(math.ceil(max(h, w) // 2 * stretch)))
    u = np.arange(-half_size, half_size + 1, dtype=float)
    uu, vv = np.meshgrid(u, u)
    xin = jacobian[0, 0] * uu + jacobian[0, 1] * vv + w // 2
    yin = jacobian[1, 0] * uu + jacobian[1, 1] * vv + h // 2
    out = ndimage.map_coordinates(kernel, [yin.ravel(), xin.ravel()], order=3, mode="constant", cval=0.0)
    out = out.reshape(uu.shape)
    total = out.sum()
    if not total > 0:
        raise WarpingError("the resampled PSF kernel sums to <= 0: cannot normalise it.")
    return out / total


def warp_psf(
    psf: Psf,
    mapping: PixelMapping,
    in_bbox: Box2I,
    out_bbox: Box2I,
    *,
    grid_spacing: int = 256,
    valid: np.ndarray | None = None,
    n_components: int = 3,
    degree: int = 2,
) -> PcaPsf | None:
    """The PSF of a warped image: the input PSF transformed to the output frame on a grid, as a `PcaPsf`.

    Parameters
    ----------
    psf : `Psf`
        PSF of the input image (input parent pixel coordinates).
    mapping : `PixelMapping`
        Output -> input pixel map.
    in_bbox : `Box2I`
        Input image box: grid points mapping outside it are not used.
    out_bbox : `Box2I`
        Output box covered by the model (its Chebyshev domain); the grid is laid over it.
    grid_spacing : `int`, optional
        Spacing of the grid [output pixels]; one point at the centre of each cell of a
        ``ceil(width / spacing)`` x ``ceil(height / spacing)`` tiling, at least 4 x 4 (so that a degree-2
        spatial variation is constrained on small boxes).
    valid : `numpy.ndarray` of bool, shape ``out_bbox.shape``, optional
        Output pixels with data; grid points on invalid pixels are skipped, and when no grid point is left the
        centroid of the valid pixels is used.
    n_components, degree : `int`, optional
        Passed to `PcaPsf.fit`.

    Returns
    -------
    psf : `PcaPsf` or None
        None when no point of the output is covered by the input.
    """
    nx = max(_MIN_PSF_GRID, int(math.ceil(out_bbox.width / grid_spacing)))
    ny = max(_MIN_PSF_GRID, int(math.ceil(out_bbox.height / grid_spacing)))
    xs = out_bbox.x0 - 0.5 + (np.arange(nx) + 0.5) * out_bbox.width / nx
    ys = out_bbox.y0 - 0.5 + (np.arange(ny) + 0.5) * out_bbox.height / ny
    gx, gy = (g.ravel() for g in np.meshgrid(xs, ys))
    xin, yin, jac = mapping.jacobian(gx, gy)
    with np.errstate(invalid="ignore"):
        keep = in_bbox.contains_point(xin, yin) & np.isfinite(xin) & np.isfinite(yin)
    if valid is not None:
        ix = np.clip(np.round(gx).astype(int) - out_bbox.x0, 0, out_bbox.width - 1)
        iy = np.clip(np.round(gy).astype(int) - out_bbox.y0, 0, out_bbox.height - 1)
        keep &= valid[iy, ix]
    if not keep.any():
        if valid is None or not valid.any():
            return None
        yy, xx = np.nonzero(valid)
        gx = np.array([xx.mean() + out_bbox.x0])
        gy = np.array([yy.mean() + out_bbox.y0])
        xin, yin, jac = mapping.jacobian(gx, gy)
        keep = np.isfinite(xin) & np.isfinite(yin)
        if not keep.any():
            return None
    gx, gy, xin, yin, jac = gx[keep], gy[keep], xin[keep], yin[keep], jac[keep]
    kernels = [psf.compute_kernel_image(float(x), float(y)) for x, y in zip(xin, yin)]
    half_in = max(max(k.shape) // 2 for k in kernels)
    stretch = max(float(np.linalg.norm(np.linalg.inv(j), 2)) for j in jac)
    half = max(1, int(math.ceil(half_in * stretch)))
    stamps = np.stack([resample_kernel_image(k, j, half_size=half) for k, j in zip(kernels, jac)])
    return PcaPsf.fit(stamps, gx, gy, out_bbox, n_components=n_components, degree=degree)
