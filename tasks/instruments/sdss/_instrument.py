"""The SDSS imaging camera as an `Instrument`: detectors, filters, ID schemes and header translation.

Data model
----------
The SDSS 2.5 m telescope images in drift-scan mode: the sky drifts along the columns of 30 CCDs
arranged in 6 camera columns ("camcols", across the scan) x 5 filter rows (along the scan, in the
order r, i, u, z, g).  The photometric pipeline cuts each scan ("run") into "fields" of 1361 rows (+128
overlapping rows) and writes one corrected frame ``fpC-<run>-<filter><camcol>-<field>.fit.gz`` per
CCD and field.  Here:

* a **detector** is one CCD, named ``<filter><camcol>`` (``"r4"``), with

  ``detector = 6 * filter_index + (camcol - 1)``, ``filter_index``: u=0, g=1, r=2, i=3, z=4

  so the 30 detectors are 0..29 (``r4`` is 15);
* an **exposure** is one field of one filter row (the 6 CCDs of a filter row are read together and
  share the filter, as an exposure implies one physical filter):

  ``exposure = (run * 10 + filter_index) * 10000 + field``

  e.g. run 4192, filter r, field 300 -> 419220300; run < 100000, field < 10000.  The field is the
  number in the file name; in the header it is ``FRAME - 2 * (CAMROW - 1)``, because each filter row
  sees a field 2 frames after the row before it (the g4 frame of field 300 has ``FRAME = 308``);
* a **visit** is one exposure, with the same ID (LSST's one-to-one visit system);
* ``day_obs`` is the TAI date (YYYYMMDD) at which the frame's first row was read.  At Apache Point
  (UTC-7) a whole night falls within one UTC date, so this is SDSS's own night label (its MJD).

Times: the fpC keyword ``TAI`` is the TAI (seconds since MJD 0) at which row 0 of the frame was read,
the time SDSS itself attaches to the frame (tsField ``mjd``).  ``datetime_begin`` is that time and
``datetime_end`` is ``datetime_begin + 53.907456 s`` (the drift time across one CCD, ``EXPTIME``).

Camera geometry (approximate; Gunn et al. 1998, AJ 116, 3040): 2048 x 2048 CCDs of 24 um pixels at
0.396"/pixel (plate scale 16.5"/mm).  Camcol centres are 25.2' = 91.6 mm apart across the scan; filter
rows are 71.7 s of drift = 1078" = 65.3 mm apart along it.  The focal plane x axis runs across the scan
(camcol 1 -> 6) and y along it (row r at +2 rows, g at -2 rows); pixel columns (x) run across the scan,
so every detector has yaw 0.  A detector's pixel box is that of one corrected frame, 2048 x 1489.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from astropy.time import Time, TimeDelta

from butler import FileDataset
from butler.datasets import DatasetType

from ...errors import IngestError
from .._instrument import RAW_DIMENSIONS, Instrument, RawFileInfo

if TYPE_CHECKING:
    from astropy.io import fits

    from butler.dimensions import DimensionUniverse

    from ...image import Camera

__all__ = [
    "FILTER_ORDER",
    "Sdss",
    "SdssFrame",
    "detector_id",
    "exposure_id",
    "find_auxiliary_files",
    "parse_exposure_id",
]

_LOG = logging.getLogger("tasks.instruments.sdss")

# Filter index used in IDs (wavelength order) and the camera's filter rows in scan order (CAMROW 1..5).
FILTER_ORDER = ("u", "g", "r", "i", "z")
CAMERA_ROWS = ("r", "i", "u", "z", "g")
N_CAMCOLS = 6
FRAMES_PER_ROW = 2  # frame-number lag between consecutive filter rows (header FRAME - field)

PIXEL_SIZE_MM = 0.024
PIXEL_SCALE_ARCSEC = 0.396
PLATE_SCALE = PIXEL_SCALE_ARCSEC / PIXEL_SIZE_MM  # arcsec / mm
CAMCOL_PITCH_MM = 91.6
ROW_PITCH_MM = 65.3
FRAME_WIDTH, FRAME_HEIGHT = 2048, 1489
EXPOSURE_TIME = 53.907456  # s, drift time across one CCD
SOFT_BIAS = 1000.0  # DN added to every fpC pixel

# Apache Point Observatory: longitude [deg east], latitude [deg], height [m].
APO = (-105.820417, 32.780361, 2788.0)

_FPC_NAME = re.compile(r"^fpC-(?P<run>\d{6})-(?P<filter>[ugriz])(?P<camcol>[1-6])-(?P<field>\d{4})\.fits?(\.gz)?$")


def exposure_id(run: int, filter_name: str, field: int) -> int:
    """The exposure ID of a (run, filter, field): ``(run * 10 + filter_index) * 10000 + field``.

    Raises
    ------
    IngestError
        If the run or field is out of range or the filter is not one of u g r i z.
    """
    if filter_name not in FILTER_ORDER:
        raise IngestError(f"SDSS filter {filter_name!r} is not one of {', '.join(FILTER_ORDER)}.")
    if not (0 < run < 100_000 and 0 <= field < 10_000):
        raise IngestError(f"SDSS run {run} / field {field} out of range (run 1..99999, field 0..9999).")
    return (run * 10 + FILTER_ORDER.index(filter_name)) * 10_000 + field


def parse_exposure_id(exposure: int) -> tuple[int, str, int]:
    """Inverse of `exposure_id`: ``(run, filter, field)``."""
    field = exposure % 10_000
    rest = exposure // 10_000
    return rest // 10, FILTER_ORDER[rest % 10], field


def detector_id(filter_name: str, camcol: int) -> int:
    """The detector ID of a CCD: ``6 * filter_index + camcol - 1`` (0..29)."""
    if filter_name not in FILTER_ORDER or not 1 <= camcol <= N_CAMCOLS:
        raise IngestError(f"no SDSS CCD {filter_name!r}{camcol}: filters u g r i z, camcols 1..6.")
    return N_CAMCOLS * FILTER_ORDER.index(filter_name) + camcol - 1


class SdssFrame(NamedTuple):
    """The identity of one SDSS corrected frame (fpC)."""

    run: int
    camcol: int
    filter: str
    field: int

    @property
    def exposure(self) -> int:
        return exposure_id(self.run, self.filter, self.field)

    @property
    def detector(self) -> int:
        return detector_id(self.filter, self.camcol)

    @property
    def name(self) -> str:
        """SDSS's frame label, ``"4192-r4-0300"``."""
        return f"{self.run}-{self.filter}{self.camcol}-{self.field:04d}"

    @classmethod
    def from_header(cls, header: fits.Header, path: Path | str = "<header>") -> SdssFrame:
        """Read RUN, CAMCOL, FILTER, FRAME and CAMROW from an fpC header.

        The field is ``FRAME - 2 * (CAMROW - 1)``: ``FRAME`` numbers the frames of each CCD, and the
        rows i, u, z, g see a field 2, 4, 6, 8 frames after the r row (fpC-004192-g4-0300 has FRAME
        308).  When the file name follows the fpC pattern it must agree.

        Raises
        ------
        IngestError
            If a keyword is missing or invalid.
        """
        values = {}
        for key in ("RUN", "CAMCOL", "FILTER", "FRAME"):
            if key not in header:
                raise IngestError(f"{path}: the header has no {key} keyword; is this an SDSS fpC frame?")
            values[key] = header[key]
        try:
            run, camcol, field = int(values["RUN"]), int(values["CAMCOL"]), int(values["FRAME"])
        except (TypeError, ValueError):
            raise IngestError(f"{path}: RUN, CAMCOL and FRAME must be integers, got {values}.") from None
        filt = str(values["FILTER"]).strip()
        if filt not in FILTER_ORDER:
            raise IngestError(f"{path}: FILTER = {filt!r} is not an SDSS filter ({', '.join(FILTER_ORDER)}).")
        # FRAME counts frames of this CCD; the filter rows trail the r row by 2 frames each, and the
        # field (the label of the sky area, shared by the 5 filters and the fpM/psField/tsField names)
        # is the r row's frame number.
        camrow = int(header.get("CAMROW", CAMERA_ROWS.index(filt) + 1))
        frame = cls(run, camcol, filt, field - FRAMES_PER_ROW * (camrow - 1))
        frame.exposure, frame.detector  # noqa: B018 - validate ranges
        match = _FPC_NAME.match(Path(path).name)
        if match and (int(match["run"]), match["filter"], int(match["camcol"]), int(match["field"])) != (
            frame.run, frame.filter, frame.camcol, frame.field
        ):
            raise IngestError(
                f"{path}: the file name says run {int(match['run'])} {match['filter']}{match['camcol']} field "
                f"{int(match['field'])} but the header says {frame.name} (RUN, FILTER, CAMCOL, FRAME - "
                f"{FRAMES_PER_ROW} x (CAMROW - 1)); the file is mislabelled."
            )
        return frame


