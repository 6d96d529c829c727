"""AlardLuptonSubtractTask (tasks/subtract.py) on synthetic star fields whose answer is known exactly.

Stars are pixel-integrated Gaussians.  The "narrow" pair has a template of PSF sigma 1.5 px in nJy (PhotoCalib
1 nJy/nJy) and a science image of sigma 2.3 px in counts with ``RATIO`` counts per template nJy (PhotoCalib
``1 / RATIO`` nJy/count); the "broad" pair swaps the widths.  Both images get independent Gaussian noise of a
constant, known variance and their variance planes hold exactly that variance, so the noise of a correct
difference image is predicted pixel by pixel.  The template is noisier than the science image (400 vs 25) so the
convolved template's noise correlations are large enough to see (lag-1 ~ 0.2) before decorrelation.

A transient of known flux sits in the science image only, at least 30 px from every star.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table
from scipy import signal, special

import tasks.subtract as subtract
from graph.errors import NoWorkFound
from tasks.errors import PsfMatchingError
from tasks.image import Box2I, Exposure, GaussianPsf, Mask, MaskedImage, PhotoCalib
from tasks.image.convolve import kernel_radius
from tasks.subtract import (
    AlardLuptonSubtractConfig,
    AlardLuptonSubtractTask,
    decorrelation_kernel,
    difference_footprint_ratio,
    template_coverage,
)

SHAPE = (512, 512)  # (ny, nx)
NARROW, BROAD = 1.5, 2.3  # PSF sigmas [pixels]
RATIO = 0.8  # science counts per template nJy: the true kernel sum of convolveTemplate
VAR_TEMPLATE = 400.0  # [nJy^2]
VAR_SCIENCE = 25.0  # [counts^2]
N_STARS = 60
STAR_FLUX = (3e4, 3e5)  # template fluxes [nJy], log-uniform
TRANSIENT = (300.4, 211.7)  # (x, y) [pixels]
TRANSIENT_FLUX = 6000.0  # [science counts]
APERTURE = 10.0  # aperture radius for the transient [pixels]; > 4 sigma of either PSF


# Synthetic images -----------------------------------------------------------------------------------------------


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


def render(xs: np.ndarray, ys: np.ndarray, fluxes: np.ndarray, sigma: float) -> np.ndarray:
    """Noiseless image of point sources of PSF ``sigma`` (exactly zero beyond 8 sigma of every source)."""
    image = np.zeros(SHAPE)
    half = int(8 * sigma) + 2
    for x, y, flux in zip(xs, ys, fluxes):
        ix, iy = int(round(x)), int(round(y))
        stamp = flux * pixel_gaussian(2 * half + 1, x - ix, y - iy, sigma)
        y0, x0 = iy - half, ix - half
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y0 + 2 * half + 1, SHAPE[0]), min(x0 + 2 * half + 1, SHAPE[1])
        image[cy0:cy1, cx0:cx1] += stamp[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return image


def make_exposure(
    model: np.ndarray, sigma: float, variance: float, calibration: float, rng: np.random.Generator
) -> Exposure:
    """``model`` plus white noise of ``variance``; the variance plane is exactly ``variance``; DETECTED where the
    noiseless model exceeds 2 sigma of the noise."""
    image = model + rng.normal(size=SHAPE) * math.sqrt(variance)
    mask = Mask(SHAPE)
    mask.set_plane("DETECTED", model > 2.0 * math.sqrt(variance))
    masked = MaskedImage(image.astype(np.float32), mask, np.full(SHAPE, variance, dtype=np.float32))
    return Exposure(masked, psf=GaussianPsf(41, 41, sigma), photo_calib=PhotoCalib(calibration))


@dataclass
class Pair:
    template: Exposure
    science: Exposure
    sources: Table
    template_model: np.ndarray
    science_model: np.ndarray

    def source_free(self) -> np.ndarray:
        """Pixels where neither noiseless model has any flux (stars and the transient)."""
        return (np.abs(self.template_model) < 1e-6) & (np.abs(self.science_model) < 1e-6)


def star_positions(rng: np.random.Generator, n: int, margin: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions at least ``margin`` px from the edges and 30 px from the transient."""
    xs, ys = [], []
    while len(xs) < n:
        x, y = rng.uniform(margin, SHAPE[1] - margin), rng.uniform(margin, SHAPE[0] - margin)
        if math.hypot(x - TRANSIENT[0], y - TRANSIENT[1]) > 30.0:
            xs.append(x)
            ys.append(y)
    return np.array(xs), np.array(ys)


