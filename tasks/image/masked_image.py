"""An image with its mask and variance planes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ImageError
from .geom import Box2I
from .mask import Mask

__all__ = ["MaskedImage"]


def _as_float32(array: Any, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ImageError(f"the {what} must be 2-D (ny, nx), got shape {array.shape}.")
    if array.dtype != np.float32:
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise ImageError(f"the {what} must be numeric, got dtype {array.dtype}.")
        array = array.astype(np.float32)
    return array


class MaskedImage:
    """An image, its mask and its variance, sharing one pixel grid in parent coordinates.

    Parameters
    ----------
    image : `numpy.ndarray`, shape (ny, nx)
        Pixel values (counts before calibration, nJy after).  A float32 array is used without copying;
        other numeric types are converted to float32.
    mask : `Mask` or `numpy.ndarray` of int, shape (ny, nx), optional
        Mask planes; default all zero with the default planes.  A `Mask` is shared, not copied.
    variance : `numpy.ndarray`, shape (ny, nx), optional
        Per-pixel variance in the image's units squared; default all zero.
    xy0 : `tuple` [`int`, `int`], optional
        Parent pixel coordinates (x0, y0) of ``image[0, 0]``; the mask is re-labelled to the same origin.

    Raises
    ------
    ImageError
        If the planes are not 2-D or their shapes differ.
    """

    __slots__ = ("_image", "_mask", "_variance", "_xy0")

    def __init__(
        self,
        image: np.ndarray,
        mask: Mask | np.ndarray | None = None,
        variance: np.ndarray | None = None,
        *,
        xy0: tuple[int, int] = (0, 0),
    ) -> None:
        self._image = _as_float32(image, "image")
        self._xy0 = (int(xy0[0]), int(xy0[1]))
        shape = self._image.shape
        if mask is None:
            mask = Mask(shape, xy0=self._xy0)
        elif isinstance(mask, Mask):
            if mask.xy0 != self._xy0:
                mask = Mask._view(mask.array, mask.planes, self._xy0)
        else:
            mask = Mask(mask, xy0=self._xy0)
        if mask.shape != shape:
            raise ImageError(f"mask shape {mask.shape} differs from image shape {shape}.")
        self._mask = mask
        if variance is None:
            variance = np.zeros(shape, dtype=np.float32)
        variance = _as_float32(variance, "variance")
        if variance.shape != shape:
            raise ImageError(f"variance shape {variance.shape} differs from image shape {shape}.")
        self._variance = variance

    @classmethod
    def from_bbox(cls, bbox: Box2I, *, planes: dict[str, int] | None = None) -> MaskedImage:
        """An all-zero masked image covering ``bbox`` (parent coordinates)."""
        return cls(np.zeros(bbox.shape, dtype=np.float32), Mask(bbox.shape, planes, xy0=bbox.xy0), xy0=bbox.xy0)

    # ------------------------------------------------------------------ planes
    @property
    def image(self) -> np.ndarray:
        """float32 pixel values, shape (ny, nx), indexed [y, x]."""
        return self._image

    @image.setter
    def image(self, value: np.ndarray) -> None:
        self._image[...] = value

    @property
    def mask(self) -> Mask:
        """The mask planes."""
        return self._mask

    @property
    def variance(self) -> np.ndarray:
        """float32 per-pixel variance, shape (ny, nx)."""
        return self._variance

    @variance.setter
    def variance(self, value: np.ndarray) -> None:
        self._variance[...] = value

    @property
    def xy0(self) -> tuple[int, int]:
        """Parent pixel coordinates (x0, y0) of ``image[0, 0]``."""
        return self._xy0

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape (ny, nx)."""
        return self._image.shape  # type: ignore[return-value]

    @property
    def bbox(self) -> Box2I:
        """The parent-coordinate pixel box covered by the image."""
        return Box2I.from_shape(self._image.shape, self._xy0)

    # ------------------------------------------------------------------ views and copies
    def __getitem__(self, box: Box2I) -> MaskedImage:
        """A view of the pixels in ``box`` (parent coordinates); writes go to this image.

        Raises
        ------
        ValueError
            If ``box`` is not contained in `bbox`.
        """
        if not isinstance(box, Box2I):
            raise TypeError(f"index a MaskedImage with a Box2I in parent coordinates, got {type(box).__name__}.")
        slices = box.slices(self.bbox)
        return MaskedImage(self._image[slices], self._mask[box], self._variance[slices], xy0=box.xy0)

    def copy(self) -> MaskedImage:
        """A deep copy of the three planes."""
        return MaskedImage(self._image.copy(), self._mask.copy(), self._variance.copy(), xy0=self._xy0)

    def __repr__(self) -> str:
        return f"MaskedImage(shape={self.shape}, xy0={self._xy0})"