def frame_time(header: fits.Header, path: Path | str = "<header>") -> Time:
    """TAI at which row 0 of the frame was read (header ``TAI``: seconds since MJD 0)."""
    try:
        return Time(float(header["TAI"]) / 86400.0, format="mjd", scale="tai")
    except KeyError:
        raise IngestError(f"{path}: the header has no TAI keyword (time of the first row).") from None
    except (TypeError, ValueError):
        raise IngestError(f"{path}: TAI keyword {header['TAI']!r} is not a number of seconds.") from None


def exposure_time(header: fits.Header) -> float:
    """EXPTIME (a string in fpC headers) in seconds; the SDSS drift time if absent."""
    try:
        return float(header.get("EXPTIME", EXPOSURE_TIME))
    except (TypeError, ValueError):
        return EXPOSURE_TIME


def _find(directories: list[Path], names: list[str]) -> Path | None:
    for directory in directories:
        for name in names:
            for candidate in (directory / name, directory / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    return None


def find_auxiliary_files(path: Path, frame: SdssFrame) -> dict[str, Path | None]:
    """Find the fpM, psField and tsField files of an fpC frame.

    Looks in the SDSS DAS layout ``<run>/<rerun>/{corr,objcs,calibChunks}/<camcol>/`` around the fpC
    (``.../corr/<camcol>/fpC-...``), then in the fpC's own directory.

    Returns
    -------
    files : `dict` [`str`, `pathlib.Path` or `None`]
        ``{"fpM": ..., "psField": ..., "tsField": ...}``; `None` when not found.
    """
    path = Path(path).absolute()
    run6 = f"{frame.run:06d}"
    here = path.parent
    objcs = [here.parent.parent / "objcs" / str(frame.camcol)] if len(here.parents) >= 2 else []
    calib = [here.parent.parent / "calibChunks" / str(frame.camcol)] if len(here.parents) >= 2 else []
    rerun = here.parent.parent.name
    found: dict[str, Path | None] = {
        "fpM": _find(objcs + [here], [f"fpM-{run6}-{frame.filter}{frame.camcol}-{frame.field:04d}.fit"]),
        "psField": _find(objcs + [here], [f"psField-{run6}-{frame.camcol}-{frame.field:04d}.fit"]),
    }
    ts_names = [f"tsField-{run6}-{frame.camcol}-{rerun}-{frame.field:04d}.fit"] if rerun.isdigit() else []
    ts = _find(calib + [here], ts_names)
    if ts is None:  # any rerun
        for directory in calib + [here]:
            matches = sorted(directory.glob(f"tsField-{run6}-{frame.camcol}-*-{frame.field:04d}.fit*"))
            if matches:
                ts = matches[0]
                break
    found["tsField"] = ts
    return found


class Sdss(Instrument):
    """The SDSS 2.5 m imaging camera (30 CCDs, filters u g r i z), for corrected frames (fpC).

    Ingesting an fpC also ingests, when found next to it in the SDSS DAS layout, its mask (``fpM``,
    read as a `tasks.image.Mask`), PSF/calibration (``psField``, a `dict`) and photometric calibration
    (``tsField``, a `dict`) with the same data ID.  See the module docstring for the ID schemes.
    """

    name: ClassVar[str] = "SDSS"
    filters: ClassVar[Mapping[str, str]] = {f: f for f in FILTER_ORDER}
    raw_formatter: ClassVar[str] = "tasks.instruments.sdss.formatters.SdssRawFormatter"
    raw_file_patterns: ClassVar[tuple[str, ...]] = ("fpC-*.fit.gz", "fpC-*.fit", "fpC-*.fits", "fpC-*.fits.gz")
    exposure_max: ClassVar[int] = (99_999 * 10 + 4) * 10_000 + 9_999
    visit_max: ClassVar[int] = exposure_max
    detector_max: ClassVar[int] = N_CAMCOLS * len(FILTER_ORDER)

    #: Auxiliary dataset types: name -> (storage class, formatter).
    AUXILIARY: ClassVar[dict[str, tuple[str, str]]] = {
        "fpM": ("MaskX", "tasks.instruments.sdss.formatters.SdssMaskFormatter"),
        "psField": ("StructuredDataDict", "tasks.instruments.sdss.formatters.SdssPsFieldFormatter"),
        "tsField": ("StructuredDataDict", "tasks.instruments.sdss.formatters.SdssTsFieldFormatter"),
    }

    def make_camera(self) -> Camera:
        """The 30 CCDs with approximate focal-plane positions (see the module docstring)."""
        from ...image import Box2I, Camera, Detector

        detectors = []
        for filt in FILTER_ORDER:
            row = CAMERA_ROWS.index(filt) + 1
            for camcol in range(1, N_CAMCOLS + 1):
                detectors.append(
                    Detector(
                        id=detector_id(filt, camcol),
                        name=f"{filt}{camcol}",
                        bbox=Box2I(0, 0, FRAME_WIDTH, FRAME_HEIGHT),
                        focal_plane_center=((camcol - 3.5) * CAMCOL_PITCH_MM, (3 - row) * ROW_PITCH_MM),
                        yaw=0.0,
                        pixel_size=PIXEL_SIZE_MM,
                    )
                )
        return Camera("SDSS", detectors, PLATE_SCALE)

    def dataset_types(self, universe: DimensionUniverse) -> list[DatasetType]:
        """``raw`` and the auxiliary ``fpM``, ``psField``, ``tsField`` (instrument, exposure, detector)."""
        return [self.make_raw_dataset_type(universe)] + [
            DatasetType(name, RAW_DIMENSIONS, storage_class, universe=universe)
            for name, (storage_class, _) in self.AUXILIARY.items()
        ]

    @classmethod
    def can_read(cls, header: fits.Header, path: Path) -> bool:
        """An SDSS fpC: ``ORIGIN = 'SDSS'`` and RUN, CAMCOL, FILTER, FRAME keywords (or an fpC file name)."""
        keys = all(k in header for k in ("RUN", "CAMCOL", "FILTER", "FRAME"))
        return keys and (str(header.get("ORIGIN", "")).strip() == "SDSS" or bool(_FPC_NAME.match(Path(path).name)))

    def translate_header(self, header: fits.Header, path: Path) -> RawFileInfo:
        """Exposure record, detector and auxiliary files of an fpC frame.

        Raises
        ------
        IngestError
            If RUN, CAMCOL, FILTER, FRAME or TAI are missing or invalid.
        """
        path = Path(path)
        frame = SdssFrame.from_header(header, path)
        begin = frame_time(header, path)
        exptime = exposure_time(header)
        alt = _float(header, "ALT")
        record: dict[str, Any] = {
            "instrument": self.name,
            "id": frame.exposure,
            "physical_filter": frame.filter,
            "day_obs": int(begin.strftime("%Y%m%d")),
            "obs_id": f"{frame.run}-{frame.filter}-{frame.field:04d}",
            "exposure_time": exptime,
            "datetime_begin": begin,
            "datetime_end": begin + TimeDelta(exptime, format="sec"),
            "observation_type": str(header.get("FLAVOR", "science")).strip() or "science",
            "target_name": f"stripe {header['STRIPE']} {str(header.get('STRIP', '')).strip()}".strip()
            if "STRIPE" in header
            else str(header.get("OBJECT", "")).strip(),
            "tracking_ra": _float(header, "RA"),
            "tracking_dec": _float(header, "DEC"),
            "sky_angle": _float(header, "SPA"),
            "zenith_angle": None if alt is None else 90.0 - alt,
        }
        info = RawFileInfo(path=path, instrument=self.name, exposure=record, detector=frame.detector,
                           formatter=self.raw_formatter)
        data_id = info.data_id
        for name, found in find_auxiliary_files(path, frame).items():
            if found is None:
                info.warnings.append(f"no {name} file found for {frame.name} near {path.parent}")
                continue
            info.auxiliary.append(FileDataset(found, name, data_id, formatter=self.AUXILIARY[name][1]))
        return info


def _float(header: fits.Header, key: str) -> float | None:
    try:
        value = float(header[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
