"""PSF matching (tasks/psf_match.py): the Alard & Lupton basis, the basis widths, and the kernel, background and
candidate rejection of MakeKernelTask against synthetic images whose matching kernel is known exactly.

Stars are pixel-integrated Gaussians; a template of width s_t convolved with a Gaussian of width
``sqrt(s_s^2 - s_t^2)`` (times a flux ratio) is the science image of width s_s, so that Gaussian, sampled at
pixel centres, is the true kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from astropy.table import Table
from scipy import signal, special

from tasks.errors import PsfMatchingError
from tasks.image import Box2I, Exposure, GaussianPsf, MaskedImage
from tasks.image.psf import FWHM_PER_SIGMA, adaptive_moments
from tasks.image.spatial_cells import CandidateStatus
from tasks.psf_match import (
    BackgroundModel,
    KernelCandidate,
    MakeKernelConfig,
    MakeKernelTask,
    PsfMatchConfig,
    alard_lupton_widths,
    count_false_positives,
    generate_alard_lupton_basis,
)

SHAPE = (512, 512)  # (ny, nx)
SKY = 100.0  # [counts / pixel], already subtracted: it only adds noise
S_TEMPLATE, S_SCIENCE = 1.5, 2.5  # Gaussian PSF sigmas [pixels]
RATIO = 0.8  # science / template flux


def pixel_gaussian(n: int, dx: float, dy: float, sigma: float) -> np.ndarray:
    """An (n, n) unit-flux Gaussian integrated over pixels, centred (dx, dy) from the central pixel."""
    edges = np.arange(n + 1) - n // 2 - 0.5
    px = 0.5 * np.diff(special.erf((edges - dx) / (math.sqrt(2) * sigma)))
    py = 0.5 * np.diff(special.erf((edges - dy) / (math.sqrt(2) * sigma)))
    return np.outer(py, px)


def sampled_gaussian(n: int, sigma: float, total: float = 1.0) -> np.ndarray:
    """An (n, n) Gaussian sampled at pixel centres, normalised to ``total``."""
    offsets = np.arange(n) - n // 2
    image = np.exp(-0.5 * (offsets[None, :] ** 2 + offsets[:, None] ** 2) / sigma**2)
    return total * image / image.sum()


def render(xs: np.ndarray, ys: np.ndarray, fluxes: np.ndarray, sigma: Callable[[float], float]) -> np.ndarray:
    """Noiseless image of stars whose PSF sigma depends on x."""
    image = np.zeros(SHAPE)
    for x, y, flux in zip(xs, ys, fluxes):
        s = sigma(x)
        half = int(8 * s) + 2
        ix, iy = int(round(x)), int(round(y))
        stamp = flux * pixel_gaussian(2 * half + 1, x - ix, y - iy, s)
        y0, x0 = iy - half, ix - half
        cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y0 + 2 * half + 1, SHAPE[0]), min(x0 + 2 * half + 1, SHAPE[1])
        image[cy0:cy1, cx0:cx1] += stamp[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return image


def exposure(model: np.ndarray, sigma: float, rng: np.random.Generator, noise: float) -> Exposure:
    """The model plus Gaussian noise of variance ``noise^2 (model + SKY)`` (the variance plane)."""
    variance = noise**2 * (np.maximum(model, 0.0) + SKY)
    image = model + rng.normal(size=SHAPE) * np.sqrt(variance)
    mi = MaskedImage(image.astype(np.float32), variance=variance.astype(np.float32))
    return Exposure(mi, psf=GaussianPsf(41, 41, sigma))


def make_pair(
    n: int = 60,
    *,
    seed: int = 1,
    flux_range: tuple[float, float] = (1e5, 1e6),
    science_sigma: Callable[[float], float] = lambda x: S_SCIENCE,
    background: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    flux_factors: dict[int, float] | None = None,
    noise: float = 1.0,
    shift: float = 0.0,
    margin: float = 12.0,
) -> tuple[Exposure, Exposure, Table]:
    """Template (PSF sigma S_TEMPLATE) and science image (science_sigma(x), RATIO times the flux, the stars moved
    by ``shift`` pixels in x, plus ``background``) of the same ``n`` stars at least ``margin`` pixels from the
    edges, with independent noise, and the star catalogue.  ``flux_factors`` multiplies the science flux of some
    stars (variables)."""
    rng = np.random.default_rng(seed)
    xs = rng.uniform(margin, SHAPE[1] - margin, n)
    ys = rng.uniform(margin, SHAPE[0] - margin, n)
    fluxes = np.exp(rng.uniform(*np.log(flux_range), n))
    science_flux = RATIO * fluxes
    for index, factor in (flux_factors or {}).items():
        science_flux[index] *= factor
    template_model = render(xs, ys, fluxes, lambda x: S_TEMPLATE)
    science_model = render(xs + shift, ys, science_flux, science_sigma)
    if background is not None:
        yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
        science_model = science_model + background(xx, yy)
    template = exposure(template_model, S_TEMPLATE, rng, noise)
    science = exposure(science_model, science_sigma(SHAPE[1] / 2), rng, noise)
    catalog = Table({"id": np.arange(100, 100 + n), "centroid_x": xs, "centroid_y": ys, "psfFlux": fluxes})
    return template, science, catalog


@pytest.fixture(scope="module")
def matched() -> tuple[MakeKernelTask, object, tuple[Exposure, Exposure, Table]]:
    """The default task run on the standard pair: 60 stars, S/N ~ 300-1000."""
    pair = make_pair()
    task = MakeKernelTask()
    return task, task.run(*pair), pair


# The basis ------------------------------------------------------------------------------------------------------


def test_basis_has_one_unit_sum_kernel_and_orthonormal_zero_sum_others():
    basis = generate_alard_lupton_basis(21, [0.7, 1.5, 3.0], [4, 2, 2])
    assert basis.shape == (15 + 6 + 6, 21, 21)
    sums = basis.sum(axis=(1, 2))
    assert sums[0] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(sums[1:], 0.0, atol=1e-12)
    others = basis[1:].reshape(len(basis) - 1, -1)
    np.testing.assert_allclose(others @ others.T, np.eye(len(others)), atol=1e-10)
    # basis[0] is the first Gaussian itself.
    np.testing.assert_allclose(basis[0], sampled_gaussian(21, 0.7), atol=1e-15)


def test_basis_spans_every_gaussian_times_polynomial_term():
    basis = generate_alard_lupton_basis(21, [1.0, 2.0], [2, 1]).reshape(-1, 21 * 21)
    offsets = np.arange(21) - 10.0
    x, y = offsets[None, :], offsets[:, None]
    for sigma, p, q in [(1.0, 2, 0), (1.0, 1, 1), (2.0, 0, 0), (2.0, 0, 1)]:
        term = (np.exp(-0.5 * (x * x + y * y) / sigma**2) * x**p * y**q).ravel()
        coefficients = np.linalg.lstsq(basis.T, term, rcond=None)[0]
        assert np.abs(basis.T @ coefficients - term).max() < 1e-10 * np.abs(term).max()


def test_basis_drops_linearly_dependent_terms():
    # A repeated width adds nothing; a 3x3 kernel holds at most 9 independent images.
    assert len(generate_alard_lupton_basis(21, [1.0, 1.0], [2, 2])) == 6
    assert len(generate_alard_lupton_basis(3, [1.0], [4])) == 9


@pytest.mark.parametrize(
    ("size", "sigmas", "degrees"), [(20, [1.0], [2]), (21, [1.0, 2.0], [2]), (21, [0.0], [2]), (21, [1.0], [-1])]
)
def test_basis_rejects_invalid_arguments(size, sigmas, degrees):
    with pytest.raises(ValueError):
        generate_alard_lupton_basis(size, sigmas, degrees)


# The widths -----------------------------------------------------------------------------------------------------


def test_widths_are_centred_on_the_matching_sigma():
    config = PsfMatchConfig()
    sigmas, degrees, size = alard_lupton_widths(config, FWHM_PER_SIGMA * 1.5, FWHM_PER_SIGMA * 2.5)
    np.testing.assert_allclose(sigmas, [1.0, 2.0, 4.0], rtol=1e-12)  # sqrt(2.5^2 - 1.5^2) = 2, beta = 2
    assert degrees == [4, 2, 2]
    assert size == 35  # int(6 * 5.887) = 35, made odd


def test_widths_never_go_below_the_minimum_sigma():
    reference, target = FWHM_PER_SIGMA * 1.5, FWHM_PER_SIGMA * math.hypot(1.5, 0.8)  # sigma_match = 0.8
    sigmas, degrees, _ = alard_lupton_widths(PsfMatchConfig(), reference, target)
    np.testing.assert_allclose(sigmas, [0.7, 1.4, 2.8])  # 0.4 would be below alardMinSig; the ratio 2 is kept
    assert degrees == [4, 2, 2]


def test_kernel_size_is_odd_and_clamped():
    config = PsfMatchConfig()
    assert alard_lupton_widths(config, 2.0, 4.0)[2] == 25  # 6 * 4 = 24 -> 25
    assert alard_lupton_widths(config, 2.0, 10.0)[2] == 35  # 60 -> kernelSizeMax
    assert alard_lupton_widths(config, 1.0, 2.0)[2] == 21  # 12 -> kernelSizeMin


def test_deconvolution_widths_when_the_target_is_not_wider():
    config = PsfMatchConfig()
    for target in (3.0, 4.0):  # equal or narrower target
        sigmas, degrees, size = alard_lupton_widths(config, 4.0, target)
        np.testing.assert_allclose(sigmas, [0.4, 0.8, 1.6])
        assert degrees == [3, 3, 3]
        assert size == 25


def test_fixed_widths_without_scaling_or_without_a_psf():
    config = PsfMatchConfig(scaleByFwhm=False, kernelSize=19)
    assert alard_lupton_widths(config, 3.0, 5.0) == ([0.7, 1.5, 3.0], [4, 2, 2], 19)
    assert alard_lupton_widths(PsfMatchConfig(), math.nan, 5.0) == ([0.7, 1.5, 3.0], [4, 2, 2], 21)


# The kernel -----------------------------------------------------------------------------------------------------


def test_kernel_sum_is_the_flux_ratio(matched):
    task, result, _ = matched
    kernel = result.psfMatchingKernel
    assert task.metadata["spatialKernelSum"] == pytest.approx(RATIO, rel=3e-3)
    assert kernel.kernel_sum(256.0, 256.0) == pytest.approx(RATIO, rel=3e-3)
    # The kernel sum is spatially constant.
    assert np.ptp(kernel.kernel_sum(np.array([30.0, 480.0, 256.0]), np.array([30.0, 480.0, 100.0]))) < 1e-12


def test_kernel_matches_the_template_psf_to_the_science_psf(matched):
    """K * P_template = RATIO * P_science within 1% of the peak, across the image.  (This is what the data
    constrain: the kernel's own image also has pixel-scale structure at frequencies the template PSF does not
    transmit, which only the noise determines -- see the next test for the kernel image itself.)"""
    _, result, _ = matched
    n = result.psfMatchingKernel.shape[0]
    p_template = pixel_gaussian(n + 24, 0.0, 0.0, S_TEMPLATE)
    p_science = RATIO * pixel_gaussian(n + 24, 0.0, 0.0, S_SCIENCE)
    for x, y in [(256, 256), (128, 128), (384, 384), (128, 384), (384, 128)]:
        matched_psf = signal.convolve(p_template, result.psfMatchingKernel.compute_image(x, y), mode="same")
        assert np.abs(matched_psf - p_science).max() < 0.01 * p_science.max(), (x, y)


def test_kernel_image_is_the_true_gaussian_in_the_low_noise_limit():
    """With the noise scaled down 1000 times the kernel image itself is the sampled Gaussian of width
    sqrt(2.5^2 - 1.5^2) = 2 within 1% of its peak (at S/N ~ 1000 its pixel-scale noise is ~10-30% of the peak):
    the solver has no bias, and what the basis cannot represent is far below 1%."""
    template, science, catalog = make_pair(noise=1e-3)
    result = MakeKernelTask().run(template, science, catalog)
    n = result.psfMatchingKernel.shape[0]
    truth = sampled_gaussian(n, math.sqrt(S_SCIENCE**2 - S_TEMPLATE**2), RATIO)
    for x, y in [(256, 256), (100, 400), (400, 100)]:
        kernel = result.psfMatchingKernel.compute_image(x, y)
        assert np.abs(kernel - truth).max() < 0.01 * truth.max(), (x, y)


def test_residuals_are_the_noise(matched):
    task, _, _ = matched
    md = task.metadata
    for kind in ("LOCAL", "SPATIAL"):
        assert abs(md[f"KCDiffimMean_{kind}_MEDIAN"]) < 0.03
        assert abs(md[f"KCDiffimMedian_{kind}_MEDIAN"]) < 0.03
        assert md[f"KCDiffimStDev_{kind}_MEDIAN"] == pytest.approx(1.0, abs=0.03)
        assert md[f"KCDiffimChiSq_{kind}_MEDIAN"] == pytest.approx(1.0, abs=0.05)
        assert md[f"KCDiffimIQR_{kind}_MEDIAN"] == pytest.approx(1.349, abs=0.05)
    assert md["nRejectedKernelSum"] + md["nRejectedLocal"] + md["nRejectedSpatial"] <= 2


def test_kernel_follows_the_convolution_convention():
    """science = K * template with * the true convolution (scipy.signal.convolve): stars moved by +1 pixel in x in
    the science image put the kernel's centroid at +1 in x."""
    template, science, catalog = make_pair(30, seed=3, shift=1.0)
    kernel = MakeKernelTask().run(template, science, catalog).psfMatchingKernel.compute_image(256, 256)
    offsets = np.arange(kernel.shape[0]) - kernel.shape[0] // 2
    assert np.sum(kernel.sum(axis=0) * offsets) / kernel.sum() == pytest.approx(1.0, abs=0.02)
    assert np.sum(kernel.sum(axis=1) * offsets) / kernel.sum() == pytest.approx(0.0, abs=0.02)


