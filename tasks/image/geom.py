"""Integer pixel boxes in parent coordinates.

Pixel ``(x, y)`` has its centre at integer coordinates and covers ``[x - 0.5, x + 0.5)``; a box covers the
pixels ``x0 <= x < x1`` and ``y0 <= y < y1``.  Arrays holding a box's pixels are indexed ``[y, x]`` and have
shape ``(height, width)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Box2I"]


@dataclass(frozen=True, slots=True)
class Box2I:
    """An integer pixel box in parent coordinates.

    Parameters
    ----------
    x0, y0 : `int`
        Parent coordinates of the first (lower-left) pixel [pixels].
    width, height : `int`
        Number of pixels along x and y; >= 0.  A box with zero width or height is empty.

    Raises
    ------
    ValueError
        If ``width`` or ``height`` is negative.
    """

    x0: int
    y0: int
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "width", "height"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                if isinstance(value, (float, np.floating)) and float(value).is_integer():
                    value = int(value)
                else:
                    raise ValueError(f"Box2I.{name} must be an integer, got {value!r}.")
            object.__setattr__(self, name, int(value))
        if self.width < 0 or self.height < 0:
            raise ValueError(f"Box2I width and height must be >= 0, got width={self.width}, height={self.height}.")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_shape(cls, shape: tuple[int, ...], xy0: tuple[int, int] = (0, 0)) -> Box2I:
        """Make the box of an array of ``shape`` (ny, nx) whose first pixel is at parent ``xy0`` (x0, y0)."""
        if len(shape) < 2:
            raise ValueError(f"Box2I.from_shape needs a 2-D shape (ny, nx), got {tuple(shape)!r}.")
        return cls(int(xy0[0]), int(xy0[1]), int(shape[-1]), int(shape[-2]))

    @classmethod
    def from_corners(cls, x_min: int, y_min: int, x_max: int, y_max: int) -> Box2I:
        """Make the box spanning pixels ``x_min..x_max`` and ``y_min..y_max`` (inclusive maxima).

        A maximum below its minimum gives an empty box.
        """
        return cls(int(x_min), int(y_min), max(int(x_max) - int(x_min) + 1, 0), max(int(y_max) - int(y_min) + 1, 0))

    # ------------------------------------------------------------------ properties
    @property
    def x1(self) -> int:
        """Exclusive end along x [pixels]."""
        return self.x0 + self.width

    @property
    def y1(self) -> int:
        """Exclusive end along y [pixels]."""
        return self.y0 + self.height

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(height, width)`` of the box's pixels."""
        return (self.height, self.width)

    @property
    def xy0(self) -> tuple[int, int]:
        """Parent coordinates ``(x0, y0)`` of the first pixel."""
        return (self.x0, self.y0)

    @property
    def is_empty(self) -> bool:
        """True when the box holds no pixel."""
        return self.width == 0 or self.height == 0

    @property
    def area(self) -> int:
        """Number of pixels in the box."""
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        """Geometric centre ``(x, y)`` in parent pixel coordinates (float)."""
        return (self.x0 + (self.width - 1) / 2.0, self.y0 + (self.height - 1) / 2.0)

    # ------------------------------------------------------------------ predicates and set operations
    def contains(self, other: Box2I) -> bool:
        """True when every pixel of ``other`` is in this box (an empty box is contained in any box)."""
        if other.is_empty:
            return True
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1

    def contains_point(self, x: Any, y: Any) -> Any:
        """True where the point ``(x, y)`` [parent pixels] lies inside the box's pixel edges.

        Parameters
        ----------
        x, y : `float` or `numpy.ndarray`
            Parent pixel coordinates; arrays broadcast together.

        Returns
        -------
        inside : `bool` or `numpy.ndarray` of bool
            True for points with ``x0 - 0.5 <= x < x1 - 0.5`` (likewise in y).
        """
        xa = np.asarray(x, dtype=float)
        ya = np.asarray(y, dtype=float)
        result = (xa >= self.x0 - 0.5) & (xa < self.x1 - 0.5) & (ya >= self.y0 - 0.5) & (ya < self.y1 - 0.5)
        return bool(result) if result.ndim == 0 else result

    def intersection(self, other: Box2I) -> Box2I:
        """The pixels common to both boxes; an empty box at this box's origin when they are disjoint."""
        x0 = max(self.x0, other.x0)
        y0 = max(self.y0, other.y0)
        x1 = min(self.x1, other.x1)
        y1 = min(self.y1, other.y1)
        if x1 <= x0 or y1 <= y0:
            return Box2I(self.x0, self.y0, 0, 0)
        return Box2I(x0, y0, x1 - x0, y1 - y0)

    def union(self, other: Box2I) -> Box2I:
        """The smallest box containing both boxes (empty boxes are ignored)."""
        if other.is_empty:
            return self
        if self.is_empty:
            return other
        x0 = min(self.x0, other.x0)
        y0 = min(self.y0, other.y0)
        return Box2I(x0, y0, max(self.x1, other.x1) - x0, max(self.y1, other.y1) - y0)

    def dilated(self, n: int) -> Box2I:
        """The box grown by ``n`` pixels on every side (``n < 0`` shrinks it, down to empty)."""
        n = int(n)
        return Box2I(self.x0 - n, self.y0 - n, max(self.width + 2 * n, 0), max(self.height + 2 * n, 0))

    def shifted(self, dx: int, dy: int) -> Box2I:
        """The box moved by ``(dx, dy)`` pixels."""
        return Box2I(self.x0 + int(dx), self.y0 + int(dy), self.width, self.height)

    def slices(self, parent: Box2I) -> tuple[slice, slice]:
        """Slices ``(slice_y, slice_x)`` selecting this box from an array that covers ``parent``.

        Raises
        ------
        ValueError
            If this box is not contained in ``parent``.
        """
        if not parent.contains(self):
            raise ValueError(f"{self} is not contained in {parent}; intersect the boxes first.")
        return (
            slice(self.y0 - parent.y0, self.y1 - parent.y0),
            slice(self.x0 - parent.x0, self.x1 - parent.x0),
        )

    def corners(self) -> np.ndarray:
        """Pixel-edge corners as a (4, 2) float array of ``(x, y)``.

        Order: ``(x0, y0), (x1, y0), (x1, y1), (x0, y1)`` with every coordinate offset by -0.5 so the
        corners lie on the outer pixel edges.
        """
        return np.array(
            [
                [self.x0 - 0.5, self.y0 - 0.5],
                [self.x1 - 0.5, self.y0 - 0.5],
                [self.x1 - 0.5, self.y1 - 0.5],
                [self.x0 - 0.5, self.y1 - 0.5],
            ],
            dtype=float,
        )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, int]:
        """JSON-safe representation."""
        return {"x0": self.x0, "y0": self.y0, "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Box2I:
        """Inverse of `to_dict`."""
        return cls(int(data["x0"]), int(data["y0"]), int(data["width"]), int(data["height"]))

    def __str__(self) -> str:
        return f"Box2I(x={self.x0}..{self.x1 - 1}, y={self.y0}..{self.y1 - 1}, shape={self.shape})"
