"""Simulate SimCam raw exposures of one field, with the truth needed to test the pipelines.

`simulate_raws` writes, for ``n_visits`` visits of the field at RA 150.0, Dec 2.0 (small random
dithers), one raw FITS file per visit and detector (``OUT_DIR/raw/``) and the truth (``OUT_DIR/truth/``):

========================  ========================================================================
file                      content
========================  ========================================================================
``objects.ecsv``          the static catalogue: stars, galaxies (Sersic n=1 or 4) and variable stars
                          with AB magnitudes in g, r, i and shapes; variables' light-curve parameters
``transients.ecsv``       injected transients: position, magnitudes, first and last visit present
``visits.ecsv``           per visit: time, boresight, zero point, PSF and sky model parameters
``detectors.ecsv``        per visit and detector: PSF FWHM and sky at the detector centre, bias offsets
``sources.ecsv``          per visit and detector: every object whose centre falls on the detector,
                          with its pixel position and flux in electrons and nJy
``cosmic_rays.ecsv``      per visit and detector: the cosmic-ray tracks added
``refcat.fits``           a reference catalogue for calibration (`SimulationTruth.reference_catalog`)
``summary.yaml``          seed, band, visits, detectors, files, units
========================  ========================================================================

Besides about 10000 stars and 40000 galaxies per square degree, every detector gets, near its centre, one
bright saturating star (r = 13-14.5), one variable star (r = 17-19.5, sinusoidal light curve with a
period of 7-72 minutes and a 20-50% amplitude) and two transients (r = 19-21.5; one isolated, one 0.3-1.5
arcsec from a galaxy).  Each transient is present in a run of consecutive visits starting no earlier than
the visit of index ``transients_from`` (default: the second visit, or the only one), so the first visits can
serve as transient-free templates.

The image model, in electrons, is

* sky: ``sky0 * (1 + sky_grad_x * fx + sky_grad_y * fy) + sky_frame_scale * sky_frame(detector, x, y)``
  where ``(fx, fy)`` is the focal-plane position [mm] and `sky_frame` a fixed smooth pattern in each
  detector's pixel coordinates (values within about +-1.5);
* PSF: a circular Gaussian with ``FWHM = fwhm0 * (1 + psf_grad_x * fx + psf_grad_y * fy)`` [arcsec];
* sources: stars, variables and transients as the PSF integrated over each pixel; galaxies as
  elliptical Sersic profiles (mixtures of Gaussians fit to the truncated profile) convolved with the PSF;
  ``flux [e-] = 10**(-0.4 * (mag - zero_point))``; the truth ``flux_nJy = 10**(-0.4 * (mag - 31.4))``;
* Poisson noise, dead columns (5% response), cosmic rays (added after the noise);
* per amplifier: ``ADU = bias(y) + (electrons + read_noise * N(0, 1)) / gain``, with
  ``bias(y) = bias_level + offset + 1.5 * sin(2 pi y / 700 + phase)`` (also in the overscan), hot columns
  (+2500 ADU), rounding, and clipping at the saturation level (60000 ADU).

Everything is drawn from numpy generators seeded by `numpy.random.SeedSequence` entropy lists built from
the seed (catalogue: ``[seed, 0]``; visit parameters: ``[seed, 1, band, k]``; detector noise:
``[seed, 2, band, k, detector]``), and no file records the time it was written, so a seed gives
byte-identical files.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time, TimeDelta
from scipy import special
from scipy.optimize import nnls

from ...errors import TasksError
from ...image import Camera, Detector
from ._camera import (
    DEAD_COLUMN_RESPONSE,
    DETECTOR_SIZE,
    HOT_COLUMN_ADU,
    PIXEL_SCALE,
    RAW_BBOX,
    SATURATION,
    detector_defects,
    detector_wcs,
)
from ._instrument import SimCam

__all__ = [
    "BANDS",
    "FIELD_DEC",
    "FIELD_RA",
    "SimulationError",
    "SimulationTruth",
    "simulate_raws",
    "sky_frame",
]

FIELD_RA, FIELD_DEC = 150.0, 2.0  # deg
BANDS = ("g", "r", "i")
_BAND_INDEX = {b: i for i, b in enumerate(BANDS)}
FIRST_VISIT = {"g": 1000, "r": 2000, "i": 3000}
ZERO_POINT = {"g": 31.9, "r": 32.0, "i": 31.7}  # AB magnitude of a source giving 1 e- in EXPOSURE_TIME
SKY_BRIGHTNESS = {"g": 22.2, "r": 21.2, "i": 20.5}  # AB mag / arcsec^2
EXPOSURE_TIME = 30.0  # s
CADENCE = 60.0  # s between exposure starts
NIGHT_START = "2024-03-15T01:00:00"  # TAI; each band starts 3 h later than the previous one
AB_NJY_ZERO_POINT = 31.4  # flux_nJy = 10**(-0.4 * (mag - 31.4))
FIELD_HALF_SIZE = 0.12  # deg: catalogue half-width (field of view + dithers + margin)
DITHER = 0.015  # deg: maximum boresight offset
STAR_DENSITY = 10000.0  # per deg^2, 16 < r < 24 (galactic latitude ~30 deg)
GALAXY_DENSITY = 40000.0  # per deg^2, 18 < r < 25
CR_PER_DETECTOR = 12.0  # mean number of cosmic rays per detector per exposure
_SKY_FRAME_SEED = 20240315  # the sky-frame pattern is a property of the camera, not of a simulation
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
UNITS = {
    "flux": "electrons in the exposure (post-ISR counts)",
    "flux_nJy": "nJy",
    "sky": "electrons per pixel",
    "fwhm": "arcsec",
    "positions": "pixel coordinates of the assembled detector, 0-based, pixel centres at integers",
    "gradients": "fractional change per mm of focal plane",
}


class SimulationError(TasksError, ValueError):
    """A simulation parameter is invalid (band, number of visits, detectors)."""


@functools.lru_cache(maxsize=1)
def _camera() -> Camera:
    return SimCam().camera


# The sky model ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _sky_frame_parameters(detector_id: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([_SKY_FRAME_SEED, int(detector_id)]))
    return np.concatenate([rng.uniform(0.4, 1.6, 4), rng.uniform(0.0, 1.0, 3), rng.uniform(0.3, 0.6, 1)])


def sky_frame(detector_id: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SimCam's fixed sky-frame pattern of a detector (a smooth, dimensionless 2-D pattern).

    Parameters
    ----------
    detector_id : `int`
        Detector (0..8); each has its own pattern.
    x, y : `numpy.ndarray`
        Pixel coordinates of the assembled detector (broadcast together).

    Returns
    -------
    pattern : `numpy.ndarray`, float64
        Values within about +-1.5, broadcast shape of ``x`` and ``y``.
    """
    kx1, ky1, kx2, ky2, p1, p2, p3, a2 = _sky_frame_parameters(detector_id)
    u = np.asarray(x, dtype=np.float64) / DETECTOR_SIZE
    v = np.asarray(y, dtype=np.float64) / DETECTOR_SIZE
    two_pi = 2.0 * math.pi
    return np.cos(two_pi * (kx1 * u + p1)) * np.cos(two_pi * (ky1 * v + p2)) + a2 * np.cos(
        two_pi * (kx2 * u + ky2 * v + p3)
    )


