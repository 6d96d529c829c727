"""Convolution of images and masked images by fixed, spatially varying and gridded kernels (FFT).

Every function here computes the true convolution ``out(x) = sum_u K(x; u) in(x - u)`` of an image with a kernel
image centred on its central pixel (`scipy.signal.fftconvolve` orientation), with the pixels outside the image
taken as zero.  A spatially varying kernel is evaluated at the *output* pixel ``x``, as
``lsst.afw.math.convolve`` does.

* `convolve_image` / `convolve_masked_image` take a `Kernel`.  A `LinearCombinationKernel`
  ``K(x; u) = sum_t T_t(x) K_t(u)`` (Chebyshev terms ``T_t`` of its spatial model, ``K_t`` the basis images
  combined with the coefficients of term ``t``) is convolved exactly with one FFT per spatial term, not per basis
  image and not per pixel: ``out = sum_t T_t * (K_t conv in)``.
* `convolve_on_grid` convolves with kernels given at the nodes of a grid and blends the results with bilinear
  (hat) weights, so the kernel varies bilinearly between the nodes: for kernels that have no closed spatial
  form (a model-PSF matching kernel, a decorrelation kernel).
* `convolved_mask` is the mask of a convolved image: every bit ORed over the kernel's support, and
  ``NO_DATA`` where the kernel reaches a missing pixel or beyond the image border.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.polynomial import chebyshev
from scipy import fft as sp_fft
from scipy import signal

from graph import Struct

from ..errors import ImageError
from ._chebyshev import normalize_to_box, term_orders
from .geom import Box2I
from .kernel import FixedKernel, Kernel, LinearCombinationKernel
from .mask import Mask
from .masked_image import MaskedImage

__all__ = [
    "convolve_image",
    "convolve_masked_image",
    "convolve_on_grid",
    "convolved_mask",
    "grid_nodes",
    "kernel_radius",
    "node_weights",
    "or_dilate",
]


def or_dilate(bits: np.ndarray, radius: int) -> np.ndarray:
    """OR of integer mask bits over the (2 radius + 1)^2 square around every pixel (separable, in place-free).

    Parameters
    ----------
    bits : `numpy.ndarray`, shape (h, w), integer
        Mask bits.
    radius : `int`
        Half-width of the square [pixels]; <= 0 returns a copy.
    """
    if radius <= 0:
        return bits.copy()
    out = bits.copy()
    for axis in (1, 0):
        src = out.copy()
        n = src.shape[axis]
        for s in range(1, min(radius, n - 1) + 1):
            if axis == 1:
                out[:, s:] |= src[:, :-s]
                out[:, :-s] |= src[:, s:]
            else:
                out[s:] |= src[:-s]
                out[:-s] |= src[s:]
    return out


def grid_nodes(n_pixels: int, spacing: float) -> np.ndarray:
    """Array coordinates of the centres of the ``ceil(n_pixels / spacing)`` equal cells tiling ``n_pixels``."""
    n = max(1, int(math.ceil(n_pixels / float(spacing))))
    return (np.arange(n) + 0.5) * n_pixels / n - 0.5


def node_weights(n_pixels: int, nodes: np.ndarray) -> np.ndarray:
    """Bilinear (hat) blending weights of ``nodes`` (array coordinates) at pixels 0..n-1, shape (n_nodes, n).

    The weights of every pixel sum to 1; beyond the first and last node the end node has weight 1.
    """
    x = np.arange(n_pixels, dtype=float)
    nodes = np.asarray(nodes, dtype=float)
    if len(nodes) == 1:
        return np.ones((1, n_pixels))
    weights = np.empty((len(nodes), n_pixels))
    for i in range(len(nodes)):
        w = np.zeros(n_pixels)
        if i > 0:
            left = (x >= nodes[i - 1]) & (x <= nodes[i])
            w[left] = (x[left] - nodes[i - 1]) / (nodes[i] - nodes[i - 1])
        else:
            w[x <= nodes[0]] = 1.0
        if i < len(nodes) - 1:
            right = (x > nodes[i]) & (x < nodes[i + 1])
            w[right] = (nodes[i + 1] - x[right]) / (nodes[i + 1] - nodes[i])
        else:
            w[x >= nodes[-1]] = 1.0
        weights[i] = w
    return weights


def kernel_radius(kernel_image: np.ndarray, threshold: float = 1e-3) -> int:
    """Half-width [pixels] of the smallest centred square holding every pixel with ``|K| >= threshold max|K|``."""
    kernel_image = np.asarray(kernel_image)
    big = np.abs(kernel_image) >= threshold * np.abs(kernel_image).max()
    yy, xx = np.nonzero(big)
    if len(yy) == 0:
        return 0
    ch, cw = kernel_image.shape[0] // 2, kernel_image.shape[1] // 2
    return int(max(np.max(np.abs(yy - ch)), np.max(np.abs(xx - cw))))


def convolve_on_grid(
    arrays: Sequence[np.ndarray],
    kernels: Mapping[tuple[int, int], Sequence[np.ndarray]],
    xnodes: np.ndarray,
    ynodes: np.ndarray,
) -> list[np.ndarray]:
    """Convolve arrays with kernels given at grid nodes, blending the results bilinearly between nodes.

    Parameters
    ----------
    arrays : sequence of `numpy.ndarray`, each shape (h, w)
        Images to convolve (finite; zero-fill missing pixels first).
    kernels : mapping (j, i) -> sequence of `numpy.ndarray`
        For node ``(ynodes[j], xnodes[i])`` one odd-sized kernel per array (e.g. ``[K, K**2]`` for an image
        and its variance).  A node without an entry contributes nothing (its weight is lost).
    xnodes, ynodes : `numpy.ndarray`
        Node positions [array coordinates], increasing.

    Returns
    -------
    convolved : `list` of `numpy.ndarray`, each shape (h, w), float64

    Notes
    -----
    Each node's support (where its hat weight is > 0) is convolved (`scipy.signal.fftconvolve`), grown by the
    kernel half-width so its values are exact inside the image, and added with its hat weight.
    """
    h, w = arrays[0].shape
    outputs = [np.zeros((h, w), dtype=np.float64) for _ in arrays]
    wx = node_weights(w, xnodes)
    wy = node_weights(h, ynodes)
    for (j, i), node_kernels in kernels.items():
        xs = np.flatnonzero(wx[i] > 0)
        ys = np.flatnonzero(wy[j] > 0)
        x0, x1, y0, y1 = int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1
        blend = wy[j, y0:y1, None] * wx[i, None, x0:x1]
        for array, kernel, out in zip(arrays, node_kernels, outputs, strict=True):
            kh, kw = kernel.shape[0] // 2, kernel.shape[1] // 2
            gx0, gx1, gy0, gy1 = max(0, x0 - kw), min(w, x1 + kw), max(0, y0 - kh), min(h, y1 + kh)
            conv = signal.fftconvolve(array[gy0:gy1, gx0:gx1], np.asarray(kernel, dtype=np.float32), mode="same")
            out[y0:y1, x0:x1] += blend * conv[y0 - gy0 : y1 - gy0, x0 - gx0 : x1 - gx0]
    return outputs


def convolved_mask(mask: Mask, missing: np.ndarray, radius: int) -> Mask:
    """The mask of an image convolved with a kernel of support half-width ``radius``.

    Parameters
    ----------
    mask : `Mask`
        Mask of the input image (not modified).
    missing : `numpy.ndarray`, shape (h, w), bool
        Input pixels without data (zero-filled for the convolution).
    radius : `int`
        Half-width of the kernel's support [pixels] (see `kernel_radius`).

    Returns
    -------
    mask : `Mask`
        A new mask (planes of ``mask`` plus ``NO_DATA``): every bit ORed over the ``(2 radius + 1)^2`` square;
        ``NO_DATA`` also on the ``radius``-pixel border, where the kernel reaches beyond the image.
    """
    planes = dict(mask.planes)
    out = Mask(mask.array.copy(), planes, xy0=mask.xy0)
    no_data = np.int32(1 << out.add_plane("NO_DATA"))
    bits = out.array
    bits[missing] |= no_data
    bits = or_dilate(bits, radius)
    if radius:
        bits[:radius] |= no_data
        bits[-radius:] |= no_data
        bits[:, :radius] |= no_data
        bits[:, -radius:] |= no_data
    return Mask(bits, out.planes, xy0=mask.xy0)


def _fft_shape(shape: tuple[int, int], kernel_shape: tuple[int, int]) -> tuple[int, int]:
    return (
        sp_fft.next_fast_len(shape[0] + kernel_shape[0] - 1, real=True),
        sp_fft.next_fast_len(shape[1] + kernel_shape[1] - 1, real=True),
    )


def _same(full: np.ndarray, shape: tuple[int, int], kernel_shape: tuple[int, int]) -> np.ndarray:
    ky, kx = kernel_shape[0] // 2, kernel_shape[1] // 2
    return full[ky : ky + shape[0], kx : kx + shape[1]]


def _term_images(kernel: Kernel) -> tuple[np.ndarray, list[tuple[int, int]], int, Box2I | None]:
    """(K_t images (n_terms, kh, kw), term orders (x order, y order), degree, bbox) of a kernel."""
    if isinstance(kernel, LinearCombinationKernel):
        images = np.tensordot(kernel.spatial_coefficients.T, kernel.basis, axes=1)
        return images, term_orders(kernel.spatial_degree), kernel.spatial_degree, kernel.bbox
    if isinstance(kernel, FixedKernel):
        return kernel.array[None], [(0, 0)], 0, None
    raise ImageError(f"cannot convolve with a {type(kernel).__name__}; use a FixedKernel or LinearCombinationKernel.")


def _axis_polynomials(kernel_bbox: Box2I, bbox: Box2I, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Chebyshev polynomials T_0..T_degree along the columns (degree + 1, w) and rows (degree + 1, h) of ``bbox``."""
    xs = np.arange(bbox.x0, bbox.x0 + bbox.width, dtype=float)
    ys = np.arange(bbox.y0, bbox.y0 + bbox.height, dtype=float)
    xn, _ = normalize_to_box(xs, np.zeros_like(xs), kernel_bbox)
    _, yn = normalize_to_box(np.zeros_like(ys), ys, kernel_bbox)
    return chebyshev.chebvander(xn, degree).T, chebyshev.chebvander(yn, degree).T


