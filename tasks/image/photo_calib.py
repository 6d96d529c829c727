"""Photometric calibration: instrumental counts to nanojanskys and AB magnitudes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageError
from .masked_image import MaskedImage

__all__ = ["AB_ZERO_POINT_NJY", "PhotoCalib"]

AB_ZERO_POINT_NJY: float = 31.4
"""AB magnitude of a 1 nJy source: ``m_AB = -2.5 log10(f / nJy) + 31.4`` (3631 Jy at m = 0)."""

_MAG_PER_LN = 2.5 / math.log(10.0)


@dataclass(frozen=True, slots=True)
class PhotoCalib:
    """A spatially constant photometric calibration.

    Parameters
    ----------
    calibration_mean : `float`
        Flux in nJy of a source of 1 instrumental count; > 0.
    calibration_err : `float`, optional
        1-sigma uncertainty of ``calibration_mean`` [nJy / count]; >= 0.

    Raises
    ------
    ImageError
        If the mean is not finite and positive or the error is negative.
    """

    calibration_mean: float
    calibration_err: float = 0.0

    def __post_init__(self) -> None:
        mean = float(self.calibration_mean)
        err = float(self.calibration_err)
        if not (math.isfinite(mean) and mean > 0):
            raise ImageError(f"PhotoCalib calibration_mean must be finite and > 0 nJy/count, got {mean}.")
        if not (math.isfinite(err) and err >= 0):
            raise ImageError(f"PhotoCalib calibration_err must be finite and >= 0, got {err}.")
        object.__setattr__(self, "calibration_mean", mean)
        object.__setattr__(self, "calibration_err", err)

    @classmethod
    def from_zero_point(cls, zero_point: float, zero_point_err: float = 0.0) -> PhotoCalib:
        """Make the calibration whose instrumental zero point (AB magnitude of 1 count) is ``zero_point``.

        Parameters
        ----------
        zero_point : `float`
            AB magnitude of a source of 1 instrumental count [mag].
        zero_point_err : `float`, optional
            Its 1-sigma uncertainty [mag].
        """
        mean = 10.0 ** ((AB_ZERO_POINT_NJY - float(zero_point)) / 2.5)
        return cls(mean, mean * float(zero_point_err) / _MAG_PER_LN)

    @property
    def instrumental_zero_point(self) -> float:
        """AB magnitude of a source of 1 instrumental count [mag]."""
        return AB_ZERO_POINT_NJY - 2.5 * math.log10(self.calibration_mean)

    def instflux_to_nanojansky(self, flux: Any, flux_err: Any = None) -> Any:
        """Convert instrumental fluxes [counts] to nJy.

        Parameters
        ----------
        flux : `float` or `numpy.ndarray`
            Instrumental flux [counts].
        flux_err : `float` or `numpy.ndarray`, optional
            Its 1-sigma uncertainty [counts].

        Returns
        -------
        flux_njy : `float` or `numpy.ndarray`
            Calibrated flux [nJy]; returned alone when ``flux_err`` is None.
        flux_njy_err : `float` or `numpy.ndarray`
            Only when ``flux_err`` is given: ``sqrt((flux_err * mean)**2 + (flux * calibration_err)**2)`` [nJy].
        """
        flux_njy = np.multiply(flux, self.calibration_mean)
        if flux_err is None:
            return flux_njy
        err = np.hypot(np.multiply(flux_err, self.calibration_mean), np.multiply(flux, self.calibration_err))
        return flux_njy, err

    def instflux_to_magnitude(self, flux: Any, flux_err: Any = None) -> Any:
        """Convert instrumental fluxes [counts] to AB magnitudes.

        Non-positive fluxes give NaN.  With ``flux_err`` returns ``(mag, mag_err)``, the error propagated
        to first order: ``2.5 / ln(10) * flux_njy_err / flux_njy``.
        """
        if flux_err is None:
            flux_njy = self.instflux_to_nanojansky(flux)
        else:
            flux_njy, flux_njy_err = self.instflux_to_nanojansky(flux, flux_err)
        with np.errstate(divide="ignore", invalid="ignore"):
            positive = np.asarray(flux_njy) > 0
            mag = np.where(positive, -2.5 * np.log10(np.where(positive, flux_njy, 1.0)) + AB_ZERO_POINT_NJY, np.nan)
            if flux_err is not None:
                mag_err = np.where(positive, _MAG_PER_LN * flux_njy_err / np.where(positive, flux_njy, 1.0), np.nan)
        mag = float(mag) if np.ndim(mag) == 0 else mag
        if flux_err is None:
            return mag
        return mag, (float(mag_err) if np.ndim(mag_err) == 0 else mag_err)

    def magnitude_to_instflux(self, magnitude: Any) -> Any:
        """Convert AB magnitudes to instrumental fluxes [counts]."""
        return 10.0 ** ((AB_ZERO_POINT_NJY - np.asarray(magnitude, dtype=float)) / 2.5) / self.calibration_mean

    def nanojansky_to_instflux(self, flux_njy: Any) -> Any:
        """Convert fluxes in nJy to instrumental fluxes [counts]."""
        return np.divide(flux_njy, self.calibration_mean)

    def calibrate_image(self, masked_image: MaskedImage, *, include_scale_uncertainty: bool = False) -> MaskedImage:
        """A new masked image in nJy: image * mean, variance * mean**2 (mask copied).

        Parameters
        ----------
        masked_image : `MaskedImage`
            Image in instrumental counts.
        include_scale_uncertainty : `bool`, optional
            Also add ``image**2 * calibration_err**2`` to the variance.
        """
        mean = np.float64(self.calibration_mean)
        image = (masked_image.image.astype(np.float64) * mean).astype(np.float32)
        variance = masked_image.variance.astype(np.float64) * mean**2
        if include_scale_uncertainty:
            variance = variance + masked_image.image.astype(np.float64) ** 2 * self.calibration_err**2
        return MaskedImage(image, masked_image.mask.copy(), variance.astype(np.float32), xy0=masked_image.xy0)

    def to_dict(self) -> dict[str, float]:
        """JSON-safe representation."""
        return {"calibration_mean": self.calibration_mean, "calibration_err": self.calibration_err}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhotoCalib:
        """Inverse of `to_dict`."""
        return cls(float(data["calibration_mean"]), float(data.get("calibration_err", 0.0)))