def test_spatial_kernel_follows_a_varying_psf():
    """Science PSF sigma 2.2 -> 2.8 along x: the kernel's second moment is sigma_s(x)^2 - sigma_t^2 at both ends."""

    def science_sigma(x: float) -> float:
        return 2.2 + 0.6 * x / (SHAPE[1] - 1)

    template, science, catalog = make_pair(100, seed=2, science_sigma=science_sigma)
    task = MakeKernelTask()
    kernel = task.run(template, science, catalog).psfMatchingKernel
    assert task.metadata["spatialKernelOrder"] == 2
    widths = {}
    for x in (77.0, 434.0):
        ixx, iyy, _ = adaptive_moments(kernel.compute_image(x, 256.0))
        widths[x] = 0.5 * (ixx + iyy)
        assert widths[x] == pytest.approx(science_sigma(x) ** 2 - S_TEMPLATE**2, rel=0.02), x
    assert widths[434.0] - widths[77.0] > 2.0  # 2.79 px^2 of variation, not a constant kernel


def test_per_pixel_variance_weighting_also_recovers_the_ratio():
    template, science, catalog = make_pair(seed=4)
    task = MakeKernelTask(config=MakeKernelConfig(constantVarianceWeighting=False))
    task.run(template, science, catalog)
    assert task.metadata["spatialKernelSum"] == pytest.approx(RATIO, rel=3e-3)


