"""The `Instrument` base class: a camera's detectors and filters, and how its raw files map to data IDs.

An instrument subclass describes one telescope + camera.  It knows

* the camera geometry (`Instrument.camera`, a `tasks.image.Camera`) and the filters
  (`Instrument.filters`: physical filter -> abstract band), which `Instrument.register` writes to a
  repository's registry as ``instrument``, ``band``, ``physical_filter`` and ``detector`` records;
* how to read a raw file's header and turn it into dimension records and a data ID
  (`Instrument.translate_header` -> `RawFileInfo`);
* which formatter reads its raw files (`Instrument.raw_formatter`) and which other files are ingested
  alongside each raw (`RawFileInfo.auxiliary`, `Instrument.dataset_types`).

Instruments are found by short name (``"Sdss"``, ``"SimCam"``) or by dotted class path with
`get_instrument`; a repository records the dotted path in the ``instrument`` record's ``class_name``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from butler import Butler, FileDataset
from butler.datasets import DatasetType

from ..errors import IngestError, InstrumentError

if TYPE_CHECKING:
    from astropy.io import fits

    from butler.dimensions import DimensionUniverse
    from butler.registry import Registry

    from ..image import Camera

__all__ = ["KNOWN_INSTRUMENTS", "Instrument", "RawFileInfo", "get_instrument"]

# Short names accepted by `get_instrument` (and the CLI) -> dotted class paths, imported on demand so that
# one instrument package failing to import does not hide the others.
KNOWN_INSTRUMENTS: dict[str, str] = {
    "Sdss": "tasks.instruments.sdss.Sdss",
    "SimCam": "tasks.instruments.simcam.SimCam",
}

RAW_DIMENSIONS = ("instrument", "exposure", "detector")


@dataclasses.dataclass
class RawFileInfo:
    """What ingest needs to know about one raw file, from its header.

    Attributes
    ----------
    path : `pathlib.Path`
        The raw file.
    instrument : `str`
        Registry name of the instrument.
    exposure : `dict`
        The ``exposure`` dimension record: ``instrument``, ``id``, ``physical_filter``, ``day_obs``,
        ``obs_id``, ``exposure_time`` [s], ``datetime_begin``/``datetime_end`` (`astropy.time.Time`,
        TAI), ``observation_type``, ``tracking_ra``/``tracking_dec`` [deg] ...
    detector : `int`
        ID of the detector the file holds.
    formatter : `str`
        Dotted path of the formatter that reads the raw (the instrument's ``raw_formatter``).
    auxiliary : `list` [`butler.FileDataset`]
        Other files to ingest with the raw (same run, same transaction), e.g. SDSS masks and
        calibration tables; each names its dataset type, data ID and formatter.
    warnings : `list` [`str`]
        Problems that do not stop the raw's ingest (e.g. an auxiliary file not found); ingest reports them.
    """

    path: Path
    instrument: str
    exposure: dict[str, Any]
    detector: int
    formatter: str
    auxiliary: list[FileDataset] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def exposure_id(self) -> int:
        """The exposure ID."""
        return int(self.exposure["id"])

    @property
    def day_obs(self) -> int:
        """The observing night (YYYYMMDD) of the exposure."""
        return int(self.exposure["day_obs"])

    @property
    def physical_filter(self) -> str:
        """The physical filter of the exposure."""
        return str(self.exposure["physical_filter"])

    @property
    def data_id(self) -> dict[str, Any]:
        """The raw's data ID: ``{"instrument", "exposure", "detector"}``."""
        return {"instrument": self.instrument, "exposure": self.exposure_id, "detector": self.detector}


class Instrument(ABC):
    """A telescope + camera: detectors, filters, raw-file translation and the raw formatter.

    Subclasses set the class attributes and implement `make_camera` and `translate_header`.
    Instances hold no state besides a cached camera, so ``Sdss()`` is cheap.

    Attributes
    ----------
    name : `str`
        The instrument's registry name (the ``instrument`` value of data IDs), e.g. ``"SDSS"``.
    filters : `Mapping` [`str`, `str`]
        Physical filter name -> abstract band (``{"r": "r"}``).
    raw_formatter : `str`
        Dotted path of the `butler.formatters.Formatter` that reads a raw file as a
        `tasks.image.Exposure` (components ``wcs``, ``bbox``, ``visitInfo``, ``detector``, ``filter``
        read from the header only).
    raw_file_patterns : `tuple` [`str`]
        Glob patterns (file names) of raw files, used to search directories (``fpC-*.fit.gz``).
    visit_max, exposure_max : `int`
        Largest visit / exposure ID the instrument uses.
    detector_max : `int`
        Largest detector ID + 1.
    """

    name: ClassVar[str]
    filters: ClassVar[Mapping[str, str]]
    raw_formatter: ClassVar[str]
    raw_file_patterns: ClassVar[tuple[str, ...]] = ("*.fits", "*.fits.gz", "*.fits.fz", "*.fit", "*.fit.gz")
    visit_max: ClassVar[int]
    exposure_max: ClassVar[int]
    detector_max: ClassVar[int]

    # ---------------------------------------------------------------------------------------------
    # Description

    @classmethod
    def class_name(cls) -> str:
        """Dotted path of this class, as recorded in the registry's ``instrument`` record."""
        return f"{cls.__module__}.{cls.__qualname__}"

    @abstractmethod
    def make_camera(self) -> Camera:
        """Build the camera geometry (called once per instance; use `camera`)."""

    @functools.cached_property
    def camera(self) -> Camera:
        """The camera: detectors with their focal-plane positions."""
        return self.make_camera()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def dataset_types(self, universe: DimensionUniverse) -> list[DatasetType]:
        """The dataset types ingest writes for this instrument: ``raw`` and any auxiliary ones.

        Subclasses with auxiliary files (masks, calibration tables) extend the list.
        """
        return [self.make_raw_dataset_type(universe)]

    def make_raw_dataset_type(self, universe: DimensionUniverse) -> DatasetType:
        """The ``raw`` dataset type: dimensions (instrument, exposure, detector), storage class ExposureF."""
        return DatasetType("raw", RAW_DIMENSIONS, "ExposureF", universe=universe)

    # ---------------------------------------------------------------------------------------------
    # Registry

    def register(self, registry: Registry | Butler, *, update: bool = False) -> bool:
        """Write the instrument, band, physical_filter and detector records, in one transaction.

        Idempotent: records that exist with the same values are left alone.

        Parameters
        ----------
        registry : `butler.registry.Registry` or `butler.Butler`
            Where to register.
        update : `bool`, optional
            Overwrite records that exist with different values (e.g. after a camera geometry fix)
            instead of failing.

        Returns
        -------
        changed : `bool`
            Whether any record was inserted or replaced.

        Raises
        ------
        InstrumentError
            If the repository holds different records for this instrument (and ``update`` is False).
        """
        if isinstance(registry, Butler):
            registry = registry.registry
        from butler.errors import ButlerError, ConflictingDefinitionError

        records: list[tuple[str, dict[str, Any]]] = [
            (
                "instrument",
                {
                    "name": self.name,
                    "class_name": self.class_name(),
                    "visit_max": self.visit_max,
                    "exposure_max": self.exposure_max,
                    "detector_max": self.detector_max,
                },
            )
        ]
        records += [("band", {"name": band}) for band in sorted(set(self.filters.values()))]
        records += [
            ("physical_filter", {"instrument": self.name, "name": pf, "band": band}) for pf, band in self.filters.items()
        ]
        records += [
            ("detector", {"instrument": self.name, "id": det.id, "full_name": det.name, "purpose": det.purpose})
            for det in self.camera
        ]
        changed = False
        try:
            with registry.transaction():
                for element, record in records:
                    if update:
                        key = {element: record["id"] if "id" in record else record["name"]}
                        if "instrument" in record:
                            key["instrument"] = record["instrument"]
                        existing = registry.get_dimension_record(element, key)
                        if existing is None or _differs(existing, record):
                            registry.insert_dimension_data(element, record, replace=True)
                            changed = True
                    else:
                        changed |= registry.sync_dimension_data(element, record)
        except ConflictingDefinitionError as err:
            raise InstrumentError(
                f"instrument {self.name!r} is registered with different definitions: {err} "
                "Re-register with update=True (`butler register-instrument --update`) to overwrite them."
            ) from None
        except ButlerError:
            raise
        except Exception as err:  # the database refuses to replace a record that others refer to
            raise InstrumentError(
                f"cannot update the records of instrument {self.name!r}: {type(err).__name__}: "
                f"{str(err).splitlines()[0]}. Records that exposures, visits or datasets refer to cannot be "
                "replaced in place; register the new definition in a new repository."
            ) from None
        return changed

    def register_dataset_types(self, butler: Butler) -> None:
        """Register `dataset_types` in a repository (idempotent)."""
        for dt in self.dataset_types(butler.dimensions):
            butler.register_dataset_type(dt)

    @classmethod
    def from_registry(cls, registry: Registry | Butler, name: str) -> Instrument:
        """Return the instrument registered as ``name`` in a repository, from its ``class_name``.

        Raises
        ------
        InstrumentError
            If no such instrument is registered, or its class cannot be imported.
        """
        if isinstance(registry, Butler):
            registry = registry.registry
        record = registry.get_dimension_record("instrument", {"instrument": name})
        if record is None:
            known = [r.get("name") for r in registry.query_dimension_records("instrument")]
            raise InstrumentError(
                f"instrument {name!r} is not registered in this repository (registered: "
                f"{', '.join(map(str, known)) or 'none'}); run `butler register-instrument REPO <Name>` first."
            )
        class_name = record.get("class_name") or name
        return get_instrument(class_name)

    # ---------------------------------------------------------------------------------------------
    # Raw files

    @classmethod
    def can_read(cls, header: fits.Header, path: Path) -> bool:
        """Whether a raw file with this primary header belongs to this instrument (for auto-detection)."""
        return False

    def read_header(self, path: Path) -> fits.Header:
        """Read the header used by `translate_header` (default: the primary HDU's).

        Raises
        ------
        IngestError
            If the file is not a readable FITS file.
        """
        return read_primary_header(path)

    def check_raw_file(self, path: Path) -> None:
        """Read every HDU's data once, so that a truncated or corrupt raw fails at ingest, not later.

        Raises
        ------
        IngestError
            Naming the file and what is wrong with it.
        """
        check_fits_readable(path)

    @abstractmethod
    def translate_header(self, header: fits.Header, path: Path) -> RawFileInfo:
        """Translate a raw file's header to its exposure record, detector and auxiliary datasets.

        Parameters
        ----------
        header : `astropy.io.fits.Header`
            From `read_header`.
        path : `pathlib.Path`
            The raw file (some instruments encode information in the name or find auxiliary files
            beside it).

        Raises
        ------
        IngestError
            If the header lacks a needed keyword or holds an impossible value (say which, and in which
            file).
        """

    def find_raws(self, locations: Sequence[str | Path]) -> list[Path]:
        """Expand files and directories (searched recursively with `raw_file_patterns`) to raw files.

        Raises
        ------
        IngestError
            If a location does not exist.
        """
        found: list[Path] = []
        for loc in locations:
            path = Path(loc).expanduser()
            if path.is_dir():
                matches = {p for pattern in self.raw_file_patterns for p in path.rglob(pattern) if p.is_file()}
                found += sorted(matches)
            elif path.exists():
                found.append(path)
            else:
                raise IngestError(f"cannot ingest {path}: no such file or directory.")
        return list(dict.fromkeys(found))


def _differs(existing: Any, record: Mapping[str, Any]) -> bool:
    return any(existing.get(k) != v for k, v in record.items())


def read_primary_header(path: str | Path) -> fits.Header:
    """Read the primary header of a FITS file, turning any failure into an `IngestError`.

    Raises
    ------
    IngestError
        Naming the file and why it cannot be read (missing, not FITS, truncated, bad compression).
    """
    from astropy.io import fits

    import warnings

    from astropy.utils.exceptions import AstropyUserWarning

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)  # truncation: reported by check_fits_readable
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                header = hdul[0].header.copy()
    except FileNotFoundError:
        raise IngestError(f"{path}: no such file.") from None
    except Exception as err:  # astropy raises OSError, ValueError, EOFError, zlib errors...
        raise IngestError(f"{path}: not a readable FITS file ({_explain(path, err)}).") from None
    if not len(header):
        raise IngestError(f"{path}: empty FITS header.")
    return header


