"""Convolution by fixed, spatially varying and gridded kernels (`tasks.image.convolve`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from tasks.errors import ImageError
from tasks.image import Box2I, FixedKernel, LinearCombinationKernel, Mask, MaskedImage
from tasks.image.convolve import (
    convolve_image,
    convolve_masked_image,
    convolve_on_grid,
    grid_nodes,
    kernel_radius,
    node_weights,
)


def _gaussian(sigma: float, half: int, dx: float = 0.0) -> np.ndarray:
    u = np.arange(-half, half + 1, dtype=float)
    x, y = np.meshgrid(u, u)
    g = np.exp(-0.5 * ((x - dx) ** 2 + y**2) / sigma**2)
    return g / g.sum()


def _varying_kernel(bbox: Box2I) -> LinearCombinationKernel:
    """Three Gaussian basis images with amplitudes of spatial degree 2 (all six terms non-zero)."""
    basis = np.array([_gaussian(1.0, 7), _gaussian(2.0, 7), _gaussian(1.5, 7, dx=1.0)])
    coefficients = np.array(
        [[1.0, 0.1, -0.05, 0.02, 0.03, -0.01], [0.3, -0.2, 0.1, 0.05, 0.0, 0.04], [0.1, 0.05, 0.08, 0.0, -0.02, 0.01]]
    )
    return LinearCombinationKernel(basis, coefficients, 2, bbox)


def _brute_force(image: np.ndarray, kernel, bbox: Box2I, points) -> list[float]:
    """out(x) = sum_u K(x; u) in(x - u) at the given array points, the kernel evaluated at each point."""
    values = []
    h = kernel.shape[0] // 2
    for iy, ix in points:
        k = kernel.compute_image(ix + bbox.x0, iy + bbox.y0)
        patch = image[iy - h : iy + h + 1, ix - h : ix + h + 1]
        values.append(float(np.sum(k * patch[::-1, ::-1])))
    return values


def test_fixed_kernel_is_a_true_convolution():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(64, 80)).astype(np.float32)
    kernel = _gaussian(1.3, 6, dx=1.5)  # asymmetric: orientation matters
    got = convolve_image(image, FixedKernel(kernel))
    expected = signal.convolve2d(image, kernel, mode="same")
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_spatially_varying_kernel_is_evaluated_at_every_output_pixel():
    rng = np.random.default_rng(2)
    bbox = Box2I(100, 200, 90, 70)
    image = rng.normal(size=bbox.shape).astype(np.float32)
    kernel = _varying_kernel(bbox)
    got = convolve_image(image, kernel, bbox=bbox)
    points = [(10, 10), (35, 45), (60, 80), (8, 81), (61, 9)]
    expected = _brute_force(image, kernel, bbox, points)
    np.testing.assert_allclose([got[p] for p in points], expected, rtol=1e-4, atol=1e-5)


def test_other_kernels_are_refused():
    with pytest.raises(ImageError, match="FixedKernel or LinearCombinationKernel"):
        convolve_image(np.zeros((5, 5)), object())  # type: ignore[arg-type]


def test_masked_image_variance_mask_and_missing_pixels():
    bbox = Box2I(0, 0, 120, 100)
    kernel = _varying_kernel(bbox)
    image = np.zeros(bbox.shape, np.float32)
    variance = np.full(bbox.shape, 4.0, np.float32)
    mask = Mask(bbox.shape)
    bad = np.int32(1 << mask.add_plane("BAD"))
    mask.array[50, 60] |= bad
    image[20, 30] = np.nan  # a missing pixel
    result = convolve_masked_image(MaskedImage(image, mask, variance, xy0=bbox.xy0), kernel)
    out = result.masked_image
    r = result.radius
    assert r == kernel_radius(kernel.compute_image(*bbox.center))
    assert 1 <= r <= 7
    # Variance of a flat variance plane: 4 * sum K(x)^2 at each pixel.
    for iy, ix in [(40, 40), (70, 100), (15, 90)]:
        k = kernel.compute_image(ix, iy)
        assert out.variance[iy, ix] == pytest.approx(4.0 * np.sum(k * k), rel=2e-4)
    # The BAD bit spreads over the (2r+1)^2 square and no further.
    bad_out = out.mask.get_plane("BAD")
    assert bad_out[50 - r : 50 + r + 1, 60 - r : 60 + r + 1].all()
    assert bad_out.sum() == (2 * r + 1) ** 2
    # The missing pixel's neighbourhood and the border are NO_DATA and NaN.
    no_data = out.mask.get_plane("NO_DATA")
    assert no_data[20 - r : 20 + r + 1, 30 - r : 30 + r + 1].all()
    assert no_data[:r].all() and no_data[:, -r:].all() and not no_data[r:-r, r:-r][40, 40]
    assert np.isnan(out.image[20, 30]) and np.isnan(out.variance[0, 0])
    assert np.isfinite(out.image[~no_data]).all()


def test_grid_convolution_blends_to_one_kernel_when_all_nodes_agree():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(150, 200)).astype(np.float32)
    kernel = _gaussian(1.7, 5)
    xnodes, ynodes = grid_nodes(200, 64), grid_nodes(150, 64)
    assert len(xnodes) == 4 and len(ynodes) == 3
    nodes = {(j, i): [kernel] for j in range(len(ynodes)) for i in range(len(xnodes))}
    (got,) = convolve_on_grid([image], nodes, xnodes, ynodes)
    np.testing.assert_allclose(got, signal.convolve2d(image, kernel, mode="same"), atol=2e-5)
    weights = node_weights(200, xnodes)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0)
    assert (weights >= 0).all()
