"""Tests of AssembleCoaddTask (tasks/coadd.py): weighted clipped-mean stacking, masks, PSF, inputs, I/O."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import erf

from graph.errors import NoWorkFound
from graph.testing import make_quantum, make_test_repo, run_test_quantum
from tasks.coadd import (
    AssembleCoaddConfig,
    AssembleCoaddConnections,
    AssembleCoaddTask,
    stack_clipped_mean,
)
from tasks.image import (
    Box2I,
    Exposure,
    FilterLabel,
    GaussianPsf,
    MaskedImage,
    PhotoCalib,
    SkyMap,
    VisitInfo,
)
from tasks.image.psf import FWHM_PER_SIGMA

PIXEL_SCALE = 0.2  # arcsec
SKY_CONFIG = {
    "name": "test",
    "type": "discrete",
    "pixel_scale": PIXEL_SCALE,
    "patch_inner_dimensions": [240, 240],
    "patch_border": 16,
    "tracts": [{"ra": 150.0, "dec": 2.0, "radius": 0.02}],
}


@pytest.fixture(scope="module")
def skymap() -> SkyMap:
    return SkyMap.from_config(SKY_CONFIG)


@pytest.fixture(scope="module")
def patch(skymap):
    return skymap[0].patch_info((1, 1))


def pixel_gaussian(bbox: Box2I, x: float, y: float, sigma: float) -> np.ndarray:
    """A unit-flux circular Gaussian integrated over the pixels of ``bbox`` (parent coordinates)."""
    xs = np.arange(bbox.x0, bbox.x1) - x
    ys = np.arange(bbox.y0, bbox.y1) - y
    s = sigma * math.sqrt(2.0)
    px = 0.5 * (erf((xs + 0.5) / s) - erf((xs - 0.5) / s))
    py = 0.5 * (erf((ys + 0.5) / s) - erf((ys - 0.5) / s))
    return np.outer(py, px)


def star_grid(bbox: Box2I, n: int = 4, margin: int = 30) -> np.ndarray:
    """(n*n, 2) positions (x, y) with sub-pixel offsets, inside ``bbox`` by ``margin``."""
    xs = np.linspace(bbox.x0 + margin, bbox.x1 - 1 - margin, n) + 0.3
    ys = np.linspace(bbox.y0 + margin, bbox.y1 - 1 - margin, n) - 0.2
    xx, yy = np.meshgrid(xs, ys)
    return np.column_stack([xx.ravel(), yy.ravel()])


def sky_model(bbox: Box2I, stars: np.ndarray, flux: float, psf: GaussianPsf) -> np.ndarray:
    """Point sources of ``flux`` drawn with ``psf.compute_image`` (so the PSF model is exact)."""
    image = np.zeros(bbox.shape)
    for x, y in stars:
        stamp, box = psf.compute_image(x, y)
        image[box.slices(bbox)] += flux * stamp
    return image


def make_warp(
    patch,
    visit: int,
    *,
    sigma: float,
    noise: float,
    rng: np.random.Generator,
    stars: np.ndarray | None = None,
    flux: float = 0.0,
    background: np.ndarray | float = 0.0,
) -> Exposure:
    """A warp of ``patch`` in nJy: Gaussian stars of PSF ``sigma`` [pixels], white noise ``noise`` [nJy]."""
    bbox = patch.outer_bbox
    width = 2 * math.ceil(5 * sigma) + 1
    psf = GaussianPsf(width, width, sigma)
    truth = sky_model(bbox, stars, flux, psf) if stars is not None else np.zeros(bbox.shape)
    image = truth + background + rng.normal(0.0, noise, bbox.shape)
    variance = np.full(bbox.shape, noise**2, dtype=np.float32)
    return Exposure(
        MaskedImage(image.astype(np.float32), None, variance, xy0=bbox.xy0),
        wcs=patch.wcs,
        psf=psf,
        photo_calib=PhotoCalib(1.0),
        visit_info=VisitInfo(id=visit),
        filter=FilterLabel(band="r", physical_filter="r1"),
    )


def psf_flux(image: np.ndarray, bbox: Box2I, psf, x: float, y: float) -> float:
    """Linear PSF-fit flux of a point source at (x, y): sum(P I) / sum(P^2) over the PSF's box."""
    model, box = psf.compute_image(x, y)
    data = image[box.slices(bbox)]
    return float((model * data).sum() / (model * model).sum())


