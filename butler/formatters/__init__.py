"""Formatters: how an in-memory object of a storage class is written to, and read from, one file.

The formatter of each storage class (or dataset type) is named by dotted path in
``formatters.yaml``; the datastore records that dotted path with each file, so a file is always read
with the formatter that wrote it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..datasets import DatasetType, StorageClass, StorageClassFactory, import_dotted
from ..errors import FormatterError

__all__ = ["BytesFormatter", "Formatter", "FormatterFactory"]


class Formatter(ABC):
    """Writes and reads objects of one storage class to and from files of one format.

    Parameters
    ----------
    storage_class : `StorageClass`
        The storage class of the objects written and read.

    Attributes
    ----------
    extension : `str`
        File extension including the dot (``".parq"``).
    supported_components : `frozenset` [`str`]
        Components `read` can return alone.
    supported_parameters : `frozenset` [`str`]
        Parameters `read` accepts.
    """

    extension: ClassVar[str]
    supported_components: ClassVar[frozenset[str]] = frozenset()
    supported_parameters: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, storage_class: StorageClass):
        self.storage_class = storage_class

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.storage_class.name!r})"

    @abstractmethod
    def write(self, obj: Any, path: Path) -> None:
        """Write an object to exactly ``path``.

        Raises
        ------
        FormatterError
            If the object cannot be represented in this format.
        """

    @abstractmethod
    def read(self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        """Read an object, one of its components, or a subset selected by parameters.

        Raises
        ------
        FormatterError
            If the component or a parameter is not supported (the message lists the supported ones).
            A damaged file raises whatever the underlying library raises.
        """

    def check_read_arguments(self, component: str | None, parameters: Mapping[str, Any] | None) -> None:
        """Raise `FormatterError` unless the component and parameters are supported.

        Raises
        ------
        FormatterError
            Naming the unsupported component or parameters and listing the supported ones.
        """
        name = type(self).__name__
        if component is not None and component not in self.supported_components:
            valid = ", ".join(sorted(self.supported_components)) or "none"
            raise FormatterError(
                f"{name} cannot read component {component!r} of a {self.storage_class.name} dataset; "
                f"supported components: {valid}."
            )
        unknown = sorted(set(parameters or ()) - self.supported_parameters)
        if unknown:
            valid = ", ".join(sorted(self.supported_parameters)) or "none"
            raise FormatterError(
                f"{name} does not support read parameter(s) {', '.join(map(repr, unknown))} for a "
                f"{self.storage_class.name} dataset; supported parameters: {valid}."
            )


class BytesFormatter(Formatter):
    """A formatter of small files that serialises in memory (`to_bytes`).

    The datastore writes the bytes with one system call and checksums them without reading the file
    back, which is most of the cost of writing a small dataset.
    """

    @abstractmethod
    def to_bytes(self, obj: Any) -> bytes:
        """Serialise an object to the bytes of its file.

        Raises
        ------
        FormatterError
            If the object cannot be represented in this format.
        """

    @abstractmethod
    def from_bytes(
        self, data: bytes, *, component: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """Read an object (or a component, or a subset) from the bytes of its file.

        Raises
        ------
        FormatterError
            If the component or a parameter is not supported.
        """

    def write(self, obj: Any, path: Path) -> None:
        """Write `to_bytes` of the object to ``path``."""
        path.write_bytes(self.to_bytes(obj))

    def read(self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        """Read the file with `from_bytes`."""
        self.check_read_arguments(component, parameters)
        return self.from_bytes(path.read_bytes(), component=component, parameters=parameters)


class FormatterFactory:
    """Chooses the formatter of each dataset type, from ``formatters.yaml``.

    Parameters
    ----------
    config : `Mapping` [`str`, `str`]
        The ``formatters`` mapping: storage class or dataset type name -> dotted formatter path.
    storage_classes : `StorageClassFactory`
        The repository's storage classes.
    """

    def __init__(self, config: Mapping[str, str], storage_classes: StorageClassFactory):
        self._config = {str(k): str(v) for k, v in config.items()}
        self._storage_classes = storage_classes
        self._classes: dict[str, type[Formatter]] = {}
        self._instances: dict[tuple[str, str], Formatter] = {}

    def get_class(self, dataset_type: DatasetType) -> type[Formatter]:
        """Return the formatter class of a dataset type.

        Looks up the dataset type's name (the parent's name for a component), then its storage class.

        Raises
        ------
        FormatterError
            If neither is configured, or the configured class cannot be imported or is not a
            `Formatter`.
        """
        dotted = self._config.get(dataset_type.parent_name) or self._config.get(dataset_type.storage_class)
        if dotted is None:
            raise FormatterError(
                f"no formatter is configured for dataset type {dataset_type.name!r} or its storage class "
                f"{dataset_type.storage_class!r}. Add '{dataset_type.storage_class}: package.module.Formatter' "
                f"to formatters.yaml in the repository (configured: {', '.join(sorted(self._config)) or 'none'})."
            )
        return self._import(dotted)

    def get(self, dataset_type: DatasetType) -> Formatter:
        """Return a formatter instance for a dataset type (see `get_class`).

        Raises
        ------
        FormatterError
            As `get_class`.
        StorageClassError
            If the dataset type's storage class is not defined.
        """
        return self.from_name(self.dotted_name(self.get_class(dataset_type)), dataset_type.storage_class)

    def from_name(self, dotted: str, storage_class: str) -> Formatter:
        """Return a formatter instance from its dotted class path (as recorded with a file).

        Raises
        ------
        FormatterError
            If the class cannot be imported or is not a `Formatter`.
        StorageClassError
            If the storage class is not defined.
        """
        key = (dotted, storage_class)
        formatter = self._instances.get(key)
        if formatter is None:
            formatter = self._import(dotted)(self._storage_classes[storage_class])
            self._instances[key] = formatter
        return formatter

    def _import(self, dotted: str) -> type[Formatter]:
        cls = self._classes.get(dotted)
        if cls is not None:
            return cls
        try:
            cls = import_dotted(dotted)
        except ImportError as err:
            raise FormatterError(f"cannot import formatter {dotted!r}: {err} Check formatters.yaml.") from None
        if not (isinstance(cls, type) and issubclass(cls, Formatter)):
            raise FormatterError(f"{dotted!r} is not a subclass of butler.formatters.Formatter. Check formatters.yaml.")
        self._classes[dotted] = cls
        return cls

    @staticmethod
    def dotted_name(cls: type[Formatter]) -> str:
        """Return ``module.ClassName`` of a formatter class."""
        return f"{cls.__module__}.{cls.__qualname__}"
