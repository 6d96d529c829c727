"""Spatial cells: a grid over an image whose cells hold rated candidates (PSF stars, kernel stamps).

A `SpatialCellSet` tiles a parent-coordinate box with `SpatialCell`\\ s of a fixed size; each cell keeps its
candidates sorted by decreasing `~SpatialCellCandidate.rating`, so visiting "the best N candidates per cell"
spreads a fit's constraints evenly over the image (the role of ``lsst.afw.math.SpatialCellSet``).

Candidates carry a position, a rating and a `CandidateStatus` (``GOOD``, ``BAD`` or ``UNKNOWN``); iterations
and visits skip ``BAD`` candidates unless asked not to.  The classes are generic in the candidate type:
`PsfCandidate` (a star for PSF determination) is defined here, and image-differencing kernel candidates
derive from `SpatialCellImageCandidate` in the same way.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import numpy as np

from ..errors import SpatialCellError
from .geom import Box2I
from .masked_image import MaskedImage

__all__ = [
    "CandidateStatus",
    "PsfCandidate",
    "SpatialCell",
    "SpatialCellCandidate",
    "SpatialCellImageCandidate",
    "SpatialCellSet",
]


class CandidateStatus(enum.Enum):
    """The state of a candidate: not yet judged, accepted, or rejected."""

    UNKNOWN = "UNKNOWN"
    GOOD = "GOOD"
    BAD = "BAD"


_candidate_ids = itertools.count(1)


class SpatialCellCandidate:
    """A rated object at a position, held by a `SpatialCell`.

    Parameters
    ----------
    x, y : `float`
        Parent pixel coordinates of the candidate [pixels].
    rating : `float`, optional
        Sort key: candidates of a cell are kept in decreasing rating order (e.g. flux [counts]).
    status : `CandidateStatus`, optional
        Initial status, default ``UNKNOWN``.

    Attributes
    ----------
    id : `int`
        Identifier unique within the process (assigned at construction).
    chi2 : `float`
        Goodness of fit of the candidate to the current model (NaN until a fit sets it).
    """

    def __init__(
        self, x: float, y: float, *, rating: float = 0.0, status: CandidateStatus = CandidateStatus.UNKNOWN
    ) -> None:
        self.x = float(x)
        self.y = float(y)
        if not (math.isfinite(self.x) and math.isfinite(self.y)):
            raise SpatialCellError(f"a spatial-cell candidate needs a finite position, got ({x}, {y}).")
        self.rating = float(rating)
        self.status = CandidateStatus(status)
        self.id = next(_candidate_ids)
        self.chi2 = math.nan

    @property
    def is_bad(self) -> bool:
        """True when the status is ``BAD``."""
        return self.status is CandidateStatus.BAD

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id}, x={self.x:.2f}, y={self.y:.2f}, rating={self.rating:.4g}, "
            f"status={self.status.value})"
        )


class SpatialCellImageCandidate(SpatialCellCandidate):
    """A candidate with a postage stamp: the box of ``width`` x ``height`` pixels centred on its nearest pixel.

    Parameters
    ----------
    x, y : `float`
        Parent pixel coordinates [pixels].
    width, height : `int`, optional
        Stamp size [pixels]; odd, >= 1 (default 21).
    **kwargs
        ``rating`` and ``status`` as for `SpatialCellCandidate`.
    """

    def __init__(self, x: float, y: float, *, width: int = 21, height: int = 21, **kwargs: Any) -> None:
        super().__init__(x, y, **kwargs)
        self.set_stamp_size(width, height)

    def set_stamp_size(self, width: int, height: int) -> None:
        """Change the stamp size [pixels]; both odd and >= 1."""
        width, height = int(width), int(height)
        if width < 1 or height < 1 or width % 2 == 0 or height % 2 == 0:
            raise SpatialCellError(f"candidate stamps must have odd, positive sizes, got {width}x{height}.")
        self.width, self.height = width, height

    @property
    def center_pixel(self) -> tuple[int, int]:
        """Parent coordinates (ix, iy) of the pixel containing the candidate's position."""
        return int(math.floor(self.x + 0.5)), int(math.floor(self.y + 0.5))

    def stamp_bbox(self, border: int = 0) -> Box2I:
        """Parent-coordinate box of the stamp, grown by ``border`` pixels on each side."""
        ix, iy = self.center_pixel
        hw, hh = self.width // 2 + int(border), self.height // 2 + int(border)
        return Box2I(ix - hw, iy - hh, 2 * hw + 1, 2 * hh + 1)

    def get_masked_image(self, masked_image: MaskedImage, border: int = 0) -> MaskedImage:
        """The candidate's stamp (a view) cut from ``masked_image``.

        Parameters
        ----------
        masked_image : `MaskedImage`
            Image to cut from (parent coordinates).
        border : `int`, optional
            Extra pixels on each side of the stamp.

        Raises
        ------
        SpatialCellError
            If the stamp is not entirely inside the image.
        """
        box = self.stamp_bbox(border)
        if not masked_image.bbox.contains(box):
            raise SpatialCellError(
                f"the {box.width}x{box.height} stamp of candidate {self.id} at ({self.x:.1f}, {self.y:.1f}) "
                f"is not inside the image {masked_image.bbox}."
            )
        return masked_image[box]


