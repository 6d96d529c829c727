"""Dimensions, dimension groups, dimension records and data IDs.

The *dimension universe* is read from ``repo_template/dimensions.yaml`` (copied into each repository at
creation).  A *dimension* (``visit``, ``detector``...) is an element with a primary key; other elements
(``visit_detector_region``) only carry records.  A *data ID* (`DataCoordinate`) is an immutable,
hashable mapping from dimension names to key values over a `DimensionGroup`; it may also carry the
values of implied dimensions and the dimension records of every element of its group ("expanded").
"""

from __future__ import annotations

import datetime
import functools
import operator
from fractions import Fraction
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from astropy.time import Time

from .errors import ConfigError, DataIdError, DimensionNameError, did_you_mean
from .regions import Region, SkyPixIndex, decode_region, encode_region

__all__ = [
    "DataCoordinate",
    "DataIdValue",
    "Dimension",
    "DimensionElement",
    "DimensionGroup",
    "DimensionRecord",
    "DimensionUniverse",
    "FieldSpec",
    "nsec_to_time",
    "time_to_nsec",
    "unstorable_text",
]

DataIdValue = int | str
_FIELD_TYPES = {"int": int, "float": float, "string": str, "time": Time, "bool": bool}
_TAI_EPOCH = Time("1970-01-01T00:00:00", scale="tai", format="isot")
_NSEC_PER_DAY = 86_400 * 10**9
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def unstorable_text(value: str) -> str | None:
    """Say why a string cannot be stored in the registry (or used in a query), or return `None`.

    NUL characters are refused by PostgreSQL and truncate C strings elsewhere; lone surrogates
    (``"\\ud800"``, from a mis-decoded file name) have no UTF-8 encoding.

    Parameters
    ----------
    value : `str`
        The string.

    Returns
    -------
    problem : `str` or `None`
        ``"contains a NUL character"`` or ``"is not valid Unicode (...)"``; `None` when it is fine.
    """
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"is not valid Unicode ({err.reason} at position {err.start})"
    return None


def time_to_nsec(t: Time | datetime.datetime | str) -> int:
    """Convert a time to the registry's representation: TAI nanoseconds since 1970-01-01T00:00:00 TAI.

    Parameters
    ----------
    t : `astropy.time.Time`, `datetime.datetime` or `str`
        A scalar time in any scale; naive datetimes and ISO strings are taken as TAI.

    Returns
    -------
    nsec : `int`
        Nanoseconds, rounded to the nearest; exact to the float precision of ``t``'s two-part JD.

    Raises
    ------
    ValueError
        If ``t`` is not a scalar, is not finite, or does not fit in a signed 64-bit integer.
    """
    if not isinstance(t, Time):
        t = Time(t, scale="tai")
    if not t.isscalar:
        raise ValueError(f"expected a scalar time, got an array of shape {t.shape}")
    tai = t.tai
    try:  # exact rational arithmetic on the two-part Julian dates
        days = sum(Fraction(float(part)) for part in (tai.jd1, -_TAI_EPOCH.jd1, tai.jd2, -_TAI_EPOCH.jd2))
    except (ValueError, OverflowError):
        raise ValueError(f"time {t!s} is not finite") from None
    nsec = round(days * _NSEC_PER_DAY)
    if not _INT64_MIN <= nsec <= _INT64_MAX:
        raise ValueError(f"time {t.isot} is outside the years 1677-2262 that the registry can store")
    return nsec


def nsec_to_time(nsec: int) -> Time:
    """Convert stored TAI nanoseconds since 1970 back to an `astropy.time.Time` (scale TAI)."""
    days, rem = divmod(int(nsec), 86_400_000_000_000)
    return Time(_TAI_EPOCH.jd1 + days, _TAI_EPOCH.jd2 + rem / 86400e9, format="jd", scale="tai")


