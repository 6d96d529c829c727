"""`TaskMetadata`: hierarchical, JSON-serialisable metadata recorded by tasks.

Keys are dotted: ``metadata["psf.numStars"] = 42`` stores ``numStars`` in the nested metadata
``psf``.  `Task.getFullMetadata` combines the metadata of a task and its subtasks under their full
names with ``.`` replaced by ``:`` (``characterizeImage:detection.nSources``), as in the LSST stack.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["TaskMetadata"]

Scalar = int | float | str | bool


def _check_scalar(key: str, value: Any) -> Scalar:
    # numpy scalars and bools are accepted and stored as plain Python values
    if isinstance(value, bool | str):
        return value
    if hasattr(value, "item") and not isinstance(value, Sequence):
        value = value.item()
    if isinstance(value, int | float):
        return value
    raise TypeError(f"metadata {key!r}: {type(value).__name__} values cannot be stored; use numbers, strings or bools.")


class TaskMetadata(BaseModel):
    """Hierarchical metadata: scalars, arrays of scalars, and nested metadata.

    Examples
    --------
    >>> md = TaskMetadata()
    >>> md["psf.fwhm"] = 3.2
    >>> md.add("psf.rejected", 4)
    >>> md["psf"]["fwhm"], md["psf.rejected"]
    (3.2, [4])
    """

    scalars: dict[str, Scalar] = Field(default_factory=dict)
    arrays: dict[str, list[Scalar]] = Field(default_factory=dict)
    metadata: dict[str, TaskMetadata] = Field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskMetadata:
        """Build metadata from a nested dict (dicts become nested metadata, lists arrays)."""
        md = cls()
        for key, value in d.items():
            md[key] = value
        return md

    def _split(self, key: str, create: bool) -> tuple[TaskMetadata | None, str]:
        if not isinstance(key, str) or not key:
            raise KeyError(f"metadata keys are non-empty strings, got {key!r}")
        head, dot, rest = key.partition(".")
        if not dot:
            return self, key
        child = self.metadata.get(head)
        if child is None:
            if not create:
                return None, rest
            if head in self.scalars or head in self.arrays:
                raise KeyError(f"metadata {head!r} is a value, so it cannot hold {rest!r}")
            child = self.metadata[head] = TaskMetadata()
        return child._split(rest, create)

    def __setitem__(self, key: str, value: Any) -> None:
        owner, name = self._split(key, create=True)
        assert owner is not None
        owner.scalars.pop(name, None)
        owner.arrays.pop(name, None)
        owner.metadata.pop(name, None)
        if isinstance(value, TaskMetadata):
            owner.metadata[name] = value
        elif isinstance(value, Mapping):
            owner.metadata[name] = TaskMetadata.from_dict(value)
        elif isinstance(value, list | tuple) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0):
            owner.arrays[name] = [_check_scalar(key, v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
        else:
            owner.scalars[name] = _check_scalar(key, value)

    def add(self, key: str, value: Any) -> None:
        """Append a value to the array ``key`` (making it an array if needed)."""
        owner, name = self._split(key, create=True)
        assert owner is not None
        if name in owner.scalars:
            owner.arrays[name] = [owner.scalars.pop(name)]
        owner.arrays.setdefault(name, []).append(_check_scalar(key, value))

    def __getitem__(self, key: str) -> Any:
        owner, name = self._split(key, create=False)
        if owner is not None:
            for table in (owner.scalars, owner.arrays, owner.metadata):
                if name in table:
                    return table[name]
        raise KeyError(f"no metadata item {key!r}; items: {', '.join(self.names()) or 'none'}")

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def names(self) -> list[str]:
        """Full dotted names of every scalar and array, recursively."""
        out = list(self.scalars) + list(self.arrays)
        for name, child in self.metadata.items():
            out += [f"{name}.{n}" for n in child.names()]
        return sorted(out)

    def keys(self) -> list[str]:
        """Top-level names."""
        return list(self.scalars) + list(self.arrays) + list(self.metadata)

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.scalars) + len(self.arrays) + len(self.metadata)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict."""
        out: dict[str, Any] = dict(self.scalars)
        out.update({k: list(v) for k, v in self.arrays.items()})
        out.update({k: v.to_dict() for k, v in self.metadata.items()})
        return out

    def numeric_equal(self, other: TaskMetadata) -> bool:
        """Whether two metadata hold the same values (NaN equal to NaN)."""

        def same(a: Any, b: Any) -> bool:
            if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
                return True
            return a == b

        a, b = self.to_dict(), other.to_dict()
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


_MISSING = object()
TaskMetadata.model_rebuild()
