"""Dataset types, dataset references and storage classes."""

from __future__ import annotations

import enum
import importlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .dimensions import DataCoordinate, DimensionGroup, DimensionUniverse
from .errors import DatasetTypeError, StorageClassError, did_you_mean

__all__ = [
    "DatasetIdGenEnum",
    "DatasetRef",
    "DatasetType",
    "StorageClass",
    "StorageClassFactory",
    "import_dotted",
    "uuid7",
    "uuid7_batch",
]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_MAX_NAME_LENGTH = 128  # the registry's dataset_type.name column
# Namespace for deterministic (UUID5) dataset IDs; fixed forever so IDs are reproducible across repos.
_DATASET_ID_NAMESPACE = uuid.UUID("840b31d9-05cd-5161-b2c8-00d32b280d0f")


def uuid7() -> uuid.UUID:
    """Return a new UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits."""
    return uuid7_batch(1)[0]


def uuid7_batch(n: int) -> list[uuid.UUID]:
    """Return ``n`` new version-7 UUIDs sharing one timestamp, in increasing order.

    Their low 74 bits are random; sorting them makes the batch monotonic (RFC 9562 sec. 6.2 allows
    any method), so rows inserted in this order append to the ID indexes instead of scattering.
    """
    prefix = (time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | 0b10 << 62
    entropy = os.urandom(10 * n)
    values = sorted(
        prefix | (r >> 62 & 0xFFF) << 64 | (r & _LOW_62)
        for r in (int.from_bytes(entropy[i : i + 10], "big") for i in range(0, 10 * n, 10))
    )
    return [uuid.UUID(int=v) for v in values]


_LOW_62 = (1 << 62) - 1


def import_dotted(path: str) -> Any:
    """Import ``package.module.Name`` and return the object.

    Raises
    ------
    ImportError
        If the module or attribute does not exist (the message names both).
    """
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ImportError(f"{path!r} is not a dotted path of the form 'package.module.Name'.")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r} (from {path!r}).") from None


@dataclass(frozen=True)
class StorageClass:
    """How a kind of in-memory object is stored: its Python type and its readable components.

    Attributes
    ----------
    name : `str`
    pytype : `str`
        Dotted path of the Python type (``astropy.table.Table``).
    components : `dict` [`str`, `str`]
        Component name -> storage class name of the parts that can be read alone (``wcs``, ``psf``).
    doc : `str`
    """

    name: str
    pytype: str
    components: Mapping[str, str] = field(default_factory=dict)
    doc: str = ""

    def python_type(self) -> type:
        """Import and return the Python type."""
        try:
            return import_dotted(self.pytype)
        except ImportError as err:
            raise StorageClassError(f"storage class {self.name!r}: cannot import its type: {err}") from None

    def validate(self, obj: Any) -> None:
        """Raise `StorageClassError` unless ``obj`` is an instance of this storage class's type."""
        pytype = self.python_type()
        if not isinstance(obj, pytype):
            raise StorageClassError(
                f"storage class {self.name!r} holds {self.pytype} objects; got a {type(obj).__module__}."
                f"{type(obj).__qualname__}. Put an object of the right type or register the dataset type "
                "with another storage class."
            )