def aperture_flux(image: np.ndarray, bbox: Box2I, x: float, y: float, radius: float) -> float:
    yy, xx = np.mgrid[bbox.y0 : bbox.y1, bbox.x0 : bbox.x1]
    return float(image[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2].sum())


SIGMAS = [1.6, 1.7, 1.8, 1.9, 2.0, 2.1]  # PSF sigma of each visit [pixels]
NOISES = [10.0, 12.0, 14.0, 8.0, 16.0, 11.0]  # noise of each visit [nJy]
FLUX = 2.0e5  # nJy


def run_coadd(warps, patch, **config) -> tuple[Exposure, AssembleCoaddTask]:
    task = AssembleCoaddTask(config=AssembleCoaddConfig(**config))
    return task.run(warps, patch).coaddExposure, task


@pytest.fixture(scope="module")
def star_warps(patch):
    rng = np.random.default_rng(11)
    stars = star_grid(patch.outer_bbox)
    warps = [
        make_warp(patch, 100 + i, sigma=s, noise=n, rng=rng, stars=stars, flux=FLUX)
        for i, (s, n) in enumerate(zip(SIGMAS, NOISES))
    ]
    return warps, stars


# Stacking ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("statistic", ["MEANCLIP", "MEAN"])
def test_coadd_star_fluxes_match_truth(star_warps, patch, statistic):
    warps, stars = star_warps
    coadd, _ = run_coadd(warps, patch, statistic=statistic)
    assert coadd.bbox == patch.outer_bbox and coadd.photo_calib == PhotoCalib(1.0)
    psf_ratio = np.array([psf_flux(coadd.image, coadd.bbox, coadd.psf, x, y) for x, y in stars]) / FLUX
    aperture_ratio = np.array([aperture_flux(coadd.image, coadd.bbox, x, y, 12.0) for x, y in stars]) / FLUX
    # PSF fluxes use the coadd PSF: a wrong (e.g. unweighted) PSF model biases them by ~1%.
    assert abs(np.median(psf_ratio) - 1) < 0.005 and np.max(np.abs(psf_ratio - 1)) < 0.008
    assert abs(np.median(aperture_ratio) - 1) < 0.005


def test_weighted_coadd_psf_beats_an_unweighted_one(star_warps, patch):
    """The PSF flux with the weight-averaged PSF is 10x closer to the truth than with an unweighted average."""
    warps, stars = star_warps
    coadd, _ = run_coadd(warps, patch, statistic="MEAN")
    from tasks.coadd import coadd_psf

    grid_x, grid_y = np.array([coadd.bbox.center[0]]), np.array([coadd.bbox.center[1]])
    unweighted = coadd_psf(
        [w.psf for w in warps],
        [1.0] * 6,
        np.ones((6, 1), bool),
        grid_x,
        grid_y,
        coadd.bbox,
    )
    bias_unweighted = np.median([psf_flux(coadd.image, coadd.bbox, unweighted, x, y) for x, y in stars]) / FLUX - 1
    bias = np.median([psf_flux(coadd.image, coadd.bbox, coadd.psf, x, y) for x, y in stars]) / FLUX - 1
    assert abs(bias_unweighted) > 0.003  # measured 0.0041
    assert abs(bias) < 0.1 * abs(bias_unweighted)  # measured 0.0002


