"""Validity ranges of certified calibrations: half-open TAI time intervals, possibly unbounded.

A `Timespan` is ``[begin, end)``: it contains ``begin`` and every instant before ``end``; `None` for
either bound means unbounded on that side.  The registry stores a timespan as two BIGINT columns of
TAI nanoseconds since 1970-01-01T00:00:00 TAI (`butler.dimensions.time_to_nsec`), with the smallest
and largest signed 64-bit integers standing for an unbounded begin and end, so that "A overlaps B"
is the plain integer test ``A.begin < B.end AND B.begin < A.end`` on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from astropy.time import Time

from .dimensions import DimensionRecord, nsec_to_time, time_to_nsec
from .errors import TimespanError

__all__ = ["NSEC_MAX", "NSEC_MIN", "Timespan"]

#: Stored ``begin`` of a timespan unbounded in the past.
NSEC_MIN = -(2**63)
#: Stored ``end`` of a timespan unbounded in the future.
NSEC_MAX = 2**63 - 1

TimeLike = Time | datetime.datetime | str


def _to_nsec(value: TimeLike | None, *, what: str, unbounded: int) -> int:
    if value is None:
        return unbounded
    try:
        nsec = time_to_nsec(value)
    except ValueError as err:
        raise TimespanError(f"the {what} of a timespan must be a time (astropy Time or ISO TAI string): {err}.") from None
    if nsec in (NSEC_MIN, NSEC_MAX):
        raise TimespanError(f"the {what} {value!s} of a timespan is the registry's sentinel for 'unbounded'; use None.")
    return nsec


class Timespan:
    """A half-open interval of time ``[begin, end)`` (TAI), possibly unbounded on either side.

    Parameters
    ----------
    begin : `astropy.time.Time`, `datetime.datetime`, `str` or `None`
        First instant of the interval; `None` for "since forever".  Strings and naive datetimes are
        read as TAI (ISO 8601, e.g. ``"2024-01-01T00:00:00"``).
    end : `astropy.time.Time`, `datetime.datetime`, `str` or `None`
        First instant after the interval; `None` for "until forever".

    Raises
    ------
    TimespanError
        If a bound is not a scalar time, lies outside the years 1677-2262, or ``end`` is before ``begin``.

    Notes
    -----
    Times are held as integer TAI nanoseconds (`butler.dimensions.time_to_nsec`), so comparisons
    are exact.  ``Timespan(t, t)`` is empty: it contains and overlaps nothing.  The semantics follow
    daf_butler's ``Timespan``.
    """

    __slots__ = ("_begin", "_end")

    def __init__(self, begin: TimeLike | None, end: TimeLike | None):
        b = _to_nsec(begin, what="begin", unbounded=NSEC_MIN)
        e = _to_nsec(end, what="end", unbounded=NSEC_MAX)
        if e < b:
            raise TimespanError(
                f"a timespan cannot end ({nsec_to_time(e).isot} TAI) before it begins ({nsec_to_time(b).isot} TAI); "
                "swap the bounds."
            )
        self._begin = b
        self._end = e

    @classmethod
    def from_nsec(cls, begin: int, end: int) -> Timespan:
        """Make a timespan from stored TAI nanoseconds (`NSEC_MIN` / `NSEC_MAX` for unbounded)."""
        if end < begin:
            raise TimespanError(f"stored timespan [{begin}, {end}) ends before it begins.")
        self = cls.__new__(cls)
        self._begin = int(begin)
        self._end = int(end)
        return self

    @classmethod
    def from_record(cls, record: DimensionRecord) -> Timespan:
        """The time an exposure or visit record covers: ``[datetime_begin, datetime_end)``.

        Without ``datetime_end``, the end is ``datetime_begin + exposure_time`` when the exposure time
        is known, else the instant of ``datetime_begin`` (a 1 ns span).

        Raises
        ------
        TimespanError
            If the record has no ``datetime_begin``.
        """
        begin = record.get("datetime_begin")
        if begin is None:
            raise TimespanError(
                f"{record!r} has no datetime_begin, so the time it was taken is unknown; give the timespan of "
                "the calibration lookup explicitly (timespan=...)."
            )
        b = time_to_nsec(begin)
        end = record.get("datetime_end")
        if end is not None:
            e = time_to_nsec(end)
        elif record.get("exposure_time") is not None:
            e = b + round(float(record.get("exposure_time")) * 1e9)
        else:
            e = b
        return cls.from_nsec(b, max(e, b + 1))

    # Bounds ----------------------------------------------------------------------------------------

    @property
    def begin(self) -> Time | None:
        """First instant, or `None` if unbounded in the past."""
        return None if self._begin == NSEC_MIN else nsec_to_time(self._begin)

    @property
    def end(self) -> Time | None:
        """First instant after the interval, or `None` if unbounded in the future."""
        return None if self._end == NSEC_MAX else nsec_to_time(self._end)

    @property
    def nsec(self) -> tuple[int, int]:
        """``(begin, end)`` as stored: TAI ns since 1970, with `NSEC_MIN` / `NSEC_MAX` for unbounded."""
        return self._begin, self._end

    def is_empty(self) -> bool:
        """Whether the interval contains no instant (``begin == end``)."""
        return self._begin >= self._end

    # Relations -------------------------------------------------------------------------------------

    def overlaps(self, other: Timespan) -> bool:
        """Whether the two intervals share at least one instant (an empty timespan overlaps nothing)."""
        return self._begin < other._end and other._begin < self._end and not self.is_empty() and not other.is_empty()

    def contains(self, time: TimeLike) -> bool:
        """Whether a time lies in ``[begin, end)`` (naive datetimes and strings are TAI)."""
        return self._begin <= time_to_nsec(time) < self._end

    def difference(self, other: Timespan) -> list[Timespan]:
        """The parts of this interval outside ``other``: zero, one or two timespans, in time order."""
        if not self.overlaps(other):
            return [] if self.is_empty() else [self]
        out = []
        if self._begin < other._begin:
            out.append(Timespan.from_nsec(self._begin, other._begin))
        if other._end < self._end:
            out.append(Timespan.from_nsec(other._end, self._end))
        return out

    # Value semantics -------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timespan):
            return NotImplemented
        return self.nsec == other.nsec

    def __hash__(self) -> int:
        return hash(self.nsec)

    def __repr__(self) -> str:
        begin = "None" if self._begin == NSEC_MIN else f"'{nsec_to_time(self._begin).isot}'"
        end = "None" if self._end == NSEC_MAX else f"'{nsec_to_time(self._end).isot}'"
        return f"Timespan({begin}, {end})"

    def __str__(self) -> str:
        begin = "-inf" if self._begin == NSEC_MIN else nsec_to_time(self._begin).isot
        end = "+inf" if self._end == NSEC_MAX else nsec_to_time(self._end).isot
        return f"[{begin}, {end}) TAI"

    def to_simple(self) -> list[int | None]:
        """JSON/YAML-safe form: ``[begin, end]`` as TAI ns since 1970, `None` for unbounded."""
        return [None if self._begin == NSEC_MIN else self._begin, None if self._end == NSEC_MAX else self._end]

    @classmethod
    def from_simple(cls, simple: Sequence[int | None]) -> Timespan:
        """Inverse of `to_simple`.

        Raises
        ------
        TimespanError
            If ``simple`` is not a pair of integers or `None`.
        """
        if not isinstance(simple, Sequence) or isinstance(simple, str) or len(simple) != 2:
            raise TimespanError(f"a timespan's simple form is [begin_nsec, end_nsec]; got {simple!r}.")
        values: list[Any] = list(simple)
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in values):
            raise TimespanError(f"a timespan's bounds must be integers (TAI ns) or null; got {simple!r}.")
        return cls.from_nsec(NSEC_MIN if values[0] is None else values[0], NSEC_MAX if values[1] is None else values[1])