def _sky_image(visit: Any, detector: Detector, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    fx, fy = detector.pixels_to_focal_plane(x, y)
    smooth = visit["sky0"] * (1.0 + visit["sky_grad_x"] * fx + visit["sky_grad_y"] * fy)
    return smooth + visit["sky_frame_scale"] * sky_frame(detector.id, x, y)


def _psf_fwhm(visit: Any, detector: Detector, x: Any, y: Any) -> Any:
    fx, fy = detector.pixels_to_focal_plane(x, y)
    return visit["fwhm0"] * (1.0 + visit["psf_grad_x"] * fx + visit["psf_grad_y"] * fy)


# Galaxy profiles as Gaussian mixtures ------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _sersic_mixture(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes (sum 1) and variances [r_e^2] of Gaussians fit to a truncated circular Sersic profile.

    Non-negative least squares on the surface brightness, weighted by area; the profile is truncated at
    4 r_e (n=1) or 8 r_e (n=4).  Deterministic (no random numbers).
    """
    trunc, vmin, vmax, k = {1: (4.0, 1e-3, 4.0, 12), 4: (8.0, 1e-6, 30.0, 18)}[n]
    b = special.gammaincinv(2.0 * n, 0.5)
    r = np.geomspace(1e-4, 1.5 * trunc, 3000)
    profile = np.where(r < trunc, np.exp(-b * (r ** (1.0 / n) - 1.0)), 0.0)
    variances = np.geomspace(vmin, vmax, k)
    design = np.exp(-(r[:, None] ** 2) / (2.0 * variances)) / (2.0 * math.pi * variances)
    weight = np.sqrt(r * np.gradient(r))
    amps, _ = nnls(design * weight[:, None], profile * weight)
    keep = amps > 1e-4 * amps.sum()
    return amps[keep] / amps[keep].sum(), variances[keep]


# The catalogue --------------------------------------------------------------------------------------------------


def _power_law_mags(rng: np.random.Generator, n: int, m1: float, m2: float, slope: float) -> np.ndarray:
    """Magnitudes with dN/dm proportional to 10**(slope * m) between m1 and m2."""
    lo, hi = 10 ** (slope * m1), 10 ** (slope * m2)
    return np.log10(lo + rng.uniform(size=n) * (hi - lo)) / slope


def _uniform_positions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    half_ra = FIELD_HALF_SIZE / math.cos(math.radians(FIELD_DEC))
    return FIELD_RA + rng.uniform(-half_ra, half_ra, n), FIELD_DEC + rng.uniform(-FIELD_HALF_SIZE, FIELD_HALF_SIZE, n)


def make_catalog(seed: int) -> Table:
    """The static catalogue of a seed: stars, bright (saturating) stars, variables and galaxies.

    Returns
    -------
    objects : `astropy.table.Table`
        Columns ``id``, ``kind`` (star, variable, galaxy), ``ra``, ``dec`` [deg], ``mag_g``, ``mag_r``,
        ``mag_i`` [AB], ``sersic_n``, ``r_e`` [arcsec, semi-major half-light radius; 0 for point
        sources], ``axis_ratio``, ``pa`` [deg East of North], ``period`` [day], ``amplitude``
        (fractional), ``phase`` [rad] (0 for non-variables).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
    area = (2 * FIELD_HALF_SIZE) ** 2
    names = ("kind", "ra", "dec", "mag_r", "gr", "ri", "n", "re", "q", "pa")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in names}

    def add(kind: str, ra: np.ndarray, dec: np.ndarray, mag_r: np.ndarray, gr: np.ndarray, ri: np.ndarray,
            n: Any = 0, re: Any = 0.0, q: Any = 1.0, pa: Any = 0.0) -> None:
        size = len(ra)
        cols["kind"].append(np.full(size, kind))
        for key, value in (("ra", ra), ("dec", dec), ("mag_r", mag_r), ("gr", gr), ("ri", ri), ("n", n), ("re", re),
                           ("q", q), ("pa", pa)):
            cols[key].append(np.broadcast_to(np.asarray(value, dtype=np.float64), (size,)).copy())

    def star_colours(size: int) -> tuple[np.ndarray, np.ndarray]:
        gr = rng.uniform(0.3, 1.4, size)
        return gr, 0.45 * gr - 0.05 + rng.normal(0.0, 0.03, size)

    n_stars = int(rng.poisson(STAR_DENSITY * area))
    ra, dec = _uniform_positions(rng, n_stars)
    add("star", ra, dec, _power_law_mags(rng, n_stars, 16.0, 24.0, 0.15), *star_colours(n_stars))
    # One bright, saturating star and one variable star near the centre of each detector's footprint.
    ra, dec = _footprint_positions(rng, 150.0)
    add("star", ra, dec, rng.uniform(13.0, 14.5, len(ra)), *star_colours(len(ra)))
    ra, dec = _footprint_positions(rng, 200.0)
    add("variable", ra, dec, rng.uniform(17.0, 19.5, len(ra)), *star_colours(len(ra)))
    n_gal = int(rng.poisson(GALAXY_DENSITY * area))
    ra, dec = _uniform_positions(rng, n_gal)
    mag = _power_law_mags(rng, n_gal, 18.0, 25.0, 0.3)
    sersic = np.where(rng.uniform(size=n_gal) < 0.75, 1, 4)
    re = np.clip(rng.lognormal(np.log(0.7 * 10 ** (-0.1 * (mag - 22.0))), 0.35), 0.15, 3.0)
    re = np.where(sersic == 4, np.minimum(re, 1.5), re)
    add("galaxy", ra, dec, mag, rng.uniform(0.3, 1.2, n_gal), rng.uniform(0.1, 0.6, n_gal), sersic, re,
        rng.uniform(0.3, 1.0, n_gal), rng.uniform(0.0, 180.0, n_gal))
    data = {k: np.concatenate(v) for k, v in cols.items()}
    n_total = len(data["ra"])
    table = Table()
    table["id"] = np.arange(1, n_total + 1, dtype=np.int64)
    table["kind"] = data["kind"].astype("U8")
    table["ra"], table["dec"] = data["ra"], data["dec"]
    table["mag_g"] = data["mag_r"] + data["gr"]
    table["mag_r"] = data["mag_r"]
    table["mag_i"] = data["mag_r"] - data["ri"]
    table["sersic_n"] = data["n"].astype(np.int64)
    table["r_e"], table["axis_ratio"], table["pa"] = data["re"], data["q"], data["pa"]
    is_var = table["kind"] == "variable"
    for name, lo, hi in (("period", 0.005, 0.05), ("amplitude", 0.2, 0.5), ("phase", 0.0, 2 * math.pi)):
        values = np.zeros(n_total)
        values[is_var] = rng.uniform(lo, hi, int(is_var.sum()))
        table[name] = values
    for name, unit in (("ra", "deg"), ("dec", "deg"), ("mag_g", "mag"), ("mag_r", "mag"), ("mag_i", "mag"),
                       ("r_e", "arcsec"), ("pa", "deg"), ("period", "d"), ("phase", "rad")):
        table[name].unit = unit
    return table