def test_clipped_mean_rejects_an_artifact_in_one_warp(patch):
    rng = np.random.default_rng(3)
    bbox = patch.outer_bbox
    warps = [make_warp(patch, 200 + i, sigma=1.8, noise=10.0, rng=rng) for i in range(6)]
    streak = np.zeros(bbox.shape, bool)
    streak[100:104, :] = True  # a satellite trail of 4 rows, 300 nJy (30 sigma) in one visit
    warps[2].image[streak] += 300.0
    clipped, task = run_coadd(warps, patch)
    plain, _ = run_coadd(warps, patch, statistic="MEAN")
    sigma = float(np.sqrt(np.median(clipped.variance)))
    assert abs(clipped.image[streak].mean()) < 0.15 * sigma  # gone (noise of the mean over the rows: 0.02 sigma)
    assert plain.image[streak].mean() > 10 * sigma  # a plain mean keeps 1/6 of it
    assert clipped.mask.get_plane("CLIPPED")[streak].mean() > 0.99
    assert clipped.mask.get_plane("CLIPPED")[~streak].mean() < 0.02  # 3-sigma noise of 6 inputs: ~1.5%
    table = clipped.coadd_inputs
    assert table["n_clipped"][table["visit"] == 202][0] >= streak.sum()
    # On the streak the coadd is the mean of the 5 other visits: variance 6/5 of the rest.
    ratio = np.median(clipped.variance[streak]) / np.median(clipped.variance[~streak])
    assert ratio == pytest.approx(6 / 5, rel=0.01)


def test_coadd_noise_matches_its_inverse_variance_weighted_variance(patch):
    rng = np.random.default_rng(8)
    warps = [make_warp(patch, 300 + i, sigma=1.8, noise=n, rng=rng) for i, n in enumerate(NOISES)]
    coadd, task = run_coadd(warps, patch)
    expected = 1.0 / np.sum(1.0 / np.array(NOISES) ** 2)  # inverse-variance weighting
    assert np.median(coadd.variance) == pytest.approx(expected, rel=0.002)
    assert np.mean(coadd.variance) == pytest.approx(expected, rel=0.01)
    noise_ratio = np.std(coadd.image) / math.sqrt(np.mean(coadd.variance))
    assert 0.98 < noise_ratio < 1.02
    assert np.allclose(coadd.coadd_inputs["weight"], 1.0 / np.array(NOISES) ** 2, rtol=1e-6)
    assert task.metadata["clippedFraction"] < 0.01  # pure noise is (almost) never clipped


def test_afw_clipping_without_the_variance_floor_clips_noise(patch):
    """Without the variance floor (afw's recipe) 6 pure-noise inputs lose ~4% of their pixels."""
    rng = np.random.default_rng(8)
    warps = [make_warp(patch, 300 + i, sigma=1.8, noise=n, rng=rng) for i, n in enumerate(NOISES)]
    _, task = run_coadd(warps, patch, clipVarianceFloor=False)
    assert 0.02 < task.metadata["clippedFraction"] < 0.08


def test_stack_clipped_mean_of_known_values():
    values = np.array(
        [[1.0, 5.0], [2.0, 5.0], [3.0, np.nan], [100.0, 5.0], [2.5, 7.0]],
        dtype=np.float32,
    )
    variances = np.full_like(values, 0.01)
    valid = np.isfinite(values)
    weights = np.array([1.0, 1.0, 2.0, 1.0, 1.0])
    mean, var, keep = stack_clipped_mean(values, variances, valid, weights)
    assert keep[:, 0].tolist() == [True, True, True, False, True]
    assert mean[0] == pytest.approx((1 + 2 + 2 * 3 + 2.5) / 5)
    assert var[0] == pytest.approx(0.01 * (1 + 1 + 4 + 1) / 25)
    assert keep[:, 1].tolist() == [
        True,
        True,
        False,
        True,
        False,
    ]  # 7 is 2 away from three 5s
    mean, _, keep = stack_clipped_mean(values, variances, valid, weights, statistic="MEAN")
    assert mean[0] == pytest.approx((1 + 2 + 6 + 100 + 2.5) / 6)
    empty, var, _ = stack_clipped_mean(values[:, :1], variances[:, :1], np.zeros((5, 1), bool), weights)
    assert np.isnan(empty[0]) and np.isnan(var[0])


