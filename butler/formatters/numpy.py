"""Formatter of numpy arrays as ``.npy`` files (never pickled)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatterError
from . import Formatter

__all__ = ["NpyFormatter"]


class NpyFormatter(Formatter):
    """An N-dimensional `numpy.ndarray` as a ``.npy`` file (``allow_pickle=False`` both ways).

    Read parameters: ``slice`` (a `slice` or a tuple of slices/integers, as used in ``array[...]``):
    read only that part, through a memory map, so the rest of the file is not loaded.
    """

    extension = ".npy"
    supported_parameters = frozenset({"slice"})

    def write(self, obj: Any, path: Path) -> None:
        """Write an array.

        Raises
        ------
        FormatterError
            If the array has an object dtype (it would need pickling) or is a masked array (its
            mask would be lost).
        """
        if isinstance(obj, np.ma.MaskedArray):
            raise FormatterError(
                "cannot write a masked array as .npy (the mask would be lost); store the data and the "
                "mask as two datasets, or fill it with np.ma.filled()."
            )
        if obj.dtype.hasobject:
            raise FormatterError(
                f"cannot write an array of dtype {obj.dtype} as .npy without pickling Python objects; "
                "convert it to a numeric, bool or fixed-width string dtype."
            )
        with open(path, "wb") as stream:  # a file object: np.save would append ".npy" to a name
            np.save(stream, obj, allow_pickle=False)

    def read(
        self, path: Path, *, component: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> np.ndarray:
        """Read the array, or the part selected by ``parameters={"slice": ...}``.

        Raises
        ------
        FormatterError
            If the slice is not valid for the stored array's shape.
        """
        self.check_read_arguments(component, parameters)
        selection = (parameters or {}).get("slice")
        if selection is None:
            return np.load(path, allow_pickle=False)
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        try:
            return np.array(mapped[selection])
        except (IndexError, TypeError) as err:
            raise FormatterError(
                f"slice {selection!r} cannot be applied to the stored array of shape {mapped.shape}: {err}"
            ) from None
        finally:
            del mapped