def check_fits_readable(path: str | Path) -> None:
    """Read all data of a FITS file (decompressing it if gzipped) and fail on truncation or corruption.

    Astropy only warns about a file shorter than its headers announce; here that warning is an error.

    Raises
    ------
    IngestError
        Naming the file and why its data cannot be read.
    """
    import warnings

    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            with fits.open(path, memmap=False) as hdul:
                for hdu in hdul:
                    data = hdu.data
                    if data is not None and hasattr(data, "shape"):
                        expected = tuple(hdu.header.get(f"NAXIS{i}", 0) for i in range(hdu.header.get("NAXIS", 0), 0, -1))
                        if hdu.is_image and expected and data.shape != expected:
                            raise OSError(f"HDU {hdu.name or 0} holds {data.shape} pixels, header says {expected}")
    except IngestError:
        raise
    except Exception as err:  # EOFError, OSError, zlib.error, ValueError, AstropyUserWarning...
        raise IngestError(f"{path}: truncated or corrupt FITS data ({_explain(path, err)}).") from None


def _explain(path: Path, err: BaseException) -> str:
    """The reason a FITS file cannot be read; for a gzipped file, whether the compressed stream is whole."""
    import gzip
    import zlib

    reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        if gzipped:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
    except (EOFError, OSError, zlib.error) as gz_err:
        return f"damaged gzip file: {gz_err}"
    return reason