class StorageClassFactory:
    """The storage classes of a repository, from ``storage_classes.yaml``.

    Parameters
    ----------
    config : `dict`
        ``{"storageClasses": {name: {"pytype": ..., "components": {...}, "doc": ...}}}``.
    """

    def __init__(self, config: Mapping[str, Any]):
        raw = config.get("storageClasses", {}) or {}
        self._classes = {
            name: StorageClass(name, str(spec["pytype"]), dict(spec.get("components", {}) or {}), str(spec.get("doc", "")))
            for name, spec in raw.items()
        }

    def __getitem__(self, name: str) -> StorageClass:
        try:
            return self._classes[name]
        except KeyError:
            raise StorageClassError(
                f"storage class {name!r} is not defined in this repository. {did_you_mean(name, self._classes)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def names(self) -> list[str]:
        return sorted(self._classes)


@dataclass(frozen=True)
class DatasetType:
    """A named kind of dataset: its dimensions and storage class.

    Parameters
    ----------
    name : `str`
        Letters, digits and underscores; a component is ``parent.component`` (``calexp.wcs``).
    dimensions : `DimensionGroup` or iterable of `str`
        The dimensions of its data IDs.
    storage_class : `str`
        Name of the storage class.
    universe : `DimensionUniverse`, optional
        Needed when ``dimensions`` are names.
    is_calibration : `bool`, optional
        Whether it may be certified into CALIBRATION collections.

    Raises
    ------
    DatasetTypeError
        If the name is malformed.
    """

    name: str
    dimensions: DimensionGroup
    storage_class: str
    is_calibration: bool = False

    def __init__(
        self,
        name: str,
        dimensions: DimensionGroup | Iterable[str],
        storage_class: str,
        *,
        universe: DimensionUniverse | None = None,
        is_calibration: bool = False,
    ):
        if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > _MAX_NAME_LENGTH:
            shown = name if not isinstance(name, str) or len(name) <= 80 else f"{name[:40]}... ({len(name)} characters)"
            raise DatasetTypeError(
                f"dataset type name {shown!r} is invalid: use at most {_MAX_NAME_LENGTH} letters, digits and "
                "underscores, starting with a letter (a component is 'parent.component')."
            )
        if not isinstance(dimensions, DimensionGroup):
            if universe is None:
                raise TypeError("DatasetType needs a universe when dimensions are given as names")
            dimensions = universe.conform(dimensions)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dimensions", dimensions)
        object.__setattr__(self, "storage_class", storage_class)
        object.__setattr__(self, "is_calibration", is_calibration)

    @property
    def component(self) -> str | None:
        """The component name, for a component dataset type."""
        return self.name.partition(".")[2] or None

    @property
    def parent_name(self) -> str:
        """The name of the parent (composite) dataset type."""
        return self.name.partition(".")[0]

    def is_compatible_with(self, other: DatasetType) -> bool:
        return (self.name, self.dimensions, self.storage_class) == (other.name, other.dimensions, other.storage_class)

    def to_simple(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dimensions": list(self.dimensions.required) + list(self.dimensions.implied),
            "storage_class": self.storage_class,
            "is_calibration": self.is_calibration,
        }

    @classmethod
    def from_simple(cls, simple: Mapping[str, Any], universe: DimensionUniverse) -> DatasetType:
        return cls(
            simple["name"],
            simple["dimensions"],
            simple["storage_class"],
            universe=universe,
            is_calibration=bool(simple.get("is_calibration", False)),
        )

    def __str__(self) -> str:
        return f"DatasetType({self.name!r}, {self.dimensions}, {self.storage_class})"


class DatasetIdGenEnum(enum.Enum):
    """How dataset IDs are made.

    ``UNIQUE``: a new time-ordered random ID (UUIDv7, RFC 9562): IDs made together sort together, so
    bulk inserts append to the registry's indexes instead of scattering.  ``DATAID_TYPE``: UUID5 of
    dataset type and data ID (the same raw ingested twice gets the same ID).  ``DATAID_TYPE_RUN``:
    UUID5 of dataset type, data ID and run.
    """

    UNIQUE = 0
    DATAID_TYPE = 1
    DATAID_TYPE_RUN = 2


class DatasetRef:
    """A reference to one dataset: its ID, dataset type, data ID and RUN collection.

    Parameters
    ----------
    dataset_type : `DatasetType`
    data_id : `DataCoordinate`
    run : `str`
    id : `uuid.UUID`, optional
        A new ID is made by ``id_generation_mode`` when not given.
    id_generation_mode : `DatasetIdGenEnum`, optional
    """

    __slots__ = ("dataset_type", "data_id", "run", "id")

    def __init__(
        self,
        dataset_type: DatasetType,
        data_id: DataCoordinate,
        run: str,
        *,
        id: uuid.UUID | None = None,
        id_generation_mode: DatasetIdGenEnum = DatasetIdGenEnum.UNIQUE,
    ):
        self.dataset_type = dataset_type
        self.data_id = data_id
        self.run = run
        self.id = id if id is not None else self.make_id(dataset_type, data_id, run, id_generation_mode)

    @staticmethod
    def make_id(
        dataset_type: DatasetType, data_id: DataCoordinate, run: str, mode: DatasetIdGenEnum
    ) -> uuid.UUID:
        """Return a new dataset ID by the given mode (see `DatasetIdGenEnum`)."""
        if mode is DatasetIdGenEnum.UNIQUE:
            return uuid7()
        items = [("dataset_type", dataset_type.name)] + sorted(data_id.required.items())
        if mode is DatasetIdGenEnum.DATAID_TYPE_RUN:
            items.append(("run", run))
        return uuid.uuid5(_DATASET_ID_NAMESPACE, ",".join(f"{k}={v}" for k, v in items))

    def replace(self, *, data_id: DataCoordinate | None = None, run: str | None = None) -> DatasetRef:
        """Return a copy with the same ID and some attributes replaced."""
        return DatasetRef(
            self.dataset_type, data_id if data_id is not None else self.data_id, run or self.run, id=self.id
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DatasetRef):
            return NotImplemented
        return self.id == other.id and self.dataset_type.name == other.dataset_type.name

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"DatasetRef({self.dataset_type.name!r}, {self.data_id}, run={self.run!r}, id={self.id})"

    def to_simple(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "id": str(self.id),
            "dataset_type": self.dataset_type.name,
            "run": self.run,
            "data_id": self.data_id.to_simple(),
        }
