"""Instruments (cameras), raw ingest and visit definition.

`Instrument` is the base class of a camera description; `get_instrument` finds one by short name
(``"Sdss"``, ``"SimCam"``) or dotted path.  `ingest_raws` registers raw files (with their dimension
records) in a repository and `define_visits` groups exposures into visits with sky regions.
"""

from __future__ import annotations

from ._instrument import (
    KNOWN_INSTRUMENTS,
    Instrument,
    RawFileInfo,
    check_fits_readable,
    get_instrument,
    read_primary_header,
)
from .ingest import IngestFailure, IngestReport, default_raw_run, ingest_raws
from .sdss import Sdss
from .simcam import SimCam
from .visits import DefineVisitsReport, define_visits

__all__ = [
    "KNOWN_INSTRUMENTS",
    "DefineVisitsReport",
    "IngestFailure",
    "IngestReport",
    "Instrument",
    "RawFileInfo",
    "Sdss",
    "SimCam",
    "check_fits_readable",
    "default_raw_run",
    "define_visits",
    "get_instrument",
    "ingest_raws",
    "read_primary_header",
]
