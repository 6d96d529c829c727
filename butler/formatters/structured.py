"""Formatters of structured data: dictionaries as YAML or JSON, pydantic models as JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel

from ..errors import FormatterError
from . import BytesFormatter

__all__ = ["JsonFormatter", "YamlFormatter", "check_json_value"]


def check_json_value(value: Any, where: str) -> None:
    """Raise `FormatterError` unless ``value`` survives a JSON round trip unchanged.

    Allowed: `dict` with `str` keys, `list`, `str`, `int`, `float` (finite, NaN or infinite), `bool`
    and None, nested to any depth.  Tuples (which would come back as lists), non-string keys (which
    would come back as strings) and any other type are refused.

    Parameters
    ----------
    value : `object`
        The value to check.
    where : `str`
        What the value is, for the message (``"table.meta"``).

    Raises
    ------
    FormatterError
        Naming the path of the first offending item and its type.
    """
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        path, item = stack.pop()
        kind = type(item)
        if item is None or kind in (str, int, float, bool):
            continue
        if kind is dict:
            for key, sub in item.items():
                if type(key) is not str:
                    raise FormatterError(
                        f"{path} has a key {key!r} of type {type(key).__name__}; JSON keys must be strings "
                        "(convert the key with str())."
                    )
                stack.append((f"{path}[{key!r}]", sub))
        elif kind is list:
            stack.extend((f"{path}[{i}]", sub) for i, sub in enumerate(item))
        else:
            hint = " (use a list)" if kind is tuple else " (convert it to a plain number, string, list or dict)"
            raise FormatterError(f"{path} is a {kind.__module__}.{kind.__qualname__}, which JSON cannot hold{hint}.")


class YamlFormatter(BytesFormatter):
    """A dictionary of plain values as a YAML file (``yaml.safe_dump`` / ``yaml.safe_load`` only).

    Values may be anything YAML's safe representer accepts: None, `bool`, `int`, `float`, `str`,
    `bytes`, `list`, `dict`, `set`, `datetime.date` / `datetime.datetime`.  Tuples come back as
    lists.
    """

    extension = ".yaml"

    def to_bytes(self, obj: Any) -> bytes:
        """Serialise ``obj`` as YAML.

        Raises
        ------
        FormatterError
            If ``obj`` holds a value YAML's safe dumper cannot represent (any Python object).
        """
        try:
            text = yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)
        except yaml.YAMLError as err:
            raise FormatterError(
                f"cannot write a {self.storage_class.name} dataset as YAML: {err}. Only plain values (numbers, "
                "strings, lists, dicts, dates) can be stored; convert other objects first."
            ) from None
        return text.encode("utf-8")

    def from_bytes(self, data: bytes, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        """Read a YAML document."""
        self.check_read_arguments(component, parameters)
        return yaml.safe_load(data.decode("utf-8"))


class JsonFormatter(BytesFormatter):
    """A dictionary of plain values, or a pydantic (v2) model, as a JSON file.

    When the storage class's Python type is a `pydantic.BaseModel` subclass, objects are written with
    ``model_dump_json`` and read with ``model_validate_json``.  Otherwise the object must be a
    dictionary that survives a JSON round trip exactly (see `check_json_value`).  NaN and infinite
    floats are written as the non-standard tokens ``NaN`` / ``Infinity`` that Python reads back.
    """

    extension = ".json"

    def _model_type(self) -> type[BaseModel] | None:
        """The storage class's pydantic model type, or None when it is not a model."""
        pytype = self.storage_class.python_type()
        return pytype if isinstance(pytype, type) and issubclass(pytype, BaseModel) else None

    def to_bytes(self, obj: Any) -> bytes:
        """Serialise ``obj`` as JSON.

        Raises
        ------
        FormatterError
            If ``obj`` holds a value JSON cannot represent exactly, or a pydantic model fails to
            serialise.
        """
        if isinstance(obj, BaseModel):
            try:
                data = obj.model_dump_json().encode()
            except Exception as err:  # pydantic.PydanticSerializationError and friends
                raise FormatterError(f"cannot write a {type(obj).__name__} model as JSON: {err}") from None
        else:
            check_json_value(obj, f"the {self.storage_class.name} dataset")
            data = json.dumps(obj, ensure_ascii=False).encode()
        return data

    def from_bytes(self, data: bytes, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        """Read a JSON document (as a model when the storage class holds one)."""
        self.check_read_arguments(component, parameters)
        model = self._model_type()
        if model is not None:
            return model.model_validate_json(data)
        return json.loads(data)
