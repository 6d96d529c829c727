"""Read SDSS DR8+ calibrated frames (``frame-<filter>-<run6>-<camcol>-<field4>.fits.bz2``, as in DR12).

A DR8+ "frame" is an fpC corrected frame after SDSS's calibration and sky subtraction (SDSS data model,
``BOSS_PHOTOOBJ/frames/RERUN/RUN/CAMCOL/frame.html``):

* HDU0: the image, 2048 x 1489 float32 [nanomaggies], sky-subtracted and calibrated, with a TAN WCS;
* HDU1: ``calibvec``, 2048 float32 [nanomaggies per count], the flat-field correction times the calibration
  of each column, already applied to HDU0;
* HDU2: the sky model: ``ALLSKY`` (a coarse grid, ~256 x 192, [counts]) and ``XINTERP`` (2048),
  ``YINTERP`` (1489): the fractional grid positions of every image column and row.  The sky of pixel
  (x, y) is ``ALLSKY`` bilinearly interpolated at (``XINTERP[x]``, ``YINTERP[y]``), positions beyond the
  grid taking the nearest edge value (IDL ``interpolate(allsky, xinterp, yinterp, /grid)``);
* HDU3: the astrometric ``asTrans`` row of the field.

The data model's recipe backs the calibration and the sky subtraction out of the image::

    dn = image / calibvec[column] + sky          # counts (DN) of the corrected frame, soft bias removed
    dn_err = sqrt(dn / gain + darkVariance)      # [DN]

with the gain [e-/DN] and dark variance [DN^2] of the camcol and filter tabulated in the data model
(`SDSS_GAIN`, `SDSS_DARK_VARIANCE`; some CCDs changed at a run boundary).  `read_dr12_frame` applies it
and returns the sky-restored exposure in counts together with SDSS's own sky model, the reference a
background estimate of the restored image can be compared with.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from ...errors import IngestError
from ...image import Exposure, FilterLabel, MaskedImage, PhotoCalib
from ._instrument import FILTER_ORDER, Sdss, SdssFrame
from .formatters import _visit_info, wcs_from_fpc_header
from .isr import AB_FLUX0_NJY, sdss_variance

__all__ = [
    "NJY_PER_NANOMAGGY",
    "SDSS_DARK_VARIANCE",
    "SDSS_GAIN",
    "Dr12Frame",
    "interpolate_sky_grid",
    "read_dr12_frame",
    "sdss_gain_dark_variance",
]

NJY_PER_NANOMAGGY = AB_FLUX0_NJY * 1e-9  # 1 nanomaggy = 3.631e-6 Jy = 3631 nJy

# Gain [e-/DN] and dark variance [DN^2 per pixel] of each CCD, by camcol (1..6) and filter, from the SDSS
# frame data model (https://data.sdss.org/datamodel/files/BOSS_PHOTOOBJ/frames/RERUN/RUN/CAMCOL/frame.html).
# A pair (before, after) applies to a CCD whose value changed: u2 gain at run 1100; i2, i4, z4, z5 dark
# variance at run 1500.
SDSS_GAIN: dict[int, dict[str, float | tuple[float, float]]] = {
    1: {"u": 1.62, "g": 3.32, "r": 4.71, "i": 5.165, "z": 4.745},
    2: {"u": (1.595, 1.825), "g": 3.855, "r": 4.6, "i": 6.565, "z": 5.155},
    3: {"u": 1.59, "g": 3.845, "r": 4.72, "i": 4.86, "z": 4.885},
    4: {"u": 1.6, "g": 3.995, "r": 4.76, "i": 4.885, "z": 4.775},
    5: {"u": 1.47, "g": 4.05, "r": 4.725, "i": 4.64, "z": 3.48},
    6: {"u": 2.17, "g": 4.035, "r": 4.895, "i": 4.76, "z": 4.69},
}
SDSS_DARK_VARIANCE: dict[int, dict[str, float | tuple[float, float]]] = {
    1: {"u": 9.61, "g": 15.6025, "r": 1.8225, "i": 7.84, "z": 0.81},
    2: {"u": 12.6025, "g": 1.44, "r": 1.00, "i": (5.76, 6.25), "z": 1.0},
    3: {"u": 8.7025, "g": 1.3225, "r": 1.3225, "i": 4.6225, "z": 1.0},
    4: {"u": 12.6025, "g": 1.96, "r": 1.3225, "i": (6.25, 7.5625), "z": (9.61, 12.6025)},
    5: {"u": 9.3025, "g": 1.1025, "r": 0.81, "i": 7.84, "z": (1.8225, 2.1025)},
    6: {"u": 7.0225, "g": 1.8225, "r": 0.9025, "i": 5.0625, "z": 1.21},
}
_GAIN_CHANGE_RUN = 1100  # runs after this one use the second u2 gain
_DARK_VARIANCE_CHANGE_RUN = 1500  # runs after this one use the second dark variances


class Dr12Frame(NamedTuple):
    """A DR8+ calibrated frame with its calibration and sky subtraction backed out (`read_dr12_frame`)."""

    exposure: Exposure
    """The sky-restored corrected frame [counts = DN, soft bias removed], with variance [DN^2], WCS,
    `PhotoCalib` [nJy per count], visit info, filter and the SDSS detector."""
    sky: np.ndarray
    """SDSS's sky model [DN], shape (1489, 2048) float32: ``exposure.image - sky`` is the sky-subtracted frame."""