# Masks -------------------------------------------------------------------------------------------------------


def test_no_data_where_no_warp_covers_the_patch(patch):
    rng = np.random.default_rng(4)
    bbox = patch.outer_bbox
    warps = [make_warp(patch, 400 + i, sigma=1.8, noise=10.0, rng=rng) for i in range(3)]
    hole = np.zeros(bbox.shape, bool)
    hole[:, :60] = True  # no visit covers the first 60 columns
    for i, warp in enumerate(warps):
        gap = hole.copy()
        gap[200 + 10 * i :, :] = True  # rows >= 200 + 10 i missing from visit i: partly covered rows
        warp.image[gap] = np.nan
        warp.variance[gap] = np.nan
        warp.mask.set_plane("NO_DATA", gap)
    coadd, task = run_coadd(warps, patch)
    nodata = coadd.mask.get_plane("NO_DATA")
    missing = hole.copy()
    missing[220:, :] = True
    assert np.array_equal(nodata, missing)
    assert np.isnan(coadd.image[missing]).all() and np.isnan(coadd.variance[missing]).all()
    assert np.isfinite(coadd.image[~missing]).all()
    assert task.metadata["coveredFraction"] == pytest.approx(1 - missing.mean())
    # Rows 200-209: all three visits; rows 210-219: only visit 402 (variance 100).
    assert np.median(coadd.variance[215, 60:]) == pytest.approx(100.0, rel=1e-5)
    assert np.median(coadd.variance[100, 60:]) == pytest.approx(100.0 / 3, rel=1e-5)


def test_mask_planes_are_ored_from_used_inputs_and_bad_planes_propagate_by_weight(
    patch,
):
    rng = np.random.default_rng(5)
    warps = [make_warp(patch, 500 + i, sigma=1.8, noise=10.0, rng=rng) for i in range(6)]
    warps[0].mask.add_plane("STREAK")  # a user plane at a bit the other warps do not have
    warps[0].mask.set_plane("STREAK", Box2I(300, 300, 5, 5))
    warps[1].mask.set_plane("DETECTED", Box2I(250, 250, 4, 4))
    warps[2].mask.set_plane("SAT", Box2I(400, 400, 3, 3))  # 1 of 6: 17% of the weight > 10%
    for warp in warps[3:5]:  # 2 of 6 flagged BAD: rejected, BAD is not propagated
        warp.mask.set_plane("BAD", Box2I(350, 260, 2, 2))
    coadd, _ = run_coadd(warps, patch)
    mask = coadd.mask
    assert mask.get_plane("STREAK")[coadd.bbox.slices(coadd.bbox)][300 - 224 : 305 - 224, 300 - 224 : 305 - 224].all()
    assert mask.get_plane("STREAK").sum() == 25
    assert mask.get_plane("DETECTED").sum() == 16
    assert mask.get_plane("SAT").sum() == 9
    assert mask.get_plane("BAD").sum() == 0
    assert not mask.get_plane("NO_DATA").any()
    # The SAT pixels of visit 502 were not used: the value there is the mean of the other 5 visits.
    sat = mask.get_plane("SAT")
    assert np.median(coadd.variance[sat]) == pytest.approx(100.0 / 5, rel=1e-5)
    # With a higher threshold the single saturated visit does not flag the coadd.
    coadd, _ = run_coadd(warps, patch, maskPropagationThresholds={"SAT": 0.2})
    assert coadd.mask.get_plane("SAT").sum() == 0