@dataclass(frozen=True)
class FieldSpec:
    """A column of a dimension element's table and a field of its records.

    Attributes
    ----------
    name : `str`
    type : `str`
        One of ``int``, ``float``, ``string``, ``time``, ``bool``.
    length : `int`
        Maximum length of a string.
    doc : `str`
    """

    name: str
    type: str
    length: int = 64
    doc: str = ""

    def coerce(self, value: Any, *, what: str) -> Any:
        """Return ``value`` converted to this field's Python type; raise `DataIdError` if it cannot be."""
        if value is None:
            return None
        kind = self.type
        try:
            if kind == "int":
                if isinstance(value, bool):
                    raise TypeError
                value = operator.index(value)
                if not _INT64_MIN <= value <= _INT64_MAX:
                    raise DataIdError(f"{what} = {value} does not fit in 64 bits.")
                return value
            if kind == "float":
                if isinstance(value, bool | str):
                    raise TypeError
                return float(value)
            if kind == "string":
                if not isinstance(value, str):
                    raise TypeError
                if len(value) > self.length:
                    raise DataIdError(f"{what} is {len(value)} characters long; at most {self.length} are allowed.")
                problem = unstorable_text(value)
                if problem:
                    raise DataIdError(f"{what} = {value!r} {problem}; use another value.")
                return value
            if kind == "bool":
                if not isinstance(value, bool):
                    raise TypeError
                return value
            if kind == "time":
                return value if isinstance(value, Time) else Time(value, scale="tai")
        except (TypeError, ValueError) as err:
            if isinstance(err, DataIdError):
                raise
            raise DataIdError(
                f"{what} must be of type {kind}; got {value!r} ({type(value).__name__})."
            ) from None
        raise ConfigError(f"unknown field type {kind!r} for {what}")


class DimensionElement:
    """An element of the dimension universe: a table of records, perhaps also a data ID key.

    Attributes
    ----------
    name : `str`
    doc : `str`
    required : `tuple` [`str`, ...]
        Names of the dimensions that identify a record, in universe order; a dimension's own name is last.
    implied : `tuple` [`str`, ...]
        Names of the dimensions whose values a record determines.
    key : `FieldSpec` or `None`
        The primary key of a dimension (``id`` or ``name``); `None` for non-dimension elements.
    metadata : `tuple` [`FieldSpec`, ...]
    spatial : `str` or `None`
        Name of the spatial family when records carry a sky ``region``.
    always_join : `bool`
        Whether a query whose dimensions include all of ``required`` must join this element's table
        (``visit_definition`` relates exposures to visits: without it, a query over both would pair
        every exposure with every visit).
    """

    def __init__(
        self,
        name: str,
        *,
        doc: str,
        required: tuple[str, ...],
        implied: tuple[str, ...],
        key: FieldSpec | None,
        metadata: tuple[FieldSpec, ...],
        spatial: str | None,
        always_join: bool = False,
    ):
        self.name = name
        self.doc = doc
        self.required = required
        self.implied = implied
        self.key = key
        self.metadata = metadata
        self.spatial = spatial
        self.always_join = always_join
        self.universe: DimensionUniverse  # set by the universe

    @property
    def is_dimension(self) -> bool:
        """Whether this element is a dimension (has a primary key and appears in data IDs)."""
        return self.key is not None

    @functools.cached_property
    def fields(self) -> tuple[FieldSpec, ...]:
        """All fields of a record, in table-column order: required keys, implied, metadata."""
        out = [self.column_spec(d) for d in self.required]
        out += [self.universe[d].key_as(d) for d in self.implied]
        out += list(self.metadata)
        return tuple(out)

    @functools.cached_property
    def field_names(self) -> tuple[str, ...]:
        """Names of `fields`, plus ``region`` for a spatial element."""
        return tuple(f.name for f in self.fields) + (("region",) if self.spatial else ())

    def key_as(self, column: str) -> FieldSpec:
        """This dimension's key `FieldSpec` renamed to ``column``."""
        assert self.key is not None
        return FieldSpec(column, self.key.type, self.key.length, self.doc)

    def column_name(self, dimension: str) -> str:
        """Name of the column holding ``dimension``'s value in this element's table and records."""
        return self.key.name if (dimension == self.name and self.key is not None) else dimension

    def column_spec(self, dimension: str) -> FieldSpec:
        """`FieldSpec` of the column holding ``dimension``'s value."""
        return self.universe[dimension].key_as(self.column_name(dimension))

    @functools.cached_property
    def group(self) -> DimensionGroup:
        """The dimensions that identify (and are implied by) a record of this element."""
        return self.universe.conform(self.required + self.implied)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __str__(self) -> str:
        return self.name