# Candidates and rejection -----------------------------------------------------------------------------------------


def test_variable_star_is_rejected_by_its_kernel_sum():
    n = 60
    template, science, catalog = make_pair(n, seed=5, flux_factors={0: 3.0})
    catalog["psfFlux"][0] = 1e7  # rate it first in its cell, so it is used
    task = MakeKernelTask()
    result = task.run(template, science, catalog)
    variable = [c for c in result.kernelCellSet.candidates(ignore_bad=False) if c.source_id == 100]
    assert len(variable) == 1
    assert variable[0].status is CandidateStatus.BAD
    assert variable[0].kernel_sum == pytest.approx(3 * RATIO, rel=0.05)
    assert task.metadata["nRejectedKernelSum"] >= 1
    assert 100 not in set(result.kernelSources["id"])
    assert task.metadata["spatialKernelSum"] == pytest.approx(RATIO, rel=3e-3)


def test_faint_stars_are_not_rejected_for_their_noise():
    """Kernel sums of faint stars scatter more; they are judged by their own errors, not the bright stars'."""
    template, science, catalog = make_pair(80, seed=6, flux_range=(3e3, 1e6))
    task = MakeKernelTask()
    task.run(template, science, catalog)
    assert task.metadata["nRejectedKernelSum"] <= 1


