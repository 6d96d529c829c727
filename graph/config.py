"""Task configuration: typed, validated, overridable, frozen for a run (pydantic v2).

A task's config is a `Config` subclass whose fields are pydantic fields with defaults and docs::

    class DetectionConfig(Config):
        thresholdValue: float = Field(5.0, gt=0, description="Detection threshold in sigma.")

    class CharacterizeConfig(PipelineTaskConfig, pipelineConnections=CharacterizeConnections):
        detection: DetectionConfig = ConfigurableField(target=DetectionTask, doc="Source detection.")
        psfIterations: int = Field(2, ge=1, description="Number of detect/measure/PSF iterations.")

Overrides come from pipeline YAML, config files and ``-c label:a.b=value``; each is validated and a
bad one raises `ConfigOverrideError` naming the field and the expected type.  `Config.freeze`
makes a config immutable before a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic._internal._model_construction import ModelMetaclass

from .errors import ConfigOverrideError, FrozenConfigError

if TYPE_CHECKING:
    from .task import Task

__all__ = ["Config", "ConfigurableField", "Field", "PipelineTaskConfig"]


class Config(BaseModel):
    """Base class of task configs.

    Subclasses declare typed fields; `setDefaults` may adjust defaults (it runs when an instance is
    made), `validate` checks cross-field rules.  Subtask configs are made with `ConfigurableField`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)
    _frozen: bool = PrivateAttr(default=False)
    _target: Any = PrivateAttr(default=None)
    _parent: Any = PrivateAttr(default=None)
    _field_name: str | None = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        for name, value in self:
            if isinstance(value, Config):
                value._parent, value._field_name = self, name
        self.setDefaults()

    def setDefaults(self) -> None:  # noqa: N802 - the LSST stack's name
        """Adjust defaults after construction (override in subclasses; call ``super()``)."""

    def validate(self) -> None:  # type: ignore[override]
        """Check rules that involve several fields (override; raise `ValueError` with a clear message).

        Subtask configs are validated too.
        """
        for _, value in self:
            if isinstance(value, Config):
                value.validate()

    def freeze(self) -> None:
        """Make this config and its subtask configs immutable."""
        self._frozen = True
        for _, value in self:
            if isinstance(value, Config):
                value.freeze()

    @property
    def frozen(self) -> bool:
        return self._frozen

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and self._frozen:
            raise FrozenConfigError(f"config field {name!r} cannot change: the config is frozen for a run.")
        super().__setattr__(name, value)
        if isinstance(value, Config) and not name.startswith("_"):
            value._parent, value._field_name = self, name

    # Subtasks --------------------------------------------------------------------------------------

    @property
    def target(self) -> type[Task] | None:
        """The task class this config configures, for a subtask config (see `ConfigurableField`)."""
        return self._target

    def retarget(self, target: type[Task], ConfigClass: type[Config] | None = None) -> None:  # noqa: N803
        """Make this subtask field use another task class (and its config class, with defaults).

        Raises
        ------
        ConfigOverrideError
            If this config is not a subtask field of a parent config.
        """
        if self._parent is None or self._field_name is None:
            raise ConfigOverrideError("only a subtask config (a ConfigurableField) can be retargeted.")
        config_class = ConfigClass or target.ConfigClass
        new = config_class() if config_class is not type(self) else self
        new._target = target
        setattr(self._parent, self._field_name, new)

    # Overrides ---------------------------------------------------------------------------------------

    def override(self, key: str, value: Any) -> None:
        """Set a (dotted) field from a Python value or a YAML scalar string.

        Parameters
        ----------
        key : `str`
            ``"psfIterations"`` or ``"detection.thresholdValue"``.
        value : `object`
            The value; a string is parsed as YAML (``"5"`` -> 5, ``"[1, 2]"`` -> list) when the field is
            not a string field.

        Raises
        ------
        ConfigOverrideError
            If the field does not exist or the value does not validate (the message names both).
        """
        owner, name = self._owner_of(key)
        field = type(owner).model_fields[name]
        if isinstance(value, str) and field.annotation is not str:
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if isinstance(value, Mapping) and isinstance(getattr(owner, name), Config):
            sub = getattr(owner, name)
            for k, v in value.items():
                sub.override(str(k), v)
            return
        try:
            setattr(owner, name, value)
        except ValidationError as err:
            problems = "; ".join(e["msg"] for e in err.errors())
            raise ConfigOverrideError(
                f"cannot set config field {key!r} of {type(self).__name__} to {value!r}: {problems} "
                f"(the field is {_type_name(field.annotation)})."
            ) from None

    def _owner_of(self, key: str) -> tuple[Config, str]:
        owner: Config = self
        parts = key.split(".")
        for i, part in enumerate(parts):
            fields = type(owner).model_fields
            if part not in fields:
                import difflib

                close = difflib.get_close_matches(part, list(fields), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigOverrideError(
                    f"{type(owner).__name__} has no field {part!r} (in override {key!r}).{hint} "
                    f"Fields: {', '.join(sorted(fields))}."
                )
            if i == len(parts) - 1:
                return owner, part
            child = getattr(owner, part)
            if not isinstance(child, Config):
                raise ConfigOverrideError(f"config field {'.'.join(parts[: i + 1])!r} is not a sub-config; cannot set {key!r}.")
            owner = child
        raise ConfigOverrideError(f"empty config override key {key!r}")

    def apply(self, overrides: Mapping[str, Any]) -> None:
        """Apply a mapping of (dotted or nested) overrides, as found in pipeline YAML ``config:``."""
        for key, value in overrides.items():
            self.override(str(key), value)

    def load(self, path: str | Path) -> None:
        """Apply the overrides of a YAML file (``key: value`` pairs, nested or dotted).

        Raises
        ------
        ConfigOverrideError
            If the file cannot be read or parsed, or an override is invalid.
        """
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigOverrideError(f"cannot read config overrides from {path}: {err}") from None
        if data is None:
            return
        if not isinstance(data, Mapping):
            raise ConfigOverrideError(f"config file {path} must hold a mapping of field: value.")
        self.apply(data)

    # Persistence --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every field (subtask configs included)."""
        return self.model_dump(mode="json", serialize_as_any=True)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the config (for provenance and re-run checks)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def differences(self, other: Config) -> list[str]:
        """Dotted names of the fields whose values differ from another config's."""

        def walk(a: Any, b: Any, prefix: str) -> list[str]:
            if isinstance(a, dict) and isinstance(b, dict):
                return [d for k in sorted(set(a) | set(b)) for d in walk(a.get(k), b.get(k), f"{prefix}{k}.")]
            return [] if a == b else [prefix.rstrip(".")]

        return walk(self.to_dict(), other.to_dict(), "")

    def changes_from(self, old: Config) -> list[str]:
        """The fields that differ from an older config, each as ``"dotted.name (old -> new)"``."""
        new_values, old_values = self.to_dict(), old.to_dict()
        return [
            f"{name} ({_lookup(old_values, name)!r} -> {_lookup(new_values, name)!r})" for name in self.differences(old)
        ]


def _lookup(values: Any, dotted: str) -> Any:
    """The value at a dotted name in a nested dict (`None` where a level is missing)."""
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def ConfigurableField(target: type[Task], doc: str = "", ConfigClass: type[Config] | None = None) -> Any:  # noqa: N802,N803
    """A config field holding the config of a subtask, retargetable to another task class.

    Parameters
    ----------
    target : `type`
        The default task class (its ``ConfigClass`` gives the field's default config).
    doc : `str`
        What the subtask does.
    ConfigClass : `type`, optional
        Config class to use instead of ``target.ConfigClass``.

    Returns
    -------
    field : pydantic ``FieldInfo``
        Use it as the default of a field annotated with the config class.
    """
    config_class = ConfigClass or target.ConfigClass

    def make() -> Config:
        config = config_class()
        config._target = target
        return config

    return Field(default_factory=make, description=doc)


class _PipelineTaskConfigMeta(ModelMetaclass):
    """Adds a ``connections`` field (dataset type names and name templates) to pipeline task configs."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any):  # noqa: N804
        connections_class = kwargs.pop("pipelineConnections", None)
        if connections_class is not None:
            namespace.setdefault("__annotations__", {})["connections"] = connections_class.make_config_class()
            namespace["connections"] = Field(
                default_factory=connections_class.make_config_class(),
                description="Dataset type names of the task's connections, and the values of their name templates.",
            )
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        if connections_class is not None:
            type.__setattr__(cls, "ConnectionsClass", connections_class)
        return cls


class PipelineTaskConfig(Config, metaclass=_PipelineTaskConfigMeta):
    """Base class of `PipelineTask` configs; subclass with ``pipelineConnections=MyConnections``.

    The ``connections`` field holds one string per connection (its dataset type name) and per name
    template, so ``-c label:connections.coaddName=goodSeeing`` renames templated dataset types.
    """

    ConnectionsClass: ClassVar[Any] = None  # set by the metaclass
    saveLogOutput: bool = Field(True, description="Whether to store the task's log as the {label}_log dataset.")