def convolve_image(image: np.ndarray, kernel: Kernel, *, bbox: Box2I | None = None) -> np.ndarray:
    """Convolve an image with a fixed or spatially varying kernel (exact, by FFT).

    Parameters
    ----------
    image : `numpy.ndarray`, shape (h, w)
        Finite pixels (zero-fill missing ones first).
    kernel : `FixedKernel` or `LinearCombinationKernel`
        The kernel; a spatially varying one is evaluated at every output pixel.
    bbox : `Box2I`, optional
        Parent box of ``image`` (its origin places the pixels in the kernel's spatial model); default
        ``Box2I(0, 0, w, h)``.

    Returns
    -------
    convolved : `numpy.ndarray`, shape (h, w), float64
        Zero-padded convolution: values within the kernel half-width of the border are incomplete.

    Raises
    ------
    ImageError
        For another kind of kernel.
    """
    h, w = image.shape
    bbox = bbox if bbox is not None else Box2I(0, 0, w, h)
    term_kernels, orders, degree, kernel_bbox = _term_images(kernel)
    kshape = term_kernels.shape[1:]
    shape = _fft_shape((h, w), kshape)
    image_ft = sp_fft.rfft2(np.asarray(image, dtype=np.float32), shape)
    if kernel_bbox is None:
        return _same(sp_fft.irfft2(image_ft * sp_fft.rfft2(term_kernels[0], shape), shape), (h, w), kshape).astype(
            np.float64
        )
    tx, ty = _axis_polynomials(kernel_bbox, bbox, degree)
    out = np.zeros((h, w), dtype=np.float64)
    for term_kernel, (ix, iy) in zip(term_kernels, orders, strict=True):
        if not np.any(term_kernel):
            continue
        conv = _same(sp_fft.irfft2(image_ft * sp_fft.rfft2(term_kernel.astype(np.float32), shape), shape), (h, w), kshape)
        out += (ty[iy][:, None] * tx[ix][None, :]) * conv
    return out


