"""SimCam: a simulated 3x3-CCD camera with known truth, its raw formatter and its simulator.

`SimCam` is the `tasks.instruments.Instrument`; `simulate_raws` writes raw FITS files of a field with
stars, galaxies, variables and transients, and the `SimulationTruth` tables next to them; the raws are
read by `SimCamRawFormatter` (``tasks.instruments.simcam.formatter``); `ingest_simulation` puts a simulation
into a repository (raws, visits, reference catalogue).
"""

from __future__ import annotations

from ._camera import PIXEL_SCALE, detector_defects, detector_wcs, make_simcam_camera
from ._instrument import SIMCAM_FILTERS, SimCam
from .formatter import SimCamRawFormatter
from .repo import ingest_simulation
from .simulate import SimulationError, SimulationTruth, simulate_raws, sky_frame

__all__ = [
    "PIXEL_SCALE",
    "SIMCAM_FILTERS",
    "SimCam",
    "SimCamRawFormatter",
    "SimulationError",
    "SimulationTruth",
    "detector_defects",
    "detector_wcs",
    "ingest_simulation",
    "make_simcam_camera",
    "simulate_raws",
    "sky_frame",
]