class PsfCandidate(SpatialCellImageCandidate):
    """A star used to determine a PSF.

    Parameters
    ----------
    x, y : `float`
        Parent pixel coordinates of the star's centroid [pixels].
    flux : `float`
        Instrumental flux of the star [counts]; the rating (bright stars first).
    source_index : `int`, optional
        Row of the star in its source catalogue (-1 when unknown).
    source_id : `int`, optional
        The ``id`` of the star's source record (-1 when unknown).
    **kwargs
        ``width``, ``height`` and ``status`` as for `SpatialCellImageCandidate`.

    Attributes
    ----------
    flux : `float`
        Instrumental flux [counts].
    amplitude : `float`
        Flux fitted with the current PSF model [counts] (NaN until a fit sets it).
    stamp : `numpy.ndarray` or `None`, shape (height, width)
        Background-subtracted star image centred on the stamp's central pixel [counts], set by the PSF
        determiner.
    variance : `numpy.ndarray` or `None`, shape (height, width)
        Variance of ``stamp`` [counts^2].
    weight : `numpy.ndarray` or `None`, shape (height, width)
        Fit weights of ``stamp`` (inverse variance, 0 where pixels are masked) [counts^-2].
    residual : `float`
        Excess RMS residual of the star about the model relative to the model's RMS (NaN until fitted).
    background : `float`
        Local background subtracted from the stamp [counts].
    sum_variance : `float`
        Variance of the stamp's sum [counts^2].
    norm : `float`
        Flux the stamp was divided by for the fit [counts].
    fit_weight : `float`
        The star's share of the fit weights (0 when not in the fit).
    """

    def __init__(
        self, x: float, y: float, flux: float, *, source_index: int = -1, source_id: int = -1, **kwargs: Any
    ) -> None:
        kwargs.setdefault("rating", flux)
        super().__init__(x, y, **kwargs)
        self.flux = float(flux)
        self.source_index = int(source_index)
        self.source_id = int(source_id)
        self.amplitude = math.nan
        self.residual = math.nan
        self.stamp: np.ndarray | None = None
        self.variance: np.ndarray | None = None
        self.weight: np.ndarray | None = None
        self.background = 0.0
        self.sum_variance = math.nan
        self.norm = math.nan
        self.fit_weight = 0.0


CandidateT = TypeVar("CandidateT", bound=SpatialCellCandidate)