def test_kernel_sum_errors_describe_the_scatter_of_the_kernel_sums():
    template, science, catalog = make_pair(120, seed=15, flux_range=(3e3, 1e6))
    result = MakeKernelTask(config=MakeKernelConfig(nStarPerCell=10)).run(template, science, catalog)
    fitted = [c for c in result.kernelCellSet.candidates(ignore_bad=False) if c.coefficients is not None]
    z = np.array([(c.kernel_sum - RATIO) / c.kernel_sum_error for c in fitted])
    errors = np.array([c.kernel_sum_error for c in fitted])
    assert len(z) > 80 and errors.max() > 5 * errors.min()  # faint and bright stars
    assert 0.7 < np.std(z) < 1.3


def test_spatial_order_follows_the_number_of_stars():
    task = MakeKernelTask()
    task.run(*make_pair(6, seed=7, margin=40.0))
    assert task.metadata["nGoodCandidates"] == 6
    assert task.metadata["spatialKernelOrder"] == 0  # 6 < 3 candidates x 3 terms of order 1
    task = MakeKernelTask()
    task.run(*make_pair(60, seed=7))
    assert task.metadata["spatialKernelOrder"] == 2


def test_differential_background_is_recovered():
    def background(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return 20.0 + 0.01 * x - 0.02 * y

    template, science, catalog = make_pair(seed=8, background=background)
    task = MakeKernelTask(config=MakeKernelConfig(fitForBackground=True))
    result = task.run(template, science, catalog)
    model = result.backgroundModel
    assert task.metadata["spatialBgOrder"] == 1
    yy, xx = np.mgrid[32:480, 32:480]
    error = model.get_image(Box2I(32, 32, 448, 448)) - background(xx, yy)
    assert np.abs(error).max() < 0.5  # the background spans 20 +- 7.7; the pixel noise is 10
    assert model(256.0, 256.0) == pytest.approx(background(256.0, 256.0), abs=0.2)
    assert task.metadata["spatialKernelSum"] == pytest.approx(RATIO, rel=3e-3)
    # Without the background fit, every star's residuals are biased and rejected.
    with pytest.raises(PsfMatchingError, match="fitForBackground"):
        MakeKernelTask().run(template, science, catalog)


def test_masked_pixels_are_ignored_and_masked_cores_skipped():
    template, science, catalog = make_pair(seed=9, margin=40.0)
    catalog["psfFlux"][:2] = 1e7  # first in their cells
    x, y = int(round(catalog["centroid_x"][0])), int(round(catalog["centroid_y"][0]))
    # Garbage flagged BAD and a NaN beside star 0 (outside its core), SAT in the core of star 1.
    science.image[y + 10 : y + 13, x - 3 : x + 4] = 1e6
    science.mask.set_plane("BAD", Box2I(x - 3, y + 10, 7, 3))
    template.image[y - 12, x + 2] = np.nan  # unflagged, but not finite either
    x1, y1 = int(round(catalog["centroid_x"][1])), int(round(catalog["centroid_y"][1]))
    template.mask.set_plane("SAT", Box2I(x1, y1, 1, 1))
    task = MakeKernelTask()
    result = task.run(template, science, catalog)
    source_ids = {c.source_id for c in result.kernelCellSet.candidates(ignore_bad=False)}
    assert 101 not in source_ids
    star0 = [c for c in result.kernelCellSet.candidates(ignore_bad=False) if c.source_id == 100]
    assert star0 and star0[0].residual_stats["LOCAL"]["KCDiffimStDev"] < 1.1
    assert task.metadata["spatialKernelSum"] == pytest.approx(RATIO, rel=3e-3)


def test_stamps_shrink_near_the_edges():
    """Kernel 35 (h = 17): full science stamps of half-size 34 need 51 pixels of room; a star 30 pixels from the
    edge gets a science stamp of half-size 13, one 20 pixels from it (less than 17 + 9) is skipped."""
    template, science, catalog = make_pair(40, seed=14, margin=60.0)
    # Positions only (no stars there): the stamps are what is tested.
    catalog.add_row({"id": 1, "centroid_x": 30.2, "centroid_y": 256.0, "psfFlux": 1e5})
    catalog.add_row({"id": 2, "centroid_x": 256.0, "centroid_y": 491.0, "psfFlux": 1e5})
    result = MakeKernelTask().run(template, science, catalog)
    widths = {c.source_id: c.width for c in result.kernelCellSet.candidates(ignore_bad=False)}
    assert widths[1] == 27
    assert 2 not in widths
    assert set(widths.values()) == {69, 27}


def test_kernel_sources_table_lists_the_stars_of_the_fit(matched):
    task, result, (_, _, catalog) = matched
    table = result.kernelSources
    assert table.colnames == [
        "id", "centroid_x", "centroid_y", "kernel_sum", "KCDiffimMean_SPATIAL", "KCDiffimStDev_SPATIAL"
    ]
    assert len(table) == task.metadata["nGoodCandidates"]
    good = {c.source_id for c in result.kernelCellSet.candidates() if c.status is CandidateStatus.GOOD}
    assert set(table["id"]) == good
    rows = {int(i): k for k, i in enumerate(catalog["id"])}
    for row in table:
        assert row["centroid_x"] == catalog["centroid_x"][rows[int(row["id"])]]
    np.testing.assert_allclose(table["kernel_sum"], RATIO, rtol=0.05)


def test_metadata_describes_the_basis_and_the_fit(matched):
    task, _, _ = matched
    md = task.metadata
    assert md["ALBasisNGauss"] == 3
    assert md["ALBasisDegGauss"] == [4, 2, 2]
    np.testing.assert_allclose(md["ALBasisSigGauss"], [1.0, 2.0, 4.0], rtol=0.01)
    assert md["ALKernelSize"] == 35
    assert 1 < md["spatialConditionNum"] < PsfMatchConfig().maxConditionNumber
    assert md["spatialBgOrder"] == 0
    assert md["nCandidates"] >= md["nGoodCandidates"] >= 30
    for kind in ("LOCAL", "SPATIAL"):
        for name in ("KCDiffimMean", "KCDiffimMedian", "KCDiffimStDev", "KCDiffimIQR", "KCDiffimChiSq"):
            for stat in ("MEAN", "MEDIAN", "STDEV"):
                assert math.isfinite(md[f"{name}_{kind}_{stat}"])


def test_preconvolved_science_widens_the_target():
    template, science, catalog = make_pair(30, seed=10)
    task = MakeKernelTask()
    task.run(template, science, catalog, preconvolved=True)
    expected = math.sqrt(2.0 * S_SCIENCE**2 - S_TEMPLATE**2) / 2.0  # the narrowest of 3 widths, beta = 2
    assert task.metadata["ALBasisSigGauss"][0] == pytest.approx(expected, rel=0.01)


# Errors -------------------------------------------------------------------------------------------------------------


def test_too_few_stars_raise_a_psf_matching_error():
    template, science, catalog = make_pair(2, seed=11)
    with pytest.raises(PsfMatchingError, match="too few"):
        MakeKernelTask().run(template, science, catalog)
    assert issubclass(PsfMatchingError, RuntimeError)


def test_too_few_good_candidates_count_the_rejections():
    template, science, catalog = make_pair(4, seed=12, flux_factors={0: 3.0, 1: 0.3})
    with pytest.raises(PsfMatchingError, match=r"too few good kernel candidates.*rejected \d+ for their kernel sum"):
        MakeKernelTask(config=MakeKernelConfig(singleKernelClipping=False, maxKsumSigma=1.0)).run(
            template, science, catalog
        )


def test_a_catalogue_without_a_rating_is_refused():
    template, science, catalog = make_pair(10, seed=13)
    del catalog["psfFlux"]
    with pytest.raises(PsfMatchingError, match="psfFlux"):
        MakeKernelTask().run(template, science, catalog)


@pytest.mark.parametrize(
    "overrides",
    [
        {"alardSigGauss": [0.7, 1.5]},
        {"alardDegGauss": [4, 2, 2, 2]},
        {"alardNGauss": 2},
        {"kernelSize": 20},
        {"kernelSizeMin": 37},
        {"alardSigGauss": [0.7, -1.5, 3.0]},
    ],
)
def test_invalid_configs_are_refused(overrides):
    config = MakeKernelConfig(**overrides)
    with pytest.raises(ValueError):
        config.validate()
    with pytest.raises(ValueError):
        MakeKernelTask(config=config)


def test_kernel_candidate_needs_concentric_stamps():
    image = MaskedImage(np.zeros((64, 64), dtype=np.float32))
    science = image[Box2I(20, 20, 11, 11)]
    with pytest.raises(PsfMatchingError, match="concentric"):
        KernelCandidate(25.0, 25.0, image[Box2I(10, 10, 31, 29)], science, rating=1.0)
    with pytest.raises(PsfMatchingError, match="concentric"):
        KernelCandidate(25.0, 25.0, image[Box2I(11, 10, 31, 31)], science, rating=1.0)
    candidate = KernelCandidate(25.0, 25.0, image[Box2I(10, 10, 31, 31)], science, rating=1.0, source_id=7)
    assert (candidate.width, candidate.kernel_half_size, candidate.source_id) == (11, 10, 7)


# Background model and false positives ---------------------------------------------------------------------------


def test_background_model_image_matches_its_values():
    bbox = Box2I(10, 20, 50, 40)
    model = BackgroundModel(np.array([1.0, 2.0, -3.0, 0.5, 0.25, -0.75]), 2, bbox)
    yy, xx = np.mgrid[20:60, 10:60]
    np.testing.assert_allclose(model.get_image(), model(xx, yy), rtol=1e-6)
    assert model.get_image().dtype == np.float32
    assert np.all(BackgroundModel.zero(bbox).get_image(Box2I(0, 0, 5, 4)) == 0.0)
    with pytest.raises(ValueError):
        BackgroundModel(np.zeros(2), 1, bbox)


def test_count_false_positives():
    dia_x, dia_y = np.array([10.0, 50.0, 90.0, 130.0]), np.array([10.0, 50.0, 90.0, 130.0])
    sources = (np.array([10.5, 90.0, 300.0]), np.array([10.0, 91.5, 300.0]))
    references = (np.array([10.0, 52.5]), np.array([11.0, 50.0]))
    counts = count_false_positives(dia_x, dia_y, sources, references, match_radius=2.0)
    assert counts == {
        "NFalsePositivesTotal": 4,
        "NFalsePositivesRefAssociated": 1,  # (10, 10); (50, 50) is 2.5 px from its reference
        "NFalsePositivesSrcAssociated": 2,  # (10, 10) and (90, 90)
        "NFalsePositivesUnassociated": 2,  # (50, 50) and (130, 130)
    }
    none = count_false_positives(dia_x, dia_y, None, None, match_radius=2.0)
    assert none["NFalsePositivesUnassociated"] == 4 and none["NFalsePositivesSrcAssociated"] == 0
    empty = count_false_positives([], [], sources, references, match_radius=2.0)
    assert empty == dict.fromkeys(counts, 0)
    with pytest.raises(ValueError):
        count_false_positives(dia_x, dia_y, None, None, match_radius=-1.0)
