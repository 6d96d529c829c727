"""Conversion between `Exposure` and astropy's `~astropy.nddata.CCDData`."""

from __future__ import annotations

from typing import Any

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData, VarianceUncertainty

from ..errors import ImageError
from .exposure import Exposure
from .mask import Mask
from .masked_image import MaskedImage

__all__ = ["from_ccddata", "to_ccddata"]


def _shifted_wcs(wcs: Any, dx: float, dy: float) -> Any:
    """A copy of ``wcs`` whose pixel frame is moved by (dx, dy): new pixel = old pixel + (dx, dy)."""
    if wcs is None:
        return None
    shifted = wcs.deepcopy()
    shifted.wcs.crpix = shifted.wcs.crpix + np.array([dx, dy])
    return shifted


def to_ccddata(exposure: Exposure, *, unit: u.Unit | str | None = None) -> CCDData:
    """Convert an exposure to a `CCDData` (pixels are shared, not copied).

    Parameters
    ----------
    exposure : `Exposure`
        The exposure.
    unit : `astropy.units.Unit` or `str`, optional
        Pixel unit; default ``nJy`` when the metadata says ``BUNIT = 'nJy'``, otherwise ``adu``.

    Returns
    -------
    ccd : `astropy.nddata.CCDData`
        ``data`` the float32 image; ``uncertainty`` a `VarianceUncertainty` of the variance plane; ``mask``
        True where any mask bit is set; ``wcs`` the exposure WCS re-based to array indices (CCDData has no
        ``xy0``); ``meta`` a copy of the metadata plus ``LTV1 = -x0``, ``LTV2 = -y0`` and the mask planes as
        ``MP_<NAME>`` keys.
    """
    if unit is None:
        unit = exposure.metadata.get("BUNIT", "adu")
    meta = fits.Header(exposure.metadata, copy=True)
    x0, y0 = exposure.xy0
    meta["LTV1"] = -x0
    meta["LTV2"] = -y0
    for name, bit in exposure.mask.planes.items():
        key = f"MP_{name}"
        meta[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
    return CCDData(
        exposure.image,
        unit=unit,
        uncertainty=VarianceUncertainty(exposure.variance),
        mask=exposure.mask.array != 0,
        wcs=_shifted_wcs(exposure.wcs, -x0, -y0),
        meta=meta,
    )


def from_ccddata(ccd: CCDData, *, mask_plane: str = "BAD") -> Exposure:
    """Convert a `CCDData` to an `Exposure`.

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        The image; ``uncertainty`` may be a variance or standard deviation (default: zero variance).
    mask_plane : `str`, optional
        Plane set where the boolean ``ccd.mask`` is True.

    Returns
    -------
    exposure : `Exposure`
        With ``xy0 = (-LTV1, -LTV2)`` from the metadata (default 0), the WCS re-based to parent
        coordinates, mask planes from the ``MP_<NAME>`` keys (default planes otherwise), and the metadata
        without the LTV and MP_ keys.
    """
    data = np.asarray(ccd.data)
    if data.ndim != 2:
        raise ImageError(f"from_ccddata needs a 2-D CCDData, got shape {data.shape}.")
    if isinstance(ccd.meta, fits.Header):
        meta = ccd.meta.copy()
    else:
        meta = fits.Header()
        for key, value in dict(ccd.meta).items():
            if isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_)):
                meta[key if len(key) <= 8 else f"HIERARCH {key}"] = value
    x0 = -int(round(float(meta.pop("LTV1", 0))))
    y0 = -int(round(float(meta.pop("LTV2", 0))))
    planes: dict[str, int] = {}
    for key in [k for k in meta if str(k).upper().startswith("MP_")]:
        planes[str(key)[3:].upper()] = int(meta[key])
        del meta[key]
    if ccd.uncertainty is None:
        variance = np.zeros(data.shape, dtype=np.float32)
    else:
        try:
            variance = np.asarray(ccd.uncertainty.represent_as(VarianceUncertainty).array)
        except (AttributeError, TypeError, ValueError) as error:
            raise ImageError(
                f"cannot convert a {type(ccd.uncertainty).__name__} to a variance ({error}); use a "
                "VarianceUncertainty, StdDevUncertainty or InverseVariance."
            ) from None
    mask = Mask(data.shape, planes or None)
    if ccd.mask is not None:
        mask.set_plane(mask_plane, np.asarray(ccd.mask, dtype=bool))
    masked_image = MaskedImage(data, mask, variance, xy0=(x0, y0))
    return Exposure(masked_image, wcs=_shifted_wcs(ccd.wcs, x0, y0), metadata=meta)