def source_table(xs: np.ndarray, ys: np.ndarray, science_flux: np.ndarray, science_sigma: float) -> Table:
    """The science ``src`` columns the kernel-source selector reads; PSF-flux errors of a sky-limited source."""
    n = len(xs)
    error = math.sqrt(VAR_SCIENCE * 4.0 * math.pi * science_sigma**2)
    return Table(
        {
            "id": np.arange(1, n + 1),
            "centroid_x": xs,
            "centroid_y": ys,
            "psfFlux": science_flux,
            "psfFluxErr": np.full(n, error),
            "flag_edge": np.zeros(n, bool),
            "flag_saturated": np.zeros(n, bool),
            "centroid_flag": np.zeros(n, bool),
            "psfFlux_flag": np.zeros(n, bool),
            "parent": np.zeros(n, np.int64),
            "deblend_nChild": np.zeros(n, np.int32),
        }
    )


def make_pair(template_sigma: float, science_sigma: float, *, seed: int, n: int = N_STARS) -> Pair:
    """Template (nJy) and science image (counts, ``RATIO`` times the flux, plus the transient) of ``n`` stars."""
    rng = np.random.default_rng(seed)
    xs, ys = star_positions(rng, n)
    fluxes = np.exp(rng.uniform(*np.log(STAR_FLUX), n))
    template_model = render(xs, ys, fluxes, template_sigma)
    science_model = render(xs, ys, RATIO * fluxes, science_sigma)
    science_model += render(np.array([TRANSIENT[0]]), np.array([TRANSIENT[1]]), np.array([TRANSIENT_FLUX]),
                            science_sigma)
    template = make_exposure(template_model, template_sigma, VAR_TEMPLATE, 1.0, rng)
    science = make_exposure(science_model, science_sigma, VAR_SCIENCE, 1.0 / RATIO, rng)
    return Pair(template, science, source_table(xs, ys, RATIO * fluxes, science_sigma), template_model, science_model)


# Statistics -----------------------------------------------------------------------------------------------------


def usable(difference: Exposure, free: np.ndarray) -> np.ndarray:
    return free & np.isfinite(difference.image) & ~difference.mask.get_plane("NO_DATA", missing_ok=True)


def noise_ratio(difference: Exposure, good: np.ndarray) -> float:
    """Standard deviation of difference / sqrt(variance plane) over ``good`` pixels."""
    return float(np.std(difference.image[good] / np.sqrt(difference.variance[good])))


def lag_correlations(image: np.ndarray, good: np.ndarray, lag: int) -> tuple[float, float]:
    """Normalised autocorrelation at offsets (lag, 0) and (0, lag) over pairs of ``good`` pixels."""
    values = np.where(good, image - image[good].mean(), 0.0)
    variance = float(np.mean(values[good] ** 2))
    along_x = (values[:, lag:] * values[:, :-lag])[good[:, lag:] & good[:, :-lag]].mean() / variance
    along_y = (values[lag:] * values[:-lag])[good[lag:] & good[:-lag]].mean() / variance
    return float(along_x), float(along_y)


def aperture_flux(exposure: Exposure, x: float, y: float, radius: float) -> tuple[float, float]:
    """Sum of the pixels whose centres are within ``radius`` of (x, y), and its error from the variance plane
    (exact for white noise)."""
    yy, xx = np.mgrid[0 : exposure.shape[0], 0 : exposure.shape[1]]
    x0, y0 = exposure.xy0
    inside = (xx + x0 - x) ** 2 + (yy + y0 - y) ** 2 <= radius**2
    return float(exposure.image[inside].sum()), math.sqrt(float(exposure.variance[inside].sum()))


def psf_flux(exposure: Exposure, x: float, y: float) -> tuple[float, float]:
    """PSF-weighted flux of a point source at (x, y) with the exposure's own PSF model, and its error from the
    variance plane (exact for white noise)."""
    psf, box = exposure.psf.compute_image(x, y)
    data = exposure.image[box.slices(exposure.bbox)].astype(np.float64)
    variance = exposure.variance[box.slices(exposure.bbox)].astype(np.float64)
    norm = float(np.sum(psf**2))
    return float(np.sum(data * psf)) / norm, math.sqrt(float(np.sum(variance * psf**2))) / norm


# Shared runs ----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    task: AlardLuptonSubtractTask
    result: object
    pair: Pair

    @property
    def metadata(self):
        return self.task.metadata


def run_task(pair: Pair, **overrides) -> Run:
    config = AlardLuptonSubtractConfig(**overrides)
    config.validate()
    task = AlardLuptonSubtractTask(config=config)
    return Run(task, task.run(pair.template, pair.science, pair.sources), pair)


@pytest.fixture(scope="module")
def narrow_pair() -> Pair:
    """Template sigma 1.5 px, science sigma 2.3 px."""
    return make_pair(NARROW, BROAD, seed=1)


@pytest.fixture(scope="module")
def broad_pair() -> Pair:
    """Template sigma 2.3 px, science sigma 1.5 px."""
    return make_pair(BROAD, NARROW, seed=2)


@pytest.fixture(scope="module")
def template_run(narrow_pair) -> Run:
    """The default task (mode auto, decorrelated) on the narrow pair."""
    return run_task(narrow_pair)


