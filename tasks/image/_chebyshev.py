"""Two-dimensional Chebyshev polynomials over a pixel box, shared by spatially varying PSFs and kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.polynomial import chebyshev

from .geom import Box2I

__all__ = ["chebyshev_terms", "n_chebyshev_terms", "normalize_to_box"]


def n_chebyshev_terms(degree: int) -> int:
    """Number of 2-D terms of total degree <= ``degree``: ``(degree + 1) * (degree + 2) // 2``."""
    if degree < 0:
        raise ValueError(f"polynomial degree must be >= 0, got {degree}.")
    return (degree + 1) * (degree + 2) // 2


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
    terms = np.stack([tx[d - j] * ty[j] for d in range(degree + 1) for j in range(d + 1)], axis=0)
    return terms.reshape((terms.shape[0],) + shape)