class SpatialCell(Generic[CandidateT]):
    """One cell of a `SpatialCellSet`: its box and its candidates in decreasing rating order.

    Parameters
    ----------
    label : `str`
        Name of the cell (``"Cell 2x3"``: column 2, row 3).
    bbox : `Box2I`
        Parent-coordinate box of the cell.
    candidates : iterable of candidates, optional
        Initial candidates (sorted on insertion).
    """

    def __init__(self, label: str, bbox: Box2I, candidates: Iterable[CandidateT] = ()) -> None:
        self.label = label
        self.bbox = bbox
        self._candidates: list[CandidateT] = []
        for candidate in candidates:
            self.insert(candidate)

    def insert(self, candidate: CandidateT) -> None:
        """Add a candidate, after any others of equal or higher rating (stable order)."""
        ratings = [-c.rating for c in self._candidates]
        index = int(np.searchsorted(ratings, -candidate.rating, side="right")) if ratings else 0
        self._candidates.insert(index, candidate)

    def remove(self, candidate: CandidateT) -> None:
        """Remove a candidate (compared by identity).

        Raises
        ------
        SpatialCellError
            If the candidate is not in this cell.
        """
        for i, other in enumerate(self._candidates):
            if other is candidate:
                del self._candidates[i]
                return
        raise SpatialCellError(f"candidate {candidate.id} is not in {self.label}.")

    def sort(self) -> None:
        """Re-sort the candidates by decreasing rating (after ratings changed)."""
        self._candidates.sort(key=lambda c: -c.rating)

    def candidates(self, *, ignore_bad: bool = True) -> list[CandidateT]:
        """The candidates in decreasing rating order, without the ``BAD`` ones unless ``ignore_bad=False``."""
        return [c for c in self._candidates if not (ignore_bad and c.is_bad)]

    def __iter__(self) -> Iterator[CandidateT]:
        """Iterate over the candidates that are not ``BAD``, best first."""
        return iter(self.candidates())

    def __len__(self) -> int:
        """Number of candidates, ``BAD`` ones included."""
        return len(self._candidates)

    def n_good(self) -> int:
        """Number of candidates that are not ``BAD``."""
        return sum(not c.is_bad for c in self._candidates)

    @property
    def is_empty(self) -> bool:
        """True when every candidate (if any) is ``BAD``."""
        return self.n_good() == 0

    def visit_candidates(
        self,
        visitor: Callable[[CandidateT], Any],
        n_per_cell: int = -1,
        *,
        ignore_bad: bool = True,
        ignore_exceptions: bool = False,
    ) -> int:
        """Call ``visitor(candidate)`` on the best candidates of the cell.

        Parameters
        ----------
        visitor : callable
            Called with each candidate; may change its status (a candidate made ``BAD`` still counts).
        n_per_cell : `int`, optional
            Maximum number of candidates visited; negative for all.
        ignore_bad : `bool`, optional
            Skip ``BAD`` candidates (they do not count towards ``n_per_cell``).
        ignore_exceptions : `bool`, optional
            Swallow exceptions derived from `Exception` raised by ``visitor`` (the candidate still counts).

        Returns
        -------
        n_visited : `int`
            Number of candidates visited.
        """
        n = 0
        for candidate in self.candidates(ignore_bad=ignore_bad):
            if 0 <= n_per_cell <= n:
                break
            n += 1
            try:
                visitor(candidate)
            except Exception:
                if not ignore_exceptions:
                    raise
        return n

    def __repr__(self) -> str:
        return f"SpatialCell({self.label!r}, bbox={self.bbox}, n_candidates={len(self)}, n_good={self.n_good()})"