def sdss_gain_dark_variance(camcol: int, filter_name: str, run: int) -> tuple[float, float]:
    """The gain [e-/DN] and dark variance [DN^2 per pixel] of an SDSS CCD (SDSS frame data model).

    Parameters
    ----------
    camcol : `int`
        Camera column, 1..6.
    filter_name : `str`
        One of u, g, r, i, z.
    run : `int`
        Imaging run (a few CCDs changed during the survey).

    Raises
    ------
    IngestError
        If the camcol or filter is unknown.
    """
    if camcol not in SDSS_GAIN or filter_name not in FILTER_ORDER:
        raise IngestError(f"no SDSS CCD {filter_name!r}{camcol}: filters {', '.join(FILTER_ORDER)}, camcols 1..6.")

    def pick(value: float | tuple[float, float], change_run: int) -> float:
        return float(value) if not isinstance(value, tuple) else float(value[1] if run > change_run else value[0])

    return (
        pick(SDSS_GAIN[camcol][filter_name], _GAIN_CHANGE_RUN),
        pick(SDSS_DARK_VARIANCE[camcol][filter_name], _DARK_VARIANCE_CHANGE_RUN),
    )


def _linear_weights(positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and upper weight of linear interpolation at fractional ``positions`` on
    ``0..n-1``, positions outside the range clamped to the nearest end."""
    p = np.clip(np.asarray(positions, dtype=np.float64), 0.0, n - 1.0)
    lo = np.minimum(np.floor(p).astype(np.int64), max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, p - lo


def interpolate_sky_grid(grid: np.ndarray, x_positions: np.ndarray, y_positions: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a grid at the outer product of fractional positions (IDL ``/GRID``).

    Parameters
    ----------
    grid : `numpy.ndarray`, shape (ny_grid, nx_grid)
        Values at integer grid positions, indexed [y, x].
    x_positions : `numpy.ndarray`, shape (nx,)
        Fractional grid column of every output column.
    y_positions : `numpy.ndarray`, shape (ny,)
        Fractional grid row of every output row.

    Returns
    -------
    image : `numpy.ndarray`, shape (ny, nx), float64
        ``image[j, i]`` = the grid interpolated at (``x_positions[i]``, ``y_positions[j]``); positions beyond
        the grid take the value of its nearest edge, as IDL's ``interpolate`` does.
    """
    grid = np.asarray(grid, dtype=np.float64)
    x0, x1, wx = _linear_weights(x_positions, grid.shape[1])
    y0, y1, wy = _linear_weights(y_positions, grid.shape[0])
    rows = grid[:, x0] * (1.0 - wx) + grid[:, x1] * wx  # (ny_grid, nx): along x first
    return rows[y0] * (1.0 - wy)[:, None] + rows[y1] * wy[:, None]


def read_dr12_frame(path: str | Path) -> Dr12Frame:
    """Read an SDSS DR8+ calibrated frame and back out its calibration and sky subtraction.

    Parameters
    ----------
    path : `str` or `pathlib.Path`
        ``frame-<filter>-<run6>-<camcol>-<field4>.fits[.bz2]``.

    Returns
    -------
    frame : `Dr12Frame`
        ``exposure``: image = ``HDU0 / calibvec + sky`` [DN] (the corrected frame without its soft bias),
        variance = ``max(image, 0) / gain + darkVariance`` [DN^2] (`sdss_gain_dark_variance`), an empty mask
        (the frame file has none), the header's TAN WCS, ``PhotoCalib(NMGY * 3631)`` [nJy per DN; ``NMGY``
        is the frame's mean calibration, the per-column flat-field part of ``calibvec`` varies by ~0.6%],
        visit info and filter as for an fpC, and the SDSS camera's detector of the CCD (the frame has the
        fpC's 2048 x 1489 pixel box); ``sky``: SDSS's sky model [DN].

    Raises
    ------
    IngestError
        If the file lacks the image, calibration vector or sky HDUs, their shapes disagree, or the header
        does not identify an SDSS CCD.
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        with fits.open(path, memmap=False) as hdul:
            if len(hdul) < 3:
                raise IngestError(
                    f"{path}: {len(hdul)} HDUs; a DR8+ SDSS frame has the image, the calibration vector and the "
                    "sky (and asTrans) HDUs."
                )
            header = hdul[0].header.copy()
            image = np.asarray(hdul[0].data, dtype=np.float64)
            calibvec = np.asarray(hdul[1].data, dtype=np.float64)
            sky_table = hdul[2].data
            try:
                allsky = np.asarray(sky_table["ALLSKY"][0], dtype=np.float64)
                xinterp = np.asarray(sky_table["XINTERP"][0], dtype=np.float64)
                yinterp = np.asarray(sky_table["YINTERP"][0], dtype=np.float64)
            except (KeyError, TypeError, IndexError):
                raise IngestError(
                    f"{path}: HDU2 has no ALLSKY/XINTERP/YINTERP sky table; is this an SDSS DR8+ frame?"
                ) from None
    if image.ndim != 2 or calibvec.shape != (image.shape[1],) or xinterp.shape != (image.shape[1],) or (
        yinterp.shape != (image.shape[0],)
    ):
        raise IngestError(
            f"{path}: image {image.shape}, calibvec {calibvec.shape}, XINTERP {xinterp.shape}, YINTERP "
            f"{yinterp.shape} disagree (expected (ny, nx), (nx,), (nx,), (ny,))."
        )
    if not np.all(calibvec > 0):
        raise IngestError(f"{path}: the calibration vector (HDU1) has non-positive values.")
    frame = SdssFrame.from_header(header, path)
    gain, dark_variance = sdss_gain_dark_variance(frame.camcol, frame.filter, frame.run)
    sky = interpolate_sky_grid(allsky, xinterp, yinterp)
    counts = (image / calibvec[None, :] + sky).astype(np.float32)
    nmgy = header.get("NMGY")
    calibration = float(nmgy) if nmgy is not None and float(nmgy) > 0 else float(np.median(calibvec))
    exposure = Exposure(
        MaskedImage(counts, variance=sdss_variance(counts, gain, dark_variance)),
        wcs=wcs_from_fpc_header(header),
        photo_calib=PhotoCalib(calibration * NJY_PER_NANOMAGGY),
        visit_info=_visit_info(header, frame),
        detector=Sdss().camera[frame.detector],
        filter=FilterLabel(band=frame.filter, physical_filter=frame.filter),
        metadata=header,
    )
    exposure.metadata["GAIN"] = (gain, "SDSS gain [e-/DN] of this CCD (frame data model)")
    exposure.metadata["DARKVAR"] = (dark_variance, "SDSS dark variance [DN^2] (frame data model)")
    return Dr12Frame(exposure, sky.astype(np.float32))