class Dimension(DimensionElement):
    """A `DimensionElement` with a primary key: it can appear in data IDs."""


class DimensionUniverse:
    """All dimension elements of a repository, read from a ``dimensions.yaml`` configuration.

    Parameters
    ----------
    config : `dict`
        The parsed configuration (see ``repo_template/dimensions.yaml``).

    Raises
    ------
    ConfigError
        If the configuration is malformed: unknown references, cycles, bad field types.
    """

    def __init__(self, config: Mapping[str, Any]):
        try:
            self.version = int(config["version"])
            self.namespace = str(config.get("namespace", "butler"))
            raw_elements: Mapping[str, Mapping[str, Any]] = config["elements"]
            skypix = config.get("skypix", {})
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"dimension configuration is missing or has a bad {err}") from None
        self.skypix = SkyPixIndex(skypix.get("system", "htm"), int(skypix.get("level", 8)))
        self.config = dict(config)
        self._elements: dict[str, DimensionElement] = {}
        for name in self._toposort(raw_elements):
            self._elements[name] = self._make_element(name, raw_elements[name])
        for element in self._elements.values():
            element.universe = self
        self._index = {name: i for i, name in enumerate(self._elements)}
        self.dimensions: dict[str, Dimension] = {
            n: e for n, e in self._elements.items() if isinstance(e, Dimension)
        }
        self._groups: dict[frozenset[str], DimensionGroup] = {}
        self.empty = self.conform(())

    @classmethod
    def from_yaml(cls, path: str | Path) -> DimensionUniverse:
        """Read a universe from a YAML file."""
        try:
            with open(path) as stream:
                return cls(yaml.safe_load(stream))
        except OSError as err:
            raise ConfigError(f"cannot read dimension configuration {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"dimension configuration {path} is not valid YAML: {err}") from None

    @classmethod
    @functools.cache
    def default(cls) -> DimensionUniverse:
        """The universe shipped in ``repo_template/dimensions.yaml``."""
        with resources.as_file(resources.files("repo_template") / "dimensions.yaml") as path:
            return cls.from_yaml(path)

    @staticmethod
    def _toposort(raw: Mapping[str, Mapping[str, Any]]) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, trail: tuple[str, ...]) -> None:
            if name not in raw:
                raise ConfigError(f"dimension element {trail[-1]!r} refers to unknown element {name!r}.")
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise ConfigError(f"dimension elements form a cycle: {' -> '.join(trail + (name,))}")
            state[name] = 1
            for dep in list(raw[name].get("requires", [])) + list(raw[name].get("implies", [])):
                visit(dep, trail + (name,))
            state[name] = 2
            order.append(name)

        for name in raw:
            visit(name, (name,))
        return order

    def _make_element(self, name: str, raw: Mapping[str, Any]) -> DimensionElement:
        def spec(d: Mapping[str, Any]) -> FieldSpec:
            if d.get("type") not in _FIELD_TYPES:
                raise ConfigError(f"field {d.get('name')!r} of {name!r} has unknown type {d.get('type')!r}.")
            return FieldSpec(str(d["name"]), d["type"], int(d.get("length", 64)), str(d.get("doc", "")))

        required: list[str] = []
        for dep in raw.get("requires", []):
            dep_element = self._elements[dep]
            if not isinstance(dep_element, Dimension):
                raise ConfigError(f"{name!r} requires {dep!r}, which is not a dimension.")
            required += [d for d in dep_element.required if d not in required]
        key = spec(raw["key"]) if "key" in raw else None
        if key is not None:
            required.append(name)
        cls = Dimension if key is not None else DimensionElement
        return cls(
            name,
            doc=str(raw.get("doc", "")),
            required=tuple(required),
            implied=tuple(raw.get("implies", [])),
            key=key,
            metadata=tuple(spec(m) for m in raw.get("metadata", [])),
            spatial=raw.get("spatial"),
            always_join=bool(raw.get("always_join", False)),
        )

    def __getitem__(self, name: str) -> DimensionElement:
        try:
            return self._elements[name]
        except KeyError:
            raise DimensionNameError(
                f"{name!r} is not a dimension element of this repository. {did_you_mean(name, self._elements)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._elements

    @property
    def elements(self) -> Mapping[str, DimensionElement]:
        """All elements by name, in dependency order."""
        return self._elements

    def sort(self, names: Iterable[str]) -> tuple[str, ...]:
        """Return element names sorted in universe (dependency) order."""
        return tuple(sorted(names, key=self._index.__getitem__))

    def conform(self, names: Iterable[str] | DimensionGroup) -> DimensionGroup:
        """Return the `DimensionGroup` of the given dimensions and everything they require and imply.

        Raises
        ------
        DimensionNameError
            If a name is not a dimension.
        """
        if isinstance(names, DimensionGroup):
            return names
        if isinstance(names, str):
            names = (names,)
        key = frozenset(names)
        group = self._groups.get(key)
        if group is None:
            for n in key:
                if n not in self.dimensions:
                    raise DimensionNameError(
                        f"{n!r} is not a dimension. {did_you_mean(n, self.dimensions)}"
                    )
            group = DimensionGroup(self, key)
            self._groups[key] = group
            self._groups[frozenset(group.names)] = group
        return group

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DimensionUniverse) and self.config == other.config

    def __hash__(self) -> int:
        return hash((self.namespace, self.version))

    def __repr__(self) -> str:
        return f"DimensionUniverse(namespace={self.namespace!r}, version={self.version})"