@pytest.fixture(scope="module")
def science_run(broad_pair) -> Run:
    """The default task (mode auto, decorrelated) on the broad pair."""
    return run_task(broad_pair)


@pytest.fixture(scope="module")
def raw_run(narrow_pair) -> Run:
    """The narrow pair without decorrelation."""
    return run_task(narrow_pair, doDecorrelation=False)


@pytest.fixture(scope="module")
def spatial_run(narrow_pair) -> tuple[Run, int]:
    """The narrow pair with the decorrelation kernel on a 4 x 4 grid; also the number of kernels computed."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return decorrelation_kernel(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subtract, "decorrelation_kernel", counting)
        run = run_task(narrow_pair, spatiallyVaryingDecorrelation=True, decorrelationGridSpacing=128)
    return run, len(calls)


# 1. convolveTemplate --------------------------------------------------------------------------------------------


def test_auto_mode_convolves_the_narrower_template(template_run):
    assert template_run.metadata["mode"] == "convolveTemplate"
    assert template_run.metadata["templatePsfSize"] < template_run.metadata["sciencePsfSize"]
    assert template_run.metadata["nKernelSourcesSelected"] == N_STARS


def test_kernel_sum_is_the_flux_ratio(template_run):
    assert template_run.metadata["kernelSum"] == pytest.approx(RATIO, rel=0.005)
    kernel = template_run.result.psfMatchingKernel
    assert kernel.kernel_sum(256.0, 256.0) == pytest.approx(RATIO, rel=0.005)


def test_decorrelated_noise_matches_the_variance_plane(template_run):
    difference = template_run.result.difference
    good = usable(difference, template_run.pair.source_free())
    assert good.sum() > 0.5 * good.size
    assert 0.97 <= noise_ratio(difference, good) <= 1.05
    # The plane is the white-noise variance var_S + k^2 var_T, not the (~9x smaller) pre-decorrelation one.  (3%:
    # with doMeasureNoiseCorrelation the input variances are rescaled by their measured sky noise, which undetected
    # star wings inflate by ~1.4% here.)
    expected = VAR_SCIENCE + RATIO**2 * VAR_TEMPLATE
    assert np.median(difference.variance[good]) == pytest.approx(expected, rel=0.03)
    assert 0.97 <= template_run.metadata["differenceNoiseRatio"] <= 1.05


def test_stars_are_subtracted(template_run):
    run = template_run
    assert abs(run.metadata["differenceFootprintRatioMean"]) < 0.01
    assert run.metadata["differenceFootprintRatioStdev"] < 0.02
    # The same metric with nothing subtracted is ~1: the bound above can fail.
    x, y = np.asarray(run.pair.sources["centroid_x"]), np.asarray(run.pair.sources["centroid_y"])
    unsubtracted, _ = difference_footprint_ratio(
        run.pair.science, run.pair.science, x, y, bad_mask_planes=["NO_DATA"]
    )
    assert unsubtracted > 0.8


def test_convolve_template_outputs_have_the_science_psf_and_calibration(template_run, raw_run):
    science = template_run.pair.science
    result = template_run.result
    assert raw_run.result.difference.psf is science.psf  # before decorrelation (see the PSF tests below)
    assert result.matchedTemplate.psf is science.psf
    assert result.difference.photo_calib == science.photo_calib
    assert result.matchedTemplate.photo_calib == science.photo_calib
    assert result.difference.bbox == science.bbox
    assert result.matchedTemplate.bbox == science.bbox


def test_matched_template_carries_the_science_flux(template_run):
    """The convolved template has the stars at the science image's flux (template flux times the kernel sum):
    aperture fluxes of the brightest stars (neighbours included) match the noiseless science model's within 1%."""
    pair, matched = template_run.pair, template_run.result.matchedTemplate
    model = pair.science.replace(MaskedImage(pair.science_model.astype(np.float32)))
    brightest = np.argsort(-np.asarray(pair.sources["psfFlux"]))[:10]
    for row in pair.sources[brightest]:
        flux, _ = aperture_flux(matched, row["centroid_x"], row["centroid_y"], APERTURE)
        expected, _ = aperture_flux(model, row["centroid_x"], row["centroid_y"], APERTURE)
        assert flux == pytest.approx(expected, rel=0.01)


def test_transient_flux_in_the_difference_convolve_template(template_run):
    flux, error = aperture_flux(template_run.result.difference, *TRANSIENT, APERTURE)
    assert abs(flux - TRANSIENT_FLUX) < 3.0 * error
    assert error < TRANSIENT_FLUX / 15.0  # the test is sensitive to a 20% flux-scale error


def test_difference_psf_describes_a_point_source_before_decorrelation(raw_run):
    """PSF photometry of the transient with the difference's own PSF model: the profile is the science PSF."""
    flux, _ = psf_flux(raw_run.result.difference, *TRANSIENT)
    assert flux == pytest.approx(TRANSIENT_FLUX, rel=0.03)


