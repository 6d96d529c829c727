"""Integer masks with named bit planes, as the LSST stack writes them (int32, ``MP_<NAME>`` header keys)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import ImageError, MaskPlaneError
from .geom import Box2I

__all__ = ["Mask"]

_MAX_PLANES = 31  # bit 31 is the sign bit of int32; the LSST stack never uses it


class Mask:
    """A 2-D integer mask whose bits are named planes.

    Parameters
    ----------
    array_or_shape : `numpy.ndarray` of int, shape (ny, nx), or `tuple` (ny, nx)
        Mask values; an int32 array is used without copying (so a `Mask` can wrap a view), any other
        integer array is converted to int32.  A shape makes an all-zero mask.
    planes : `Mapping` [`str`, `int`], optional
        Plane name -> bit index (0..30).  Default: `DEFAULT_PLANES` at bits 0..8.
    xy0 : `tuple` [`int`, `int`], optional
        Parent pixel coordinates (x0, y0) of ``array[0, 0]``.

    Raises
    ------
    ImageError
        If the array is not 2-D or not of an integer type.
    MaskPlaneError
        If a plane's bit index is outside 0..30 or two planes share a bit.

    Notes
    -----
    Views made by ``mask[box]`` share both the pixel array and the plane dictionary with their parent, so a
    plane added to one is known to the other.
    """

    DEFAULT_PLANES: tuple[str, ...] = (
        "BAD",
        "SAT",
        "INTRP",
        "CR",
        "EDGE",
        "DETECTED",
        "DETECTED_NEGATIVE",
        "SUSPECT",
        "NO_DATA",
    )

    __slots__ = ("_array", "_planes", "_xy0")

    def __init__(
        self,
        array_or_shape: np.ndarray | tuple[int, int],
        planes: Mapping[str, int] | None = None,
        *,
        xy0: tuple[int, int] = (0, 0),
    ) -> None:
        if isinstance(array_or_shape, tuple) and all(isinstance(n, (int, np.integer)) for n in array_or_shape):
            array = np.zeros(array_or_shape, dtype=np.int32)
        else:
            array = np.asarray(array_or_shape)
            if array.dtype == bool:
                array = array.astype(np.int32)
            if not np.issubdtype(array.dtype, np.integer):
                raise ImageError(
                    f"a Mask needs an integer array, got dtype {array.dtype}; cast it with astype(np.int32)."
                )
            if array.dtype != np.int32:
                array = array.astype(np.int32)
        if array.ndim != 2:
            raise ImageError(f"a Mask must be 2-D (ny, nx), got shape {array.shape}.")
        self._array = array
        self._planes = self._check_planes(
            {name: i for i, name in enumerate(self.DEFAULT_PLANES)} if planes is None else dict(planes)
        )
        self._xy0 = (int(xy0[0]), int(xy0[1]))

    @classmethod
    def _view(cls, array: np.ndarray, planes: dict[str, int], xy0: tuple[int, int]) -> Mask:
        """Wrap ``array`` sharing ``planes`` (no checks, no copies)."""
        mask = cls.__new__(cls)
        mask._array = array
        mask._planes = planes
        mask._xy0 = (int(xy0[0]), int(xy0[1]))
        return mask

    @staticmethod
    def _check_planes(planes: dict[str, int]) -> dict[str, int]:
        seen: dict[int, str] = {}
        for name, bit in planes.items():
            bit = int(bit)
            if not 0 <= bit < _MAX_PLANES:
                raise MaskPlaneError(f"mask plane {name!r} has bit {bit}; bits must be in 0..{_MAX_PLANES - 1}.")
            if bit in seen:
                raise MaskPlaneError(f"mask planes {seen[bit]!r} and {name!r} both use bit {bit}.")
            seen[bit] = name
            planes[name] = bit
        return planes

    # ------------------------------------------------------------------ properties
    @property
    def array(self) -> np.ndarray:
        """The int32 mask values, shape (ny, nx), indexed [y, x]."""
        return self._array

    @array.setter
    def array(self, value: np.ndarray) -> None:
        self._array[...] = value

    @property
    def planes(self) -> dict[str, int]:
        """Plane name -> bit index (shared with views; modify through `add_plane`)."""
        return self._planes

    @property
    def xy0(self) -> tuple[int, int]:
        """Parent pixel coordinates (x0, y0) of ``array[0, 0]``."""
        return self._xy0

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape (ny, nx)."""
        return self._array.shape  # type: ignore[return-value]

    @property
    def bbox(self) -> Box2I:
        """The parent-coordinate pixel box covered by the mask."""
        return Box2I.from_shape(self._array.shape, self._xy0)

    # ------------------------------------------------------------------ planes
    def add_plane(self, name: str) -> int:
        """Add a plane (no-op if it exists) and return its bit index.

        Raises
        ------
        MaskPlaneError
            If all 31 bits are already in use.
        """
        if name in self._planes:
            return self._planes[name]
        used = set(self._planes.values())
        for bit in range(_MAX_PLANES):
            if bit not in used:
                self._planes[name] = bit
                return bit
        raise MaskPlaneError(
            f"cannot add mask plane {name!r}: all {_MAX_PLANES} bits are used by {sorted(self._planes)}; "
            "remove unused planes first."
        )

    def _bit(self, name: str) -> int:
        try:
            return self._planes[name]
        except KeyError:
            raise MaskPlaneError(
                f"unknown mask plane {name!r}; known planes: {', '.join(sorted(self._planes, key=self._planes.get))}. "
                "Add it with Mask.add_plane(name)."
            ) from None

    def get_plane_bitmask(self, names: str | Iterable[str], *, missing_ok: bool = False) -> int:
        """The OR of the bits of the named planes.

        Parameters
        ----------
        names : `str` or iterable of `str`
            One plane name or several.
        missing_ok : `bool`, optional
            Ignore names that are not planes of this mask (a configured list of bad planes, of which a
            given mask may have only some); 0 when none is.

        Raises
        ------
        MaskPlaneError
            If a name is not a plane of this mask and not ``missing_ok`` (the message lists the known planes).
        """
        if isinstance(names, str):
            names = (names,)
        bitmask = 0
        for name in names:
            if missing_ok and name not in self._planes:
                continue
            bitmask |= 1 << self._bit(name)
        return bitmask

    def get_plane(self, name: str | Iterable[str], *, missing_ok: bool = False) -> np.ndarray:
        """Boolean array (ny, nx), True where the plane's bit (any of several planes' bits) is set.

        ``missing_ok`` ignores names that are not planes of this mask (see `get_plane_bitmask`).
        """
        return (self._array & np.int32(self.get_plane_bitmask(name, missing_ok=missing_ok))) != 0

    def set_plane(self, name: str, where: np.ndarray | Box2I | None = None) -> None:
        """Set a plane's bit on the selected pixels, adding the plane if it is new.

        Parameters
        ----------
        name : `str`
            Plane name.
        where : `numpy.ndarray` of bool, shape (ny, nx), or `Box2I`, optional
            Pixels to flag: a boolean array the shape of the mask, or a parent-coordinate box (clipped to
            the mask).  Default: every pixel.
        """
        bit = np.int32(1 << self.add_plane(name))
        if where is None:
            self._array |= bit
        elif isinstance(where, Box2I):
            box = where.intersection(self.bbox)
            if not box.is_empty:
                self._array[box.slices(self.bbox)] |= bit
        else:
            where = np.asarray(where, dtype=bool)
            if where.shape != self._array.shape:
                raise ImageError(f"set_plane({name!r}) needs a boolean array of shape {self.shape}, got {where.shape}.")
            self._array[where] |= bit

    def clear_plane(self, name: str) -> None:
        """Clear a plane's bit on every pixel (the plane stays defined)."""
        self._array &= np.int32(~(1 << self._bit(name)))

    def interpret(self, value: int) -> list[str]:
        """Names of the planes whose bits are set in ``value``, in bit order."""
        return [name for name, bit in sorted(self._planes.items(), key=lambda item: item[1]) if int(value) >> bit & 1]

    # ------------------------------------------------------------------ views and copies
    def __getitem__(self, box: Box2I) -> Mask:
        """A view of the pixels in ``box`` (parent coordinates), keeping parent coordinates."""
        if not isinstance(box, Box2I):
            raise TypeError(f"index a Mask with a Box2I in parent coordinates, got {type(box).__name__}.")
        return Mask._view(self._array[box.slices(self.bbox)], self._planes, box.xy0)

    def copy(self) -> Mask:
        """A deep copy (array and plane dictionary)."""
        return Mask._view(self._array.copy(), dict(self._planes), self._xy0)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self._xy0 == other._xy0 and self._planes == other._planes and np.array_equal(self._array, other._array)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Mask(shape={self.shape}, xy0={self._xy0}, planes={self._planes})"