# PSF ---------------------------------------------------------------------------------------------------------


def unweighted_moments(kernel: np.ndarray) -> tuple[float, float, float]:
    ny, nx = kernel.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    k = kernel / kernel.sum()
    cx, cy = (k * xx).sum(), (k * yy).sum()
    return (
        float((k * (xx - cx) ** 2).sum()),
        float((k * (yy - cy) ** 2).sum()),
        float((k * (xx - cx) * (yy - cy)).sum()),
    )


def test_coadd_psf_second_moments_are_the_weighted_mean_of_the_inputs(patch):
    rng = np.random.default_rng(6)
    sigmas = np.array([1.4, 1.8, 2.2, 2.6])
    noises = np.array([20.0, 10.0, 5.0, 20.0])  # weights 1 : 4 : 16 : 1
    warps = [make_warp(patch, 600 + i, sigma=s, noise=n, rng=rng) for i, (s, n) in enumerate(zip(sigmas, noises))]
    coadd, _ = run_coadd(warps, patch)
    w = 1.0 / noises**2
    expected = float((w * sigmas**2).sum() / w.sum())
    unweighted = float((sigmas**2).mean())
    assert abs(unweighted / expected - 1) > 0.05  # the test can tell the weighting apart (6.8%)
    for x, y in [coadd.bbox.center, (coadd.bbox.x0 + 20.0, coadd.bbox.y1 - 30.0)]:
        ixx, iyy, ixy = unweighted_moments(coadd.psf.compute_kernel_image(x, y))
        assert ixx == pytest.approx(expected, rel=0.02) and iyy == pytest.approx(expected, rel=0.02)
        assert abs(ixy) < 0.01 * expected


def test_coadd_psf_matches_the_stars_of_the_coadd(star_warps, patch):
    from tasks.image.psf import adaptive_moments

    warps, stars = star_warps
    coadd, task = run_coadd(warps, patch)
    x, y = stars[5]
    stamp_box = Box2I(int(round(x)) - 12, int(round(y)) - 12, 25, 25)
    star = coadd.image[stamp_box.slices(coadd.bbox)].astype(float)
    star_shape = adaptive_moments(star, center=(x - stamp_box.x0, y - stamp_box.y0))
    model, box = coadd.psf.compute_image(x, y)
    psf_shape = adaptive_moments(model, center=(x - box.x0, y - box.y0))
    assert star_shape[0] == pytest.approx(psf_shape[0], rel=0.02)
    assert star_shape[1] == pytest.approx(psf_shape[1], rel=0.02)
    fwhm = coadd.psf.fwhm(*coadd.bbox.center) * PIXEL_SCALE
    assert task.metadata["psfFwhm"] == pytest.approx(fwhm)


# Visit selection ---------------------------------------------------------------------------------------------


def test_max_psf_fwhm_rejects_the_wide_psf_visits(star_warps, patch):
    warps, _ = star_warps
    limit = 1.85 * FWHM_PER_SIGMA * PIXEL_SCALE  # arcsec: keeps sigma 1.6, 1.7, 1.8
    coadd, task = run_coadd(warps, patch, maxPsfFwhm=limit)
    assert coadd.coadd_inputs["visit"].tolist() == [100, 101, 102]
    assert task.metadata["rejectedVisits"] == [103, 104, 105]
    assert task.metadata["rejectedPsfFwhm"] == pytest.approx(
        np.array(SIGMAS[3:]) * FWHM_PER_SIGMA * PIXEL_SCALE, rel=1e-3
    )
    assert coadd.coadd_inputs["psf_fwhm"] == pytest.approx(
        np.array(SIGMAS[:3]) * FWHM_PER_SIGMA * PIXEL_SCALE, rel=1e-3
    )
    with pytest.raises(NoWorkFound, match="maxPsfFwhm"):
        run_coadd(warps, patch, maxPsfFwhm=0.1)