class DimensionGroup:
    """An immutable set of dimensions closed over their required and implied dimensions.

    Use `DimensionUniverse.conform` to make one.  ``required`` are the dimensions whose values identify
    a data ID; ``implied`` are the ones whose values follow from them (``band`` for a ``visit``).
    """

    def __init__(self, universe: DimensionUniverse, names: Iterable[str]):
        closure: set[str] = set()
        todo = list(names)
        while todo:
            n = todo.pop()
            if n in closure:
                continue
            closure.add(n)
            element = universe[n]
            todo += element.required
            todo += element.implied
        implied = {i for n in closure for i in universe[n].implied}
        self.universe = universe
        self.names: tuple[str, ...] = universe.sort(closure)
        self.required: tuple[str, ...] = tuple(n for n in self.names if n not in implied)
        self.implied: tuple[str, ...] = tuple(n for n in self.names if n in implied)
        self.elements: tuple[str, ...] = universe.sort(
            e.name
            for e in universe.elements.values()
            if set(e.required) <= closure and (e.is_dimension is False or e.name in closure)
        )
        self._hash = hash(self.names)

    @property
    def data_coordinate_keys(self) -> tuple[str, ...]:
        """Keys of a full data ID: required then implied."""
        return self.required + self.implied

    def issubset(self, other: DimensionGroup) -> bool:
        return set(self.names) <= set(other.names)

    def union(self, *others: DimensionGroup | Iterable[str]) -> DimensionGroup:
        names = set(self.names)
        for o in others:
            names.update(o.names if isinstance(o, DimensionGroup) else o)
        return self.universe.conform(names)

    __or__ = union

    def spatial_elements(self) -> dict[str, str]:
        """The most specific spatial element of each spatial family in the group, by family name."""
        out: dict[str, str] = {}
        for name in self.elements:
            element = self.universe[name]
            if element.spatial:
                # elements are in dependency order, so a later one of the same family is more specific
                out[element.spatial] = name
        return out

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DimensionGroup):
            return self.names == other.names
        return NotImplemented

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"{{{', '.join(self.required)}}}" + (f" [+ {', '.join(self.implied)}]" if self.implied else "")

    def table_suffix(self) -> str:
        """A name fragment identifying this group in registry table names."""
        return "_".join(self.required) or "empty"


