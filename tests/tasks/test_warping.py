"""warp_exposure: flux, centroids, flatness, masks, variance and PSF of warps against analytic truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS

from tasks.errors import WarpingError
from tasks.image import Box2I, Exposure, GaussianPsf, MaskedImage, warp_exposure
from tasks.image.psf import adaptive_moments
from tasks.image.warping import PixelMapping, resample_kernel_image


def tan_wcs(crval: tuple[float, float], crpix: tuple[float, float], scale: float, rotation: float = 0.0) -> WCS:
    """A TAN WCS of ``scale`` [arcsec/pixel] rotated by ``rotation`` [deg]; crpix 1-based (FITS)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = list(crpix)
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    d = scale / 3600.0
    wcs.wcs.cd = np.array([[-d * c, d * s], [d * s, d * c]])
    wcs.wcs.set()
    return wcs


def gaussian_stars(shape: tuple[int, int], xs, ys, fluxes, sigma: float) -> np.ndarray:  # noqa: ANN001
    """Circular Gaussians sampled at pixel centres (matching `GaussianPsf`), of total ``fluxes``."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    image = np.zeros(shape)
    for x0, y0, f in zip(xs, ys, fluxes):
        image += f / (2 * math.pi * sigma**2) * np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / sigma**2)
    return image


IN_SHAPE = (300, 400)
IN_WCS = tan_wcs((150.0, 2.0), (200.0, 150.0), 0.2)
OUT_WCS = tan_wcs((150.001, 2.002), (180.0, 170.0), 0.27, rotation=33.0)
OUT_BBOX = Box2I(-50, -50, 500, 450)
SIGMA = 2.5  # input star sigma [input pixels]


@pytest.fixture(scope="module")
def star_warp() -> tuple[Exposure, np.ndarray, np.ndarray, Exposure]:
    """Stars on a 5 x 4 grid (no blends), warped onto a rotated, coarser TAN grid."""
    gx, gy = np.meshgrid(np.linspace(50, 350, 5) + 0.37, np.linspace(50, 250, 4) - 0.21)
    xs, ys = gx.ravel(), gy.ravel()
    image = gaussian_stars(IN_SHAPE, xs, ys, np.full(xs.size, 1000.0), SIGMA)
    exposure = Exposure(
        MaskedImage(image.astype(np.float32), variance=np.ones(IN_SHAPE, np.float32)),
        wcs=IN_WCS,
        psf=GaussianPsf(25, 25, SIGMA),
    )
    warped = warp_exposure(exposure, OUT_WCS, OUT_BBOX)
    ox, oy = OUT_WCS.world_to_pixel(IN_WCS.pixel_to_world(xs, ys))
    return exposure, np.asarray(ox), np.asarray(oy), warped


def _stamp(image: np.ndarray, bbox: Box2I, x: float, y: float, half: int = 12) -> tuple[np.ndarray, int, int]:
    ix, iy = int(round(x)), int(round(y))
    return image[iy - half - bbox.y0 : iy + half + 1 - bbox.y0, ix - half - bbox.x0 : ix + half + 1 - bbox.x0], ix, iy


def test_star_flux_conserved_on_rotated_scaled_tan(star_warp):
    _, ox, oy, warped = star_warp
    fluxes = [np.sum(_stamp(warped.image, OUT_BBOX, x, y)[0], dtype=float) for x, y in zip(ox, oy)]
    assert np.all(np.abs(np.array(fluxes) / 1000.0 - 1.0) < 0.005)


def test_star_centroids_land_on_the_sky_positions(star_warp):
    _, ox, oy, warped = star_warp
    half = 12
    off = np.arange(-half, half + 1)
    for x, y in zip(ox, oy):
        stamp, ix, iy = _stamp(warped.image, OUT_BBOX, x, y, half)
        stamp = stamp.astype(float)
        total = stamp.sum()
        cx = (stamp.sum(axis=0) * off).sum() / total + ix
        cy = (stamp.sum(axis=1) * off).sum() / total + iy
        assert abs(cx - x) < 0.02 and abs(cy - y) < 0.02


def test_star_shapes_scale_with_pixel_size(star_warp):
    _, ox, oy, warped = star_warp
    expected = (SIGMA * 0.2 / 0.27) ** 2  # sigma^2 in output pixels
    for x, y in zip(ox, oy):
        stamp, ix, iy = _stamp(warped.image, OUT_BBOX, x, y)
        ixx, iyy, ixy = adaptive_moments(stamp, center=(12 + x - ix, 12 + y - iy))
        assert ixx == pytest.approx(expected, rel=0.01)
        assert iyy == pytest.approx(expected, rel=0.01)
        assert abs(ixy) < 0.01 * expected


def test_warped_psf_matches_the_warped_stars(star_warp):
    _, ox, oy, warped = star_warp
    expected = (SIGMA * 0.2 / 0.27) ** 2
    for x, y in zip(ox[::5], oy[::5]):
        ixx, iyy, ixy = warped.psf.compute_shape(float(x), float(y))
        assert ixx == pytest.approx(expected, rel=0.01)
        assert iyy == pytest.approx(expected, rel=0.01)
        assert abs(ixy) < 0.01 * expected


def test_flat_surface_brightness_gives_the_area_ratio():
    """Flux conservation: a flat input becomes value x (output / input pixel area), exact to 1e-5."""
    exposure = Exposure(MaskedImage(np.full(IN_SHAPE, 7.0, np.float32)), wcs=IN_WCS)
    warped = warp_exposure(exposure, OUT_WCS, OUT_BBOX)
    good = np.isfinite(warped.image)
    assert good.sum() == pytest.approx(400 * 300 * (0.2 / 0.27) ** 2, rel=0.05)  # the input's footprint
    y, x = np.nonzero(good)
    _, _, jac = PixelMapping(IN_WCS, OUT_WCS).jacobian(x + OUT_BBOX.x0, y + OUT_BBOX.y0)
    ratio = warped.image[good] / (7.0 * np.abs(np.linalg.det(jac)))
    assert np.max(np.abs(ratio - 1.0)) < 1e-5
    assert np.mean(ratio) == pytest.approx(1.0, abs=1e-6)
    assert np.median(np.abs(np.linalg.det(jac))) == pytest.approx((0.27 / 0.2) ** 2, rel=1e-3)


def test_flat_image_stays_flat_under_pure_rotation():
    out_wcs = tan_wcs((150.0, 2.0), (200.0, 150.0), 0.2, rotation=17.0)
    exposure = Exposure(MaskedImage(np.full(IN_SHAPE, 3.0, np.float32)), wcs=IN_WCS)
    for kernel in ("lanczos3", "bilinear"):
        warped = warp_exposure(exposure, out_wcs, Box2I(0, 0, 400, 300), kernel=kernel)
        good = warped.image[np.isfinite(warped.image)]
        assert good.size > 0.5 * warped.image.size
        assert np.max(np.abs(good / 3.0 - 1.0)) < 1e-5


@pytest.mark.parametrize("shape", [(64, 65), (65, 64), (65, 65), (33, 97)])
def test_boxes_one_pixel_past_the_interpolation_grid_are_filled(shape):
    """Regression (SDSS patch warps): an output box whose width or height - 1 is a multiple of interp_length
    ends on a grid line; its last column used to raise IndexError and its last row was left NaN."""
    out_wcs = tan_wcs((150.0, 2.0), (20.0, 20.0), 0.2)
    exposure = Exposure(MaskedImage(np.full(IN_SHAPE, 3.0, np.float32)), wcs=IN_WCS)
    warped = warp_exposure(exposure, out_wcs, Box2I(0, 0, shape[1], shape[0]), interp_length=32)
    assert np.isfinite(warped.image).all()
    assert np.max(np.abs(warped.image / 3.0 - 1.0)) < 1e-4  # same pixel scale


@pytest.mark.parametrize("kernel", ["lanczos3", "bilinear"])
def test_integer_shift_reproduces_the_input(kernel):
    rng = np.random.default_rng(4)
    image = rng.normal(size=IN_SHAPE).astype(np.float32)
    exposure = Exposure(MaskedImage(image, variance=np.full(IN_SHAPE, 2.0, np.float32)), wcs=IN_WCS)
    # Output grid = input grid shifted by (+7, -5) pixels in parent coordinates.
    out_wcs = IN_WCS.deepcopy()
    out_wcs.wcs.crpix = [IN_WCS.wcs.crpix[0] + 7, IN_WCS.wcs.crpix[1] - 5]
    out_wcs.wcs.set()
    warped = warp_exposure(exposure, out_wcs, Box2I(7, -5, 400, 300), kernel=kernel)
    a = 3 if kernel == "lanczos3" else 1
    inner = warped.image[a - 1 : 300 - a, a - 1 : 400 - a]
    np.testing.assert_allclose(inner, image[a - 1 : 300 - a, a - 1 : 400 - a], atol=2e-4)
    np.testing.assert_allclose(warped.variance[a - 1 : 300 - a, a - 1 : 400 - a], 2.0, rtol=1e-3)
    # The kernel footprint must fit inside the input: a - 1 pixels lost below, a above.
    valid = np.isfinite(warped.image)
    assert valid.sum() == (400 - 2 * a + 1) * (300 - 2 * a + 1)


def test_no_data_where_the_kernel_touches_missing_pixels():
    image = np.ones(IN_SHAPE, np.float32)
    image[100, 200] = np.nan
    mask = MaskedImage(image, variance=np.ones(IN_SHAPE, np.float32))
    mask.mask.set_plane("NO_DATA", Box2I(50, 50, 1, 1))
    mask.mask.set_plane("SAT", Box2I(300, 250, 1, 1))
    exposure = Exposure(mask, wcs=IN_WCS)
    warped = warp_exposure(exposure, IN_WCS, Box2I(0, 0, 400, 300))
    no_data = warped.mask.get_plane("NO_DATA")
    assert np.array_equal(no_data, ~np.isfinite(warped.image))
    assert np.array_equal(no_data, ~np.isfinite(warped.variance))
    # A missing pixel removes the 6 x 6 output pixels whose kernel reaches it (taps ix-2..ix+3).
    assert no_data[97:103, 197:203].all() and not no_data[96, 200] and not no_data[100, 203]
    assert no_data[47:53, 47:53].all()
    # Border: 2 pixels at the low edges, 3 at the high edges, plus the two 6 x 6 holes.
    assert no_data.sum() == 400 * 300 - (400 - 5) * (300 - 5) + 2 * 36
    # Other planes propagate through the central 2 x 2 (bilinear) footprint.
    sat = warped.mask.get_plane("SAT")
    assert sat.sum() == 4 and sat[249:251, 299:301].all()


def test_variance_predicts_the_noise_of_the_warped_image():
    rng = np.random.default_rng(11)
    sigma = 3.0
    image = rng.normal(scale=sigma, size=(600, 600)).astype(np.float32)
    wcs_in = tan_wcs((30.0, -10.0), (300.0, 300.0), 0.2)
    exposure = Exposure(MaskedImage(image, variance=np.full(image.shape, sigma**2, np.float32)), wcs=wcs_in)
    out_wcs = tan_wcs((30.0, -10.0), (250.0, 250.0), 0.23, rotation=21.0)
    warped = warp_exposure(exposure, out_wcs, Box2I(0, 0, 500, 500))
    good = np.isfinite(warped.image)
    ratio = np.var(warped.image[good], dtype=float) / np.mean(warped.variance[good], dtype=float)
    # Per-pixel variance is exact (sum of squared weights x area ratio^2); the mean flux is 0.
    assert 0.97 < ratio < 1.03
    assert np.mean(warped.variance[good]) < sigma**2 * (0.23 / 0.2) ** 4  # interpolation averages noise


def test_output_carries_components_and_sub_box_only_is_filled():
    exposure = Exposure(MaskedImage(np.ones((64, 64), np.float32)), wcs=IN_WCS, psf=GaussianPsf(11, 11, 1.5))
    exposure.metadata["FOO"] = 3
    warped = warp_exposure(exposure, IN_WCS, Box2I(-100, -100, 300, 300))
    assert warped.wcs is IN_WCS and warped.detector is None and warped.metadata["FOO"] == 3
    assert warped.bbox == Box2I(-100, -100, 300, 300)
    assert int(np.isfinite(warped.image).sum()) == 59 * 59
    assert warped.psf.compute_shape(30.0, 30.0)[0] == pytest.approx(1.5**2, rel=0.01)


def test_disjoint_output_is_all_no_data_and_has_no_psf():
    exposure = Exposure(MaskedImage(np.ones((64, 64), np.float32)), wcs=IN_WCS, psf=GaussianPsf(11, 11, 1.5))
    warped = warp_exposure(exposure, IN_WCS, Box2I(1000, 1000, 50, 50))
    assert warped.mask.get_plane("NO_DATA").all() and np.isnan(warped.image).all()
    assert warped.psf is None


def test_resample_kernel_image_scales_the_moments():
    kernel = GaussianPsf(41, 41, 3.0).compute_kernel_image()
    jac = np.array([[1.5, 0.0], [0.0, 1.5]])  # output pixels are 1.5 input pixels
    out = resample_kernel_image(kernel, jac)
    ixx, iyy, _ = adaptive_moments(out)
    assert ixx == pytest.approx(4.0, rel=0.01) and iyy == pytest.approx(4.0, rel=0.01)
    assert out.sum() == pytest.approx(1.0)


def test_invalid_arguments_raise_warping_error():
    exposure = Exposure(MaskedImage(np.ones((64, 64), np.float32)), wcs=IN_WCS)
    with pytest.raises(WarpingError, match="unknown warping kernel 'lanczos5'"):
        warp_exposure(exposure, IN_WCS, Box2I(0, 0, 10, 10), kernel="lanczos5")
    with pytest.raises(WarpingError, match="interp_length"):
        warp_exposure(exposure, IN_WCS, Box2I(0, 0, 10, 10), interp_length=0)
    with pytest.raises(WarpingError, match="input WCS is missing"):
        warp_exposure(Exposure(MaskedImage(np.ones((64, 64), np.float32))), IN_WCS, Box2I(0, 0, 10, 10))


def test_sdss_frame_round_trip_through_the_tract(shared_data):
    """An SDSS frame warped onto the stripe82_demo tract and back: stars keep their flux and the sky its level."""
    from tasks.image import SkyMap
    from tasks.instruments.sdss.formatters import read_fpc

    path = shared_data / "sdss_stripe82_lsst_demo/input/4192/40/corr/4/fpC-004192-r4-0300.fit.gz"
    exposure = read_fpc(path)
    exposure.image[...] -= 1000.0  # soft bias
    exposure.variance[...] = np.maximum(exposure.image, 0) / 4.7 + 10.0
    tract = SkyMap.from_yaml("repo_template/skymaps/stripe82_demo.yaml")[0]
    warped = warp_exposure(exposure, tract.wcs, tract.bbox)
    good = np.isfinite(warped.image)
    # The frame is 2048 x 1489 pixels of the same size: it covers about as many tract pixels.
    assert good.sum() == pytest.approx(2048 * 1489, rel=0.01)
    back = warp_exposure(warped, exposure.wcs, exposure.bbox)
    inner = Box2I(20, 20, 2008, 1449)
    a = back.image[inner.slices(back.bbox)].astype(float)
    b = exposure.image[inner.slices(exposure.bbox)].astype(float)
    assert np.isfinite(a).all()
    assert a.sum() == pytest.approx(b.sum(), rel=1e-4)
    sky = np.median(b)
    noise = 1.4826 * np.median(np.abs(b - sky))
    faint = b < sky + 3 * noise
    assert np.std(a[faint] - b[faint]) < 0.15 * noise
