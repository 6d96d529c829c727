"""Convolution kernels: fixed images and spatially varying linear combinations of basis images.

Kernel images are float64, odd-sized, indexed [y, x] and centred on their central pixel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from astropy.table import Table

from ..errors import ImageError
from ._chebyshev import SpatialImageStack, n_chebyshev_terms
from ._typed_table import from_typed_table
from .geom import Box2I

__all__ = ["FixedKernel", "Kernel", "LinearCombinationKernel"]


def _check_shape(shape: tuple[int, ...], what: str) -> None:
    h, w = shape[-2:]
    if h < 1 or w < 1 or h % 2 == 0 or w % 2 == 0:
        raise ImageError(f"{what} must have odd, positive dimensions (h, w), got {shape[-2:]}.")


class Kernel(ABC):
    """A convolution kernel, possibly varying over the image.

    Subclasses set ``KERNEL_TYPE`` and implement `compute_image`, `kernel_sum`, `_to_table` and `_from_table`;
    they are registered for `Kernel.from_table` automatically.
    """

    KERNEL_TYPE: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Kernel]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.KERNEL_TYPE:
            Kernel._registry[cls.KERNEL_TYPE] = cls

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]:
        """Kernel image shape (h, w), both odd."""

    @abstractmethod
    def compute_image(self, x: float = 0.0, y: float = 0.0, normalize: bool = False) -> np.ndarray:
        """The kernel at parent position (x, y).

        Parameters
        ----------
        x, y : `float`, optional
            Parent pixel coordinates [pixels] (ignored by spatially constant kernels).
        normalize : `bool`, optional
            Divide by the kernel sum so the image sums to 1.

        Returns
        -------
        image : `numpy.ndarray`, shape `shape`, float64
        """

    @abstractmethod
    def kernel_sum(self, x: Any = 0.0, y: Any = 0.0) -> Any:
        """Sum of the kernel image at parent position(s) (x, y); arrays broadcast and give an array."""

    @staticmethod
    def _normalized(image: np.ndarray, x: float, y: float) -> np.ndarray:
        total = image.sum()
        if not abs(total) > 1e-300:
            raise ImageError(f"kernel at ({x}, {y}) sums to {total}; cannot normalise it.")
        return image / total

    def to_table(self) -> Table:
        """The kernel as an astropy table with ``meta["KERNTYPE"]`` naming the class (FITS compatible)."""
        table = self._to_table()
        table.meta["KERNTYPE"] = self.KERNEL_TYPE
        return table

    @classmethod
    def from_table(cls, table: Table) -> Kernel:
        """Rebuild a kernel written by `to_table`, dispatching on ``meta["KERNTYPE"]``.

        Raises
        ------
        ImageError
            If the table has no or an unknown KERNTYPE.
        """
        return from_typed_table(table, "KERNTYPE", Kernel._registry, Kernel, cls, "kernel")

    @abstractmethod
    def _to_table(self) -> Table: ...

    @classmethod
    @abstractmethod
    def _from_table(cls, table: Table) -> Kernel: ...


class FixedKernel(Kernel):
    """A kernel that is the same image everywhere.

    Parameters
    ----------
    array : `numpy.ndarray`, shape (h, w)
        Kernel image (copied to float64); h and w odd.
    """

    KERNEL_TYPE = "FIXED"

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.array(array, dtype=np.float64)
        if self.array.ndim != 2:
            raise ImageError(f"FixedKernel needs a 2-D array, got shape {self.array.shape}.")
        _check_shape(self.array.shape, "FixedKernel")

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]

    def compute_image(self, x: float = 0.0, y: float = 0.0, normalize: bool = False) -> np.ndarray:
        return self._normalized(self.array, x, y) if normalize else self.array.copy()

    def kernel_sum(self, x: Any = 0.0, y: Any = 0.0) -> Any:
        total = float(self.array.sum())
        shape = np.broadcast(np.asarray(x), np.asarray(y)).shape
        return total if shape == () else np.full(shape, total)

    def _to_table(self) -> Table:
        return Table({"image": self.array[None]})

    @classmethod
    def _from_table(cls, table: Table) -> FixedKernel:
        return cls(np.asarray(table["image"][0], dtype=np.float64))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, FixedKernel):
            return NotImplemented
        return np.array_equal(self.array, other.array)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FixedKernel(shape={self.shape}, sum={self.array.sum():.6g})"


class LinearCombinationKernel(Kernel):
    """A spatially varying kernel: ``K(x, y) = sum_i c_i(x, y) basis_i``.

    ``c_i(x, y) = sum_t spatial_coefficients[i, t] T_t(x, y)`` with ``T_t`` the 2-D Chebyshev terms of total
    degree <= ``spatial_degree`` over ``bbox`` (the same terms as `PcaPsf`; see `chebyshev_terms`).

    Parameters
    ----------
    basis : `numpy.ndarray`, shape (n_basis, h, w)
        Basis kernel images; h and w odd.
    spatial_coefficients : `numpy.ndarray`, shape (n_basis, n_terms)
        Chebyshev coefficients of each basis amplitude; ``n_terms = (degree + 1)(degree + 2) / 2``.
    spatial_degree : `int`
        Total degree of the spatial polynomials.
    bbox : `Box2I`
        Domain in parent pixel coordinates (normalised to [-1, 1]).

    Raises
    ------
    ImageError
        If the shapes are inconsistent.
    """

    KERNEL_TYPE = "LINCOMB"

    def __init__(self, basis: np.ndarray, spatial_coefficients: np.ndarray, spatial_degree: int, bbox: Box2I) -> None:
        self.basis = np.array(basis, dtype=np.float64)
        self.spatial_coefficients = np.array(spatial_coefficients, dtype=np.float64)
        self.spatial_degree = int(spatial_degree)
        self.bbox = bbox
        if self.basis.ndim != 3 or len(self.basis) == 0:
            raise ImageError(f"LinearCombinationKernel basis must have shape (n_basis, h, w), got {self.basis.shape}.")
        _check_shape(self.basis.shape, "LinearCombinationKernel basis")
        n_terms = n_chebyshev_terms(self.spatial_degree)
        if self.spatial_coefficients.ndim == 1 and n_terms == 1:
            self.spatial_coefficients = self.spatial_coefficients[:, None]
        if self.spatial_coefficients.shape != (len(self.basis), n_terms):
            raise ImageError(
                "LinearCombinationKernel spatial_coefficients must have shape (n_basis, n_terms) = "
                f"({len(self.basis)}, {n_terms}) for spatial_degree {self.spatial_degree}, "
                f"got {self.spatial_coefficients.shape}."
            )
        if bbox.is_empty:
            raise ImageError("LinearCombinationKernel bbox must not be empty.")
        self._basis_sums = self.basis.sum(axis=(1, 2))

    @property
    def shape(self) -> tuple[int, int]:
        return self.basis.shape[1:]  # type: ignore[return-value]

    @property
    def n_basis(self) -> int:
        """Number of basis images."""
        return len(self.basis)

    @property
    def _stack(self) -> SpatialImageStack:
        return SpatialImageStack(self.basis, self.spatial_coefficients, self.spatial_degree, self.bbox)

    def basis_coefficients(self, x: Any, y: Any) -> np.ndarray:
        """Amplitudes ``c_i(x, y)`` at parent position(s); shape (n_basis,) + broadcast shape of x, y."""
        return self._stack.amplitudes(x, y)

    def compute_image(self, x: float = 0.0, y: float = 0.0, normalize: bool = False) -> np.ndarray:
        image = self._stack.image(x, y)
        return self._normalized(image, x, y) if normalize else image

    def kernel_sum(self, x: Any = 0.0, y: Any = 0.0) -> Any:
        total = np.tensordot(self._basis_sums, self.basis_coefficients(x, y), axes=1)
        return float(total) if np.ndim(total) == 0 else total

    def _to_table(self) -> Table:
        return self._stack.to_table("basis")

    @classmethod
    def _from_table(cls, table: Table) -> LinearCombinationKernel:
        stack = SpatialImageStack.from_table(table, "basis")
        return cls(stack.images, stack.coefficients, stack.degree, stack.bbox)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, LinearCombinationKernel):
            return NotImplemented
        return self._stack == other._stack

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n, h, w = self.basis.shape
        return f"LinearCombinationKernel({n} basis images of {h}x{w}, spatial_degree={self.spatial_degree})"
