"""Connections: the datasets a PipelineTask reads and writes, and the dimensions of its quanta.

Declared as a `PipelineTaskConnections` subclass::

    class CharacterizeConnections(PipelineTaskConnections, dimensions=("instrument", "visit", "detector"),
                                  defaultTemplates={"prefix": ""}):
        exposure = Input(name="postISRCCD", storageClass="Exposure",
                         dimensions=("instrument", "exposure", "detector"), doc="ISR-corrected exposure.")
        characterized = Output(name="{prefix}icExp", storageClass="ExposureF",
                               dimensions=("instrument", "visit", "detector"), doc="Characterized exposure.")

        def __init__(self, *, config):
            super().__init__(config=config)
            if not config.doWriteBackground:
                del self.backgroundModel

Each connection's dataset type name can be changed with the config field
``connections.<connection>``, and templates with ``connections.<template>``.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

from pydantic import Field, create_model

from .config import Config
from .errors import ConnectionError, NoWorkFound

__all__ = [
    "BaseConnection",
    "InitInput",
    "InitOutput",
    "Input",
    "InputQuantizedConnection",
    "Output",
    "OutputQuantizedConnection",
    "PipelineTaskConnections",
    "PrerequisiteInput",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaseConnection:
    """A dataset a task reads or writes.

    Attributes
    ----------
    name : `str`
        Dataset type name; may hold ``{template}`` fields filled from the config.
    storageClass : `str`
        Storage class of the dataset type.
    doc : `str`
    multiple : `bool`
        Whether the task takes a list of datasets (e.g. all detectors of a visit) rather than one.
    """

    name: str
    storageClass: str  # noqa: N815 - the LSST stack's name
    doc: str = ""
    multiple: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class DimensionedConnection(BaseConnection):
    """A connection whose datasets have dimensions (one dataset per data ID)."""

    dimensions: tuple[str, ...] = ()
    isCalibration: bool = False  # noqa: N815

    def __post_init__(self) -> None:
        if isinstance(self.dimensions, str):
            raise ConnectionError(
                f"connection {self.name!r}: dimensions must be a tuple of names, e.g. ({self.dimensions!r},)."
            )
        object.__setattr__(self, "dimensions", tuple(self.dimensions))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Input(DimensionedConnection):
    """A dataset the task reads, produced by another task or already in the input collections.

    Attributes
    ----------
    deferLoad : `bool`
        Pass a `DeferredDatasetHandle` instead of the object (read later, or only a part).
    minimum : `int`
        Fewest datasets a quantum needs; with fewer the quantum is pruned (`NoWorkFound`).
    deferGraphConstraint : `bool`
        Do not use this input to constrain which quanta exist.
    """

    deferLoad: bool = False  # noqa: N815
    minimum: int = 1
    deferGraphConstraint: bool = False  # noqa: N815


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrerequisiteInput(Input):
    """An input that must already exist before the pipeline runs (a calibration, a reference catalog).

    Attributes
    ----------
    lookupFunction : callable, optional
        ``f(dataset_type, butler, data_id, collections) -> list[DatasetRef]`` to find the datasets
        of a quantum when they are not found by data ID (e.g. by a spatial or temporal search).
    """

    lookupFunction: Callable[..., list[Any]] | None = None  # noqa: N815


@dataclasses.dataclass(frozen=True, kw_only=True)
class Output(DimensionedConnection):
    """A dataset the task writes."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class InitInput(BaseConnection):
    """A dataset read once when the task is constructed (e.g. a schema)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class InitOutput(BaseConnection):
    """A dataset written once per run when the task is constructed (e.g. a schema)."""


_CATEGORIES = {
    "initInputs": InitInput,
    "initOutputs": InitOutput,
    "prerequisiteInputs": PrerequisiteInput,
    "inputs": Input,
    "outputs": Output,
}


def _category(connection: BaseConnection) -> str:
    # PrerequisiteInput is an Input subclass: test the most specific classes first.
    for category, cls in _CATEGORIES.items():
        if isinstance(connection, cls):
            return category
    raise ConnectionError(f"unknown connection type {type(connection).__name__}")


# Attributes of a connections object (and of pydantic configs) that a connection must not shadow.
_RESERVED_NAMES = frozenset(
    {"inputs", "outputs", "prerequisiteInputs", "initInputs", "initOutputs", "dimensions", "config",
     "allConnections", "defaultTemplates", "adjustQuantum", "schema", "copy", "json", "dict"}
)


def _template_fields(name: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(name) if field}


class PipelineTaskConnectionsMetaclass(type):
    """Collects the connections declared on a class and checks its templates."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any):  # noqa: N804
        dimensions = kwargs.pop("dimensions", None)
        templates = kwargs.pop("defaultTemplates", None)
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        connections: dict[str, BaseConnection] = {}
        for base in reversed(cls.__mro__[1:]):
            connections.update(getattr(base, "_class_connections", {}))
        connections.update({k: v for k, v in namespace.items() if isinstance(v, BaseConnection)})
        clash = sorted(set(connections) & _RESERVED_NAMES)
        if clash:
            raise ConnectionError(
                f"{name}: connection name(s) {clash} are reserved for attributes of the connections object; rename them."
            )
        cls._class_connections = connections
        if dimensions is not None:
            if isinstance(dimensions, str):
                raise ConnectionError(f"{name}: dimensions must be a tuple, e.g. ({dimensions!r},).")
            cls.dimensions = frozenset(dimensions)
        elif not hasattr(cls, "dimensions"):
            cls.dimensions = frozenset()
        merged = dict(getattr(cls, "defaultTemplates", {}))
        merged.update(templates or {})
        cls.defaultTemplates = merged
        for conn_name, conn in connections.items():
            missing = _template_fields(conn.name) - set(merged)
            if missing:
                raise ConnectionError(
                    f"{name}.{conn_name}: dataset type name {conn.name!r} uses template(s) {sorted(missing)} "
                    "with no default; add them to defaultTemplates."
                )
            if conn_name in merged:
                raise ConnectionError(f"{name}: {conn_name!r} is both a connection and a template name.")
        cls._config_class = None
        return cls