def test_difference_psf_describes_a_point_source_after_decorrelation(template_run):
    flux, error = psf_flux(template_run.result.difference, *TRANSIENT)
    assert abs(flux - TRANSIENT_FLUX) < 3.0 * error


# 2. convolveScience ---------------------------------------------------------------------------------------------


def test_auto_mode_convolves_the_science_image_when_the_template_is_broader(science_run):
    assert science_run.metadata["mode"] == "convolveScience"
    # The kernel matches the science image to the template: its sum is template nJy per science count.
    assert science_run.metadata["kernelSum"] == pytest.approx(1.0 / RATIO, rel=0.005)


def test_convolve_science_difference_has_the_template_psf(science_run):
    result, pair = science_run.result, science_run.pair
    # The template's PSF (phi is nearly a delta function when the science image is convolved).
    assert result.difference.psf.fwhm(*TRANSIENT) == pytest.approx(pair.template.psf.fwhm(*TRANSIENT), rel=0.05)
    flux, error = psf_flux(result.difference, *TRANSIENT)
    assert abs(flux - TRANSIENT_FLUX) < 3.0 * error
    assert result.difference.photo_calib == pair.science.photo_calib
    assert result.matchedTemplate.photo_calib == pair.science.photo_calib
    # The matched template is the template scaled to science counts, not convolved.
    kappa = science_run.metadata["kernelSum"]
    np.testing.assert_allclose(result.matchedTemplate.image, pair.template.image / kappa, rtol=1e-5, atol=1e-4)


def test_transient_flux_in_the_difference_convolve_science(science_run):
    """The difference is in science counts: (K S - T) / k keeps the science flux of a new source."""
    flux, error = aperture_flux(science_run.result.difference, *TRANSIENT, APERTURE)
    assert abs(flux - TRANSIENT_FLUX) < 3.0 * error
    assert error < TRANSIENT_FLUX / 15.0


def test_convolve_science_noise_matches_the_variance_plane(science_run):
    difference = science_run.result.difference
    good = usable(difference, science_run.pair.source_free())
    assert 0.97 <= noise_ratio(difference, good) <= 1.05
    expected = VAR_SCIENCE + VAR_TEMPLATE * RATIO**2  # var_S + var_T / k^2, k = 1 / RATIO
    assert np.median(difference.variance[good]) == pytest.approx(expected, rel=0.03)  # 3%: see above
    assert abs(science_run.metadata["differenceFootprintRatioMean"]) < 0.01


# 3. Decorrelation -----------------------------------------------------------------------------------------------


def test_undecorrelated_difference_is_science_minus_matched_template(raw_run):
    result, science = raw_run.result, raw_run.pair.science
    good = np.isfinite(result.difference.image)
    assert good.mean() > 0.8
    np.testing.assert_allclose(
        result.difference.image[good], (science.image - result.matchedTemplate.image)[good], atol=1e-3
    )


def test_without_decorrelation_the_noise_is_correlated(raw_run):
    difference = raw_run.result.difference
    good = usable(difference, raw_run.pair.source_free())
    assert min(lag_correlations(difference.image, good, 1)) > 0.12
    # The variance plane is still right pixel by pixel (var_S + K^2 conv var_T)...
    assert 0.97 <= noise_ratio(difference, good) <= 1.05
    # ...but smaller than the white-noise variance of the decorrelated image.
    assert np.median(difference.variance[good]) < 0.5 * (VAR_SCIENCE + RATIO**2 * VAR_TEMPLATE)


def test_decorrelation_whitens_the_difference(template_run):
    difference = template_run.result.difference
    good = usable(difference, template_run.pair.source_free())
    for lag in (1, 2, 3):
        assert max(abs(c) for c in lag_correlations(difference.image, good, lag)) < 0.03, lag


def test_decorrelation_kernel_is_centred_with_unit_sum():
    kernel = np.pad(sampled_gaussian(21, 1.7, 0.8), 2)
    shifted = np.roll(kernel, (1, -2), axis=(0, 1))  # an off-centre kernel: |K^| does not depend on the shift
    phi = decorrelation_kernel(kernel, 25.0, 400.0)
    assert phi.shape == (51, 51)
    assert phi.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.unravel_index(np.argmax(phi), phi.shape) == (25, 25)
    np.testing.assert_allclose(phi, phi[::-1, ::-1], atol=1e-12)
    np.testing.assert_allclose(decorrelation_kernel(shifted, 25.0, 400.0), phi, atol=1e-12)
    assert decorrelation_kernel(kernel, 25.0, 400.0, size=15).shape == (15, 15)


