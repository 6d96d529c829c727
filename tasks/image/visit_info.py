"""Observation metadata of one exposure."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from astropy.time import Time

from ..errors import ImageError

__all__ = ["VisitInfo"]


def _float_tuple(value: Any, n: int, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        result = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ImageError(f"VisitInfo.{name} must be a sequence of {n} numbers, got {value!r}.") from None
    if len(result) != n:
        raise ImageError(f"VisitInfo.{name} must have {n} values, got {len(result)}: {value!r}.")
    return result


def _optional_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ImageError(f"VisitInfo.{name} must be a number or None, got {value!r}.") from None


@dataclass(frozen=True)
class VisitInfo:
    """What, when and where an exposure was observed.

    Parameters
    ----------
    date : `astropy.time.Time` or `str`, optional
        Mid-exposure time; stored in the TAI scale, rounded to 1 ns.  A string is read as an ISO time in TAI.
    exposure_time : `float`, optional
        Exposure time [s].
    airmass : `float`, optional
        Airmass at mid-exposure.
    boresight_ra_dec : `tuple` [`float`, `float`], optional
        ICRS right ascension and declination of the boresight [deg].
    boresight_rot_angle : `float`, optional
        Sky position angle of the focal-plane y axis [deg].
    id : `int`, optional
        Exposure or visit identifier.
    instrument : `str`, optional
        Instrument name.
    observatory : `tuple` [`float`, `float`, `float`], optional
        Site longitude [deg, east positive], latitude [deg] and height [m].
    """

    date: Time | None = None
    exposure_time: float | None = None
    airmass: float | None = None
    boresight_ra_dec: tuple[float, float] | None = None
    boresight_rot_angle: float | None = None
    id: int | None = None
    instrument: str | None = None
    observatory: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        date = self.date
        if date is not None:
            if isinstance(date, str):
                date = Time(date, scale="tai")
            elif not isinstance(date, Time):
                raise ImageError(f"VisitInfo.date must be an astropy Time or ISO string, got {date!r}.")
            if not date.isscalar:
                raise ImageError("VisitInfo.date must be a single time, not an array.")
            # Canonical form: the 1 ns ISO string, so that to_dict/from_dict round-trips compare equal.
            date = Time(_iso(date), format="isot", scale="tai")
        object.__setattr__(self, "date", date)
        object.__setattr__(self, "exposure_time", _optional_float(self.exposure_time, "exposure_time"))
        object.__setattr__(self, "airmass", _optional_float(self.airmass, "airmass"))
        object.__setattr__(
            self, "boresight_rot_angle", _optional_float(self.boresight_rot_angle, "boresight_rot_angle")
        )
        object.__setattr__(self, "boresight_ra_dec", _float_tuple(self.boresight_ra_dec, 2, "boresight_ra_dec"))
        object.__setattr__(self, "observatory", _float_tuple(self.observatory, 3, "observatory"))
        if self.id is not None:
            object.__setattr__(self, "id", int(self.id))
        if self.instrument is not None:
            object.__setattr__(self, "instrument", str(self.instrument))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, VisitInfo):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "date":
                if (a is None) != (b is None) or (a is not None and _iso(a) != _iso(b)):
                    return False
            elif a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
                return False
        return True

    def __hash__(self) -> int:
        return hash((None if self.date is None else _iso(self.date), self.exposure_time, self.id, self.instrument))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation (date as an ISO TAI string with 1 ns precision)."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "date" and value is not None:
                value = _iso(value)
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisitInfo:
        """Inverse of `to_dict`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ImageError(f"unknown VisitInfo keys {sorted(unknown)}; valid keys: {sorted(names)}.")
        return cls(**data)


def _iso(date: Time) -> str:
    """``date`` as an ISO string in TAI with 1 ns precision."""
    t = date.tai.copy()
    t.precision = 9
    return t.isot
