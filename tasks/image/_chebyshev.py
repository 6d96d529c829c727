"""Two-dimensional Chebyshev polynomials over a pixel box, shared by spatially varying PSFs and kernels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table
from numpy.polynomial import chebyshev

from .geom import Box2I

__all__ = ["SpatialImageStack", "chebyshev_terms", "n_chebyshev_terms", "normalize_to_box", "term_orders"]


def n_chebyshev_terms(degree: int) -> int:
    """Number of 2-D terms of total degree <= ``degree``: ``(degree + 1) * (degree + 2) // 2``."""
    if degree < 0:
        raise ValueError(f"polynomial degree must be >= 0, got {degree}.")
    return (degree + 1) * (degree + 2) // 2


def term_orders(degree: int) -> list[tuple[int, int]]:
    """The (x order, y order) of each 2-D term of total degree <= ``degree``, in `chebyshev_terms` order."""
    n_chebyshev_terms(degree)
    return [(d - j, j) for d in range(degree + 1) for j in range(d + 1)]


def normalize_to_box(x: Any, y: Any, bbox: Box2I) -> tuple[np.ndarray, np.ndarray]:
    """Map parent pixel coordinates to [-1, 1] over the pixel-edge extent of ``bbox``.

    The outer pixel edges ``x0 - 0.5`` and ``x1 - 0.5`` map to -1 and +1 (likewise in y).
    """
    cx, cy = bbox.center
    half_w = max(bbox.width, 1) / 2.0
    half_h = max(bbox.height, 1) / 2.0
    return (np.asarray(x, dtype=float) - cx) / half_w, (np.asarray(y, dtype=float) - cy) / half_h


def chebyshev_terms(x: Any, y: Any, degree: int, bbox: Box2I) -> np.ndarray:
    """Evaluate the 2-D Chebyshev basis ``T_i(x') T_j(y')`` with ``i + j <= degree``.

    Parameters
    ----------
    x, y : `float` or `numpy.ndarray`
        Parent pixel coordinates; arrays broadcast together to shape ``S``.
    degree : `int`
        Maximum total degree (>= 0).
    bbox : `Box2I`
        Box whose pixel-edge extent is normalised to [-1, 1] (see `normalize_to_box`).

    Returns
    -------
    terms : `numpy.ndarray`, shape (n_terms,) + S, float64
        Terms ordered by total degree, then by increasing power of y:
        ``1, T1(x), T1(y), T2(x), T1(x)T1(y), T2(y), ...``; ``n_terms = (degree + 1)(degree + 2) / 2``.
    """
    n_chebyshev_terms(degree)
    xn, yn = np.broadcast_arrays(*normalize_to_box(x, y, bbox))
    shape = xn.shape
    # Rows T_0..T_degree evaluated at every point: shape (degree + 1, n_points).
    tx = chebyshev.chebvander(xn.ravel(), degree).T
    ty = chebyshev.chebvander(yn.ravel(), degree).T
    terms = np.stack([tx[i] * ty[j] for i, j in term_orders(degree)], axis=0)
    return terms.reshape((terms.shape[0],) + shape)


@dataclass(frozen=True, eq=False)
class SpatialImageStack:
    """A stack of images whose amplitudes are 2-D Chebyshev polynomials over a box.

    ``image(x, y) = sum_i a_i(x, y) images[i]`` with ``a_i(x, y) = sum_t coefficients[i, t] T_t(x, y)`` and
    ``T_t`` the terms of `chebyshev_terms`.  The model of `LinearCombinationKernel` and `PcaPsf`, which
    validate the arrays and hold them as attributes; this class only views them (no copies, no checks).

    Parameters
    ----------
    images : `numpy.ndarray`, shape (n, h, w), float64
        The images, indexed [i, y, x].
    coefficients : `numpy.ndarray`, shape (n, n_terms), float64
        Chebyshev coefficients of each image's amplitude; ``n_terms = (degree + 1)(degree + 2) / 2``.
    degree : `int`
        Total degree of the spatial polynomials.
    bbox : `Box2I`
        Domain in parent pixel coordinates (normalised to [-1, 1]).
    """

    images: np.ndarray
    coefficients: np.ndarray
    degree: int
    bbox: Box2I

    def amplitudes(self, x: Any, y: Any) -> np.ndarray:
        """Amplitudes ``a_i(x, y)`` at parent position(s); shape (n,) + broadcast shape of x, y."""
        return np.tensordot(self.coefficients, chebyshev_terms(x, y, self.degree, self.bbox), axes=1)

    def image(self, x: float, y: float) -> np.ndarray:
        """The combination ``sum_i a_i(x, y) images[i]`` at one parent position, shape (h, w), not normalised."""
        return np.tensordot(self.amplitudes(float(x), float(y)), self.images, axes=1)

    def to_table(self, images_column: str) -> Table:
        """A FITS-compatible table: columns ``images_column`` and ``coefficients`` (one row per image), and
        meta keys DEGREE, BBOX_X0, BBOX_Y0, BBOX_W, BBOX_H.
        """
        table = Table({images_column: self.images, "coefficients": self.coefficients})
        table.meta.update(
            {
                "DEGREE": self.degree,
                "BBOX_X0": self.bbox.x0,
                "BBOX_Y0": self.bbox.y0,
                "BBOX_W": self.bbox.width,
                "BBOX_H": self.bbox.height,
            }
        )
        return table

    @classmethod
    def from_table(cls, table: Table, images_column: str) -> SpatialImageStack:
        """Inverse of `to_table` (arrays converted to float64)."""
        meta = table.meta
        return cls(
            np.asarray(table[images_column], dtype=np.float64),
            np.asarray(table["coefficients"], dtype=np.float64),
            int(meta["DEGREE"]),
            Box2I(int(meta["BBOX_X0"]), int(meta["BBOX_Y0"]), int(meta["BBOX_W"]), int(meta["BBOX_H"])),
        )

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, SpatialImageStack):
            return NotImplemented
        return (
            self.degree == other.degree
            and self.bbox == other.bbox
            and np.array_equal(self.images, other.images)
            and np.array_equal(self.coefficients, other.coefficients)
        )

    __hash__ = None  # type: ignore[assignment]