def _footprint_positions(rng: np.random.Generator, half: float) -> tuple[np.ndarray, np.ndarray]:
    """One random position per detector, within ``half`` pixels of its centre for an undithered visit."""
    positions = []
    for det in _camera():
        x, y = np.array(det.bbox.center) + rng.uniform(-half, half, 2)
        positions.append(detector_wcs(det, FIELD_RA, FIELD_DEC).pixel_to_world_values(x, y))
    radec = np.array(positions, dtype=np.float64)
    return radec[:, 0], radec[:, 1]


def _make_transients(
    seed: int, band: str, objects: Table, n_visits: int, first_visit: int, transients_from: int
) -> Table:
    """Transients: per detector, one isolated and one 0.3-1.5 arcsec from a galaxy (r < 23.5), both
    within 200 pixels of the detector centre (so dithers keep them on it).  Each is present in a run of
    consecutive visits that starts at visit index ``transients_from`` or later (0-based,
    ``0 <= transients_from < n_visits``)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3]))
    iso_ra, iso_dec = _footprint_positions(rng, 200.0)
    galaxies = objects[(objects["kind"] == "galaxy") & (objects["mag_r"] < 23.5)]
    gal_ra, gal_dec = np.asarray(galaxies["ra"]), np.asarray(galaxies["dec"])
    cos_dec = math.cos(math.radians(FIELD_DEC))
    hosts = []
    for ra, dec in zip(*_footprint_positions(rng, 200.0), strict=True):
        nearest = np.argsort(np.hypot((gal_ra - ra) * cos_dec, gal_dec - dec))[:5]
        hosts.append(int(rng.choice(nearest)))
    hosts_arr = np.array(hosts)
    n_det = len(hosts_arr)
    offset = rng.uniform(0.3, 1.5, n_det) / 3600.0
    angle = rng.uniform(0, 2 * math.pi, n_det)
    host_ra = gal_ra[hosts_arr] + offset * np.cos(angle) / cos_dec
    host_dec = gal_dec[hosts_arr] + offset * np.sin(angle)
    n = 2 * n_det
    mag = rng.uniform(19.0, 21.5, n)
    gr = rng.uniform(-0.2, 0.5, n)
    wrng = np.random.default_rng(np.random.SeedSequence([int(seed), 4, _BAND_INDEX[band], int(n_visits)]))
    start = wrng.integers(transients_from, n_visits, n)
    stop = np.minimum(start + wrng.integers(0, n_visits, n), n_visits - 1)
    table = Table()
    table["id"] = np.arange(10_000_001, 10_000_001 + n, dtype=np.int64)
    table["ra"] = np.concatenate([iso_ra, host_ra])
    table["dec"] = np.concatenate([iso_dec, host_dec])
    table["host_id"] = np.concatenate([np.zeros(n_det, np.int64), np.asarray(galaxies["id"][hosts_arr], np.int64)])
    table["mag_g"] = mag + gr
    table["mag_r"] = mag
    table["mag_i"] = mag - 0.5 * gr
    table["first_visit"] = (first_visit + start).astype(np.int64)
    table["last_visit"] = (first_visit + stop).astype(np.int64)
    for name in ("ra", "dec"):
        table[name].unit = "deg"
    return table


# Visits ---------------------------------------------------------------------------------------------------------


def _visit_table(seed: int, band: str, n_visits: int, first_visit: int, sky_frames: bool = True) -> Table:
    rows = []
    start = Time(NIGHT_START, format="isot", scale="tai") + TimeDelta(3 * 3600.0 * _BAND_INDEX[band], format="sec")
    sky_per_pixel = 10 ** (-0.4 * (SKY_BRIGHTNESS[band] - ZERO_POINT[band])) * PIXEL_SCALE**2
    for k in range(n_visits):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1, _BAND_INDEX[band], k]))
        begin = start + TimeDelta(CADENCE * k, format="sec")
        day_obs = int((begin - TimeDelta(12 * 3600.0, format="sec")).strftime("%Y%m%d"))
        airmass = 1.05 + 0.15 * rng.uniform()
        rows.append(
            {
                "visit": first_visit + k,
                "band": band,
                "physical_filter": f"SimCam-{band}",
                "day_obs": day_obs,
                "datetime_begin": begin.isot,
                "mjd_begin": begin.mjd,
                "mjd_mid": (begin + TimeDelta(EXPOSURE_TIME / 2, format="sec")).mjd,
                "exposure_time": EXPOSURE_TIME,
                "ra": FIELD_RA + rng.uniform(-DITHER, DITHER) / math.cos(math.radians(FIELD_DEC)),
                "dec": FIELD_DEC + rng.uniform(-DITHER, DITHER),
                "rotation": 0.0,
                "airmass": airmass,
                "zero_point": ZERO_POINT[band] - rng.uniform(0.0, 0.1) - 0.1 * (airmass - 1.0),
                "fwhm0": rng.uniform(0.65, 1.3),
                "psf_grad_x": rng.uniform(-0.003, 0.003),
                "psf_grad_y": rng.uniform(-0.003, 0.003),
                "sky0": sky_per_pixel * rng.uniform(0.8, 1.25),
                "sky_grad_x": rng.uniform(-0.005, 0.005),
                "sky_grad_y": rng.uniform(-0.005, 0.005),
                # Drawn with or without sky frames, so that the parameters drawn after it do not change.
                "sky_frame_fraction": rng.uniform(0.01, 0.04) * float(sky_frames),
                "bias_phase": rng.uniform(0, 2 * math.pi),
            }
        )
    table = Table(rows=rows) if rows else Table()
    if rows:
        table["sky_frame_scale"] = table["sky0"] * table["sky_frame_fraction"]
        table["calib_nJy_per_count"] = 10 ** (-0.4 * (table["zero_point"] - AB_NJY_ZERO_POINT))
        table.remove_column("sky_frame_fraction")
        for name, unit in (("ra", "deg"), ("dec", "deg"), ("rotation", "deg"), ("exposure_time", "s"),
                           ("zero_point", "mag"), ("fwhm0", "arcsec"), ("psf_grad_x", "1 / mm"),
                           ("psf_grad_y", "1 / mm"), ("sky0", "electron"), ("sky_grad_x", "1 / mm"),
                           ("sky_grad_y", "1 / mm"), ("sky_frame_scale", "electron"), ("mjd_begin", "d"),
                           ("mjd_mid", "d")):
            table[name].unit = unit
    return table


# Rendering ------------------------------------------------------------------------------------------------------


def _add_point_source(image: np.ndarray, x: float, y: float, flux: float, sigma: float) -> None:
    """Add a pixel-integrated circular Gaussian of ``flux`` [e-] centred at (x, y), clipped to the image."""
    peak = flux / (2 * math.pi * sigma**2)
    half = int(math.ceil(sigma * math.sqrt(2.0 * math.log(max(peak / 0.01, math.e))))) + 1
    ny, nx = image.shape
    x0, x1 = max(int(round(x)) - half, 0), min(int(round(x)) + half + 1, nx)
    y0, y1 = max(int(round(y)) - half, 0), min(int(round(y)) + half + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    xe = np.arange(x0, x1 + 1) - 0.5 - x
    ye = np.arange(y0, y1 + 1) - 0.5 - y
    px = 0.5 * np.diff(special.erf(xe * scale))
    py = 0.5 * np.diff(special.erf(ye * scale))
    image[y0:y1, x0:x1] += flux * np.outer(py, px)


def _add_galaxy(
    image: np.ndarray, x: float, y: float, flux: float, sigma: float, n: int, r_e: float, q: float, pa: float
) -> None:
    """Add a Sersic galaxy (``r_e`` [pixels] on the major axis, axis ratio ``q``, position angle ``pa`` [deg
    East of North, North = +y, East = -x]) convolved with a Gaussian PSF of width ``sigma`` [pixels]."""
    amps, variances = _sersic_mixture(int(n))
    theta = math.radians(pa)
    u = np.array([-math.sin(theta), math.cos(theta)])  # major axis direction in pixel (x, y)
    w = np.array([u[1], -u[0]])
    shape_cov = r_e**2 * (np.outer(u, u) + q**2 * np.outer(w, w))
    extra = sigma**2 + 1.0 / 12.0  # PSF and pixel-box smoothing
    cxx = variances * shape_cov[0, 0] + extra
    cyy = variances * shape_cov[1, 1] + extra
    cxy = variances * shape_cov[0, 1]
    biggest = float(np.max(np.maximum(cxx, cyy)[amps * flux > 0.05]) if np.any(amps * flux > 0.05) else extra)
    half = min(int(math.ceil(4.0 * math.sqrt(biggest))) + 1, 100)
    ny, nx = image.shape
    x0, x1 = max(int(round(x)) - half, 0), min(int(round(x)) + half + 1, nx)
    y0, y1 = max(int(round(y)) - half, 0), min(int(round(y)) + half + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1) - x)[None, None, :]
    dy = (np.arange(y0, y1) - y)[None, :, None]
    det = cxx * cyy - cxy**2
    ixx, iyy, ixy = (cyy / det)[:, None, None], (cxx / det)[:, None, None], (-cxy / det)[:, None, None]
    norm = (amps / (2 * math.pi * np.sqrt(det)))[:, None, None]
    stamp = np.sum(norm * np.exp(-0.5 * (ixx * dx**2 + 2 * ixy * dx * dy + iyy * dy**2)), axis=0)
    image[y0:y1, x0:x1] += flux * stamp


def _add_cosmic_rays(
    image: np.ndarray, rng: np.random.Generator, visit: int, detector: int, rows: list[dict[str, Any]]
) -> None:
    ny, nx = image.shape
    for _ in range(int(rng.poisson(CR_PER_DETECTOR))):
        x, y = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        length, angle = rng.uniform(1.0, 12.0), rng.uniform(0.0, math.pi)
        energy = rng.uniform(500.0, 4000.0)
        t = np.arange(0.0, length + 0.5, 0.5)
        xs = np.clip(np.rint(x + t * math.cos(angle)), 0, nx - 1).astype(np.int64)
        ys = np.clip(np.rint(y + t * math.sin(angle)), 0, ny - 1).astype(np.int64)
        flat = np.unique(ys * nx + xs)
        image.ravel()[flat] += energy
        rows.append({"visit": visit, "detector": detector, "x": x, "y": y, "length": length,
                     "angle": math.degrees(angle), "electrons_per_pixel": energy, "n_pixels": len(flat)})


def _render_detector(
    detector: Detector,
    visit: Any,
    objects: Table,
    transients: Table,
    seed: int,
    band: str,
    k: int,
    source_rows: list[dict[str, Any]],
    cr_rows: list[dict[str, Any]],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render one raw (uint16 ADU, raw layout) and return it with the detector's truth row."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2, _BAND_INDEX[band], k, detector.id]))
    visit_id = int(visit["visit"])
    wcs = detector_wcs(detector, visit["ra"], visit["dec"], visit["rotation"])
    ny = nx = DETECTOR_SIZE
    yy = np.arange(ny, dtype=np.float64)[:, None]
    xx = np.arange(nx, dtype=np.float64)[None, :]
    electrons = np.array(_sky_image(visit, detector, xx, yy), dtype=np.float64)

    mag_col = f"mag_{band}"
    t_mid = float(visit["mjd_mid"])
    t0 = Time(NIGHT_START, format="isot", scale="tai").mjd
    # Static objects and variables.
    px, py = wcs.world_to_pixel_values(np.asarray(objects["ra"]), np.asarray(objects["dec"]))
    margin = 100
    near = (px > -margin) & (px < nx + margin) & (py > -margin) & (py < ny + margin)
    zp = float(visit["zero_point"])
    for i in np.flatnonzero(near):
        obj = objects[i]
        mag = float(obj[mag_col])
        factor = 1.0
        if obj["kind"] == "variable":
            factor = 1.0 + obj["amplitude"] * math.sin(2 * math.pi * (t_mid - t0) / obj["period"] + obj["phase"])
        flux = 10 ** (-0.4 * (mag - zp)) * factor
        x, y = float(px[i]), float(py[i])
        fwhm = float(_psf_fwhm(visit, detector, x, y))
        sigma = fwhm / PIXEL_SCALE * _FWHM_TO_SIGMA
        if obj["kind"] == "galaxy":
            _add_galaxy(electrons, x, y, flux, sigma, int(obj["sersic_n"]), obj["r_e"] / PIXEL_SCALE,
                        float(obj["axis_ratio"]), float(obj["pa"]))
        else:
            _add_point_source(electrons, x, y, flux, sigma)
        if -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5:
            source_rows.append({
                "visit": visit_id, "detector": detector.id, "id": int(obj["id"]), "kind": str(obj["kind"]),
                "x": x, "y": y, "mag": mag, "flux": flux, "flux_nJy": 10 ** (-0.4 * (mag - AB_NJY_ZERO_POINT)) * factor,
                "psf_fwhm": fwhm,
            })
    # Transients present in this visit.
    if len(transients):
        tx, ty = wcs.world_to_pixel_values(np.asarray(transients["ra"]), np.asarray(transients["dec"]))
        for i, tr in enumerate(transients):
            if not (tr["first_visit"] <= visit_id <= tr["last_visit"]):
                continue
            x, y = float(tx[i]), float(ty[i])
            if not (-margin < x < nx + margin and -margin < y < ny + margin):
                continue
            mag = float(tr[mag_col])
            flux = 10 ** (-0.4 * (mag - zp))
            fwhm = float(_psf_fwhm(visit, detector, x, y))
            _add_point_source(electrons, x, y, flux, fwhm / PIXEL_SCALE * _FWHM_TO_SIGMA)
            if -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5:
                source_rows.append({
                    "visit": visit_id, "detector": detector.id, "id": int(tr["id"]), "kind": "transient",
                    "x": x, "y": y, "mag": mag, "flux": flux, "flux_nJy": 10 ** (-0.4 * (mag - AB_NJY_ZERO_POINT)),
                    "psf_fwhm": fwhm,
                })

    defects = detector_defects(detector.id)
    for box, kind in defects:
        if kind == "dead":
            electrons[box.slices(detector.bbox)] *= DEAD_COLUMN_RESPONSE
    counts = rng.poisson(electrons).astype(np.float64)
    _add_cosmic_rays(counts, rng, visit_id, detector.id, cr_rows)

    raw = np.empty(RAW_BBOX.shape, dtype=np.float64)
    rows_y = np.arange(ny, dtype=np.float64)
    truth: dict[str, Any] = {"visit": visit_id, "detector": detector.id}
    for index, amp in enumerate(detector.amplifiers):
        offset = rng.uniform(-5.0, 5.0)
        bias = amp.bias_level + offset + 1.5 * np.sin(2 * math.pi * rows_y / 700.0 + visit["bias_phase"] + index)
        data = amp.bbox.slices(RAW_BBOX)
        over = amp.overscan_bbox.slices(RAW_BBOX)
        noise_adu = amp.read_noise / amp.gain
        raw[data] = bias[:, None] + counts[data] / amp.gain + rng.normal(0.0, noise_adu, amp.bbox.shape)
        raw[over] = bias[:, None] + rng.normal(0.0, noise_adu, amp.overscan_bbox.shape)
        truth[f"bias_offset_{amp.name}"] = amp.bias_level + offset
    for box, kind in defects:
        if kind == "hot":
            raw[box.slices(RAW_BBOX)] += HOT_COLUMN_ADU
    np.rint(raw, out=raw)
    np.clip(raw, 0, SATURATION, out=raw)
    cx, cy = detector.bbox.center
    truth["psf_fwhm"] = float(_psf_fwhm(visit, detector, cx, cy))
    truth["psf_sigma_pixels"] = truth["psf_fwhm"] / PIXEL_SCALE * _FWHM_TO_SIGMA
    truth["sky_center"] = float(_sky_image(visit, detector, np.array(cx), np.array(cy)))
    truth["n_saturated"] = int(np.count_nonzero(raw[:, : DETECTOR_SIZE] >= SATURATION))
    return raw.astype(np.uint16), truth


def _raw_header(detector: Detector, visit: Any, seed: int) -> fits.Header:
    begin = Time(str(visit["datetime_begin"]), format="isot", scale="tai")
    end = begin + TimeDelta(float(visit["exposure_time"]), format="sec")
    visit_id = int(visit["visit"])
    header = fits.Header()
    header["ORIGIN"] = ("Butler Pipelines SimCam simulator", "Simulated data")
    header["TELESCOP"] = "SimTel"
    header["INSTRUME"] = ("SimCam", "Instrument")
    header["DETNAME"] = (detector.name, "Detector name")
    header["DETID"] = (detector.id, "Detector id")
    header["EXPID"] = (visit_id, "Exposure id (= visit id)")
    header["OBSID"] = (f"SC_{int(visit['day_obs'])}_{visit_id:06d}", "Observation id")
    header["DAYOBS"] = (int(visit["day_obs"]), "Observing night YYYYMMDD")
    header["OBSTYPE"] = ("science", "Observation type")
    header["OBJECT"] = ("SIMFIELD", "Target name")
    header["FILTER"] = (str(visit["physical_filter"]), "Physical filter")
    header["EXPTIME"] = (float(visit["exposure_time"]), "[s] Exposure time")
    header["TIMESYS"] = ("TAI", "Time scale of DATE-OBS, DATE-END, MJD-*")
    header["DATE-OBS"] = (begin.isot, "Start of the exposure (TAI)")
    header["DATE-END"] = (end.isot, "End of the exposure (TAI)")
    header["MJD-OBS"] = (float(begin.mjd), "[d] Start of the exposure (TAI)")
    header["MJD-END"] = (float(end.mjd), "[d] End of the exposure (TAI)")
    header["RA"] = (float(visit["ra"]), "[deg] Boresight right ascension (ICRS)")
    header["DEC"] = (float(visit["dec"]), "[deg] Boresight declination (ICRS)")
    header["ROTPA"] = (float(visit["rotation"]), "[deg] Sky angle of the focal-plane y axis")
    header["AIRMASS"] = (float(visit["airmass"]), "Airmass at mid-exposure")
    header["ZENDIST"] = (math.degrees(math.acos(1.0 / float(visit["airmass"]))), "[deg] Zenith distance")
    header["SIMSEED"] = (int(seed), "Seed of the simulation")
    header["BUNIT"] = ("adu", "Unit of the pixel values")
    for n, amp in enumerate(detector.amplifiers, start=1):
        d, o = amp.bbox, amp.overscan_bbox
        header[f"AMPNAME{n}"] = (amp.name, "Amplifier name")
        header[f"DATASEC{n}"] = (f"[{d.x0 + 1}:{d.x1},{d.y0 + 1}:{d.y1}]", f"Data section of {amp.name}")
        header[f"BIASSEC{n}"] = (f"[{o.x0 + 1}:{o.x1},{o.y0 + 1}:{o.y1}]", f"Overscan section of {amp.name}")
        header[f"GAIN{n}"] = (amp.gain, f"[e-/ADU] Gain of {amp.name}")
        header[f"RDNOISE{n}"] = (amp.read_noise, f"[e-] Read noise of {amp.name}")
        header[f"BIASLV{n}"] = (amp.bias_level, f"[ADU] Nominal bias level of {amp.name}")
        header[f"SATURAT{n}"] = (amp.saturation, f"[ADU] Saturation level of {amp.name}")
    header.extend(detector_wcs(detector, visit["ra"], visit["dec"], visit["rotation"]).to_header(), update=True)
    return header


# The public API -------------------------------------------------------------------------------------------------


@dataclass
class SimulationTruth:
    """The truth of a simulation (see the module docstring for the tables' contents).

    Attributes
    ----------
    root : `pathlib.Path`
        The output directory; raws in ``root/raw``, truth tables in ``root/truth``.
    seed : `int`
    band : `str`
    objects, transients, visits, detectors, sources, cosmic_rays : `astropy.table.Table`
    raw_paths : `list` [`pathlib.Path`]
        The raw files, ordered by visit then detector.
    """

    root: Path
    seed: int
    band: str
    objects: Table
    transients: Table
    visits: Table
    detectors: Table
    sources: Table
    cosmic_rays: Table
    raw_paths: list[Path] = field(default_factory=list)

    TABLES = ("objects", "transients", "visits", "detectors", "sources", "cosmic_rays")

    @property
    def visit_ids(self) -> list[int]:
        """The visit (= exposure) ids, in order."""
        return [int(v) for v in self.visits["visit"]]

    def visit(self, visit: int) -> Any:
        """The row of ``visits`` for a visit id.

        Raises
        ------
        KeyError
            If the simulation has no such visit.
        """
        match = np.flatnonzero(np.asarray(self.visits["visit"]) == int(visit))
        if not match.size:
            raise KeyError(f"visit {visit} is not in this simulation; visits: {self.visit_ids}.")
        return self.visits[int(match[0])]

    def sky_model(self, visit: int, detector: int, x: Any, y: Any) -> np.ndarray:
        """The true sky [e-/pixel] at pixel positions (x, y) of an assembled detector (arrays broadcast)."""
        return _sky_image(self.visit(visit), _camera()[detector], np.asarray(x, float), np.asarray(y, float))

    def psf_fwhm(self, visit: int, detector: int, x: Any, y: Any) -> Any:
        """The true PSF FWHM [arcsec] at pixel positions (x, y) of an assembled detector."""
        return _psf_fwhm(self.visit(visit), _camera()[detector], x, y)

    def sources_on(self, visit: int, detector: int) -> Table:
        """The ``sources`` rows of one visit and detector."""
        return self.sources[self._rows(self.sources, visit, detector)]

    @staticmethod
    def _rows(table: Table, visit: int, detector: int) -> np.ndarray:
        return (np.asarray(table["visit"]) == int(visit)) & (np.asarray(table["detector"]) == int(detector))

    def source_free_mask(self, visit: int, detector: int, *, threshold: float = 0.5) -> np.ndarray:
        """Pixels of an assembled detector free of any simulated source, cosmic ray or bad column.

        A pixel is "free" when every object, variable and transient present in the visit adds less than
        about ``threshold`` electrons to it (Gaussian estimate of each profile's extent, galaxies' wings
        included), no cosmic ray touched it or its neighbours, and it is not in a defect.

        Parameters
        ----------
        visit, detector : `int`
            Visit id and detector id.
        threshold : `float`, optional
            Surface brightness [e-/pixel] below which a source's light is ignored.

        Returns
        -------
        free : `numpy.ndarray` of bool, shape (1024, 1024)
            True on source-free pixels.
        """
        row = self.visit(visit)
        det = _camera()[detector]
        wcs = detector_wcs(det, row["ra"], row["dec"], row["rotation"])
        mag_col = f"mag_{self.band}"
        ra = np.concatenate([np.asarray(self.objects["ra"]), np.asarray(self.transients["ra"])])
        dec = np.concatenate([np.asarray(self.objects["dec"]), np.asarray(self.transients["dec"])])
        mags = np.concatenate([np.asarray(self.objects[mag_col]), np.asarray(self.transients[mag_col])])
        n_obj = len(self.objects)
        r_e = np.concatenate([np.asarray(self.objects["r_e"]) / PIXEL_SCALE, np.zeros(len(self.transients))])
        sersic = np.concatenate([np.asarray(self.objects["sersic_n"]), np.zeros(len(self.transients), int)])
        present = np.ones(len(ra), dtype=bool)
        first, last = np.asarray(self.transients["first_visit"]), np.asarray(self.transients["last_visit"])
        present[n_obj:] = (first <= visit) & (visit <= last)
        px, py = wcs.world_to_pixel_values(ra, dec)
        size = DETECTOR_SIZE
        free = np.ones((size, size), dtype=bool)
        corners = np.array([0, size, size, 0]), np.array([0, 0, size, size])
        sigma_psf = float(np.max(self.psf_fwhm(visit, detector, *corners))) / PIXEL_SCALE * _FWHM_TO_SIGMA
        for i in np.flatnonzero(present & (px > -200) & (px < size + 200) & (py > -200) & (py < size + 200)):
            flux = 10 ** (-0.4 * (mags[i] - float(row["zero_point"]))) * 1.5  # 1.5: variables' amplitude
            extent = math.sqrt(sigma_psf**2 + (r_e[i] * (3.0 if sersic[i] == 4 else 1.0)) ** 2)
            peak = flux / (2 * math.pi * extent**2)
            radius = min(extent * math.sqrt(2 * math.log(max(peak / threshold, 1.0))) + 2 * sigma_psf, 200.0)
            x0, x1 = max(int(px[i] - radius), 0), min(int(px[i] + radius) + 2, size)
            y0, y1 = max(int(py[i] - radius), 0), min(int(py[i] + radius) + 2, size)
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = np.ogrid[y0:y1, x0:x1]
            free[y0:y1, x0:x1] &= (xx - px[i]) ** 2 + (yy - py[i]) ** 2 > radius**2
        crs = self.cosmic_rays[self._rows(self.cosmic_rays, visit, detector)]
        for cr in crs:
            x0, y0 = int(cr["x"]), int(cr["y"])
            reach = int(math.ceil(cr["length"])) + 3
            free[max(y0 - reach, 0) : y0 + reach + 1, max(x0 - reach, 0) : x0 + reach + 1] = False
        for box, _kind in detector_defects(detector):
            free[box.slices(det.bbox)] = False
        return free

    def reference_catalog(self, *, mag_limit: float = 23.0, mag_err: float = 0.01) -> Table:
        """A reference catalogue of the field in the layout `CalibrateTask` reads (as the SDSS one).

        Stars and galaxies brighter than ``mag_limit`` in r, with their true magnitudes; variable stars
        are left out, as a curated catalogue would flag them.

        Parameters
        ----------
        mag_limit : `float`, optional
            Faintest r magnitude [AB] listed.
        mag_err : `float`, optional
            The magnitude error given to every entry [mag].

        Returns
        -------
        refcat : `astropy.table.Table`
            Columns ``id``, ``ra``, ``dec`` [deg], ``g``, ``g_err``, ``r``, ``r_err``, ``i``, ``i_err`` [AB mag]
            and ``starnotgal`` (1 for stars, 0 for galaxies), sorted by ``id``.
        """
        objects = self.objects[(self.objects["kind"] != "variable") & (self.objects["mag_r"] < mag_limit)]
        refcat = Table()
        refcat["id"] = np.asarray(objects["id"], dtype=np.int64)
        refcat["ra"] = np.asarray(objects["ra"], dtype=np.float64)
        refcat["dec"] = np.asarray(objects["dec"], dtype=np.float64)
        for band in BANDS:
            refcat[band] = np.asarray(objects[f"mag_{band}"], dtype=np.float64)
            refcat[f"{band}_err"] = np.full(len(objects), float(mag_err))
        refcat["starnotgal"] = (np.asarray(objects["kind"]) == "star").astype(np.int16)
        return refcat

    def raw_path(self, visit: int, detector: int) -> Path:
        """Path of the raw of a visit and detector."""
        return self.root / "raw" / _raw_name(self.band, int(visit), _camera()[detector].name)

    def write(self) -> None:
        """Write the truth tables and ``summary.yaml`` to ``root/truth``."""
        truth_dir = self.root / "truth"
        truth_dir.mkdir(parents=True, exist_ok=True)
        for name in self.TABLES:
            getattr(self, name).write(truth_dir / f"{name}.ecsv", format="ascii.ecsv", overwrite=True)
        self.reference_catalog().write(truth_dir / "refcat.fits", format="fits", overwrite=True)
        summary = {
            "instrument": SimCam.name,
            "seed": int(self.seed),
            "band": self.band,
            "physical_filter": f"SimCam-{self.band}",
            "field": {"ra": FIELD_RA, "dec": FIELD_DEC},
            "visits": self.visit_ids,
            "detectors": sorted({int(d) for d in self.detectors["detector"]}) if len(self.detectors) else [],
            "n_objects": {k: int(np.count_nonzero(self.objects["kind"] == k)) for k in ("star", "variable", "galaxy")},
            "n_transients": len(self.transients),
            "raw_files": [str(p.relative_to(self.root)) for p in self.raw_paths],
            "tables": {name: f"truth/{name}.ecsv" for name in self.TABLES},
            "refcat": "truth/refcat.fits",
            "units": UNITS,
        }
        (truth_dir / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=True))

    @classmethod
    def load(cls, root: str | Path) -> SimulationTruth:
        """Read the truth of a simulation written by `simulate_raws`.

        Raises
        ------
        SimulationError
            If ``root/truth/summary.yaml`` does not exist.
        """
        root = Path(root)
        summary_path = root / "truth" / "summary.yaml"
        if not summary_path.is_file():
            raise SimulationError(
                f"{root} holds no SimCam simulation truth ({summary_path} is missing); run simulate_raws."
            )
        summary = yaml.safe_load(summary_path.read_text())
        tables = {name: Table.read(root / "truth" / f"{name}.ecsv", format="ascii.ecsv") for name in cls.TABLES}
        return cls(root=root, seed=int(summary["seed"]), band=str(summary["band"]),
                   raw_paths=[root / p for p in summary["raw_files"]], **tables)


def _raw_name(band: str, visit: int, detector_name: str) -> str:
    return f"SimCam_{band}_{visit:06d}_{detector_name}.fits"


def simulate_raws(
    out_dir: str | Path,
    *,
    n_visits: int,
    seed: int,
    band: str = "r",
    detectors: Sequence[int] | None = None,
    first_visit: int | None = None,
    sky_frames: bool = True,
    transients_from: int | None = None,
    progress: bool = False,
) -> SimulationTruth:
    """Simulate SimCam raws of the field at RA 150, Dec 2 and write them with their truth.

    Parameters
    ----------
    out_dir : `str` or `pathlib.Path`
        Output directory (created); raws go to ``out_dir/raw``, truth to ``out_dir/truth``.
    n_visits : `int`
        Number of visits (>= 1), 60 s apart, 30 s each.
    seed : `int`
        Seed (>= 0) of every random choice: the same seed gives byte-identical files.  The static
        catalogue depends on the seed only, so simulations of several bands with one seed see the same sky.
    band : `str`, optional
        ``"g"``, ``"r"`` or ``"i"`` (physical filter ``SimCam-<band>``).
    detectors : sequence of `int`, optional
        Detector ids to render (default: all nine); fewer make faster tests.
    first_visit : `int`, optional
        Id of the first visit (default 1000 for g, 2000 for r, 3000 for i); visits are numbered on.
    sky_frames : `bool`, optional
        Add each visit's scaled sky-frame pattern to the sky (default).  Without it the sky of a visit is
        exactly an offset and a focal-plane gradient; every other visit parameter stays the same.
    transients_from : `int`, optional
        Index (0-based, ``0 <= transients_from < n_visits``) of the first visit in which transients may
        appear; the visits before it have no transient (e.g. to build a template from them).  Default: 1
        when there are two or more visits, else 0.  Every other random choice is independent of it.
    progress : `bool`, optional
        Show a progress bar on standard error.

    Returns
    -------
    truth : `SimulationTruth`
        The truth tables (also written to ``out_dir/truth``) and the raw paths.

    Raises
    ------
    SimulationError
        If ``band``, ``n_visits``, ``seed``, ``first_visit``, ``transients_from`` or ``detectors`` is invalid.
    """
    if band not in _BAND_INDEX:
        raise SimulationError(f"unknown SimCam band {band!r}; choose one of {', '.join(BANDS)}.")
    if int(n_visits) < 1:
        raise SimulationError(f"n_visits must be at least 1, got {n_visits}.")
    if int(seed) < 0:
        raise SimulationError(f"seed must be a non-negative integer, got {seed}.")
    if transients_from is None:
        transients_from = 1 if n_visits > 1 else 0
    if not 0 <= int(transients_from) < int(n_visits):
        raise SimulationError(
            f"transients_from is the index of the first visit with transients and must lie in 0..{int(n_visits) - 1} "
            f"for {n_visits} visit(s), got {transients_from}."
        )
    camera = _camera()
    detector_ids = camera.ids if detectors is None else sorted({int(d) for d in detectors})
    unknown = [d for d in detector_ids if d not in camera]
    if unknown or not detector_ids:
        raise SimulationError(f"unknown SimCam detector(s) {unknown or 'none given'}; detector ids are {camera.ids}.")
    first = FIRST_VISIT[band] if first_visit is None else int(first_visit)
    if first < 0 or first + n_visits - 1 > SimCam.visit_max:
        raise SimulationError(f"visit ids {first}..{first + n_visits - 1} must lie in 0..{SimCam.visit_max}.")

    root = Path(out_dir)
    (root / "raw").mkdir(parents=True, exist_ok=True)
    objects = make_catalog(seed)
    transients = _make_transients(seed, band, objects, n_visits, first, int(transients_from))
    visits = _visit_table(seed, band, n_visits, first, sky_frames)
    source_rows: list[dict[str, Any]] = []
    cr_rows: list[dict[str, Any]] = []
    detector_rows: list[dict[str, Any]] = []
    raw_paths: list[Path] = []
    from tqdm import tqdm

    jobs = [(k, d) for k in range(n_visits) for d in detector_ids]
    for k, det_id in tqdm(jobs, desc="simulating raws", unit="raw", disable=not progress, file=sys.stderr):
        visit = visits[k]
        detector = camera[det_id]
        pixels, truth_row = _render_detector(detector, visit, objects, transients, seed, band, k, source_rows, cr_rows)
        detector_rows.append(truth_row)
        path = root / "raw" / _raw_name(band, int(visit["visit"]), detector.name)
        fits.PrimaryHDU(pixels, header=_raw_header(detector, visit, seed)).writeto(path, overwrite=True)
        raw_paths.append(path)

    truth = SimulationTruth(
        root=root,
        seed=int(seed),
        band=band,
        objects=objects,
        transients=transients,
        visits=visits,
        detectors=Table(rows=detector_rows),
        sources=_table(source_rows, _SOURCE_COLUMNS),
        cosmic_rays=_table(cr_rows, _CR_COLUMNS),
        raw_paths=raw_paths,
    )
    for name, unit in (("flux", "electron"), ("flux_nJy", "nJy"), ("psf_fwhm", "arcsec"), ("mag", "mag")):
        truth.sources[name].unit = unit
    truth.write()
    return truth


_SOURCE_COLUMNS = {"visit": np.int64, "detector": np.int64, "id": np.int64, "kind": "U9", "x": np.float64,
                   "y": np.float64, "mag": np.float64, "flux": np.float64, "flux_nJy": np.float64,
                   "psf_fwhm": np.float64}
_CR_COLUMNS = {"visit": np.int64, "detector": np.int64, "x": np.float64, "y": np.float64, "length": np.float64,
               "angle": np.float64, "electrons_per_pixel": np.float64, "n_pixels": np.int64}


def _table(rows: list[dict[str, Any]], columns: dict[str, Any]) -> Table:
    """A table of ``rows`` with the given column names and dtypes (also when there are no rows)."""
    return Table({name: np.array([row[name] for row in rows], dtype=dtype) for name, dtype in columns.items()})
