"""The SDSS imaging camera: `Sdss` instrument, formatters of its pipeline files, and its ISR task.

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

__all__ = [
    "FILTER_ORDER",
    "Sdss",
    "SdssFrame",
    "detector_id",
    "exposure_id",
    "find_auxiliary_files",
    "parse_exposure_id",
]
