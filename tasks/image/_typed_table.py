"""Tables that name the subclass that wrote them, so a base class can rebuild any subclass (PSFs, kernels)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from astropy.table import Table

from ..errors import ImageError

__all__ = ["from_typed_table"]


def from_typed_table(table: Table, key: str, registry: Mapping[str, type], base: type, cls: type, what: str) -> Any:
    """Rebuild an object with ``target._from_table(table)``, ``target`` being ``registry[table.meta[key]]``.

    Parameters
    ----------
    table : `astropy.table.Table`
        A table written by ``to_table`` of a ``base`` subclass; ``meta[key]`` names the subclass.
    key : `str`
        Meta key of the type name (``"PSFTYPE"``, ``"KERNTYPE"``).
    registry : mapping [`str`, `type`]
        Type names and the ``base`` subclasses they stand for.
    base : `type`
        The root class (``Psf``, ``Kernel``).
    cls : `type`
        The class ``from_table`` was called on: the table must hold a ``cls`` unless ``cls`` is ``base``.
    what : `str`
        Name of the model in error messages (``"PSF"``, ``"kernel"``).

    Raises
    ------
    ImageError
        If the table has no or an unknown type, or holds a subclass that is not a ``cls``.
    """
    kind = table.meta.get(key)
    target = registry.get(kind) if isinstance(kind, str) else None
    if target is None:
        raise ImageError(f"unknown {what} table type {kind!r}; known types: {sorted(registry)}.")
    if cls is not base and not issubclass(target, cls):
        raise ImageError(f"table holds a {target.__name__}, not a {cls.__name__}.")
    return target._from_table(table)  # type: ignore[attr-defined]