def _sum_of_squares(kernel: Kernel, bbox: Box2I) -> np.ndarray:
    """``sum_u K(x; u)^2`` at every pixel of ``bbox``, shape (h, w) (the kernel's noise gain)."""
    term_kernels, orders, degree, kernel_bbox = _term_images(kernel)
    gram = np.einsum("tij,sij->ts", term_kernels, term_kernels)
    if kernel_bbox is None:
        return np.full(bbox.shape, float(gram[0, 0]))
    tx, ty = _axis_polynomials(kernel_bbox, bbox, degree)
    # sum_{t,s} G_ts T_t T_s with T_t = ty[iy_t] tx[ix_t]: a sum of outer products, one matrix product.
    rows = np.array([ty[a[1]] * ty[b[1]] for a in orders for b in orders])  # (n^2, h)
    cols = np.array([tx[a[0]] * tx[b[0]] for a in orders for b in orders])  # (n^2, w)
    return (rows * gram.ravel()[:, None]).T @ cols


def convolve_masked_image(
    masked_image: MaskedImage, kernel: Kernel, *, flux_radius_threshold: float = 1e-3
) -> Struct:
    """Convolve a masked image: the image exactly, the variance with the squared kernel, the mask by OR.

    Parameters
    ----------
    masked_image : `MaskedImage`
        Input; pixels that are not finite or are ``NO_DATA`` are zero-filled and their neighbourhood flagged.
        Not modified.
    kernel : `FixedKernel` or `LinearCombinationKernel`
        The kernel (see `convolve_image`).
    flux_radius_threshold : `float`, optional
        The mask is ORed, and the image border flagged ``NO_DATA``, over the square where the kernel at the
        image centre reaches this fraction of its peak (`kernel_radius`).

    Returns
    -------
    result : `Struct`
        ``masked_image``: the convolved `MaskedImage` (float32; image and variance NaN where ``NO_DATA``);
        ``radius``: the mask dilation radius [pixels].

    Notes
    -----
    The variance is the input variance convolved with the square of the kernel at the image centre, scaled at
    each pixel by the ratio of the local kernel's ``sum K^2`` to the central one: exact for a spatially
    constant kernel or a locally uniform variance, which a sky-dominated variance plane is on the kernel scale.
    """
    bbox = masked_image.bbox
    image = np.array(masked_image.image, dtype=np.float32)
    variance = np.array(masked_image.variance, dtype=np.float32)
    missing = ~(np.isfinite(image) & np.isfinite(variance))
    missing |= masked_image.mask.get_plane("NO_DATA", missing_ok=True)
    image[missing] = 0.0
    variance[missing] = 0.0
    cx, cy = bbox.center
    central = kernel.compute_image(cx, cy)
    out_image = convolve_image(image, kernel, bbox=bbox)
    out_var = convolve_image(variance, FixedKernel(central * central), bbox=bbox)
    if isinstance(kernel, LinearCombinationKernel) and kernel.spatial_degree > 0:
        out_var *= _sum_of_squares(kernel, bbox) / float(np.sum(central * central))
    radius = kernel_radius(central, flux_radius_threshold)
    mask = convolved_mask(masked_image.mask, missing, radius)
    bad = mask.get_plane("NO_DATA")
    out_image[bad] = np.nan
    out_var[bad] = np.nan
    convolved = MaskedImage(out_image.astype(np.float32), mask, out_var.astype(np.float32), xy0=bbox.xy0)
    return Struct(masked_image=convolved, radius=radius)