def fake_refs(visits):
    return [SimpleNamespace(data_id={"visit": v, "patch": 4}) for v in visits]


def test_select_visits_prunes_the_quantum_inputs():
    config = AssembleCoaddConfig(selectVisits=[101, 103], doMatchBackgrounds=True)
    connections = AssembleCoaddConnections(config=config)
    inputs = {
        "inputWarps": (connections.inputWarps, fake_refs([100, 101, 102, 103])),
        "backgroundInfoList": (
            connections.backgroundInfoList,
            fake_refs([100, 101, 102, 103]),
        ),
        "skyMap": (connections.skyMap, [SimpleNamespace(data_id={})]),
    }
    adjusted, _ = connections.adjustQuantum(inputs, {}, "assembleCoadd", {"patch": 4})
    assert [r.data_id["visit"] for r in adjusted["inputWarps"][1]] == [101, 103]
    assert [r.data_id["visit"] for r in adjusted["backgroundInfoList"][1]] == [101, 103]
    with pytest.raises(NoWorkFound, match="selectVisits"):
        connections.adjustQuantum(
            {"inputWarps": (connections.inputWarps, fake_refs([100, 102]))},
            {},
            "assembleCoadd",
            {"patch": 4},
        )
    # Without selectVisits every warp stays; without doMatchBackgrounds there is no background input.
    plain = AssembleCoaddConnections(config=AssembleCoaddConfig())
    assert "backgroundInfoList" not in plain.inputs
    kept, _ = plain.adjustQuantum({"inputWarps": (plain.inputWarps, fake_refs([1, 2]))}, {}, "a", {})
    assert len(kept["inputWarps"][1]) == 2


# Backgrounds -------------------------------------------------------------------------------------------------


class PlaneBackground:
    """Test double of a TractBackground: a plane a + b x + c y over tract pixels [nJy]."""

    def __init__(self, a: float, b: float, c: float):
        self.a, self.b, self.c = a, b, c

    def get_image(self, bbox: Box2I) -> np.ndarray:
        yy, xx = np.mgrid[bbox.y0 : bbox.y1, bbox.x0 : bbox.x1]
        return (self.a + self.b * xx + self.c * yy).astype(np.float32)


def plane(bbox: Box2I, a: float, b: float, c: float) -> np.ndarray:
    return PlaneBackground(a, b, c).get_image(bbox)


def test_match_backgrounds_adds_each_visits_difference_model(patch):
    rng = np.random.default_rng(9)
    bbox = patch.outer_bbox
    offsets = [
        (0.0, 0.0, 0.0),
        (40.0, 0.05, -0.02),
        (-25.0, -0.03, 0.04),
        (60.0, 0.0, 0.1),
    ]
    warps = [
        make_warp(
            patch,
            700 + i,
            sigma=1.8,
            noise=10.0,
            rng=rng,
            background=100.0 + plane(bbox, *o),
        )
        for i, o in enumerate(offsets)
    ]
    models = [PlaneBackground(-a, -b, -c) for a, b, c in offsets]  # reference minus visit
    unmatched, _ = run_coadd(warps, patch)
    task = AssembleCoaddTask(config=AssembleCoaddConfig(doMatchBackgrounds=True))
    matched = task.run(warps, patch, backgroundInfoList=models).coaddExposure
    residual = matched.image - 100.0
    assert abs(residual.mean()) < 0.2 and np.std(residual) < 1.1 * 10.0 / 2  # flat: noise of 4 visits only
    assert np.std(unmatched.image - 100.0) > 5.0
    with pytest.raises(Exception, match="one background model per warp"):
        task.run(warps, patch, backgroundInfoList=models[:2])