class PipelineTaskConnections(metaclass=PipelineTaskConnectionsMetaclass):
    """Base class of a task's connections; see the module docstring.

    Parameters
    ----------
    config : `PipelineTaskConfig`
        The task's config; its ``connections`` field gives dataset type names and templates.

    Attributes
    ----------
    dimensions : `frozenset` [`str`]
        Dimensions of the task's quanta.
    inputs, prerequisiteInputs, outputs, initInputs, initOutputs : `set` [`str`]
        Names of the connections of each kind (remove a connection with ``del self.name``).
    allConnections : `dict` [`str`, `BaseConnection`]
        Connection name -> connection with its final dataset type name.
    """

    dimensions: ClassVar[frozenset[str]]
    defaultTemplates: ClassVar[dict[str, str]]
    _class_connections: ClassVar[dict[str, BaseConnection]]
    _config_class: ClassVar[type[Config] | None]

    def __init__(self, *, config: Any = None):
        self.config = config
        overrides: Mapping[str, Any] = {}
        if config is not None and getattr(config, "connections", None) is not None:
            overrides = config.connections.to_dict()
        templates = {k: overrides.get(k, v) for k, v in self.defaultTemplates.items()}
        self.dimensions = frozenset(type(self).dimensions)
        self.allConnections: dict[str, BaseConnection] = {}
        for category in _CATEGORIES:
            setattr(self, category, set())
        for conn_name, conn in self._class_connections.items():
            name = overrides.get(conn_name, conn.name)
            try:
                resolved = name.format(**templates)
            except (KeyError, IndexError, ValueError) as err:
                raise ConnectionError(
                    f"{type(self).__name__}.{conn_name}: cannot fill dataset type name {name!r} from templates "
                    f"{templates}: {err}"
                ) from None
            final = dataclasses.replace(conn, name=resolved)
            self.allConnections[conn_name] = final
            getattr(self, _category(final)).add(conn_name)
            object.__setattr__(self, conn_name, final)

    def __delattr__(self, name: str) -> None:
        if name in self.allConnections:
            del self.allConnections[name]
            for category in _CATEGORIES:
                getattr(self, category).discard(name)
        object.__delattr__(self, name)

    @classmethod
    def make_config_class(cls) -> type[Config]:
        """The config class of the ``connections`` field: one string per connection and template."""
        if cls.__dict__.get("_config_class") is None:
            fields: dict[str, Any] = {
                name: (str, Field(conn.name, description=f"Dataset type name of connection {name!r}. {conn.doc}"))
                for name, conn in cls._class_connections.items()
            }
            fields.update(
                {name: (str, Field(value, description=f"Template {name!r} of dataset type names."))
                 for name, value in cls.defaultTemplates.items()}
            )
            cls._config_class = create_model(f"{cls.__name__}Config", __base__=Config, **fields)
        return cls._config_class  # type: ignore[return-value]

    def connections_of(self, *categories: str) -> dict[str, BaseConnection]:
        """Connections of the given kinds (``"inputs"``, ``"outputs"``...) by connection name."""
        return {n: self.allConnections[n] for c in categories for n in sorted(getattr(self, c))}

    def adjustQuantum(  # noqa: N802 - the LSST stack's name
        self,
        inputs: dict[str, tuple[BaseConnection, list[Any]]],
        outputs: dict[str, tuple[BaseConnection, list[Any]]],
        label: str,
        data_id: Any,
    ) -> tuple[dict[str, tuple[BaseConnection, list[Any]]], dict[str, tuple[BaseConnection, list[Any]]]]:
        """Check (and optionally change) the datasets of a quantum while the graph is built.

        The default raises `NoWorkFound` when a regular input has fewer datasets than its
        ``minimum``, and `FileNotFoundError` when a prerequisite does.  Override to drop or add
        refs; return the (possibly changed) mappings.
        """
        for name, (connection, refs) in inputs.items():
            if len(refs) < getattr(connection, "minimum", 1):
                message = (
                    f"quantum {label} {data_id} has {len(refs)} {connection.name!r} dataset(s) for input {name!r}; "
                    f"it needs at least {connection.minimum}."
                )
                if isinstance(connection, PrerequisiteInput):
                    raise FileNotFoundError(message)
                raise NoWorkFound(message)
        return inputs, outputs


class _QuantizedConnection:
    """Refs of one quantum by connection name (attribute access; iterate for (name, refs) pairs)."""

    def __init__(self, refs: Mapping[str, Any]):
        self._names = list(refs)
        for name, value in refs.items():
            setattr(self, name, value)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return ((name, getattr(self, name)) for name in self._names)

    def keys(self) -> Iterable[str]:
        return list(self._names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._names)})"


class InputQuantizedConnection(_QuantizedConnection):
    """The input refs of a quantum: a `DatasetRef` (or a list, for ``multiple``) per connection."""


class OutputQuantizedConnection(_QuantizedConnection):
    """The output refs of a quantum: a `DatasetRef` (or a list, for ``multiple``) per connection."""
