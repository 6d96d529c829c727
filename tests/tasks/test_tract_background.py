"""TractBackground: binned tract statistics, the weighted Chebyshev fit, and persistence."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import FitsFormatError, ImageError, NoUsableBinsError
from tasks.image import Box2I, Mask, MaskedImage, TractBackground, TractBackgroundConfig
from tasks.image.tract_background import TractBackgroundFitsFormatter

TRACT = Box2I(0, 0, 1000, 900)


def plane(bbox: Box2I, a: float = 40.0, gx: float = 0.03, gy: float = -0.02) -> np.ndarray:
    """``a + gx x + gy y`` at the pixel centres of ``bbox`` (tract coordinates)."""
    y, x = np.mgrid[bbox.y0 : bbox.y1, bbox.x0 : bbox.x1].astype(float)
    return a + gx * x + gy * y


def disk_image(noise: float = 0.0, seed: int = 1, radius: float = 330.0) -> tuple[MaskedImage, np.ndarray]:
    """A plane on a disk of ``radius`` px centred in the tract (NaN elsewhere): most edge bins are partial."""
    rng = np.random.default_rng(seed)
    truth = plane(TRACT)
    y, x = np.mgrid[0 : TRACT.height, 0 : TRACT.width]
    inside = (x - 480.0) ** 2 + (y - 430.0) ** 2 < radius**2
    image = truth + noise * rng.standard_normal(truth.shape)
    image[~inside] = np.nan
    return MaskedImage(image.astype(np.float32), variance=np.full(truth.shape, noise**2, np.float32)), truth


def test_plane_on_partial_bins_is_recovered_and_extrapolated_exactly():
    # Partly covered bins are located at the centroid of their pixels: a noise-free plane is fitted exactly
    # even outside the disk (at bin centres a half-covered 128 px bin would be off by ~0.03 * 32 ~ 1).
    image, truth = disk_image()
    background = TractBackground(TRACT, config=TractBackgroundConfig(binSize=128, order=1))
    used = background.add_image(image)
    assert 0.99 * np.isfinite(image.image).sum() < used <= np.isfinite(image.image).sum()  # bins < 5% full dropped
    background.fit(domain=TRACT)
    assert background.order == 1
    model = background.get_image()
    assert model.shape == TRACT.shape and model.dtype == np.float32
    assert np.max(np.abs(model - truth)) < 2e-3
    assert background.rms < 1e-3


def test_noisy_plane_with_unmasked_sources_fits_to_a_fraction_of_the_noise():
    noise = 5.0
    image, truth = disk_image(noise=noise, seed=2)
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0 : TRACT.height, 0 : TRACT.width]
    for xs, ys in rng.uniform(250, 700, size=(25, 2)):  # bright, unmasked: left to the per-bin clipping
        image.image[...] += (2000.0 * np.exp(-((x - xs) ** 2 + (y - ys) ** 2) / (2 * 2.0**2))).astype(np.float32)
    background = TractBackground(TRACT)  # defaults: 128 px bins, degree 2
    background.add_image(image)
    background.fit()
    inside = np.isfinite(image.image)
    error = background.get_image() - truth
    assert background.order == 2
    assert np.sqrt(np.mean(error[inside] ** 2)) < 0.02 * noise
    assert background.chi2 < 2.0  # source wings inflate the bins' variances: chi2 is low, not high
    assert background.used.sum() >= 20


def test_bin_errors_make_chi2_about_one_on_pure_noise():
    chi2 = []
    for seed in range(6):
        image, _ = disk_image(noise=5.0, seed=10 + seed, radius=420.0)
        background = TractBackground(TRACT)
        background.add_image(image)
        chi2.append(background.fit().chi2)
        assert background.used.sum() == background.good.sum()  # no bin rejected
    assert 0.75 < np.mean(chi2) < 1.25


def test_masked_planes_are_ignored():
    image, truth = disk_image(noise=1.0, seed=4)
    mask = Mask(image.shape)
    bad = np.zeros(image.shape, dtype=bool)
    bad[300:420, 300:600] = True
    image.image[bad] = 1e4
    mask.set_plane("DETECTED", bad)
    masked = MaskedImage(image.image, mask, image.variance)
    background = TractBackground(TRACT, config=TractBackgroundConfig(order=1))
    background.add_image(masked)
    background.fit()
    inside = np.isfinite(image.image)
    assert np.max(np.abs(background.get_image() - truth)[inside]) < 0.05
    # A bin cut by the masked block (rows 384-419 of its 384-511) holds only its unmasked pixels.
    assert background.counts[3, 3] == pytest.approx(128 * 128 - 128 * (420 - 384), rel=0.005)  # 3-sigma clipping


def test_pieces_from_patches_merge_into_the_whole_image_bins():
    image, _ = disk_image(noise=2.0, seed=5)
    whole = TractBackground(TRACT)
    whole.add_image(image)
    pieces = TractBackground(TRACT)
    for x0, y0 in ((0, 0), (450, 0), (0, 400), (450, 400)):  # patch-like boxes that cut bins
        box = Box2I(x0, y0, 450 if x0 == 0 else 550, 400 if y0 == 0 else 500)
        pieces.add_image(image, bbox=box)
    good = whole.good
    assert np.array_equal(good, pieces.good)
    # Only pieces under 5% of a bin (too small for a statistic) are lost.
    assert np.abs(pieces.counts - whole.counts)[good].max() <= 0.05 * 128**2
    assert pieces.counts.sum() > 0.995 * whole.counts.sum()
    # Each bin value is the plane at the bin's centroid (also where a small piece was dropped, which moves
    # both), and the separately clipped pieces agree with the whole bins to a fraction of a bin's error.
    def normalised_residuals(background):
        cx, cy = background.centroids()
        truth = 40.0 + 0.03 * cx + -0.02 * cy
        return ((background.values - truth) / np.sqrt(background.variances))[good]

    r_whole, r_pieces = normalised_residuals(whole), normalised_residuals(pieces)
    assert np.abs(r_whole).max() < 4.0 and np.abs(r_pieces).max() < 4.0
    assert np.sqrt(np.mean((r_pieces - r_whole) ** 2)) < 0.3


def test_order_is_reduced_when_bins_are_few_or_raises_when_asked():
    image, truth = disk_image(radius=150.0)
    background = TractBackground(TRACT, config=TractBackgroundConfig(order=4))
    background.add_image(image)
    n_good = int(background.good.sum())
    background.fit()
    assert 3 * (background.order + 1) * (background.order + 2) / 2 <= n_good < 3 * 15
    strict = TractBackground(TRACT, config=TractBackgroundConfig(order=4, undersampleStyle="THROW_EXCEPTION"))
    strict.add_image(image)
    with pytest.raises(NoUsableBinsError, match="degree-4"):
        strict.fit()
    with pytest.raises(NoUsableBinsError):
        TractBackground(TRACT).fit()


def test_model_needs_a_fit_and_zero_model_is_zero():
    background = TractBackground(TRACT)
    with pytest.raises(ImageError, match="fit"):
        background.get_image()
    zero = TractBackground.zero(TRACT)
    assert not np.any(zero.get_image(Box2I(-50, 10, 30, 20)))


def test_interpolated_model_follows_the_bins():
    image, truth = disk_image(noise=0.5, seed=6)
    background = TractBackground(TRACT, config=TractBackgroundConfig(usePolynomial=False, interpStyle="linear"))
    background.add_image(image)
    background.fit()
    assert background.order is None
    inner = Box2I(300, 300, 300, 250)
    assert np.max(np.abs(background.get_image(inner) - truth[inner.slices(TRACT)])) < 0.3


@pytest.mark.parametrize("use_polynomial", [True, False])
def test_table_round_trip_keeps_bins_model_and_diagnostics(use_polynomial):
    image, _ = disk_image(noise=1.0, seed=7)
    background = TractBackground(TRACT, config=TractBackgroundConfig(usePolynomial=use_polynomial, binSize=100))
    background.add_image(image)
    background.fit()
    table = background.to_table()
    assert len(table) == int(background.good.sum())
    back = TractBackground.from_table(table)
    assert back.bbox == TRACT and back.bin_size == 100
    np.testing.assert_array_equal(back.counts, background.counts)
    np.testing.assert_allclose(back.values[background.good], background.values[background.good], rtol=1e-12)
    np.testing.assert_array_equal(back.used, background.used)
    box = Box2I(-40, 850, 1100, 90)  # beyond the tract: extrapolated alike
    np.testing.assert_allclose(back.get_image(box), background.get_image(box), rtol=1e-6, atol=1e-5)
    diagnostics = ("chi2", "dof", "rms", "order")
    assert [getattr(back, k) for k in diagnostics] == [getattr(background, k) for k in diagnostics]


def test_fits_formatter_round_trip(tmp_path):
    image, _ = disk_image(noise=1.0, seed=8)
    background = TractBackground(TRACT)
    background.add_image(image)
    background.fit()
    formatter = TractBackgroundFitsFormatter(None)
    path = tmp_path / "bg.fits"
    formatter.write(background, path)
    back = formatter.read(path)
    assert isinstance(back, TractBackground)
    np.testing.assert_array_equal(back.coefficients, background.coefficients)
    np.testing.assert_array_equal(back.get_image(), background.get_image())
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(FitsFormatError):
        formatter.read(path)
