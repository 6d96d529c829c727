"""Formatters for the pipeline framework's storage classes (named in ``repo_template/formatters.yaml``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from butler.datasets import import_dotted
from butler.errors import FormatterError
from butler.formatters import BytesFormatter

from .config import Config

__all__ = ["ConfigFormatter"]


class ConfigFormatter(BytesFormatter):
    """A task `Config` as JSON: ``{"class": "<dotted config class>", "values": {...}}``.

    Reading imports the config class and validates the values, so ``butler.get("isr_config")`` returns
    the same kind of object the task used.
    """

    extension = ".json"

    def to_bytes(self, obj: Any) -> bytes:
        if not isinstance(obj, Config):
            raise FormatterError(f"ConfigFormatter writes task configs, not {type(obj).__name__}.")
        cls = type(obj)
        return json.dumps({"class": f"{cls.__module__}.{cls.__qualname__}", "values": obj.to_dict()}).encode()

    def from_bytes(self, data: bytes, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Config:
        self.check_read_arguments(component, parameters)
        content = json.loads(data)
        try:
            cls = import_dotted(content["class"])
        except ImportError as err:
            raise FormatterError(f"cannot read a config of class {content.get('class')!r}: {err}") from None
        if not (isinstance(cls, type) and issubclass(cls, Config)):
            raise FormatterError(f"cannot read a config of class {content['class']!r}: it is not a Config subclass.")
        return cls.model_validate(content["values"])