class SpatialCellSet(Generic[CandidateT]):
    """A grid of `SpatialCell`\\ s tiling a box; candidates go to the cell containing their position.

    Parameters
    ----------
    bbox : `Box2I`
        Parent-coordinate box to tile (e.g. the exposure's).
    cell_size_x : `int`
        Cell width [pixels], >= 1; the last column of cells is narrower when it does not divide the width.
    cell_size_y : `int`, optional
        Cell height [pixels]; default ``cell_size_x``.

    Raises
    ------
    SpatialCellError
        If the box is empty or a cell size is < 1.

    Notes
    -----
    Cells are ordered row by row from the box origin (x fastest) and labelled ``"Cell {ix}x{iy}"``.
    """

    def __init__(self, bbox: Box2I, cell_size_x: int, cell_size_y: int | None = None) -> None:
        cell_size_y = cell_size_x if cell_size_y is None else cell_size_y
        if bbox.is_empty:
            raise SpatialCellError("a SpatialCellSet needs a non-empty bbox.")
        if int(cell_size_x) < 1 or int(cell_size_y) < 1:
            raise SpatialCellError(f"cell sizes must be >= 1 pixel, got {cell_size_x} x {cell_size_y}.")
        self.bbox = bbox
        self.cell_size = (int(cell_size_x), int(cell_size_y))
        sx, sy = self.cell_size
        self.nx = -(-bbox.width // sx)
        self.ny = -(-bbox.height // sy)
        self._cells: list[SpatialCell[CandidateT]] = []
        for iy in range(self.ny):
            for ix in range(self.nx):
                x0, y0 = bbox.x0 + ix * sx, bbox.y0 + iy * sy
                box = Box2I(x0, y0, min(sx, bbox.x1 - x0), min(sy, bbox.y1 - y0))
                self._cells.append(SpatialCell(f"Cell {ix}x{iy}", box))

    # ------------------------------------------------------------------ cells
    @property
    def cells(self) -> list[SpatialCell[CandidateT]]:
        """The cells, row by row (x fastest)."""
        return list(self._cells)

    def __iter__(self) -> Iterator[SpatialCell[CandidateT]]:
        return iter(self._cells)

    def __len__(self) -> int:
        """Number of cells."""
        return len(self._cells)

    def cell_at(self, x: float, y: float) -> SpatialCell[CandidateT]:
        """The cell containing parent position (x, y) (the cell of the pixel whose centre is nearest).

        Raises
        ------
        SpatialCellError
            If the position is outside the set's box.
        """
        ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
        if not (self.bbox.x0 <= ix < self.bbox.x1 and self.bbox.y0 <= iy < self.bbox.y1):
            raise SpatialCellError(f"position ({x:.2f}, {y:.2f}) is outside the spatial cell set's box {self.bbox}.")
        cx = (ix - self.bbox.x0) // self.cell_size[0]
        cy = (iy - self.bbox.y0) // self.cell_size[1]
        return self._cells[cy * self.nx + cx]

    # ------------------------------------------------------------------ candidates
    def insert(self, candidate: CandidateT) -> None:
        """Add a candidate to the cell containing its position.

        Raises
        ------
        SpatialCellError
            If the candidate lies outside the set's box.
        """
        self.cell_at(candidate.x, candidate.y).insert(candidate)

    def candidates(self, *, ignore_bad: bool = True) -> list[CandidateT]:
        """All candidates, cell by cell, best first within each cell (``BAD`` ones only if not ``ignore_bad``)."""
        return [c for cell in self._cells for c in cell.candidates(ignore_bad=ignore_bad)]

    def visit_candidates(
        self,
        visitor: Callable[[CandidateT], Any],
        n_per_cell: int = -1,
        *,
        ignore_bad: bool = True,
        ignore_exceptions: bool = False,
    ) -> int:
        """Call ``visitor`` on the best ``n_per_cell`` candidates of every cell (see `SpatialCell.visit_candidates`).

        Returns
        -------
        n_visited : `int`
            Number of candidates visited over all cells.
        """
        return sum(
            cell.visit_candidates(visitor, n_per_cell, ignore_bad=ignore_bad, ignore_exceptions=ignore_exceptions)
            for cell in self._cells
        )

    def visit_all_candidates(
        self, visitor: Callable[[CandidateT], Any], *, ignore_exceptions: bool = False
    ) -> int:
        """Call ``visitor`` on every candidate, ``BAD`` ones included."""
        return self.visit_candidates(visitor, -1, ignore_bad=False, ignore_exceptions=ignore_exceptions)

    def get_candidate_by_id(self, candidate_id: int) -> CandidateT:
        """The candidate with this ``id``.

        Raises
        ------
        SpatialCellError
            If no cell holds it.
        """
        for cell in self._cells:
            for candidate in cell.candidates(ignore_bad=False):
                if candidate.id == candidate_id:
                    return candidate
        raise SpatialCellError(f"no candidate with id {candidate_id} in this spatial cell set.")

    def sort(self) -> None:
        """Re-sort every cell's candidates by decreasing rating."""
        for cell in self._cells:
            cell.sort()

    def n_candidates(self, status: CandidateStatus | None = None) -> int:
        """Number of candidates, all or those with the given status."""
        return sum(
            1 for c in self.candidates(ignore_bad=False) if status is None or c.status is CandidateStatus(status)
        )

    def counts(self) -> dict[str, int]:
        """Numbers of candidates by status name: ``{"GOOD": n, "BAD": n, "UNKNOWN": n}``."""
        result = {s.value: 0 for s in CandidateStatus}
        for candidate in self.candidates(ignore_bad=False):
            result[candidate.status.value] += 1
        return result

    def __repr__(self) -> str:
        return f"SpatialCellSet(bbox={self.bbox}, cells={self.nx}x{self.ny}, counts={self.counts()})"
