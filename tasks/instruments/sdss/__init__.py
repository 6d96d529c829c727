"""The SDSS imaging camera: `Sdss` instrument, formatters of its pipeline files, its ISR task, and a reader of
DR8+ calibrated frames (`read_dr12_frame`).

See `tasks.instruments.sdss._instrument` for the exposure/detector ID schemes and the camera geometry.
"""

from __future__ import annotations

from ._instrument import (
    FILTER_ORDER,
    Sdss,
    SdssFrame,
    detector_id,
    exposure_id,
    find_auxiliary_files,
    parse_exposure_id,
)
from .dr12 import Dr12Frame, read_dr12_frame

__all__ = [
    "FILTER_ORDER",
    "Dr12Frame",
    "Sdss",
    "SdssFrame",
    "detector_id",
    "exposure_id",
    "find_auxiliary_files",
    "parse_exposure_id",
    "read_dr12_frame",
]
