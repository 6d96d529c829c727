"""Tests of tasks/image/psf.py, kernel.py and _chebyshev.py."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import ImageError
from tasks.image import Box2I, FixedKernel, GaussianPsf, Kernel, LinearCombinationKernel, PcaPsf, Psf
from tasks.image._chebyshev import chebyshev_terms, n_chebyshev_terms

BBOX = Box2I(0, 0, 1000, 800)


def _centroid(image: np.ndarray, bbox: Box2I) -> tuple[float, float]:
    yy, xx = np.mgrid[bbox.y0 : bbox.y1, bbox.x0 : bbox.x1]
    return float((image * xx).sum() / image.sum()), float((image * yy).sum() / image.sum())


def _gaussian(sigma: float, size: int = 25) -> np.ndarray:
    return GaussianPsf(size, size, sigma).compute_kernel_image()


def _linear_pca_psf() -> PcaPsf:
    """sigma-2 Gaussian plus a component whose amplitude goes from -0.3 at x = -0.5 to +0.3 at x = 999.5."""
    mean = _gaussian(2.0)
    wide = _gaussian(3.0) - mean  # sums to zero, broadens the PSF
    coefficients = np.array([[1.0, 0.0, 0.0], [0.0, 0.3, 0.0]])  # terms: 1, T1(x), T1(y)
    return PcaPsf(np.stack([mean, wide]), coefficients, 1, BBOX)


def test_chebyshev_terms_order_and_normalisation():
    terms = chebyshev_terms(999.5, -0.5, 2, BBOX)  # x' = +1, y' = -1 on the outer pixel edges
    assert terms.tolist() == [1.0, 1.0, -1.0, 1.0, -1.0, 1.0]
    assert n_chebyshev_terms(3) == 10
    assert chebyshev_terms(np.zeros((2, 3)), 0.0, 1, BBOX).shape == (3, 2, 3)


def test_gaussian_psf_shape_and_fwhm():
    psf = GaussianPsf(31, 31, 2.5)
    ixx, iyy, ixy = psf.compute_shape(10.0, 20.0)
    assert ixx == pytest.approx(2.5**2, rel=0.01) and iyy == pytest.approx(2.5**2, rel=0.01)
    assert abs(ixy) < 1e-6
    assert psf.fwhm() == pytest.approx(2.3548 * 2.5, rel=0.01)


def test_adaptive_moments_of_a_pixelised_gaussian_match_sigma():
    psf = PcaPsf(_gaussian(1.7, 21)[None], np.ones((1, 1)), 0, BBOX)
    ixx, iyy, _ = psf.compute_shape(500.0, 400.0)
    assert ixx == pytest.approx(1.7**2, rel=0.01) and iyy == pytest.approx(1.7**2, rel=0.01)


def test_kernel_image_is_odd_unit_sum_and_centred():
    kernel = GaussianPsf(15, 21, 2.0).compute_kernel_image(3.0, 4.0)
    assert kernel.shape == (21, 15) and kernel.dtype == np.float64
    assert kernel.sum() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(kernel), kernel.shape) == (10, 7)


@pytest.mark.parametrize("x, y", [(10.3, 20.7), (100.49, 5.5), (-3.2, 7.0)])
def test_compute_image_centroid_is_the_requested_position(x, y):
    for psf in (GaussianPsf(25, 25, 2.0), _linear_pca_psf()):
        image, bbox = psf.compute_image(x, y)
        cx, cy = _centroid(image, bbox)
        assert abs(cx - x) < 0.01 and abs(cy - y) < 0.01
        assert image.sum() == pytest.approx(1.0)
        assert bbox.contains_point(x, y)


def test_pca_psf_reproduces_known_linear_variation():
    psf = _linear_pca_psf()
    mean, wide = psf.components
    for x, amplitude in ((-0.5, -0.3), (999.5, 0.3), (249.5, -0.15)):
        expected = mean + amplitude * wide
        np.testing.assert_allclose(psf.compute_kernel_image(x, 123.0), expected / expected.sum(), atol=1e-12)
    # the PSF is broader on the right: its second moment grows with x
    assert psf.compute_shape(999.5, 400)[0] > psf.compute_shape(-0.5, 400)[0] + 0.5


def test_pca_psf_fit_recovers_linear_variation():
    true = _linear_pca_psf()
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 1000, 40), rng.uniform(0, 800, 40)
    stamps = np.stack([true.compute_kernel_image(xi, yi) for xi, yi in zip(x, y, strict=True)])
    fitted = PcaPsf.fit(stamps, x, y, BBOX, n_components=2, degree=1)
    for xi, yi in ((50.0, 60.0), (900.0, 700.0)):
        np.testing.assert_allclose(fitted.compute_kernel_image(xi, yi), true.compute_kernel_image(xi, yi), atol=1e-9)


def test_psf_table_round_trips_exactly_and_dispatches_on_type():
    for psf in (GaussianPsf(21, 23, 1.37), _linear_pca_psf()):
        table = psf.to_table()
        assert table.meta["PSFTYPE"] in {"GAUSSIAN", "PCA"}
        assert all(len(key) <= 8 and key == key.upper() for key in table.meta)
        restored = Psf.from_table(table)
        assert type(restored) is type(psf) and restored == psf
    table = GaussianPsf(3, 3, 1.0).to_table()
    table.meta["PSFTYPE"] = "MOFFAT"
    with pytest.raises(ImageError, match="unknown PSF table type 'MOFFAT'"):
        Psf.from_table(table)


def test_psf_rejects_even_sizes():
    with pytest.raises(ImageError, match="odd"):
        GaussianPsf(20, 21, 2.0)


def _lincomb_kernel() -> LinearCombinationKernel:
    basis = np.stack([_gaussian(1.0, 11), _gaussian(2.0, 11), _gaussian(1.5, 11) - _gaussian(1.0, 11)])
    # amplitudes: a0 = 1 + 0.2 x', a1 = 0.5 y', a2 = 3 (zero-sum basis: does not change the sum)
    coefficients = np.array([[1.0, 0.2, 0.0], [0.0, 0.0, 0.5], [3.0, 0.0, 0.0]])
    return LinearCombinationKernel(basis, coefficients, 1, BBOX)


def test_linear_combination_kernel_sum_follows_the_spatial_model():
    kernel = _lincomb_kernel()
    x = np.array([-0.5, 499.5, 999.5, 249.75])
    y = np.array([399.5, -0.5, 799.5, 399.5])
    xn, yn = (x - 499.5) / 500.0, (y - 399.5) / 400.0
    np.testing.assert_allclose(kernel.kernel_sum(x, y), 1.0 + 0.2 * xn + 0.5 * yn, rtol=1e-12)
    assert kernel.compute_image(999.5, 799.5).sum() == pytest.approx(1.7)
    assert kernel.compute_image(999.5, 799.5, normalize=True).sum() == pytest.approx(1.0)
    assert kernel.shape == (11, 11)


def test_fixed_kernel_is_constant():
    array = _gaussian(1.0, 7) * 3.0
    kernel = FixedKernel(array)
    assert kernel.kernel_sum(5.0, 9.0) == pytest.approx(3.0)
    assert kernel.kernel_sum(np.zeros(4), 0.0).shape == (4,)
    np.testing.assert_array_equal(kernel.compute_image(100.0, 1.0), array)


def test_kernel_table_round_trips_exactly():
    for kernel in (FixedKernel(np.arange(15.0).reshape(3, 5) / 7.0), _lincomb_kernel()):
        table = kernel.to_table()
        restored = Kernel.from_table(table)
        assert type(restored) is type(kernel) and restored == kernel
        assert all(len(key) <= 8 and key == key.upper() for key in table.meta)
    with pytest.raises(ImageError, match="spatial_coefficients must have shape"):
        LinearCombinationKernel(np.ones((2, 3, 3)), np.ones((2, 2)), 1, BBOX)