def test_subtract_background_removes_a_large_scale_gradient_and_keeps_stars(patch):
    rng = np.random.default_rng(10)
    bbox = patch.outer_bbox
    stars = star_grid(bbox, n=3)
    sky = 500.0 + plane(bbox, 0.0, 0.4, -0.25)
    warps = [
        make_warp(
            patch,
            800 + i,
            sigma=1.8,
            noise=10.0,
            rng=rng,
            stars=stars,
            flux=FLUX,
            background=sky,
        )
        for i in range(4)
    ]
    config = AssembleCoaddConfig(doSubtractBackground=True)
    config.subtractBackground.binSize = 64
    task = AssembleCoaddTask(config=config)
    coadd = task.run(warps, patch).coaddExposure
    far = np.ones(bbox.shape, bool)
    yy, xx = np.mgrid[bbox.y0 : bbox.y1, bbox.x0 : bbox.x1]
    for x, y in stars:
        far &= (xx - x) ** 2 + (yy - y) ** 2 > 15**2
    sigma = math.sqrt(float(np.median(coadd.variance)))
    assert abs(np.mean(coadd.image[far])) < 0.2 * sigma
    assert np.std(coadd.image[far]) < 1.1 * sigma  # no gradient left
    ratio = np.median([aperture_flux(coadd.image, bbox, x, y, 12.0) for x, y in stars]) / FLUX
    assert ratio == pytest.approx(1.0, abs=0.01)
    assert task.metadata["backgroundMean"] == pytest.approx(float(sky.mean()), rel=0.01)


def test_subtract_background_of_a_sliver_of_coverage_is_a_constant(patch):
    """Regression (SDSS template coadd of one run): warps covering too few background bins of the patch get a
    constant background instead of NoUsableBinsError."""
    rng = np.random.default_rng(11)
    bbox = patch.outer_bbox
    warps = [make_warp(patch, 900 + i, sigma=1.8, noise=10.0, rng=rng, background=300.0) for i in range(2)]
    for warp in warps:
        warp.mask.add_plane("NO_DATA")
        sliver = np.zeros(bbox.shape, bool)
        sliver[...] = True
        sliver[:100, :40] = False  # data in 100 x 40 pixels: 2 of the 64 px bins
        warp.image[sliver] = np.nan
        warp.variance[sliver] = np.nan
        warp.mask.array[sliver] |= warp.mask.get_plane_bitmask(["NO_DATA"])
    config = AssembleCoaddConfig(doSubtractBackground=True)
    config.subtractBackground.binSize = 64
    task = AssembleCoaddTask(config=config)
    coadd = task.run(warps, patch).coaddExposure
    assert task.metadata["backgroundUndersampled"] is True
    good = np.isfinite(coadd.image)
    assert good[:100, :40].all() and good.sum() == 100 * 40
    assert abs(np.mean(coadd.image[good])) < 0.1 * math.sqrt(float(np.nanmedian(coadd.variance)))


# As a quantum ------------------------------------------------------------------------------------------------


