"""The `SimCam` instrument: camera, filters and the translation of SimCam raw headers.

SimCam raw files (written by `tasks.instruments.simcam.simulate_raws`) are single-HDU FITS files, one per
exposure and detector, holding the raw pixels (uint16 ADU, overscans included, ``RAW_BBOX``) and these
primary-header keywords:

===========  =====================================================================================
keyword      meaning
===========  =====================================================================================
INSTRUME     ``'SimCam'``
DETNAME      detector name (``'S11'``); DETID: detector id (0..8)
EXPID        exposure id (= visit id); OBSID: observation id (``'SC_20240314_002000'``)
DAYOBS       observing night YYYYMMDD (TAI date 12 h before the exposure start)
OBSTYPE      ``'science'``; OBJECT: target name
FILTER       physical filter (``'SimCam-r'``)
EXPTIME      exposure time [s]
TIMESYS      ``'TAI'``; DATE-OBS / DATE-END: start / end of the exposure (ISO, TAI); MJD-OBS, MJD-END
RA, DEC      boresight (tracking) position [deg, ICRS]; ROTPA: sky angle of the focal-plane y axis [deg]
AIRMASS      airmass at mid-exposure; ZENDIST: zenith distance [deg]
SIMSEED      seed of the simulation
AMPNAMEn     per amplifier n=1,2: name, DATASECn/BIASSECn (IRAF 1-based sections), GAINn [e-/ADU],
             RDNOISEn [e-], BIASLVn [ADU], SATURATn [ADU] (informative: the camera geometry is the
             reference)
WCS          a TAN WCS of the detector (from the camera geometry and the boresight)
===========  =====================================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from astropy.time import Time

from ...errors import IngestError
from .._instrument import Instrument, RawFileInfo
from ._camera import detector_defects, make_simcam_camera

if TYPE_CHECKING:
    from astropy.io import fits

    from ...image import Box2I, Camera

__all__ = ["SIMCAM_FILTERS", "SimCam"]

SIMCAM_FILTERS: dict[str, str] = {"SimCam-g": "g", "SimCam-r": "r", "SimCam-i": "i"}

# A fictitious site (Cerro Pachon's coordinates): longitude [deg E], latitude [deg], height [m].
OBSERVATORY = (-70.7494, -30.2444, 2663.0)


class SimCam(Instrument):
    """A simulated 3x3-CCD camera with known truth (see `tasks.instruments.simcam.simulate_raws`).

    Detectors ``S00``..``S22`` (ids 0..8), 1024x1024 pixels of 0.2 arcsec, two amplifiers each with 32
    overscan columns; filters ``SimCam-g``, ``SimCam-r``, ``SimCam-i`` (bands g, r, i).
    """

    name: ClassVar[str] = "SimCam"
    filters: ClassVar[dict[str, str]] = SIMCAM_FILTERS
    raw_formatter: ClassVar[str] = "tasks.instruments.simcam.formatter.SimCamRawFormatter"
    raw_file_patterns: ClassVar[tuple[str, ...]] = ("*.fits",)
    visit_max: ClassVar[int] = 999_999
    exposure_max: ClassVar[int] = 999_999
    detector_max: ClassVar[int] = 9

    def make_camera(self) -> Camera:
        """The 3x3 mosaic (see `tasks.instruments.simcam._camera`)."""
        return make_simcam_camera()

    def get_defects(self, detector: int) -> list[Box2I]:
        """Bad columns of a detector as boxes in assembled pixel coordinates."""
        return [box for box, _ in detector_defects(detector)]

    @classmethod
    def can_read(cls, header: fits.Header, path: Path) -> bool:
        """True for files whose INSTRUME keyword is ``'SimCam'``."""
        return str(header.get("INSTRUME", "")).strip() == cls.name

    def translate_header(self, header: fits.Header, path: Path) -> RawFileInfo:
        """Translate a SimCam raw header (keywords in the module docstring) to its exposure record.

        Raises
        ------
        IngestError
            If a keyword is missing or holds an impossible value (naming the keyword and the file).
        """
        path = Path(path)
        if not self.can_read(header, path):
            raise IngestError(
                f"{path}: INSTRUME is {header.get('INSTRUME')!r}, not 'SimCam'; ingest it with its own instrument."
            )
        get = _HeaderReader(header, path)
        physical_filter = get.str_("FILTER")
        if physical_filter not in self.filters:
            raise IngestError(
                f"{path}: FILTER {physical_filter!r} is not a SimCam filter; known filters: {', '.join(self.filters)}."
            )
        detector = get.int_("DETID")
        if detector not in self.camera:
            raise IngestError(f"{path}: DETID {detector} is not a SimCam detector (ids {self.camera.ids}).")
        exposure_id = get.int_("EXPID")
        if not 0 <= exposure_id <= self.exposure_max:
            raise IngestError(f"{path}: EXPID {exposure_id} is outside 0..{self.exposure_max}.")
        begin = get.time_("DATE-OBS")
        end = get.time_("DATE-END")
        record: dict[str, Any] = {
            "instrument": self.name,
            "id": exposure_id,
            "physical_filter": physical_filter,
            "day_obs": get.int_("DAYOBS"),
            "obs_id": get.str_("OBSID"),
            "exposure_time": get.float_("EXPTIME"),
            "datetime_begin": begin,
            "datetime_end": end,
            "observation_type": get.str_("OBSTYPE"),
            "target_name": str(header.get("OBJECT", "")),
            "tracking_ra": get.float_("RA"),
            "tracking_dec": get.float_("DEC"),
            "sky_angle": float(header.get("ROTPA", 0.0)),
            "zenith_angle": float(header.get("ZENDIST", 0.0)),
        }
        return RawFileInfo(
            path=path, instrument=self.name, exposure=record, detector=detector, formatter=self.raw_formatter
        )


class _HeaderReader:
    """Typed header access that names the keyword and the file on failure."""

    def __init__(self, header: fits.Header, path: Path):
        self.header = header
        self.path = path

    def _raw(self, key: str) -> Any:
        if key not in self.header:
            raise IngestError(f"{self.path}: SimCam raw header has no {key} keyword; is this a SimCam raw?")
        return self.header[key]

    def str_(self, key: str) -> str:
        return str(self._raw(key)).strip()

    def int_(self, key: str) -> int:
        value = self._raw(key)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise IngestError(f"{self.path}: {key} = {value!r} is not an integer.") from None

    def float_(self, key: str) -> float:
        value = self._raw(key)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise IngestError(f"{self.path}: {key} = {value!r} is not a number.") from None

    def time_(self, key: str) -> Time:
        value = self._raw(key)
        scale = str(self.header.get("TIMESYS", "TAI")).strip().lower()
        try:
            return Time(str(value), format="isot", scale=scale).tai
        except ValueError as err:
            raise IngestError(f"{self.path}: {key} = {value!r} is not an ISO time in {scale.upper()}: {err}") from None