def get_instrument(name: str | Instrument | type[Instrument]) -> Instrument:
    """Return an instrument instance from a short name, a dotted class path, or a class.

    Parameters
    ----------
    name : `str`, `Instrument` or `type`
        A short name in `KNOWN_INSTRUMENTS` (``"Sdss"``, ``"SimCam"``; case-insensitive), a registry
        name matching a known instrument's ``name`` (``"SDSS"``), or a dotted path
        (``"tasks.instruments.sdss.Sdss"``).

    Raises
    ------
    InstrumentError
        If the name is unknown or the class cannot be imported or is not an `Instrument`.
    """
    if isinstance(name, Instrument):
        return name
    if isinstance(name, type):
        if not issubclass(name, Instrument):
            raise InstrumentError(f"{name!r} is not an Instrument subclass.")
        return name()
    dotted = None
    for short, path in KNOWN_INSTRUMENTS.items():
        if name.lower() == short.lower():
            dotted = path
    if dotted is None and "." in name:
        dotted = name
    if dotted is None:
        # A registry name ("SDSS") of a known instrument.
        for path in KNOWN_INSTRUMENTS.values():
            try:
                cls = _import_class(path)
            except InstrumentError:
                continue
            if getattr(cls, "name", None) == name:
                return cls()
        raise InstrumentError(
            f"unknown instrument {name!r}; known short names: {', '.join(KNOWN_INSTRUMENTS)}, "
            "or give the dotted path of an Instrument subclass (e.g. 'tasks.instruments.sdss.Sdss')."
        )
    return _import_class(dotted)()


def _import_class(dotted: str) -> type[Instrument]:
    module_name, _, attr = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise InstrumentError(f"cannot import instrument class {dotted!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, Instrument)):
        raise InstrumentError(f"{dotted!r} is not an Instrument subclass.")
    return cls