def test_assemble_coadd_runs_as_a_quantum_reading_warps_by_subregion(tmp_path, skymap, patch, star_warps):
    from butler import Butler

    warps, stars = star_warps
    visits = [100 + i for i in range(len(warps))]
    butler = make_test_repo(tmp_path / "repo", {"visit": visits}, run="warps")
    skymap.register(butler, run="skymaps")
    warp_dims = ("skymap", "tract", "patch", "visit", "instrument")
    butler.register_dataset_type("directWarp", warp_dims, "ExposureF")
    for visit, warp in zip(visits, warps):
        butler.put(
            warp,
            "directWarp",
            {
                "skymap": "test",
                "tract": 0,
                "patch": patch.id,
                "visit": visit,
                "instrument": "TestCam",
            },
        )
    butler.close()

    butler = Butler(tmp_path / "repo", collections=["warps", "skymaps"], run="coadds")
    config = AssembleCoaddConfig()
    config.subregionSize = (
        300,
        50,
    )  # several subregions, read through the handles' bbox parameter
    task = AssembleCoaddTask(config=config)
    data_id = {"skymap": "test", "tract": 0, "patch": patch.id, "band": "r"}
    io = {
        "inputWarps": [{"visit": v, "instrument": "TestCam"} for v in reversed(visits)],
        "skyMap": {},
        "coaddExposure": {},
    }
    quantum = make_quantum(task, butler, data_id, io)
    refs = run_test_quantum(task, butler, quantum, mock_run=False)
    assert [r.dataset_type.name for r in refs] == ["deepCoadd"]
    coadd = butler.get("deepCoadd", data_id, collections="coadds")
    direct, _ = run_coadd(warps, patch)  # in memory, one subregion per 256 rows
    assert coadd.bbox == patch.outer_bbox and coadd.filter == FilterLabel(band="r")
    assert np.array_equal(coadd.image, direct.image, equal_nan=True)
    assert np.array_equal(coadd.variance, direct.variance, equal_nan=True)
    assert np.array_equal(coadd.mask.array, direct.mask.array)
    inputs = butler.get("deepCoadd.coaddInputs", data_id, collections="coadds")
    assert inputs["visit"].tolist() == visits
    assert np.array_equal(inputs["n_pixels"], direct.coadd_inputs["n_pixels"])
    assert butler.get("deepCoadd.psf", data_id, collections="coadds") == direct.psf
    butler.close()


def test_quantum_adds_each_visits_background_model_and_skips_visits_without_one(tmp_path, skymap, patch, star_warps):
    from butler import Butler
    from tasks.image import TractBackground

    warps, _ = star_warps
    visits = [100 + i for i in range(len(warps))]
    butler = make_test_repo(tmp_path / "repo", {"visit": visits}, run="warps")
    skymap.register(butler, run="skymaps")
    warp_dims = ("skymap", "tract", "patch", "visit", "instrument")
    butler.register_dataset_type("directWarp", warp_dims, "ExposureF")
    butler.register_dataset_type("psfMatchedWarpBackgroundDiff", warp_dims, "TractBackground")
    offsets = {v: 5.0 * (i + 1) for i, v in enumerate(visits[:-1])}  # the last visit has no model
    for visit, warp in zip(visits, warps):
        data_id = {"skymap": "test", "tract": 0, "patch": patch.id, "visit": visit, "instrument": "TestCam"}
        butler.put(warp, "directWarp", data_id)
        if visit in offsets:
            model = TractBackground.zero(skymap[0].bbox)
            model.coefficients = np.array([offsets[visit]])  # a constant model [nJy]
            butler.put(model, "psfMatchedWarpBackgroundDiff", data_id)
    butler.close()

    butler = Butler(tmp_path / "repo", collections=["warps", "skymaps"], run="coadds")
    task = AssembleCoaddTask(config=AssembleCoaddConfig(doMatchBackgrounds=True))
    data_id = {"skymap": "test", "tract": 0, "patch": patch.id, "band": "r"}
    io = {
        "inputWarps": [{"visit": v, "instrument": "TestCam"} for v in visits],
        "backgroundInfoList": [{"visit": v, "instrument": "TestCam"} for v in reversed(list(offsets))],
        "skyMap": {},
        "coaddExposure": {},
    }
    quantum = make_quantum(task, butler, data_id, io)
    run_test_quantum(task, butler, quantum, mock_run=False)
    coadd = butler.get("deepCoadd", data_id, collections="coadds")
    assert coadd.coadd_inputs["visit"].tolist() == visits[:-1]
    assert task.metadata["visitsWithoutBackgroundModel"] == [visits[-1]]
    shifted = []
    for visit, warp in zip(visits[:-1], warps[:-1]):
        copy = warp.copy()
        copy.image[...] += np.float32(offsets[visit])
        shifted.append(copy)
    expected, _ = run_coadd(shifted, patch)
    assert np.allclose(coadd.image, expected.image, atol=1e-3, equal_nan=True)
    butler.close()
