"""Point-spread function models: a Gaussian and a spatially varying pixelised PCA model.

A PSF maps a parent pixel position ``(x, y)`` to an image of a point source there.  Kernel images are odd-sized,
float64, normalised to unit sum and centred on their central pixel; `Psf.compute_image` shifts the kernel to
the sub-pixel position and returns it with its parent-coordinate box.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from astropy.table import Table
from scipy import ndimage

from ..errors import ImageError
from ._chebyshev import SpatialImageStack, chebyshev_terms, n_chebyshev_terms
from ._typed_table import from_typed_table
from .geom import Box2I

__all__ = ["GaussianPsf", "PcaPsf", "Psf", "adaptive_moments"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548


def adaptive_moments(
    image: np.ndarray, *, center: tuple[float, float] | None = None, max_iter: int = 50, tol: float = 1e-8
) -> tuple[float, float, float]:
    """Gaussian-weighted (adaptive) second moments of an image (Bernstein & Jarvis 2002, AJ 123, 583).

    Parameters
    ----------
    image : `numpy.ndarray`, shape (ny, nx)
        Postage stamp of a single source, background subtracted.
    center : `tuple` [`float`, `float`], optional
        Position (x, y) in array pixel coordinates; default the stamp's central pixel.
    max_iter : `int`, optional
        Maximum number of iterations.
    tol : `float`, optional
        Relative convergence tolerance on the moments.

    Returns
    -------
    ixx, iyy, ixy : `float`
        Second moments [pixels^2]; for a Gaussian they equal ``sigma**2, sigma**2, 0``.  Falls back to the
        unweighted moments if the iteration does not converge.
    """
    image = np.asarray(image, dtype=float)
    ny, nx = image.shape
    if center is None:
        center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    yy, xx = np.mgrid[0:ny, 0:nx]
    dx = xx - center[0]
    dy = yy - center[1]
    total = image.sum()
    if total <= 0:
        raise ImageError("cannot measure moments of an image whose sum is <= 0.")
    unweighted = (
        float((image * dx * dx).sum() / total),
        float((image * dy * dy).sum() / total),
        float((image * dx * dy).sum() / total),
    )
    m = np.array(unweighted)
    if not (m[0] > 0 and m[1] > 0 and m[0] * m[1] - m[2] ** 2 > 0):
        # Noise in the wings of a large stamp (e.g. a PCA PSF kernel) can make the unweighted moments useless:
        # start from the circular Gaussian of the same sum and peak (sigma^2 = sum / (2 pi peak)).
        peak = float(image.max())
        if not peak > 0:
            return unweighted
        s2 = total / (2.0 * math.pi * peak)
        m = np.array([s2, s2, 0.0])
    for _ in range(max_iter):
        det = m[0] * m[1] - m[2] ** 2
        if det <= 0:
            return unweighted
        # Weight exp(-r^T M^-1 r / 2) with the current estimate M.
        inv_xx, inv_yy, inv_xy = m[1] / det, m[0] / det, -m[2] / det
        weight = np.exp(-0.5 * (inv_xx * dx * dx + inv_yy * dy * dy + 2.0 * inv_xy * dx * dy)) * image
        norm = weight.sum()
        if norm <= 0:
            return unweighted
        # For a Gaussian profile the weighted moments are half the true ones when the weight matches.
        wm = np.array([(weight * dx * dx).sum(), (weight * dy * dy).sum(), (weight * dx * dy).sum()]) / norm
        new = 2.0 * wm
        # Combine with the weight: M_true^-1 = M_w^-1 - M^-1 (exact for Gaussians at any weight size).
        w_det = wm[0] * wm[1] - wm[2] ** 2
        if w_det > 0:
            a = np.array([[wm[1], -wm[2]], [-wm[2], wm[0]]]) / w_det - np.array([[inv_xx, inv_xy], [inv_xy, inv_yy]])
            if np.linalg.det(a) > 0 and a[0, 0] > 0:
                inv = np.linalg.inv(a)
                new = np.array([inv[0, 0], inv[1, 1], inv[0, 1]])
        if np.all(np.abs(new - m) <= tol * max(abs(m[0]), abs(m[1]))):
            return float(new[0]), float(new[1]), float(new[2])
        m = new
    return float(m[0]), float(m[1]), float(m[2])


class Psf(ABC):
    """A point-spread function model in parent pixel coordinates.

    Subclasses implement `compute_kernel_image`, `_to_table` and `_from_table` and set ``PSF_TYPE``; they are
    registered for `Psf.from_table` automatically.
    """

    PSF_TYPE: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Psf]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.PSF_TYPE:
            Psf._registry[cls.PSF_TYPE] = cls

    @abstractmethod
    def compute_kernel_image(self, x: float, y: float) -> np.ndarray:
        """The PSF at parent position (x, y), centred on the central pixel.

        Returns
        -------
        kernel : `numpy.ndarray`, shape (n, m), float64
            Odd-sized image normalised to unit sum.
        """

    def _default_position(self) -> tuple[float, float]:
        """Position used by `fwhm` when none is given (the centre of the model's domain)."""
        return (0.0, 0.0)

    def compute_image(self, x: float, y: float) -> tuple[np.ndarray, Box2I]:
        """The PSF image of a point source at parent position (x, y), shifted to its sub-pixel position.

        Parameters
        ----------
        x, y : `float`
            Parent pixel coordinates of the source [pixels].

        Returns
        -------
        image : `numpy.ndarray`, shape (n, m), float64
            PSF image, unit sum, whose centroid is (x, y) in parent coordinates.
        bbox : `Box2I`
            Parent-coordinate box of ``image``, centred on the pixel nearest (x, y).

        Notes
        -----
        The kernel image is shifted by the sub-pixel offset with a cubic B-spline interpolant
        (`scipy.ndimage.shift`, order 3) and renormalised to unit sum.
        """
        kernel = self.compute_kernel_image(x, y)
        ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
        dx, dy = x - ix, y - iy
        if dx or dy:
            shifted = ndimage.shift(kernel, (dy, dx), order=3, mode="constant", cval=0.0, prefilter=True)
            total = shifted.sum()
            kernel = shifted * (kernel.sum() / total) if total > 0 else shifted
        h, w = kernel.shape
        return kernel, Box2I(ix - w // 2, iy - h // 2, w, h)

    def compute_shape(self, x: float, y: float) -> tuple[float, float, float]:
        """Second moments (ixx, iyy, ixy) [pixels^2] of the PSF at (x, y), by adaptive moments."""
        return adaptive_moments(self.compute_kernel_image(x, y))

    def determinant_radius(self, x: float | None = None, y: float | None = None) -> float:
        """The Gaussian-equivalent sigma [pixels] ``(ixx iyy - ixy^2)^(1/4)`` of the PSF at (x, y).

        The position defaults to the centre of the model's domain; a degenerate shape gives 0 (and
        non-finite moments give NaN).
        """
        if x is None or y is None:
            dx, dy = self._default_position()
            x = dx if x is None else x
            y = dy if y is None else y
        ixx, iyy, ixy = self.compute_shape(x, y)
        return max(ixx * iyy - ixy * ixy, 0.0) ** 0.25

    def fwhm(self, x: float | None = None, y: float | None = None) -> float:
        """Full width at half maximum [pixels]: 2.3548 times the `determinant_radius`.

        The position defaults to the centre of the model's domain.
        """
        return FWHM_PER_SIGMA * self.determinant_radius(x, y)

    # ------------------------------------------------------------------ persistence
    def to_table(self) -> Table:
        """The model as an astropy table with ``meta["PSFTYPE"]`` naming the class (FITS compatible)."""
        table = self._to_table()
        table.meta["PSFTYPE"] = self.PSF_TYPE
        return table

    @classmethod
    def from_table(cls, table: Table) -> Psf:
        """Rebuild a PSF written by `to_table`, dispatching on ``meta["PSFTYPE"]``.

        Raises
        ------
        ImageError
            If the table has no or an unknown PSFTYPE.
        """
        return from_typed_table(table, "PSFTYPE", Psf._registry, Psf, cls, "PSF")

    @abstractmethod
    def _to_table(self) -> Table: ...

    @classmethod
    @abstractmethod
    def _from_table(cls, table: Table) -> Psf: ...


def _check_odd(width: int, height: int, what: str) -> None:
    if width < 1 or height < 1 or width % 2 == 0 or height % 2 == 0:
        raise ImageError(f"{what} dimensions must be odd and positive, got width={width}, height={height}.")


class GaussianPsf(Psf):
    """A circular Gaussian PSF, the same everywhere.

    Parameters
    ----------
    width, height : `int`
        Kernel image size [pixels]; odd.
    sigma : `float`
        Gaussian standard deviation [pixels]; > 0.
    """

    PSF_TYPE = "GAUSSIAN"

    def __init__(self, width: int, height: int, sigma: float) -> None:
        self.width = int(width)
        self.height = int(height)
        self.sigma = float(sigma)
        _check_odd(self.width, self.height, "GaussianPsf")
        if not self.sigma > 0:
            raise ImageError(f"GaussianPsf sigma must be > 0 pixels, got {self.sigma}.")

    def _gaussian(self, dx: float, dy: float) -> np.ndarray:
        ry, rx = self.height // 2, self.width // 2
        y = np.arange(-ry, ry + 1, dtype=float)[:, None] - dy
        x = np.arange(-rx, rx + 1, dtype=float)[None, :] - dx
        image = np.exp(-0.5 * (x * x + y * y) / self.sigma**2)
        return image / image.sum()

    def compute_kernel_image(self, x: float = 0.0, y: float = 0.0) -> np.ndarray:
        """The Gaussian sampled at pixel centres, shape (height, width), unit sum (independent of x, y)."""
        return self._gaussian(0.0, 0.0)

    def compute_image(self, x: float, y: float) -> tuple[np.ndarray, Box2I]:
        """The Gaussian sampled at pixel centres around (x, y) (evaluated exactly, no interpolation)."""
        ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
        image = self._gaussian(x - ix, y - iy)
        return image, Box2I(ix - self.width // 2, iy - self.height // 2, self.width, self.height)

    def compute_shape(self, x: float = 0.0, y: float = 0.0) -> tuple[float, float, float]:
        """Analytic moments ``(sigma**2, sigma**2, 0)`` [pixels^2]."""
        return (self.sigma**2, self.sigma**2, 0.0)

    def _to_table(self) -> Table:
        return Table(
            {
                "width": np.array([self.width], dtype=np.int64),
                "height": np.array([self.height], dtype=np.int64),
                "sigma": np.array([self.sigma], dtype=np.float64),
            }
        )

    @classmethod
    def _from_table(cls, table: Table) -> GaussianPsf:
        return cls(int(table["width"][0]), int(table["height"][0]), float(table["sigma"][0]))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, GaussianPsf):
            return NotImplemented
        return (self.width, self.height, self.sigma) == (other.width, other.height, other.sigma)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GaussianPsf(width={self.width}, height={self.height}, sigma={self.sigma})"


class PcaPsf(Psf):
    """A spatially varying pixelised PSF: a linear combination of component images.

    ``kernel(x, y) = sum_k P_k(x, y) component_k``, normalised to unit sum, where
    ``P_k(x, y) = sum_t coefficients[k, t] T_t(x, y)`` and ``T_t`` are the 2-D Chebyshev terms of total degree
    <= ``degree`` over ``bbox`` (see `chebyshev_terms`).

    Parameters
    ----------
    components : `numpy.ndarray`, shape (n_comp, h, w)
        Component images (e.g. the mean PSF and principal components); h and w odd.
    coefficients : `numpy.ndarray`, shape (n_comp, n_terms)
        Chebyshev coefficients of each component's amplitude; ``n_terms = (degree + 1)(degree + 2) / 2``.
    degree : `int`
        Total degree of the spatial polynomials.
    bbox : `Box2I`
        Domain of the model in parent pixel coordinates (normalised to [-1, 1]).

    Raises
    ------
    ImageError
        If the shapes are inconsistent.
    """

    PSF_TYPE = "PCA"

    def __init__(self, components: np.ndarray, coefficients: np.ndarray, degree: int, bbox: Box2I) -> None:
        self.components = np.array(components, dtype=np.float64)
        self.coefficients = np.array(coefficients, dtype=np.float64)
        self.degree = int(degree)
        self.bbox = bbox
        if self.components.ndim != 3:
            raise ImageError(f"PcaPsf components must have shape (n_comp, h, w), got {self.components.shape}.")
        n_comp, h, w = self.components.shape
        _check_odd(w, h, "PcaPsf component")
        n_terms = n_chebyshev_terms(self.degree)
        if self.coefficients.shape != (n_comp, n_terms):
            raise ImageError(
                f"PcaPsf coefficients must have shape (n_comp, n_terms) = ({n_comp}, {n_terms}) for degree "
                f"{self.degree}, got {self.coefficients.shape}."
            )
        if bbox.is_empty:
            raise ImageError("PcaPsf bbox must not be empty.")

    @classmethod
    def fit(
        cls,
        stamps: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        bbox: Box2I,
        *,
        n_components: int = 3,
        degree: int = 2,
    ) -> PcaPsf:
        """Fit a model to centred star stamps by principal components and polynomial amplitudes.

        Parameters
        ----------
        stamps : `numpy.ndarray`, shape (n_star, h, w)
            Background-subtracted star images centred on their central pixel; normalised to unit sum here.
        x, y : `numpy.ndarray`, shape (n_star,)
            Parent pixel positions of the stars.
        bbox : `Box2I`
            Domain of the model.
        n_components : `int`, optional
            Number of components (mean image plus ``n_components - 1`` principal components).
        degree : `int`, optional
            Total degree of the spatial polynomials; lowered automatically when there are too few stars.

        Returns
        -------
        psf : `PcaPsf`
        """
        stamps = np.asarray(stamps, dtype=float)
        if stamps.ndim != 3 or len(stamps) == 0:
            raise ImageError(f"PcaPsf.fit needs stamps of shape (n_star, h, w), got {stamps.shape}.")
        n_star, h, w = stamps.shape
        stamps = stamps / stamps.sum(axis=(1, 2), keepdims=True)
        flat = stamps.reshape(n_star, -1)
        mean = flat.mean(axis=0)
        n_pc = max(0, min(n_components - 1, n_star - 1))
        if n_pc:
            _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
            pcs = vt[:n_pc]
            amplitudes = (flat - mean) @ pcs.T  # (n_star, n_pc)
        else:
            pcs = np.zeros((0, h * w))
            amplitudes = np.zeros((n_star, 0))
        while degree > 0 and n_chebyshev_terms(degree) > n_star:
            degree -= 1
        terms = chebyshev_terms(np.asarray(x, float), np.asarray(y, float), degree, bbox).T  # (n_star, n_terms)
        coefficients = np.zeros((1 + n_pc, n_chebyshev_terms(degree)))
        coefficients[0, 0] = 1.0
        if n_pc:
            coefficients[1:] = np.linalg.lstsq(terms, amplitudes, rcond=None)[0].T
        components = np.concatenate([mean[None], pcs]).reshape(1 + n_pc, h, w)
        return cls(components, coefficients, degree, bbox)

    def _default_position(self) -> tuple[float, float]:
        return self.bbox.center

    @property
    def _stack(self) -> SpatialImageStack:
        return SpatialImageStack(self.components, self.coefficients, self.degree, self.bbox)

    def component_weights(self, x: float, y: float) -> np.ndarray:
        """Amplitudes ``P_k(x, y)`` of the components at a parent position, shape (n_comp,)."""
        return self._stack.amplitudes(float(x), float(y))

    def compute_kernel_image(self, x: float, y: float) -> np.ndarray:
        """The PSF at (x, y), shape (h, w), float64, unit sum.

        Raises
        ------
        ImageError
            If the combination sums to (nearly) zero at this position.
        """
        image = self._stack.image(x, y)
        total = image.sum()
        if not abs(total) > 1e-12:
            raise ImageError(f"PcaPsf kernel at ({x}, {y}) sums to {total}; cannot normalise it.")
        return image / total

    def _to_table(self) -> Table:
        return self._stack.to_table("component")

    @classmethod
    def _from_table(cls, table: Table) -> PcaPsf:
        stack = SpatialImageStack.from_table(table, "component")
        return cls(stack.images, stack.coefficients, stack.degree, stack.bbox)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, PcaPsf):
            return NotImplemented
        return self._stack == other._stack

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n, h, w = self.components.shape
        return f"PcaPsf({n} components of {h}x{w}, degree={self.degree}, bbox={self.bbox})"