def test_decorrelation_kernel_is_a_delta_when_the_convolved_image_is_noiseless():
    phi = decorrelation_kernel(sampled_gaussian(21, 1.7, 0.8), 1.0, 1e-12)
    delta = np.zeros_like(phi)
    delta[phi.shape[0] // 2, phi.shape[1] // 2] = 1.0
    np.testing.assert_allclose(phi, delta, atol=1e-9)


def _whitening_check(u: float, c: float, kernel: np.ndarray, preconvolution: np.ndarray | None) -> None:
    """D = P conv U - K conv C of white U, C; phi conv D must be white with variance u + c kappa^2."""
    rng = np.random.default_rng(7)
    n, margin = 640, 64
    unconvolved = rng.normal(size=(n, n)) * math.sqrt(u)
    convolved = rng.normal(size=(n, n)) * math.sqrt(c)
    if preconvolution is not None:
        unconvolved = signal.fftconvolve(unconvolved, preconvolution, mode="same")
    difference = unconvolved - signal.fftconvolve(convolved, kernel, mode="same")
    everywhere = np.ones((n - 2 * margin,) * 2, bool)
    inner = (slice(margin, -margin),) * 2
    before = lag_correlations(difference[inner], everywhere, 1)
    assert min(before) > 0.2  # the check below is not trivially passed

    phi = decorrelation_kernel(kernel, u, c, preconvolution_kernel=preconvolution)
    white = signal.fftconvolve(difference, phi, mode="same")[inner]
    for lag in (1, 2, 3):
        assert max(abs(v) for v in lag_correlations(white, everywhere, lag)) < 0.01, lag
    kappa = kernel.sum()
    assert white.var() == pytest.approx(u + c * kappa**2, rel=0.02)


def test_decorrelation_kernel_whitens_a_convolved_difference():
    kernel = sampled_gaussian(35, math.sqrt(BROAD**2 - NARROW**2), RATIO)
    _whitening_check(1.0, 25.0, kernel, None)


def test_decorrelation_kernel_whitens_a_preconvolved_difference():
    """Pre-convolution of the unconvolved image with a normalised P (narrow enough that 1 / |P^| stays
    moderate; see the report on wide PSFs)."""
    preconvolution = sampled_gaussian(21, 1.0)
    kernel = sampled_gaussian(35, math.sqrt(2.0 * 1.0**2 - 0.7**2), RATIO)
    _whitening_check(1.0, 25.0, kernel, preconvolution)


def test_decorrelation_kernel_with_a_wide_preconvolution_whitens_or_is_refused():
    preconvolution = sampled_gaussian(35, 1.5)
    kernel = sampled_gaussian(35, math.sqrt(2.0 * 1.5**2 - 1.0**2), RATIO)
    try:
        decorrelation_kernel(kernel, 1.0, 4.0, preconvolution_kernel=preconvolution)
    except ValueError:
        return
    _whitening_check(1.0, 4.0, kernel, preconvolution)


@pytest.mark.parametrize(
    ("u", "c", "size"),
    [(0.0, 1.0, None), (1.0, -1.0, None), (math.nan, 1.0, None), (1.0, 1.0, 20), (1.0, 1.0, 0)],
)
def test_decorrelation_kernel_rejects_invalid_inputs(u, c, size):
    with pytest.raises(ValueError):
        decorrelation_kernel(sampled_gaussian(21, 1.7), u, c, size=size)


# 4. Spatially varying decorrelation ------------------------------------------------------------------------------


def test_spatially_varying_decorrelation_has_the_constant_noise_properties(spatial_run, template_run):
    run, n_kernels = spatial_run
    assert n_kernels == 16  # a 4 x 4 grid of 128-px cells, not one kernel
    difference = run.result.difference
    good = usable(difference, run.pair.source_free())
    assert 0.97 <= noise_ratio(difference, good) <= 1.05
    assert max(abs(c) for c in lag_correlations(difference.image, good, 1)) < 0.03
    # On a uniform field the grid of kernels gives (nearly) the constant kernel's image.
    constant = template_run.result.difference
    both = good & usable(constant, run.pair.source_free())
    rms = np.sqrt(np.mean((difference.image[both] - constant.image[both]) ** 2))
    assert rms < 0.05 * math.sqrt(VAR_SCIENCE + RATIO**2 * VAR_TEMPLATE)


def test_spatially_varying_decorrelation_keeps_the_flux_inside_a_large_footprint(narrow_pair):
    science = narrow_pair.science.copy()
    science.mask.set_plane("DETECTED", Box2I(262, 174, 74, 74))  # e.g. the host galaxy of the transient
    config = AlardLuptonSubtractConfig(spatiallyVaryingDecorrelation=True, decorrelationGridSpacing=32)
    result = AlardLuptonSubtractTask(config=config).run(narrow_pair.template, science, narrow_pair.sources)
    flux, error = aperture_flux(result.difference, *TRANSIENT, APERTURE)
    assert abs(flux - TRANSIENT_FLUX) < 3.0 * error


# 5. Error paths --------------------------------------------------------------------------------------------------


def test_unsupported_mode_is_refused(narrow_pair):
    config = AlardLuptonSubtractConfig()
    config.mode = "bogus"  # not validated on assignment
    with pytest.raises(ValueError, match="mode"):
        config.validate()
    task = AlardLuptonSubtractTask(config=config)
    with pytest.raises(PsfMatchingError, match="bogus") as info:
        task.run(narrow_pair.template, narrow_pair.science, narrow_pair.sources)
    assert isinstance(info.value, RuntimeError)


def test_too_few_kernel_sources_is_an_error(narrow_pair):
    sources = narrow_pair.sources.copy()
    sources["flag_saturated"][2:] = True  # 2 usable sources left
    task = AlardLuptonSubtractTask()
    with pytest.raises(PsfMatchingError, match="too few") as info:
        task.run(narrow_pair.template, narrow_pair.science, sources)
    assert "58 flag_saturated" in str(info.value)
    assert task.metadata["nKernelSourcesSelected"] == 2


def test_low_signal_to_noise_sources_are_not_kernel_sources(narrow_pair):
    sources = narrow_pair.sources.copy()
    sources["psfFluxErr"][1:] = sources["psfFlux"][1:]  # S/N 1 for all but one
    with pytest.raises(PsfMatchingError, match="too few"):
        AlardLuptonSubtractTask().run(narrow_pair.template, narrow_pair.science, sources)


def test_sources_with_a_null_psf_flux_are_not_kernel_sources(narrow_pair):
    sources = narrow_pair.sources.copy()
    sources["psfFlux"] = MaskedColumn(np.asarray(sources["psfFlux"]), mask=np.arange(len(sources)) >= 2)
    task = AlardLuptonSubtractTask()
    with pytest.raises(PsfMatchingError, match="too few kernel sources"):
        task.run(narrow_pair.template, narrow_pair.science, sources)
    assert task.metadata["nKernelSourcesSelected"] == 2


def _strip_template(pair: Pair, width: int) -> Exposure:
    """The template with only its first ``width`` columns covered (the rest NaN and NO_DATA)."""
    template = pair.template.copy()
    template.image[:, width:] = np.nan
    template.mask.set_plane("NO_DATA", Box2I(width, 0, SHAPE[1] - width, SHAPE[0]))
    return template


def test_insufficient_template_coverage_is_no_work(narrow_pair):
    template = _strip_template(narrow_pair, 26)  # 5% coverage < requiredTemplateFraction = 10%
    task = AlardLuptonSubtractTask()
    with pytest.raises(NoWorkFound, match="requiredTemplateFraction"):
        task.run(template, narrow_pair.science, narrow_pair.sources)
    assert task.metadata["templateCoverageFraction"] == pytest.approx(26 / 512)


def test_kernel_failure_with_low_coverage_is_no_work(narrow_pair):
    """15% coverage (between requiredTemplateFraction 0.1 and minTemplateFractionForExpectedSuccess 0.2), no star
    on the covered strip: the kernel fails, which is expected, so NoWorkFound; with the threshold below the
    coverage the failure is an error."""
    template = _strip_template(narrow_pair, 77)
    off_strip = narrow_pair.sources[np.asarray(narrow_pair.sources["centroid_x"]) > 120]
    with pytest.raises(NoWorkFound, match="kernel failed"):
        AlardLuptonSubtractTask().run(template, narrow_pair.science, off_strip)
    config = AlardLuptonSubtractConfig(minTemplateFractionForExpectedSuccess=0.1)
    with pytest.raises(PsfMatchingError, match="too few"):
        AlardLuptonSubtractTask(config=config).run(template, narrow_pair.science, off_strip)


def test_too_few_kernel_sources_with_low_coverage_is_no_work(narrow_pair):
    template = _strip_template(narrow_pair, 77)  # 15% coverage
    sources = narrow_pair.sources.copy()
    sources["flag_saturated"][2:] = True
    with pytest.raises(NoWorkFound):
        AlardLuptonSubtractTask().run(template, narrow_pair.science, sources)


def test_template_not_containing_the_science_box_is_an_error(narrow_pair):
    template = narrow_pair.template[Box2I(0, 0, SHAPE[1] - 10, SHAPE[0])]
    with pytest.raises(PsfMatchingError, match="does not contain"):
        AlardLuptonSubtractTask().run(template, narrow_pair.science, narrow_pair.sources)


@pytest.mark.parametrize("which", ["template", "science"])
def test_missing_psf_is_an_error(narrow_pair, which):
    template, science = narrow_pair.template, narrow_pair.science
    if which == "template":
        template = template.replace(psf=None)
    else:
        science = science.replace(psf=None)
    with pytest.raises(PsfMatchingError, match="PSF"):
        AlardLuptonSubtractTask().run(template, science, narrow_pair.sources)


# 6. Masks ----------------------------------------------------------------------------------------------------------


SAT_PIXEL = (400, 120)  # (x, y), source-free
NO_DATA_BOX = Box2I(0, 440, 80, 72)  # a corner of the template without data


@pytest.fixture(scope="module")
def masked_run(narrow_pair) -> tuple[Run, tuple[Exposure, Exposure]]:
    """The narrow pair with one SAT pixel and a NO_DATA (NaN) corner in the template; also deep copies of the
    inputs taken before the run."""
    template = narrow_pair.template.copy()
    template.mask.set_plane("SAT", Box2I(SAT_PIXEL[0], SAT_PIXEL[1], 1, 1))
    template.mask.set_plane("NO_DATA", NO_DATA_BOX)
    template.image[NO_DATA_BOX.slices(template.bbox)] = np.nan
    science = narrow_pair.science.copy()
    pair = Pair(template, science, narrow_pair.sources, narrow_pair.template_model, narrow_pair.science_model)
    before = (template.copy(), science.copy())
    return run_task(pair), before


def _square(center: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    return (np.abs(xx - center[0]) <= radius) & (np.abs(yy - center[1]) <= radius)


def test_template_saturation_becomes_sat_template_dilated_by_the_kernel(masked_run):
    masked_run, _ = masked_run
    mask = masked_run.result.difference.mask
    sat_template = mask.get_plane("SAT_TEMPLATE")
    assert not mask.get_plane("SAT").any()  # the science image has no SAT pixel
    kernel = masked_run.result.psfMatchingKernel.compute_image(*SAT_PIXEL)
    radius = kernel_radius(kernel)
    assert radius >= 3
    assert sat_template[_square(SAT_PIXEL, radius)].all()
    # Bounded: at most the matching kernel's and the decorrelation kernel's half-widths together.
    reach = radius + masked_run.metadata["decorrelationKernelSize"] // 2
    assert not sat_template[~_square(SAT_PIXEL, reach)].any()


def test_template_no_data_is_preserved(masked_run):
    masked_run, _ = masked_run
    difference = masked_run.result.difference
    no_data = difference.mask.get_plane("NO_DATA")
    inside = np.zeros(SHAPE, bool)
    inside[NO_DATA_BOX.slices(difference.bbox)] = True
    assert no_data[inside].all()
    assert np.isnan(difference.image[inside]).all()
    # Away from the hole and the image border the difference has data.
    far = ~_square((40, 475), 120) & _square((256, 256), 200)
    assert not no_data[far].any()
    assert masked_run.metadata["templateCoverageFraction"] == pytest.approx(1 - 80 * 72 / 512**2)
    # The kernel and the noise are unaffected by the hole.
    assert masked_run.metadata["kernelSum"] == pytest.approx(RATIO, rel=0.005)
    good = usable(difference, masked_run.pair.source_free())
    assert 0.97 <= noise_ratio(difference, good) <= 1.05


def test_science_detection_planes_are_cleared(masked_run):
    masked_run, _ = masked_run
    assert masked_run.pair.science.mask.get_plane("DETECTED").any()
    assert not masked_run.result.difference.mask.get_plane(["DETECTED", "DETECTED_NEGATIVE"]).any()


def test_inputs_are_not_modified(masked_run):
    run, before = masked_run
    for given, copy in zip((run.pair.template, run.pair.science), before):
        np.testing.assert_array_equal(given.image, copy.image)
        np.testing.assert_array_equal(given.variance, copy.variance)
        assert given.mask == copy.mask
        assert given.psf == copy.psf
        assert given.photo_calib == copy.photo_calib


def test_update_masks_directly():
    """updateMasks on hand-made masks: rename, preserve, clear; unrelated template planes are not copied."""
    box = Box2I(5, 7, 20, 10)
    template_mask = Mask(box.shape, xy0=box.xy0)
    template_mask.set_plane("SAT", Box2I(6, 8, 1, 1))
    template_mask.set_plane("NO_DATA", Box2I(10, 9, 2, 2))
    template_mask.set_plane("CR", Box2I(12, 12, 1, 1))
    template_mask.set_plane("INJECTED", Box2I(20, 15, 1, 1))
    difference_mask = Mask(box.shape, xy0=box.xy0)
    difference_mask.set_plane("DETECTED", Box2I(5, 7, 3, 3))
    difference_mask.set_plane("BAD", Box2I(24, 16, 1, 1))

    def exposure(mask: Mask) -> Exposure:
        return Exposure(MaskedImage(np.zeros(box.shape, np.float32), mask, xy0=box.xy0))

    difference = exposure(difference_mask)
    AlardLuptonSubtractTask().updateMasks(exposure(template_mask), exposure(Mask(box.shape, xy0=box.xy0)), difference)
    mask = difference.mask
    assert not mask.get_plane("DETECTED").any()
    assert np.argwhere(mask.get_plane("SAT_TEMPLATE")).tolist() == [[1, 1]]
    assert np.argwhere(mask.get_plane("INJECTED_TEMPLATE")).tolist() == [[8, 15]]
    assert mask.get_plane("NO_DATA").sum() == 4
    assert not mask.get_plane(["SAT", "CR"]).any()
    assert np.argwhere(mask.get_plane("BAD")).tolist() == [[9, 19]]


# 7. visitSummary ---------------------------------------------------------------------------------------------------


def test_visit_summary_replaces_the_photo_calib(narrow_pair):
    summary = Table(
        {
            "visit": [7, 7],
            "detector": [0, 1],
            "visit_calibration_mean": [2.5, 2.5],
            "visit_calibration_err": [0.02, 0.02],
        }
    )
    original = narrow_pair.science.photo_calib
    result = AlardLuptonSubtractTask().run(
        narrow_pair.template, narrow_pair.science, narrow_pair.sources, visitSummary=summary
    )
    assert result.difference.photo_calib == PhotoCalib(2.5, 0.02)
    assert result.matchedTemplate.photo_calib == PhotoCalib(2.5, 0.02)
    assert narrow_pair.science.photo_calib is original


def test_finalized_catalog_takes_precedence_over_the_visit_summary(narrow_pair):
    def summary(mean: float) -> Table:
        return Table({"visit_calibration_mean": [mean], "visit_calibration_err": [0.0]})

    result = AlardLuptonSubtractTask().run(
        narrow_pair.template, narrow_pair.science, narrow_pair.sources,
        finalizedPsfApCorrCatalog=summary(3.0), visitSummary=summary(2.0),
    )
    assert result.difference.photo_calib == PhotoCalib(3.0)


# Other properties ------------------------------------------------------------------------------------------------


def test_science_subimage_with_a_larger_template(narrow_pair):
    """A science exposure that is a sub-box (xy0 != 0) of a larger template: the template is cut to the science box
    and the positions of the kernel sources, the kernel and the metrics are in parent coordinates."""
    box = Box2I(37, 21, 440, 470)
    science = narrow_pair.science[box]
    task = AlardLuptonSubtractTask()
    result = task.run(narrow_pair.template, science, narrow_pair.sources)
    assert result.difference.bbox == box
    assert result.matchedTemplate.bbox == box
    assert task.metadata["kernelSum"] == pytest.approx(RATIO, rel=0.005)
    assert abs(task.metadata["differenceFootprintRatioMean"]) < 0.01
    good = usable(result.difference, narrow_pair.source_free()[box.slices(narrow_pair.science.bbox)])
    assert 0.97 <= noise_ratio(result.difference, good) <= 1.05
    flux, error = aperture_flux(result.difference, *TRANSIENT, APERTURE)
    assert abs(flux - TRANSIENT_FLUX) < 3.0 * error


@pytest.mark.parametrize("pair_name", ["narrow_pair", "broad_pair"])
def test_differential_background_is_removed(request, pair_name):
    """A constant offset of the template (30 nJy) is fitted with the kernel (fitForBackground) and subtracted with
    the right sign in either convolution direction."""
    pair: Pair = request.getfixturevalue(pair_name)
    template = pair.template.copy()
    template.image[:] += 30.0
    config = AlardLuptonSubtractConfig()
    config.makeKernel.fitForBackground = True
    config.makeKernel.spatialBgOrder = 0
    task = AlardLuptonSubtractTask(config=config)
    result = task.run(template, pair.science, pair.sources)
    good = usable(result.difference, pair.source_free())
    mean = float(result.difference.image[good].mean())
    sem = math.sqrt(float(np.median(result.difference.variance[good])) / good.sum())
    assert abs(mean) < 5 * sem, (task.metadata["mode"], mean, sem)  # 30 * RATIO = 24 counts if not subtracted


def test_template_coverage_counts_finite_pixels_without_no_data():
    exposure = Exposure(MaskedImage(np.ones((10, 20), np.float32)))
    exposure.image[0, :5] = np.nan
    exposure.mask.set_plane("NO_DATA", Box2I(0, 5, 20, 2))
    exposure.mask.set_plane("BAD", Box2I(0, 9, 20, 1))  # BAD pixels are covered
    assert template_coverage(exposure) == pytest.approx((200 - 5 - 40) / 200)


def test_footprint_ratio_is_zero_for_pure_noise_and_one_without_subtraction():
    rng = np.random.default_rng(5)
    model = render(np.array([100.0, 300.0]), np.array([200.0, 350.0]), np.array([5e4, 8e4]), 2.0)
    science = make_exposure(model, 2.0, VAR_SCIENCE, 1.0, rng)
    noise = Exposure(MaskedImage((rng.normal(size=SHAPE) * 5.0).astype(np.float32)))
    x, y = np.array([100.0, 300.0]), np.array([200.0, 350.0])
    mean, _ = difference_footprint_ratio(science, noise, x, y, bad_mask_planes=["NO_DATA"])
    assert abs(mean) < 0.01
    mean, _ = difference_footprint_ratio(science, science, x, y, bad_mask_planes=["NO_DATA"])
    assert mean == pytest.approx(1.0, abs=0.02)
    half = science.replace(MaskedImage(science.image * 0.5, science.mask))
    mean, _ = difference_footprint_ratio(science, half, x, y, bad_mask_planes=["NO_DATA"])
    assert mean == pytest.approx(0.5, abs=0.02)
