"""Tests of tasks/image/background.py."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import ImageError, NoUsableBinsError
from tasks.image import Background, BackgroundList, Box2I, MaskedImage

SIGMA = 5.0


def _truth(bbox: Box2I) -> np.ndarray:
    y, x = np.mgrid[bbox.y0 : bbox.y1, bbox.x0 : bbox.x1].astype(float)
    return 100.0 + 0.05 * x - 0.03 * y + 2e-4 * (x - 200.0) ** 2


@pytest.fixture(scope="module")
def sky() -> tuple[MaskedImage, np.ndarray]:
    """A 300x420 image at xy0=(10, 20): smooth gradient + N(0, 5) noise + 30 bright stars flagged DETECTED."""
    rng = np.random.default_rng(42)
    bbox = Box2I(10, 20, 420, 300)
    truth = _truth(bbox)
    mi = MaskedImage(truth + rng.normal(0.0, SIGMA, bbox.shape), xy0=bbox.xy0)
    y, x = np.mgrid[bbox.y0 : bbox.y1, bbox.x0 : bbox.x1]
    for sx, sy in zip(rng.uniform(bbox.x0, bbox.x1, 30), rng.uniform(bbox.y0, bbox.y1, 30), strict=True):
        r2 = (x - sx) ** 2 + (y - sy) ** 2
        mi.image[...] += 5000.0 * np.exp(-0.5 * r2 / 4.0)
        mi.mask.set_plane("DETECTED", r2 < 12.0**2)
    return mi, truth


@pytest.mark.parametrize("interpolation", ["spline", "akima", "linear"])
def test_fit_recovers_gradient_under_masked_sources(sky, interpolation):
    mi, truth = sky
    background = Background.fit(mi, bin_size=32, interpolation=interpolation)
    residual = background.get_image() - truth
    assert np.sqrt(np.mean(residual**2)) < 0.1 * SIGMA


def test_median_statistic_and_rectangular_bins(sky):
    mi, truth = sky
    background = Background.fit(mi, bin_size=(40, 50), statistic="median")
    assert background.n_bins == (8, 9)  # partial edge bins: ceil(300/40), ceil(420/50)
    assert np.sqrt(np.mean((background.get_image() - truth) ** 2)) < 0.1 * SIGMA


def test_unmasked_sources_bias_the_fit(sky):
    """The mask matters: ignoring DETECTED leaves the stars' wings in the bins."""
    mi, truth = sky
    unmasked = Background.fit(mi, bin_size=32, bad_mask_planes=(), n_iter=0)
    assert np.sqrt(np.mean((unmasked.get_image() - truth) ** 2)) > 0.5 * SIGMA


def test_bin_values_sit_at_geometric_bin_centres():
    bbox = Box2I(5, 7, 100, 70)  # bins of 32: partial last bins of 4 (x) and 6 (y) pixels
    y, x = np.mgrid[bbox.y0 : bbox.y1, bbox.x0 : bbox.x1].astype(float)
    plane = 3.0 + 0.5 * x - 0.25 * y
    background = Background.fit(MaskedImage(plane, xy0=bbox.xy0), bin_size=32, n_iter=0)
    yc, xc = background.bin_centers()
    assert xc.tolist() == [20.5, 52.5, 84.5, 102.5] and yc.tolist() == [22.5, 54.5, 73.5]
    np.testing.assert_allclose(background.values, 3.0 + 0.5 * xc[None, :] - 0.25 * yc[:, None])
    # a plane is reproduced exactly, including extrapolation to the edge pixels and outside the bbox
    np.testing.assert_allclose(background.get_image(), plane, atol=1e-3)
    outside = bbox.dilated(5)
    yo, xo = np.mgrid[outside.y0 : outside.y1, outside.x0 : outside.x1]
    np.testing.assert_allclose(background.get_image(outside), 3.0 + 0.5 * xo - 0.25 * yo, atol=1e-3)


def test_constant_interpolation_paints_each_bin():
    background = Background(Box2I(0, 0, 4, 2), (2, 2), np.array([[1.0, 2.0]]), interpolation="constant")
    assert background.get_image().tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]


def test_clipped_mean_ignores_outliers():
    rng = np.random.default_rng(0)
    image = rng.normal(10.0, 1.0, (64, 64))
    image[rng.random((64, 64)) < 0.02] = 1000.0  # 2% cosmic rays, unmasked
    background = Background.fit(MaskedImage(image), bin_size=32)
    assert np.all(np.abs(background.values - 10.0) < 0.1)
    assert np.all(background.counts < 32 * 32 * 0.99)


def test_fully_masked_bins_are_filled_from_neighbours():
    bbox = Box2I(0, 0, 160, 160)
    y, x = np.mgrid[0:160, 0:160].astype(float)
    mi = MaskedImage(1.0 + 0.1 * x + 0.2 * y)
    mi.mask.set_plane("BAD", Box2I(64, 64, 32, 32))  # the central bin of a 5x5 grid
    background = Background.fit(mi, bin_size=32, n_iter=0)
    assert background.counts[2, 2] == 0
    assert background.values[2, 2] == pytest.approx(1.0 + 0.1 * 79.5 + 0.2 * 79.5)
    assert background.bbox == bbox


def test_too_few_usable_bins_is_a_clear_error():
    mi = MaskedImage(np.ones((64, 64)))
    mi.mask.set_plane("NO_DATA", Box2I(0, 0, 64, 40))
    with pytest.raises(NoUsableBinsError, match="only 2 of 4 background bins.*smaller bin_size"):
        Background.fit(mi, bin_size=32)


def test_invalid_options_are_rejected():
    mi = MaskedImage(np.ones((8, 8)))
    with pytest.raises(ImageError, match="choose one of constant, linear, spline, akima"):
        Background.fit(mi, bin_size=4, interpolation="cubic")
    with pytest.raises(ImageError, match="meanclip, median"):
        Background.fit(mi, bin_size=4, statistic="mode")
    with pytest.raises(ImageError, match="bin-grid shape"):
        Background(Box2I(0, 0, 8, 8), 4, np.ones((3, 2)))


def test_inverted_list_sums_to_zero_with_the_original(sky):
    mi, _ = sky
    backgrounds = BackgroundList(
        [Background.fit(mi, bin_size=64), Background.fit(mi, bin_size=(50, 70), interpolation="akima").scaled(0.5)]
    )
    inverted = backgrounds.inverted()
    assert inverted[0].bin_size == (50, 70)  # reversed order
    total = backgrounds.get_image().astype(np.float64) + inverted.get_image()
    assert np.max(np.abs(total)) < 1e-4
    np.testing.assert_allclose(
        backgrounds.get_image(), backgrounds[0].get_image() + backgrounds[1].get_image(), rtol=1e-6
    )


def test_background_tables_round_trip_exactly(sky):
    mi, _ = sky
    backgrounds = BackgroundList([Background.fit(mi, bin_size=(40, 50)), Background(mi.bbox, 500, [[1.5]])])
    tables = backgrounds.to_tables()
    for table in tables:
        assert all(len(key) <= 8 and key == key.upper() for key in table.meta)
        assert table["value"].dtype == np.float64
    restored = BackgroundList.from_tables(tables)
    assert list(restored) == list(backgrounds)
    np.testing.assert_array_equal(restored.get_image(), backgrounds.get_image())


def test_background_list_accepts_only_backgrounds():
    with pytest.raises(ImageError, match="holds Background objects"):
        BackgroundList().append(np.zeros(3))
