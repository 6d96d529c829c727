"""MeasurePsfTask: star selection, the PCA PSF of a known spatially varying PSF, outlier rejection, flags, and
the PSF widths of real SDSS frames and of SimCam against its truth."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from scipy import ndimage, special

from graph.errors import AlgorithmError
from tasks.image import Box2I, Exposure, GaussianPsf, MaskedImage
from tasks.image.psf import adaptive_moments
from tasks.image.spatial_cells import CandidateStatus
from tasks.measure_psf import (
    MeasurePsfTask,
    NEFF_FWHM_FACTOR,
    PcaPsfDeterminerConfig,
    fit_pca_psf,
    psf_effective_fwhm,
)

SHAPE = (768, 768)  # (ny, nx)
SKY = 1000.0  # sky level behind the (already subtracted) background [e- / pixel]
READ_NOISE = 5.0  # [e-]
SAT_LEVEL = 60000.0  # [e-]


# A synthetic scene with a known, spatially varying PSF ---------------------------------------------------------


def psf_sigmas(x: float, y: float, gradient: float = 0.5) -> tuple[float, float]:
    """True PSF: an axis-aligned Gaussian, sigma_x 1.7 -> 1.7 + gradient px along x, elongated by up to 8%
    along y."""
    sigma = 1.7 + gradient * x / (SHAPE[1] - 1)
    stretch = 1.0 + 0.08 * y / (SHAPE[0] - 1)
    return sigma, sigma * stretch


def pixel_gaussian(n: int, dx: float, dy: float, sx: float, sy: float) -> np.ndarray:
    """An (n, n) image of a unit-flux Gaussian integrated over pixels, centred (dx, dy) from the central pixel."""
    edges = np.arange(n + 1) - n // 2 - 0.5
    px = 0.5 * np.diff(special.erf((edges - dx) / (math.sqrt(2) * sx)))
    py = 0.5 * np.diff(special.erf((edges - dy) / (math.sqrt(2) * sy)))
    return np.outer(py, px)


def truth_kernel(x: float, y: float, n: int) -> np.ndarray:
    return pixel_gaussian(n, 0.0, 0.0, *psf_sigmas(x, y))


def effective_fwhm(kernel: np.ndarray) -> float:
    p = kernel / kernel.sum()
    return NEFF_FWHM_FACTOR / math.sqrt(float(np.sum(p * p)))


def moments_fwhm(kernel: np.ndarray) -> float:
    ixx, iyy, ixy = adaptive_moments(kernel)
    return 2.3548 * (ixx * iyy - ixy * ixy) ** 0.25


@dataclass
class Scene:
    """Noiseless model, positions and kinds of the sources of a synthetic exposure."""

    model: np.ndarray = field(default_factory=lambda: np.zeros(SHAPE))
    rows: list[dict] = field(default_factory=list)
    gradient: float = 0.5

    def add(self, kind: str, x: float, y: float, flux: float, extra_sigma: float = 0.0) -> None:
        """A star (or a galaxy: the PSF convolved with a Gaussian of ``extra_sigma`` px) at (x, y)."""
        sx, sy = psf_sigmas(x, y, self.gradient)
        sx, sy = math.hypot(sx, extra_sigma), math.hypot(sy, extra_sigma)
        half = int(8 * max(sx, sy)) + 2
        ix, iy = int(round(x)), int(round(y))
        y0, y1, x0, x1 = iy - half, iy + half + 1, ix - half, ix + half + 1
        stamp = flux * pixel_gaussian(2 * half + 1, x - ix, y - iy, sx, sy)
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y1, SHAPE[0]), min(x1, SHAPE[1])
        self.model[cy0:cy1, cx0:cx1] += stamp[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        self.rows.append({"kind": kind, "x": x, "y": y, "flux": flux})

    def exposure(self, seed: int = 0, footprint_radius: float | None = None) -> Exposure:
        """Poisson-like noise about the model; SAT above the saturation level; DETECTED footprints.

        Footprints are the noiseless model above 2 sky sigma grown by 3 pixels, or (``footprint_radius``)
        discs of that radius about each source.
        """
        rng = np.random.default_rng(seed)
        variance = SKY + self.model + READ_NOISE**2
        image = self.model + rng.normal(size=SHAPE) * np.sqrt(variance)
        mi = MaskedImage(image.astype(np.float32), variance=variance.astype(np.float32))
        saturated = self.model > SAT_LEVEL
        image[saturated] = SAT_LEVEL
        mi.image[...] = image
        mi.mask.set_plane("SAT", saturated)
        if footprint_radius is None:
            detected = ndimage.binary_dilation(self.model > 2.0 * math.sqrt(SKY), iterations=3)
        else:
            yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
            detected = np.zeros(SHAPE, dtype=bool)
            for row in self.rows:
                detected |= np.hypot(xx - row["x"], yy - row["y"]) <= footprint_radius
        mi.mask.set_plane("DETECTED", detected)
        return Exposure(mi)


def gaussian_moments(stamp: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> tuple[float, float, float]:
    """Adaptive second moments (Bernstein & Jarvis 2002) started from a 2-pixel circular weight; NaN if they
    do not converge to a positive-definite matrix."""
    m = np.array([[4.0, 0.0], [0.0, 4.0]])
    for _ in range(50):
        inv = np.linalg.inv(m)
        w = stamp * np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy))
        total = w.sum()
        if not total > 0:
            return (np.nan,) * 3
        wm = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]])
        wm /= total
        if np.linalg.det(wm) <= 0:
            return (np.nan,) * 3
        a = np.linalg.inv(wm) - inv  # exact for a Gaussian: M^-1 = M_w^-1 - M_weight^-1
        if np.linalg.det(a) <= 0 or a[0, 0] <= 0:
            return (np.nan,) * 3
        new = np.linalg.inv(a)
        if np.allclose(new, m, rtol=1e-7, atol=0):
            break
        m = new
    return float(m[0, 0]), float(m[1, 1]), float(m[0, 1])


def measure(exposure: Exposure, positions: list[tuple[float, float]], half: int = 12) -> Table:
    """A source table with the catalogue columns, measured simply: Gaussian-weighted centroid, adaptive
    moments, a 3.5-width aperture flux as ``psfFlux`` and mask flags over the central 5x5 pixels."""
    image, variance = exposure.image.astype(float), exposure.variance.astype(float)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    rows = []
    for k, (x, y) in enumerate(positions):
        ix, iy = int(round(x)), int(round(y))
        edge = not (half <= ix < SHAPE[1] - half and half <= iy < SHAPE[0] - half)
        row = {"id": k + 1, "parent": 0, "is_negative": False, "flag_edge": edge}
        cx = cy = sxx = syy = sxy = flux = err = np.nan
        if not edge:
            stamp = image[iy - half : iy + half + 1, ix - half : ix + half + 1]
            var = variance[iy - half : iy + half + 1, ix - half : ix + half + 1]
            dx, dy = x - ix, y - iy
            for _ in range(20):
                w = stamp * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / 8.0)
                dx, dy = float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())
            sxx, syy, sxy = gaussian_moments(stamp, xx - dx, yy - dy)
            radius = 3.5 * math.sqrt(0.5 * (sxx + syy)) if np.isfinite(sxx) else 6.0
            inside = (xx - dx) ** 2 + (yy - dy) ** 2 <= radius**2
            flux, err = float(stamp[inside].sum()), float(math.sqrt(var[inside].sum()))
            cx, cy = ix + dx, iy + dy
        row.update(centroid_x=cx, centroid_y=cy, shape_xx=sxx, shape_yy=syy, shape_xy=sxy, psfFlux=flux,
                   psfFluxErr=err, centroid_flag=edge, shape_flag=edge or not np.isfinite(sxx), psfFlux_flag=edge)
        centre = exposure.mask.array[max(iy - 2, 0) : iy + 3, max(ix - 2, 0) : ix + 3]
        row["flag_saturated"] = bool((centre & exposure.mask.get_plane_bitmask("SAT")).any())
        for name in ("flag_cr", "flag_interpolated", "flag_bad"):
            row[name] = False
        rows.append(row)
    return Table(rows=rows)


def star_field(
    seed: int = 1,
    n_stars: int = 140,
    min_separation: float = 30.0,
    gradient: float = 0.5,
    avoid: tuple[tuple[float, float], ...] = (),
) -> Scene:
    """Isolated stars of 5e3 - 3e5 e- spread over the image (30 px from the edges and ``min_separation``
    from each other and from the ``avoid`` positions)."""
    rng = np.random.default_rng(seed)
    scene = Scene(gradient=gradient)
    placed: list[tuple[float, float]] = list(avoid)
    n_stars += len(placed)
    while len(placed) < n_stars:
        x, y = rng.uniform(30, SHAPE[1] - 31), rng.uniform(30, SHAPE[0] - 31)
        if all(math.hypot(x - px, y - py) > min_separation for px, py in placed):
            placed.append((x, y))
            scene.add("star", x, y, float(np.exp(rng.uniform(np.log(5e3), np.log(3e5)))))
    return scene


def catalogue(scene: Scene, exposure: Exposure) -> Table:
    sources = measure(exposure, [(r["x"], r["y"]) for r in scene.rows])
    sources["kind"] = [r["kind"] for r in scene.rows]
    return sources


@pytest.fixture(scope="module")
def star_scene():
    scene = star_field()
    exposure = scene.exposure(seed=2)
    return scene, exposure, catalogue(scene, exposure)


# psf_effective_fwhm -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1.5, 3.0])
def test_effective_fwhm_of_a_sampled_gaussian_is_its_fwhm(sigma):
    psf = GaussianPsf(41, 41, sigma)
    assert psf_effective_fwhm(psf, 100.0, 100.0) == pytest.approx(2.3548 * sigma, rel=2e-3)


def test_effective_fwhm_includes_the_pixel_response():
    kernel = pixel_gaussian(41, 0.0, 0.0, 1.5, 1.5)
    assert effective_fwhm(kernel) == pytest.approx(2.3548 * math.sqrt(1.5**2 + 1 / 12), rel=3e-3)


# The PSF model ---------------------------------------------------------------------------------------------------


def test_recovers_a_spatially_varying_psf_within_two_percent(star_scene):
    scene, exposure, sources = star_scene
    result = MeasurePsfTask().run(exposure, sources)
    psf = result.psf
    size = psf.components.shape[-1]
    assert exposure.psf is psf and 25 <= size <= 45 and size % 2 == 1
    positions = [(384, 384), (80, 80), (690, 80), (80, 690), (690, 690), (384, 120)]
    for x, y in positions:
        truth = truth_kernel(x, y, size)
        assert psf_effective_fwhm(psf, x, y) == pytest.approx(effective_fwhm(truth), rel=0.02), (x, y)
        assert psf.fwhm(x, y) == pytest.approx(moments_fwhm(truth), rel=0.02), (x, y)
    # the model follows the 30% change of width across the image, and the elongation along y
    ratio = psf_effective_fwhm(psf, 690, 384) / psf_effective_fwhm(psf, 80, 384)
    assert ratio == pytest.approx(effective_fwhm(truth_kernel(690, 384, size)) / effective_fwhm(truth_kernel(80, 384, size)), rel=0.02)
    ixx, iyy, _ = psf.compute_shape(384, 690)
    assert math.sqrt(iyy / ixx) == pytest.approx(1.08 * 690 / 767 + (1 - 690 / 767), abs=0.02)


def test_psf_kernel_is_centred_and_normalised(star_scene):
    _, exposure, sources = star_scene
    psf = MeasurePsfTask().run(exposure.copy(), sources.copy()).psf
    kernel = psf.compute_kernel_image(300.0, 500.0)
    n = kernel.shape[0]
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    assert kernel.sum() == pytest.approx(1.0)
    assert abs((kernel * xx).sum()) < 0.03 and abs((kernel * yy).sum()) < 0.03


def test_flags_used_and_reserved_stars(star_scene):
    _, exposure, sources = star_scene
    sources = sources.copy()
    task = MeasurePsfTask()
    result = task.run(exposure.copy(), sources, expId=42)
    candidate, used, reserved = (np.asarray(sources[n]) for n in ("calib_psf_candidate", "calib_psf_used",
                                                                  "calib_psf_reserved"))
    assert candidate.sum() >= 100
    assert not (used & ~candidate).any() and not (reserved & ~candidate).any() and not (used & reserved).any()
    assert reserved.sum() == int(0.1 * candidate.sum())
    assert np.array_equal(used, result.used) and len(result.starCat) == used.sum()
    # the cells cap the stars per cell: 3 x 9 cells of 256 px on 768 x 768
    assert 20 <= used.sum() <= 27
    md = task.metadata
    assert md["numCandidates"] == candidate.sum() and md["numReserved"] == reserved.sum()
    assert md["numAvailStars"] == candidate.sum() - reserved.sum() and md["numGoodStars"] == used.sum()
    assert md["psfFwhm"] == pytest.approx(psf_effective_fwhm(result.psf, 383.5, 383.5))
    good = [c.source_index for c in result.cellSet.candidates() if c.status is CandidateStatus.GOOD]
    assert sorted(good) == sorted(np.flatnonzero(used).tolist())
    # another exposure id reserves other stars
    other = sources.copy()
    MeasurePsfTask().run(exposure.copy(), other, expId=43)
    assert not np.array_equal(np.asarray(other["calib_psf_reserved"]), reserved)


def test_star_selector_excludes_galaxies_and_saturated_stars():
    rng = np.random.default_rng(5)
    scene = star_field(seed=7, n_stars=60, min_separation=40.0, gradient=0.1)
    placed = [(r["x"], r["y"]) for r in scene.rows]

    def free_spot() -> tuple[float, float]:
        while True:
            x, y = rng.uniform(30, SHAPE[1] - 31), rng.uniform(30, SHAPE[0] - 31)
            if all(math.hypot(x - px, y - py) > 35 for px, py in placed):
                placed.append((x, y))
                return x, y

    for _ in range(60):  # compact (15% wider than the PSF) to extended galaxies, as bright as the stars
        scene.add("galaxy", *free_spot(), flux=float(np.exp(rng.uniform(np.log(2e4), np.log(3e5)))),
                  extra_sigma=float(rng.uniform(1.0, 3.0)))
    for _ in range(6):
        scene.add("saturated", *free_spot(), flux=4e6)
    exposure = scene.exposure(seed=8)
    sources = catalogue(scene, exposure)
    selection = MeasurePsfTask().starSelector.run(exposure, sources)
    kind = np.asarray(sources["kind"])
    assert selection.selected[kind == "galaxy"].sum() == 0
    assert selection.selected[kind == "saturated"].sum() == 0
    assert sources["flag_saturated"][kind == "saturated"].all()
    bright_star = (kind == "star") & (sources["psfFlux"] >= 20 * sources["psfFluxErr"])  # the S/N cut
    assert selection.selected[bright_star].mean() >= 0.95
    assert selection.locusWidth == pytest.approx(np.median(selection.width[kind == "star"]), rel=0.02)


def test_star_selector_finds_a_small_stellar_locus_among_many_galaxies():
    """SimCam-like: 6 stars and 40 bright galaxies, some of them barely resolved."""
    rng = np.random.default_rng(11)
    scene = Scene(gradient=0.1)
    for i in range(46):
        x, y = 40 + (i % 7) * 100 + rng.uniform(-5, 5), 40 + (i // 7) * 100 + rng.uniform(-5, 5)
        if i % 8 == 3:
            scene.add("star", x, y, float(rng.uniform(2e4, 2e5)))
        else:
            scene.add("galaxy", x, y, float(rng.uniform(2e4, 2e5)), extra_sigma=float(rng.uniform(1.0, 3.0)))
    exposure = scene.exposure(seed=12)
    sources = catalogue(scene, exposure)
    selected = MeasurePsfTask().starSelector.run(exposure, sources).selected
    kind = np.asarray(sources["kind"])
    assert selected[kind == "star"].all() and not selected[kind == "galaxy"].any()


def _contaminated_scene() -> tuple[Scene, dict[str, int]]:
    """Clean stars plus a close binary, a star on a diffuse galaxy, and a star hit by an unmasked cosmic ray."""
    spots = {"binary": (200.0, 404.0), "on_galaxy": (404.0, 200.0), "cosmic_ray": (560.0, 560.0)}
    scene = star_field(seed=21, n_stars=60, min_separation=45.0, avoid=tuple(spots.values()))
    specials: dict[str, int] = {}
    for name, (x, y) in spots.items():
        specials[name] = len(scene.rows)
        scene.add("star", x + 0.3, y + 0.2, 2e5)
    i = specials["binary"]
    scene.add("companion", scene.rows[i]["x"] + 1.4, scene.rows[i]["y"] + 0.9, 1e5)
    scene.rows.pop()  # one footprint, one source: the companion is blended
    i = specials["on_galaxy"]
    scene.add("galaxy", scene.rows[i]["x"] - 1.0, scene.rows[i]["y"] + 1.5, 8e4, extra_sigma=4.0)
    scene.rows.pop()
    i = specials["cosmic_ray"]
    cx, cy = int(round(scene.rows[i]["x"])), int(round(scene.rows[i]["y"]))
    scene.model[cy + 4, cx - 3 : cx] += 8000.0  # a short track 4 px from the centre, not in the CR plane
    return scene, specials


def test_psf_determiner_rejects_contaminated_stars():
    scene, specials = _contaminated_scene()
    exposure = scene.exposure(seed=22)
    sources = catalogue(scene, exposure)
    task = MeasurePsfTask()
    task.config.psfDeterminer.nStarPerCell = 10  # fit every star, so the special ones are judged
    result = task.psfDeterminer.run(exposure, sources, np.arange(len(sources)))
    status = {c.source_index: c.status for c in result.cellSet.candidates(ignore_bad=False)}
    for name, index in specials.items():
        assert status[index] is CandidateStatus.BAD, name
        assert not result.used[index], name
    assert result.used.sum() >= 55
    x, y = 384.0, 384.0
    truth = truth_kernel(x, y, result.psf.components.shape[-1])
    assert psf_effective_fwhm(result.psf, x, y) == pytest.approx(effective_fwhm(truth), rel=0.02)


@pytest.mark.parametrize("seed", [51, 61])
def test_psf_determiner_rejects_a_widened_star_at_modest_signal_to_noise(seed):
    """A star 10% wider than the PSF (an unresolved galaxy under it) at S/N ~27 among 20 stars.

    Its excess residual is lost in the noise of its stamp; the size test (its fitted widening against the
    leave-one-out model, in units of the widening's noise ~ 1 / (S/N)) rejects it, and the model keeps the
    PSF's width.
    """
    spot = (384.0, 384.0)
    scene = star_field(seed=seed, n_stars=20, min_separation=60.0, gradient=0.3, avoid=(spot,))
    wide = len(scene.rows)
    scene.add("star", spot[0] + 0.3, spot[1] - 0.2, 1.2e4, extra_sigma=0.9)
    exposure = scene.exposure(seed=seed + 1)
    sources = catalogue(scene, exposure)
    sx, sy = psf_sigmas(*spot, gradient=0.3)
    assert 20 <= sources["psfFlux"][wide] / sources["psfFluxErr"][wide] <= 35
    width = math.sqrt(0.5 * (sources["shape_xx"][wide] + sources["shape_yy"][wide]))
    assert width / math.sqrt(0.5 * (sx * sx + sy * sy) + 1 / 12) > 1.08

    def determine(size_floor: float):
        task = MeasurePsfTask()
        config = task.config.psfDeterminer
        config.nEigenComponents, config.spatialOrder = 2, 1  # few stars, as for SimCam
        config.nStarPerCell = 10  # fit every star
        config.sizeExcessFloor = size_floor
        result = task.psfDeterminer.run(exposure, sources, np.arange(len(sources)))
        status = {c.source_index: c.status for c in result.cellSet.candidates(ignore_bad=False)}
        return result, status[wide]

    result, status = determine(PcaPsfDeterminerConfig().sizeExcessFloor)
    assert status is CandidateStatus.BAD and not result.used[wide]
    assert result.used.sum() >= 16
    truth = pixel_gaussian(result.psf.components.shape[-1], 0.0, 0.0, sx, sy)
    assert psf_effective_fwhm(result.psf, *spot) == pytest.approx(effective_fwhm(truth), rel=0.01)
    # without the size test (a floor no star reaches) the excess residual and flux tests keep it
    assert determine(1.0)[1] is CandidateStatus.GOOD


def test_a_neighbour_in_another_footprint_is_masked_not_fatal():
    scene = star_field(seed=31, n_stars=40, min_separation=60.0, avoid=((300.0, 300.0), (309.0, 298.0)))
    star = len(scene.rows)
    scene.add("star", 300.2, 300.7, 1.5e5)
    scene.add("neighbour", 309.3, 298.4, 1.5e5)  # 9 px away: inside the star's stamp
    exposure = scene.exposure(seed=32, footprint_radius=4.0)
    sources = catalogue(scene, exposure)
    task = MeasurePsfTask()
    task.config.psfDeterminer.nStarPerCell = 10
    task.config.starSelector.isolationRadius = 2.0
    result = task.psfDeterminer.run(exposure, sources, np.arange(len(sources)))
    (candidate,) = [c for c in result.cellSet.candidates(ignore_bad=False) if c.source_index == star]
    assert candidate.status is CandidateStatus.GOOD
    half = candidate.width // 2
    assert (candidate.weight[half - 2 : half + 1, half + 8 : half + 11] == 0).all()  # the neighbour's pixels
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    assert (candidate.weight[np.hypot(xx, yy) <= 3.0] > 0).all()  # the star's core
    assert np.abs(candidate.stamp[half - 2 : half + 1, half + 8 : half + 11]).max() < 0.01 * candidate.stamp.max()


def test_too_few_stars_raise_an_algorithm_error():
    """Three stars on the locus, one of them with a faint neighbour 6 px away: two candidates are too few."""
    scene = Scene(gradient=0.0)
    for x, y in ((200.0, 200.0), (500.0, 400.0), (300.0, 600.0)):
        scene.add("star", x, y, 1e5)
    scene.add("neighbour", 306.0, 600.5, 2e3)
    for i in range(4):
        scene.add("galaxy", 100.0 + 150 * i, 700.0, 1e5, extra_sigma=1.5 * (i + 1))
    exposure = scene.exposure(seed=41)
    sources = catalogue(scene, exposure)
    with pytest.raises(AlgorithmError, match=r"too few PSF stars: 2 \(need 3\)"):
        MeasurePsfTask().run(exposure, sources)
    assert sources["calib_psf_candidate"].sum() == 2 and not sources["calib_psf_used"].any()


def test_a_missing_column_is_named():
    table = Table({"centroid_x": [1.0], "centroid_y": [1.0]})
    with pytest.raises(AlgorithmError, match="no column 'shape_xx'"):
        MeasurePsfTask().run(Exposure(MaskedImage(np.zeros((10, 10), np.float32))), table)


def test_weighted_pca_fit_ignores_zero_weight_stars():
    """fit_pca_psf: a zero-weight star (here a very different image) does not change the model."""
    n = 15
    stamps = np.stack([pixel_gaussian(n, 0, 0, s, s) for s in (1.5, 1.6, 1.7, 1.8)] + [pixel_gaussian(n, 0, 0, 4, 4)])
    x = np.array([10.0, 90.0, 10.0, 90.0, 50.0])
    y = np.array([10.0, 10.0, 90.0, 90.0, 50.0])
    bbox = Box2I(0, 0, 100, 100)
    weighted = fit_pca_psf(stamps, x, y, bbox, weights=np.array([1, 1, 1, 1, 0.0]), n_components=2, degree=1)
    clean = fit_pca_psf(stamps[:4], x[:4], y[:4], bbox, n_components=2, degree=1)
    for px, py in ((10, 10), (90, 90), (50, 50)):
        assert np.allclose(weighted.compute_kernel_image(px, py), clean.compute_kernel_image(px, py), atol=1e-10)


# Real data: SDSS r frames ------------------------------------------------------------------------------------------

SDSS_FIELDS = {4192: 300, 6377: 399}
SDSS_PIXEL_SCALE = 0.396  # arcsec / pixel


def sdss_characterized_inputs(shared_data: Path, run: int):
    """ISR'd r4 frame -> Gaussian 1.5" PSF, background subtraction, detection and measurement."""
    from tasks.background import SubtractBackgroundTask
    from tasks.detection import SourceDetectionTask
    from tasks.instruments.sdss.formatters import read_fpc, read_fpm, read_psfield, read_tsfield
    from tasks.instruments.sdss.isr import SdssIsrTask
    from tasks.measurement import SingleFrameMeasurementTask

    field_ = SDSS_FIELDS[run]
    d = shared_data / "sdss_stripe82_lsst_demo" / "input" / str(run) / "40"
    psfield_path = d / f"objcs/4/psField-{run:06d}-4-{field_:04d}.fit"
    exposure = SdssIsrTask().run(
        read_fpc(d / f"corr/4/fpC-{run:06d}-r4-{field_:04d}.fit.gz"),
        read_fpm(d / f"objcs/4/fpM-{run:06d}-r4-{field_:04d}.fit"),
        read_psfield(psfield_path, kl_psf=False),
        read_tsfield(d / f"calibChunks/4/tsField-{run:06d}-4-40-{field_:04d}.fit"),
    ).exposure
    sigma = 1.5 / SDSS_PIXEL_SCALE / 2.3548
    exposure.psf = GaussianPsf(25, 25, sigma)
    SubtractBackgroundTask().run(exposure)
    detections = SourceDetectionTask().run(exposure)
    sources = SingleFrameMeasurementTask().run(exposure, detections.sources, detections.footprints)
    return exposure, sources, read_psfield(psfield_path)


@pytest.mark.parametrize("run", sorted(SDSS_FIELDS))
def test_sdss_psf_width_matches_psfield(shared_data, run):
    """Acceptance: the PSF's effective FWHM at the frame centre is psField's psf_width within 5%.

    psf_width (1.18" in run 4192, 1.09" in 6377) is SDSS's double-Gaussian width without the pixel; SDSS's
    own pixelised KL PSF image gives 1.225" and 1.132" (3.7% wider): the model must agree with it within 3%.
    """
    from tasks.instruments.sdss.formatters import kl_psf_image

    exposure, sources, psfield = sdss_characterized_inputs(shared_data, run)
    task = MeasurePsfTask()
    start = time.process_time()
    result = task.run(exposure, sources)
    cpu = time.process_time() - start
    cx, cy = 1024.0, 744.0
    fwhm = psf_effective_fwhm(result.psf, cx, cy) * SDSS_PIXEL_SCALE
    psf_width = psfield["bands"]["r"]["psf_width"]
    assert fwhm == pytest.approx(psf_width, rel=0.05)
    kl = effective_fwhm(kl_psf_image(psfield, "r", cx, cy)) * SDSS_PIXEL_SCALE
    assert fwhm == pytest.approx(kl, rel=0.03)
    assert result.used.sum() >= 40 and task.metadata["numRejected"] <= 0.2 * task.metadata["numAvailStars"]
    assert cpu < 1.0, f"MeasurePsfTask took {cpu:.2f} s of CPU on an SDSS frame"


# SimCam against the truth -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simcam(tmp_path_factory: pytest.TempPathFactory):
    from tasks.instruments.simcam import simulate_raws

    return simulate_raws(tmp_path_factory.mktemp("simcam_psf"), n_visits=2, seed=11)


@pytest.mark.slow
def test_simcam_psf_fwhm_matches_the_truth_on_every_detector(simcam):
    """Acceptance: the PSF FWHM at each detector's centre is the simulation's within 3% (both visits).

    The truth is the FWHM of the Gaussian before pixelisation; the pixelised model is ~1% wider at the
    smallest widths.
    """
    from tasks.background import SubtractBackgroundTask
    from tasks.detection import SourceDetectionTask
    from tasks.instruments.simcam import PIXEL_SCALE, SimCamRawFormatter
    from tasks.isr import IsrTask
    from tasks.measurement import SingleFrameMeasurementTask

    # As configured in repo_template/pipelines/SimCam/ProcessCcd.yaml.
    config = MeasurePsfTask.ConfigClass()
    config.psfDeterminer.nEigenComponents = 2
    config.psfDeterminer.spatialOrder = 1
    task = MeasurePsfTask(config=config)
    ratios = {}
    for visit in simcam.visit_ids:
        for detector in range(9):
            raw = SimCamRawFormatter.__new__(SimCamRawFormatter).read(simcam.raw_path(visit, detector))
            exposure = IsrTask().run(raw).exposure
            exposure.psf = GaussianPsf(25, 25, 1.5 / PIXEL_SCALE / 2.3548)
            SubtractBackgroundTask().run(exposure)
            detections = SourceDetectionTask().run(exposure)
            sources = SingleFrameMeasurementTask().run(exposure, detections.sources, detections.footprints)
            psf = task.run(exposure, sources, expId=visit).psf
            truth = float(simcam.psf_fwhm(visit, detector, 511.5, 511.5)) / PIXEL_SCALE
            ratios[(visit, detector)] = psf.fwhm(511.5, 511.5) / truth
    worst = max(ratios, key=lambda k: abs(ratios[k] - 1))
    assert abs(ratios[worst] - 1) <= 0.03, f"visit {worst[0]} detector {worst[1]}: ratio {ratios[worst]:.4f}"
