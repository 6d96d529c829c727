"""Tests of tasks/repair.py (RepairTask, cosmic-ray detection and interpolation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from graph.errors import AlgorithmError
from tasks.errors import ImageError, TooManyCosmicRaysError
from tasks.image import Box2I, Exposure, GaussianPsf, MaskedImage
from tasks.repair import CosmicRayConfig, RepairTask, find_cosmic_rays

SKY = 200.0
READ_NOISE2 = 25.0
NOISE = math.sqrt(SKY + READ_NOISE2)


def _scene(seed: int = 1, *, sigma: float = 1.6, n_stars: int = 300, n_cr: int = 300, shape=(800, 1000)):
    """Stars of PSF sigma ``sigma`` (up to ~1e6 counts) on a sky, plus cosmic rays: single pixels, pairs,
    2x2 blobs and 3-7 pixel tracks, each pixel 10 to 500 noise sigmas.

    Returns the exposure (with sky, variance = model + read noise), the noiseless model, the CR pixel mask,
    the number of CR hits, and the star-core mask (pixels within 1.5 sigma of a star centre, away from CRs).
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    bbox = Box2I(0, 0, nx, ny)
    model = np.full(shape, SKY)
    sx = rng.uniform(20, nx - 20, n_stars)
    sy = rng.uniform(20, ny - 20, n_stars)
    flux = 10 ** rng.uniform(3, 6.3, n_stars)
    core = np.zeros(shape, dtype=bool)
    h = int(6 * sigma) + 1
    for x, y, f in zip(sx, sy, flux, strict=True):
        box = Box2I(int(round(x)) - h, int(round(y)) - h, 2 * h + 1, 2 * h + 1).intersection(bbox)
        gy, gx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1]
        r2 = (gx - x) ** 2 + (gy - y) ** 2
        model[box.slices(bbox)] += f * np.exp(-0.5 * r2 / sigma**2) / (2 * math.pi * sigma**2)
        core[box.slices(bbox)] |= r2 <= (1.5 * sigma) ** 2
    variance = model + READ_NOISE2
    image = model + rng.normal(size=shape) * np.sqrt(variance)
    cr = np.zeros(shape, dtype=bool)
    for _ in range(n_cr):
        x, y = int(rng.integers(5, nx - 10)), int(rng.integers(5, ny - 10))
        kind = rng.integers(0, 4)
        if kind == 0:
            pixels = [(y, x)]
        elif kind == 1:
            pixels = [(y, x), (y, x + 1)]
        elif kind == 2:
            dy, dx = [(0, 1), (1, 0), (1, 1), (1, -1)][rng.integers(0, 4)]
            pixels = [(y + i * dy, x + i * dx) for i in range(rng.integers(3, 8))]
        else:
            pixels = [(y, x), (y, x + 1), (y + 1, x), (y + 1, x + 1)]
        for p in pixels:
            image[p] += NOISE * 10 ** rng.uniform(1, 2.7)
            cr[p] = True
    core &= ~ndimage.binary_dilation(cr, iterations=2)
    exposure = Exposure(
        MaskedImage(image.astype(np.float32), variance=variance.astype(np.float32)), psf=GaussianPsf(25, 25, sigma)
    )
    return exposure, model, cr, n_cr, core


@pytest.fixture(scope="module")
def scene():
    return _scene()


@pytest.mark.parametrize("sigma", [1.0, 1.6, 2.5])
def test_cosmic_rays_are_found_and_star_cores_are_kept(sigma):
    exposure, _, cr, _, core = _scene(seed=2, sigma=sigma)
    found = find_cosmic_rays(exposure)
    assert found[cr].mean() >= 0.95
    assert found[core].mean() < 0.01
    assert (found & ~cr).sum() <= 0.01 * cr.sum()


