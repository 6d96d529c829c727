"""Cosmic-ray repair: `RepairTask`.

Two detectors are available (``cosmicray.algorithm``):

``"psf"`` (default)
    The LSST stack's ``findCosmicRays`` criterion (Lupton's SDSS photo algorithm), vectorised over candidate
    pixels.  A pixel ``p`` is a cosmic ray when

    1. it is ``minSigma`` noise sigmas above the local background, and ``minDn`` counts;
    2. it is sharper than any point source can be: for at least one of the four directions (horizontal,
       vertical, two diagonals) with opposite neighbours ``a`` and ``b``,
       ``cond3Fac2 * r * (p - cond3Fac * sigma_p) > (a + b) / 2 + cond3Fac * sigma_ab``
       where ``r = (PSF(+d) + PSF(-d)) / (2 PSF(0))`` is the ratio of the PSF's neighbour to peak values in
       that direction.  A star (whose centre-to-neighbour ratio never exceeds the PSF's) fails this test, so
       star cores are kept.

    Then ``niteration`` times, the cosmic-ray pixels found so far are replaced by an interpolation of their
    neighbours and their 8-neighbours are tested again with the relaxed threshold ``minSigmaGrow`` (this
    catches the fainter pixels of tracks and blobs whose neighbours hid them).  Only candidate pixels are
    examined, so the cost is dominated by one pass over the image (about 0.1 s for 3 Mpixel).

``"lacosmic"``
    `astroscrappy.detect_cosmics` (van Dokkum 2001 L.A.Cosmic) with the ``convolve`` fine-structure model
    built from the PSF FWHM and the variance plane as noise model.  Several times slower.

The ``CR`` plane is cleared first (as in the LSST stack: cosmic rays found with an earlier, poorer PSF are
forgotten); cosmic-ray pixels then get the ``CR`` mask plane; unless ``keepCRs`` they are replaced by a
Gaussian-weighted average of the nearby good pixels (normalised convolution) and flagged ``INTRP``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import ndimage

from graph import Config, Field, Struct, Task, timeMethod

from .background import fit_background_fast
from .errors import ImageError, NoUsableBinsError, TooManyCosmicRaysError
from .image import Background, Exposure, Mask, MaskedImage

__all__ = ["CosmicRayConfig", "RepairConfig", "RepairTask", "find_cosmic_rays", "interpolate_pixels"]

# Direction offsets (dy, dx) of the four neighbour pairs: horizontal, vertical, two diagonals.
_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))


class CosmicRayConfig(Config):
    """Cosmic-ray detection settings (names as in the LSST stack's ``FindCosmicRaysConfig``)."""

    algorithm: Literal["psf", "lacosmic"] = Field(
        "psf", description="psf: LSST/SDSS PSF-sharpness test (fast); lacosmic: astroscrappy.detect_cosmics."
    )
    minSigma: float = Field(6.0, gt=0, description="CR pixels are this many noise sigmas above the background.")
    minDn: float = Field(0.0, ge=0, description="CR pixels are at least this many counts above the background.")
    cond3Fac: float = Field(2.5, ge=0, description="Noise margin [sigmas] of the PSF-sharpness test.")
    cond3Fac2: float = Field(
        0.6, gt=0, le=1, description="Safety factor on the PSF's neighbour/peak ratio (smaller flags fewer pixels)."
    )
    niteration: int = Field(3, ge=0, description="Passes looking for more CR pixels next to the ones found.")
    minSigmaGrow: float = Field(
        3.0, gt=0, description="Threshold [sigmas] for pixels next to known CR pixels in the extra passes."
    )
    maxCrFraction: float = Field(
        0.005, gt=0, le=1, description="Raise TooManyCosmicRaysError if more of the pixels are cosmic rays."
    )
    badMaskPlanes: list[str] = Field(
        default_factory=lambda: ["SAT", "BAD", "NO_DATA"], description="Pixels (and their neighbours) never CRs."
    )
    backgroundBinSize: int = Field(128, ge=16, description="Bin size of the local background estimate [pixels].")
    interpolationSigma: float = Field(
        1.0, gt=0, description="Gaussian sigma of the interpolation over CR pixels [pixels]."
    )
    # L.A.Cosmic settings (algorithm = "lacosmic").
    sigclip: float = Field(4.5, gt=0, description="lacosmic: Laplacian-to-noise detection limit.")
    sigfrac: float = Field(0.3, gt=0, description="lacosmic: fractional limit for neighbouring pixels.")
    objlim: float = Field(5.0, gt=0, description="lacosmic: minimum contrast with the fine-structure image.")
    lacosmicIterations: int = Field(2, ge=1, description="lacosmic: number of L.A.Cosmic iterations.")


class RepairConfig(Config):
    """Configuration of `RepairTask`."""

    doCosmicRay: bool = Field(True, description="Find (and unless keepCRs, interpolate over) cosmic rays.")
    cosmicray: CosmicRayConfig = Field(default_factory=CosmicRayConfig, description="Cosmic-ray detection.")
    keepCRs: bool = Field(False, description="Default of run(keepCRs=None): keep the CR pixel values.")


class RepairTask(Task):
    """Find cosmic rays (PSF-aware), flag them CR and interpolate over them (INTRP).

    Metadata: ``nCosmicRays`` (connected groups of new CR pixels), ``nCrPixels``, ``nInterpolated``.
    """

    ConfigClass = RepairConfig
    _DefaultName = "repair"

    @timeMethod
    def run(self, exposure: Exposure, *, keepCRs: bool | None = None) -> Struct:  # noqa: N803
        """Find cosmic rays on an exposure, in place.

        Parameters
        ----------
        exposure : `Exposure`
            Exposure [counts] with a PSF and a variance plane (with or without its sky background).  Its CR
            plane is cleared and set to the cosmic rays found; unless ``keepCRs``, its image and variance are
            interpolated over the CR pixels (flagged INTRP).
        keepCRs : `bool`, optional
            Keep the cosmic-ray pixel values (only flag them); default ``config.keepCRs``.

        Returns
        -------
        result : `Struct`
            ``crMask`` (bool array of the new CR pixels), ``nCosmicRays``, ``nCrPixels``.

        Raises
        ------
        ImageError
            If the exposure has no PSF.
        TooManyCosmicRaysError
            (an `AlgorithmError`) if more than ``cosmicray.maxCrFraction`` of the pixels are cosmic rays.
        """
        keep = self.config.keepCRs if keepCRs is None else keepCRs
        n_cr = n_pix = n_interp = 0
        cr = np.zeros(exposure.shape, dtype=bool)
        if self.config.doCosmicRay:
            if exposure.psf is None:
                raise ImageError(
                    "RepairTask needs a PSF on the exposure to tell cosmic rays from stars; install one first "
                    "(e.g. a GaussianPsf of the seeing)."
                )
            if "CR" in exposure.mask.planes:  # as the LSST stack does: forget CRs found with an older PSF
                exposure.mask.clear_plane("CR")
            cr = find_cosmic_rays(exposure, self.config.cosmicray)
            n_pix = int(cr.sum())
            limit = self.config.cosmicray.maxCrFraction * cr.size
            if n_pix > limit:
                raise TooManyCosmicRaysError(n_pix, int(limit), cr.size)
            exposure.mask.set_plane("CR", cr)
            if n_pix:
                _, n_cr = ndimage.label(cr, structure=np.ones((3, 3), dtype=bool))
            if not keep and n_pix:
                n_interp = interpolate_pixels(
                    exposure.masked_image, cr, sigma=self.config.cosmicray.interpolationSigma,
                    bad=_bad_pixels(exposure.masked_image, self.config.cosmicray.badMaskPlanes),
                )
                exposure.mask.set_plane("INTRP", cr)
        self.metadata["nCosmicRays"] = int(n_cr)
        self.metadata["nCrPixels"] = n_pix
        self.metadata["nInterpolated"] = int(n_interp)
        self.log.info("Found %d cosmic rays (%d pixels)%s", n_cr, n_pix, "" if keep else ", interpolated")
        return Struct(crMask=cr, nCosmicRays=int(n_cr), nCrPixels=n_pix)


def _bad_pixels(masked_image: MaskedImage, planes: list[str]) -> np.ndarray:
    return ~np.isfinite(masked_image.image) | masked_image.mask.get_plane(planes, missing_ok=True)


def _psf_ratios(exposure: Exposure) -> np.ndarray:
    """Neighbour-to-peak ratio ``(P(+d) + P(-d)) / (2 P(0))`` of the PSF for the four directions."""
    x, y = exposure.bbox.center
    kernel = exposure.psf.compute_kernel_image(x, y)
    cy, cx = kernel.shape[0] // 2, kernel.shape[1] // 2
    peak = kernel[cy, cx]
    if not peak > 0:
        raise ImageError(f"the PSF kernel at ({x}, {y}) has a non-positive central value; cannot find cosmic rays.")
    return np.array([(kernel[cy + dy, cx + dx] + kernel[cy - dy, cx - dx]) / (2 * peak) for dy, dx in _DIRECTIONS])


def find_cosmic_rays(exposure: Exposure, config: CosmicRayConfig | None = None) -> np.ndarray:
    """Boolean mask of the cosmic-ray pixels of an exposure (see the module docstring).

    Parameters
    ----------
    exposure : `Exposure`
        Exposure [counts] with a PSF and a variance plane; not modified.
    config : `CosmicRayConfig`, optional
        Settings; defaults when not given.

    Returns
    -------
    cr : `numpy.ndarray` of bool, shape ``exposure.shape``
    """
    config = config or CosmicRayConfig()
    mi = exposure.masked_image
    image = mi.image
    bad = _bad_pixels(mi, config.badMaskPlanes)
    background = _coarse_background(mi, config.backgroundBinSize)
    variance = mi.variance
    if not np.any(variance > 0):
        values = (image - background)[~bad]
        q25, q75 = np.percentile(values[:: max(1, values.size // 200_000)], [25.0, 75.0])
        variance = np.full(image.shape, (0.741301 * (q75 - q25)) ** 2, dtype=np.float32)
    if config.algorithm == "lacosmic":
        return _lacosmic(exposure, image, background, variance, bad, config)

    ratios = _psf_ratios(exposure) * config.cond3Fac2
    ny, nx = image.shape
    residual = image - background
    # minSigma test without a full-image square root: r > 0 and r^2 > minSigma^2 var.
    candidate = (residual > config.minDn) & (residual * residual > np.float32(config.minSigma**2) * variance)
    candidate[0, :] = candidate[-1, :] = candidate[:, 0] = candidate[:, -1] = False
    flat_candidates = np.flatnonzero(candidate)
    bad_flat = bad.ravel()
    flat_candidates = flat_candidates[~_near(bad_flat, flat_candidates, nx)]  # bad pixels nor their neighbours

    residual_flat = residual.ravel()
    work = residual_flat.copy()  # CR pixels get replaced in this copy as they are found
    var_flat = np.maximum(variance.ravel(), 0.0)
    is_cr = np.zeros(image.size, dtype=bool)
    found = _sharp(flat_candidates, work, var_flat, nx, ratios, config.cond3Fac)
    new = flat_candidates[found]
    is_cr[new] = True
    for _ in range(config.niteration):
        if new.size == 0:
            break
        cr_idx = np.flatnonzero(is_cr)
        work[cr_idx] = _interpolate_flat(work, is_cr | bad_flat, cr_idx, nx, ny, config.interpolationSigma)
        neighbours = _neighbours8(new, nx, ny)
        neighbours = neighbours[~is_cr[neighbours] & ~_near(bad_flat, neighbours, nx)]
        orig = residual_flat[neighbours]
        thr = np.maximum(config.minSigmaGrow * np.sqrt(var_flat[neighbours]), config.minDn)
        neighbours = neighbours[orig > thr]
        if neighbours.size == 0:
            break
        # Test against the original values, with the known CR pixels replaced in their neighbourhoods.
        saved = work[neighbours].copy()
        work[neighbours] = residual_flat[neighbours]
        sharp = _sharp(neighbours, work, var_flat, nx, ratios, config.cond3Fac)
        work[neighbours] = saved
        new = neighbours[sharp]
        is_cr[new] = True
    return is_cr.reshape(image.shape)


def _near(flags: np.ndarray, idx: np.ndarray, nx: int) -> np.ndarray:
    """Whether each flat index (not on the image border) or one of its 8-neighbours is flagged."""
    out = flags[idx].copy()
    if flags.any():
        for offset in (-nx - 1, -nx, -nx + 1, -1, 1, nx - 1, nx, nx + 1):
            out |= flags[idx + offset]
    return out


def _coarse_background(mi: MaskedImage, bin_size: int) -> np.ndarray:
    """A smooth background [counts] from a 4x4-subsampled image (binned clipped means, linear interpolation)."""
    step = 4 if bin_size % 4 == 0 and min(mi.shape) >= 64 else 1
    sub = MaskedImage(
        mi.image[::step, ::step], Mask._view(mi.mask.array[::step, ::step], mi.mask.planes, (0, 0)),
        mi.variance[::step, ::step],
    )
    try:
        model, _ = fit_background_fast(
            sub, bin_size=bin_size // step, bad_mask_planes=("BAD", "SAT", "NO_DATA", "CR"), n_iter=2
        )
    except NoUsableBinsError:
        return np.zeros(mi.shape, dtype=np.float32)
    # ceil(ceil(n / step) / (bin / step)) == ceil(n / bin): the same bin grid on the full-resolution image.
    full = Background(mi.bbox, bin_size, model.values, interpolation="linear")
    return full.get_image()


def _sharp(idx: np.ndarray, values: np.ndarray, var: np.ndarray, nx: int, ratios: np.ndarray, fac: float) -> np.ndarray:
    """The PSF-sharpness test (condition 3) at flat pixel indices ``idx`` (not on the image border)."""
    if idx.size == 0:
        return np.zeros(0, dtype=bool)
    peak = values[idx].astype(np.float64)
    dpeak = np.sqrt(var[idx].astype(np.float64))
    out = np.zeros(idx.size, dtype=bool)
    for (dy, dx), ratio in zip(_DIRECTIONS, ratios, strict=True):
        offset = dy * nx + dx
        a = idx + offset
        b = idx - offset
        mean = 0.5 * (values[a].astype(np.float64) + values[b])
        dmean = 0.5 * np.sqrt(var[a].astype(np.float64) + var[b])
        out |= ratio * (peak - fac * dpeak) > mean + fac * dmean
    return out


def _neighbours8(idx: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """Unique flat indices of the 8-neighbours of ``idx`` that are not on the image border."""
    y, x = np.divmod(idx, nx)
    ys = (y[:, None] + np.array([-1, -1, -1, 0, 0, 1, 1, 1])[None, :]).ravel()
    xs = (x[:, None] + np.array([-1, 0, 1, -1, 1, -1, 0, 1])[None, :]).ravel()
    inside = (ys >= 1) & (ys < ny - 1) & (xs >= 1) & (xs < nx - 1)
    return np.unique(ys[inside] * nx + xs[inside])


def _interpolate_flat(
    values: np.ndarray, exclude: np.ndarray, idx: np.ndarray, nx: int, ny: int, sigma: float
) -> np.ndarray:
    """Gaussian-weighted mean of the non-excluded pixels about each flat index (normalised convolution).

    The window grows (3, 6, 12 sigmas) for pixels with no usable neighbour; 0 if none is found at all.
    """
    out = np.zeros(idx.size)
    todo = np.arange(idx.size)
    y, x = np.divmod(idx, nx)
    for scale in (1.0, 2.0, 4.0, 8.0):
        s = sigma * scale
        half = max(1, int(math.ceil(3 * s)))
        oy, ox = np.mgrid[-half : half + 1, -half : half + 1]
        weight = np.exp(-0.5 * (ox * ox + oy * oy) / (s * s)).ravel()
        yy = y[todo, None] + oy.ravel()[None, :]
        xx = x[todo, None] + ox.ravel()[None, :]
        inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        flat = np.clip(yy, 0, ny - 1) * nx + np.clip(xx, 0, nx - 1)
        w = weight[None, :] * (inside & ~exclude[flat])
        total = w.sum(axis=1)
        done = total > 0
        out[todo[done]] = (w[done] * values[flat[done]]).sum(axis=1) / total[done]
        todo = todo[~done]
        if todo.size == 0:
            break
    return out


def interpolate_pixels(
    masked_image: MaskedImage, pixels: np.ndarray, *, sigma: float = 1.0, bad: np.ndarray | None = None
) -> int:
    """Replace pixels (and their variance) by the Gaussian-weighted mean of nearby good pixels, in place.

    Parameters
    ----------
    masked_image : `MaskedImage`
        Image to repair.
    pixels : `numpy.ndarray` of bool, shape ``masked_image.shape``
        Pixels to replace.
    sigma : `float`, optional
        Gaussian weight sigma [pixels]; the window grows for pixels far from any good pixel.
    bad : `numpy.ndarray` of bool, optional
        Other pixels not to use as neighbours (e.g. SAT, BAD).

    Returns
    -------
    n : `int`
        Number of pixels replaced.
    """
    pixels = np.asarray(pixels, dtype=bool)
    idx = np.flatnonzero(pixels)
    if idx.size == 0:
        return 0
    ny, nx = masked_image.shape
    exclude = pixels.ravel() | (bad.ravel() if bad is not None else False)
    image = masked_image.image.ravel()
    variance = masked_image.variance.ravel()
    new_image = _interpolate_flat(image.astype(np.float64), exclude, idx, nx, ny, sigma)
    new_var = _interpolate_flat(variance.astype(np.float64), exclude, idx, nx, ny, sigma)
    masked_image.image.ravel()[idx] = new_image  # ravel of a contiguous array is a view
    masked_image.variance.ravel()[idx] = new_var
    return int(idx.size)


def _lacosmic(exposure, image, background, variance, bad, config: CosmicRayConfig) -> np.ndarray:
    import astroscrappy

    fwhm = exposure.psf.fwhm()
    size = max(7, 2 * int(math.ceil(1.5 * fwhm)) + 1)
    # astroscrappy estimates the noise from the data unless given invar; it needs positive sky for that.
    crmask, _ = astroscrappy.detect_cosmics(
        np.ascontiguousarray(image, dtype=np.float32),
        inmask=bad,
        inbkg=np.ascontiguousarray(background, dtype=np.float32),
        invar=np.ascontiguousarray(variance, dtype=np.float32),
        sigclip=config.sigclip,
        sigfrac=config.sigfrac,
        objlim=config.objlim,
        gain=1.0,
        readnoise=0.0,
        satlevel=np.inf,
        niter=config.lacosmicIterations,
        sepmed=True,
        fsmode="convolve",
        psfmodel="gauss",
        psffwhm=float(fwhm),
        psfsize=size,
    )
    return np.asarray(crmask, dtype=bool) & ~bad