class DimensionRecord:
    """The record of one dimension element: its key values and metadata.

    Fields are read as attributes (``record.exposure_time``) or with `get`; the element's own key is
    its key name (``record.id``), other dimensions by dimension name (``record.instrument``).

    Parameters
    ----------
    element : `DimensionElement`
    values : `dict`
        Field values by name; ``region`` for a spatial element.

    Raises
    ------
    DataIdError
        If a required key is missing or a value has the wrong type.
    """

    __slots__ = ("element", "_values")

    def __init__(self, element: DimensionElement, values: Mapping[str, Any]):
        unknown = set(values) - set(element.field_names)
        if unknown:
            raise DataIdError(
                f"unknown field(s) {sorted(unknown)} for a {element.name} record; "
                f"valid fields: {', '.join(element.field_names)}."
            )
        out: dict[str, Any] = {}
        n_keys = len(element.required)
        for i, spec in enumerate(element.fields):
            value = values.get(spec.name)
            if value is None and i < n_keys:
                raise DataIdError(f"a {element.name} record needs a value for {spec.name!r}.")
            out[spec.name] = spec.coerce(value, what=f"{element.name}.{spec.name}")
        if element.spatial:
            region = values.get("region")
            if region is not None and not isinstance(region, Region):
                raise DataIdError(f"{element.name}.region must be an lsst.sphgeom Region, got {type(region).__name__}.")
            out["region"] = region
        object.__setattr__(self, "element", element)
        object.__setattr__(self, "_values", out)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(
                f"a {self.element.name} record has no field {name!r}; fields: {', '.join(self._values)}."
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("dimension records are immutable")

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """Field values by name (Python objects: `Time`, `Region`)."""
        return dict(self._values)

    @property
    def data_id(self) -> DataCoordinate:
        """The data ID identifying this record (required and implied values)."""
        element = self.element
        group = element.group
        values = {d: self._values[element.column_name(d)] for d in element.required}
        values.update({d: self._values[d] for d in element.implied})
        return DataCoordinate.from_full_values(group, tuple(values.get(d) for d in group.data_coordinate_keys))

    def key_tuple(self) -> tuple[DataIdValue, ...]:
        """Values of the required keys, in order."""
        return tuple(self._values[self.element.column_name(d)] for d in self.element.required)

    def to_simple(self) -> dict[str, Any]:
        """JSON/YAML-safe form: times as TAI ns integers, regions as hex strings."""
        out: dict[str, Any] = {}
        for spec in self.element.fields:
            v = self._values[spec.name]
            out[spec.name] = time_to_nsec(v) if (spec.type == "time" and v is not None) else v
        if self.element.spatial:
            r = self._values.get("region")
            out["region"] = encode_region(r).hex() if r is not None else None
        return out

    @classmethod
    def from_simple(cls, element: DimensionElement, simple: Mapping[str, Any]) -> DimensionRecord:
        """Inverse of `to_simple`."""
        values = dict(simple)
        for spec in element.fields:
            if spec.type == "time" and values.get(spec.name) is not None:
                values[spec.name] = nsec_to_time(values[spec.name])
        if values.get("region") is not None:
            values["region"] = decode_region(bytes.fromhex(values["region"]))
        return cls(element, values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DimensionRecord):
            return NotImplemented
        return (
            self.element.name == other.element.name
            and self.element.universe == other.element.universe
            and self.to_simple() == other.to_simple()
        )

    def __hash__(self) -> int:
        return hash((self.element.name, self.key_tuple()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._values.items() if k != "region")
        return f"{self.element.name}({shown})"


class DataCoordinate(Mapping[str, DataIdValue]):
    """An immutable data ID: values of the dimensions of a `DimensionGroup`.

    Always holds the required values; may hold the implied values (`has_full`) and the records of
    every element in the group (`has_records`).  Equality and hashing use the required values only.
    Make one with `standardize`, `from_required_values` or `from_full_values`.
    """

    __slots__ = ("_group", "_values", "_records", "_hash")

    def __init__(
        self,
        group: DimensionGroup,
        values: tuple[DataIdValue, ...],
        records: Mapping[str, DimensionRecord | None] | None = None,
    ):
        self._group = group
        self._values = values
        self._records = records
        self._hash = hash((group.required, values[: len(group.required)]))

    @classmethod
    def from_required_values(cls, group: DimensionGroup, values: tuple[DataIdValue, ...]) -> DataCoordinate:
        """Make a data ID from the values of ``group.required``, in order (no validation)."""
        return cls(group, values)

    @classmethod
    def from_full_values(cls, group: DimensionGroup, values: tuple[DataIdValue, ...]) -> DataCoordinate:
        """Make a data ID from the values of ``group.required + group.implied``, in order."""
        return cls(group, values)

    @classmethod
    def make_empty(cls, universe: DimensionUniverse) -> DataCoordinate:
        """The data ID of no dimensions."""
        return cls(universe.empty, (), {})

    @classmethod
    def standardize(
        cls,
        mapping: Mapping[str, Any] | None = None,
        *,
        universe: DimensionUniverse | None = None,
        dimensions: Iterable[str] | DimensionGroup | None = None,
        **kwargs: Any,
    ) -> DataCoordinate:
        """Make a validated data ID from a mapping and/or keyword arguments.

        Parameters
        ----------
        mapping : `Mapping` or `DataCoordinate`, optional
            Dimension names to values.
        universe : `DimensionUniverse`, optional
            Needed unless ``mapping`` is a `DataCoordinate` or ``dimensions`` a `DimensionGroup`.
        dimensions : iterable of `str` or `DimensionGroup`, optional
            The dimensions of the data ID; by default those of the keys given.  Values of other
            known dimensions are ignored.

        Raises
        ------
        DataIdError
            If a key is not a dimension, a required value is missing, or a value has the wrong type.
        """
        values: dict[str, Any] = {}
        if isinstance(mapping, DataCoordinate):
            universe = universe or mapping.universe
            values.update(mapping.full if mapping.has_full() else mapping.required)
            if dimensions is None and not kwargs:
                return mapping
        elif mapping is not None:
            values.update(mapping)
        values.update(kwargs)
        if isinstance(dimensions, DimensionGroup):
            universe = dimensions.universe
        if universe is None:
            raise TypeError("standardize needs a universe unless given a DataCoordinate or a DimensionGroup")
        for k in values:
            if k not in universe.dimensions:
                raise DataIdError(f"{k!r} is not a dimension. {did_you_mean(k, universe.dimensions)}")
        try:
            group = universe.conform(values.keys() if dimensions is None else dimensions)
        except DimensionNameError as err:
            raise DataIdError(str(err)) from None
        missing = [d for d in group.required if values.get(d) is None]
        if missing:
            given = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "nothing"
            raise DataIdError(
                f"a data ID for dimensions {group} needs a value for {', '.join(missing)}; given {given}."
            )
        keys = group.required
        if all(values.get(d) is not None for d in group.implied):
            keys = group.data_coordinate_keys
        coerced = tuple(universe[d].key.coerce(values[d], what=d) for d in keys)  # type: ignore[union-attr]
        return cls(group, coerced)

    @classmethod
    def standardize_many(
        cls, mappings: Iterable[Mapping[str, Any] | DataCoordinate], dimensions: DimensionGroup
    ) -> list[DataCoordinate]:
        """`standardize` many data IDs to one group, fast for bulk inserts.

        Plain mappings with exactly the required keys and values of the right Python type take a
        fast path; anything else goes through `standardize` (and its errors).
        """
        keys = dimensions.required
        universe = dimensions.universe
        specs = [universe[d].key for d in keys]
        types = tuple(int if s.type == "int" else str for s in specs)  # type: ignore[union-attr]
        string_limits = [(i, s.length) for i, s in enumerate(specs) if s.type == "string"]  # type: ignore[union-attr]
        n = len(keys)
        getter = operator.itemgetter(*keys) if n else None
        out = []
        for m in mappings:
            if isinstance(m, DataCoordinate):
                out.append(m if m.dimensions == dimensions else cls.standardize(m, dimensions=dimensions))
                continue
            values = None
            if getter is not None and len(m) == n:
                try:
                    values = getter(m)
                except KeyError:
                    pass
                else:
                    if n == 1:
                        values = (values,)
                    if tuple(map(type, values)) != types or any(len(values[i]) > lim for i, lim in string_limits):
                        values = None
            out.append(cls(dimensions, values) if values is not None else cls.standardize(m, dimensions=dimensions))
        return out

    # Mapping interface -----------------------------------------------------------------------------

    def __getitem__(self, key: str) -> DataIdValue:
        keys = self._group.data_coordinate_keys
        try:
            index = keys.index(key)
        except ValueError:
            raise KeyError(f"{key!r} is not a dimension of this data ID ({self._group}).") from None
        if index >= len(self._values):
            raise KeyError(f"the implied value of {key!r} is not known: expand the data ID first.")
        return self._values[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._group.data_coordinate_keys[: len(self._values)])

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DataCoordinate):
            n = len(self._group.required)
            return self._group.required == other._group.required and self._values[:n] == other._values[:n]
        if isinstance(other, Mapping):
            return dict(self.required) == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k}: {v!r}" for k, v in self.items()) + "}"

    def __reduce__(self) -> tuple:  # for multiprocessing; nothing persistent uses pickle
        return (DataCoordinate, (self._group, self._values, self._records))

    # Data ID specifics ------------------------------------------------------------------------------

    @property
    def universe(self) -> DimensionUniverse:
        return self._group.universe

    @property
    def dimensions(self) -> DimensionGroup:
        """The `DimensionGroup` of this data ID."""
        return self._group

    @property
    def required(self) -> dict[str, DataIdValue]:
        """Values of the required dimensions."""
        return dict(zip(self._group.required, self._values))

    @property
    def required_values(self) -> tuple[DataIdValue, ...]:
        return self._values[: len(self._group.required)]

    @property
    def full(self) -> dict[str, DataIdValue]:
        """Values of all dimensions (required and implied); needs `has_full`."""
        if not self.has_full():
            raise KeyError(f"data ID {self} does not know its implied values; expand it first.")
        return dict(zip(self._group.data_coordinate_keys, self._values))

    def has_full(self) -> bool:
        return len(self._values) == len(self._group.names)

    def has_records(self) -> bool:
        return self._records is not None

    @property
    def records(self) -> Mapping[str, DimensionRecord | None]:
        """Records of every element of the group, by element name; needs `has_records`."""
        if self._records is None:
            raise KeyError(f"data ID {self} has no dimension records; expand it with Registry.expand_data_id.")
        return self._records

    def expanded(self, records: Mapping[str, DimensionRecord | None]) -> DataCoordinate:
        """Return a data ID with full values and the given records attached."""
        values = dict(zip(self._group.data_coordinate_keys, self._values))
        for d in self._group.implied:
            if d not in values:
                for name in self._group.elements:
                    record = records.get(name)
                    if record is not None and d in record.element.implied:
                        values[d] = record.get(d)
                        break
        missing = [d for d in self._group.data_coordinate_keys if values.get(d) is None]
        if missing:
            raise DataIdError(f"cannot expand {self}: no record gives a value for {', '.join(missing)}.")
        return DataCoordinate(self._group, tuple(values[d] for d in self._group.data_coordinate_keys), dict(records))

    def subset(self, dimensions: Iterable[str] | DimensionGroup) -> DataCoordinate:
        """Return the data ID restricted to a subset of its dimensions (keeping what it knows)."""
        group = self.universe.conform(dimensions)
        if group == self._group:
            return self
        known = dict(self.items())
        missing = [d for d in group.required if d not in known]
        if missing:
            raise DataIdError(f"cannot take dimensions {group} from data ID {self}: {', '.join(missing)} unknown.")
        keys = group.data_coordinate_keys if all(d in known for d in group.implied) else group.required
        records = None
        if self._records is not None:
            records = {e: self._records.get(e) for e in group.elements}
        return DataCoordinate(group, tuple(known[d] for d in keys), records if len(keys) == len(group.names) else None)

    def union(self, other: DataCoordinate) -> DataCoordinate:
        """Return a data ID over both data IDs' dimensions; they must agree where they overlap."""
        group = self._group | other._group
        values = dict(self.items())
        for k, v in other.items():
            if values.setdefault(k, v) != v:
                raise DataIdError(f"data IDs {self} and {other} disagree on {k!r}.")
        return DataCoordinate.standardize(values, dimensions=group)

    @property
    def region(self) -> Region | None:
        """The region of the most specific spatial element of the group (needs records)."""
        if self._records is None:
            return None
        spatial = self._group.spatial_elements()
        if len(spatial) != 1:
            return None
        record = self._records.get(next(iter(spatial.values())))
        return record.region if record is not None else None

    def to_simple(self) -> dict[str, DataIdValue]:
        """JSON-safe form: a dict of the known values."""
        return dict(self.items())