def test_repair_flags_cr_and_interpolates_with_intrp(scene):
    exposure, model, cr, _, _ = scene
    exposure = exposure.copy()
    original = exposure.image.copy()
    task = RepairTask()
    result = task.run(exposure)
    found = exposure.mask.get_plane("CR")
    assert np.array_equal(found, result.crMask)
    assert np.array_equal(exposure.mask.get_plane("INTRP"), found)
    assert task.metadata["nCrPixels"] == found.sum() == task.metadata["nInterpolated"]
    # Other pixels are untouched; repaired pixels are back near the noiseless model (sky or a star's wing).
    assert np.array_equal(exposure.image[~found], original[~found])
    residual = (exposure.image[found] - model[found]) / np.sqrt(exposure.variance[found])
    assert np.median(np.abs(residual)) < 2.0
    assert np.all(np.isfinite(exposure.variance[found]) & (exposure.variance[found] > 0))


def test_cosmic_ray_count_in_metadata(scene):
    exposure, _, cr, n_hits, _ = scene
    task = RepairTask()
    task.run(exposure.copy(), keepCRs=True)
    _, n_groups = ndimage.label(cr, structure=np.ones((3, 3)))  # hits that touch count once
    assert abs(task.metadata["nCosmicRays"] - n_groups) <= 0.03 * n_groups
    assert n_groups <= n_hits


def test_keep_crs_only_flags(scene):
    exposure, _, cr, _, _ = scene
    exposure = exposure.copy()
    original = exposure.image.copy()
    RepairTask().run(exposure, keepCRs=True)
    assert np.array_equal(exposure.image, original)
    assert exposure.mask.get_plane("CR")[cr].mean() >= 0.95
    assert not exposure.mask.get_plane("INTRP").any()


def test_old_cr_bits_are_cleared(scene):
    exposure, _, cr, _, _ = scene
    exposure = exposure.copy()
    exposure.mask.set_plane("CR", Box2I(0, 0, 5, 5))
    RepairTask().run(exposure, keepCRs=True)
    assert not exposure.mask.get_plane("CR")[:5, :5].any()


def test_too_many_cosmic_rays_is_an_algorithm_error():
    exposure, _, cr, _, _ = _scene(seed=3, n_cr=3000, n_stars=10, shape=(300, 300))
    config = RepairTask.ConfigClass()
    config.cosmicray.maxCrFraction = 0.01
    with pytest.raises(AlgorithmError, match=r"too many cosmic-ray pixels: \d+ of 90000 .*maxCrFraction") as info:
        RepairTask(config=config).run(exposure)
    assert isinstance(info.value, TooManyCosmicRaysError)
    assert info.value.metadata["maxCrPixels"] == 900 and info.value.metadata["nCrPixels"] > 900


def test_saturated_pixels_and_their_neighbours_are_not_cosmic_rays(scene):
    exposure, _, cr, _, _ = scene
    exposure = exposure.copy()
    ys, xs = np.nonzero(cr)
    exposure.mask.set_plane("SAT", Box2I(int(xs[0]) - 1, int(ys[0]) - 1, 3, 3))
    found = find_cosmic_rays(exposure)
    assert not found[ys[0] - 2 : ys[0] + 3, xs[0] - 2 : xs[0] + 3].any()


def test_background_level_does_not_matter(scene):
    exposure, _, cr, _, _ = scene
    shifted = exposure.copy()
    shifted.image[...] -= SKY
    assert np.array_equal(find_cosmic_rays(shifted), find_cosmic_rays(exposure))


def test_repair_needs_a_psf(scene):
    exposure = scene[0].copy()
    exposure.psf = None
    with pytest.raises(ImageError, match="needs a PSF"):
        RepairTask().run(exposure)


def test_lacosmic_alternative_finds_most_cosmic_rays(scene):
    exposure, _, cr, _, _ = scene
    found = find_cosmic_rays(exposure, CosmicRayConfig(algorithm="lacosmic"))
    assert found[cr].mean() >= 0.9


def test_do_cosmic_ray_false_does_nothing(scene):
    exposure = scene[0].copy()
    config = RepairTask.ConfigClass()
    config.doCosmicRay = False
    result = RepairTask(config=config).run(exposure)
    assert result.nCrPixels == 0 and not exposure.mask.get_plane("CR").any()
