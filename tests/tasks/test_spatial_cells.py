"""Spatial cells: the grid, insertion by position, rating order, and visiting with and without BAD candidates."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import SpatialCellError
from tasks.image import Box2I, MaskedImage
from tasks.image.spatial_cells import (
    CandidateStatus,
    PsfCandidate,
    SpatialCell,
    SpatialCellCandidate,
    SpatialCellImageCandidate,
    SpatialCellSet,
)


def test_cells_tile_the_box_with_a_partial_last_row_and_column():
    cell_set = SpatialCellSet(Box2I(10, 20, 250, 130), 100, 50)
    assert (cell_set.nx, cell_set.ny, len(cell_set)) == (3, 3, 9)
    boxes = [cell.bbox for cell in cell_set]
    assert boxes[0] == Box2I(10, 20, 100, 50)
    assert boxes[2] == Box2I(210, 20, 50, 50)  # last column is 50 px wide
    assert boxes[8] == Box2I(210, 120, 50, 30)  # last row is 30 px high
    assert sum(box.area for box in boxes) == 250 * 130
    assert [cell.label for cell in cell_set][:4] == ["Cell 0x0", "Cell 1x0", "Cell 2x0", "Cell 0x1"]


def test_insert_puts_a_candidate_in_the_cell_containing_its_nearest_pixel():
    cell_set = SpatialCellSet(Box2I(0, 0, 200, 200), 100)
    on_edge = SpatialCellCandidate(99.4, 10.0)  # nearest pixel 99: first column of cells
    past_edge = SpatialCellCandidate(99.6, 10.0)  # nearest pixel 100: second column
    top_right = SpatialCellCandidate(150.0, 199.4)
    for candidate in (on_edge, past_edge, top_right):
        cell_set.insert(candidate)
    cells = cell_set.cells
    assert cells[0].candidates() == [on_edge]
    assert cells[1].candidates() == [past_edge]
    assert cells[3].candidates() == [top_right]
    assert cell_set.cell_at(150.0, 199.4) is cells[3]


@pytest.mark.parametrize("x, y", [(-0.6, 5.0), (5.0, 199.6), (200.0, 5.0)])
def test_insert_outside_the_box_raises(x, y):
    cell_set = SpatialCellSet(Box2I(0, 0, 200, 200), 100)
    with pytest.raises(SpatialCellError, match="outside the spatial cell set's box"):
        cell_set.insert(SpatialCellCandidate(x, y))


def test_cell_keeps_candidates_in_decreasing_rating_order_stably():
    cell = SpatialCell("Cell 0x0", Box2I(0, 0, 10, 10))
    ratings = [3.0, 10.0, 1.0, 10.0, 5.0]
    candidates = [SpatialCellCandidate(1.0, 1.0, rating=r) for r in ratings]
    for candidate in candidates:
        cell.insert(candidate)
    assert [c.rating for c in cell] == [10.0, 10.0, 5.0, 3.0, 1.0]
    assert cell.candidates()[0] is candidates[1]  # equal ratings keep insertion order
    candidates[2].rating = 20.0
    cell.sort()
    assert cell.candidates()[0] is candidates[2]


def test_visit_takes_the_best_n_per_cell_and_skips_bad_candidates():
    cell_set = SpatialCellSet(Box2I(0, 0, 200, 100), 100)
    left = [SpatialCellCandidate(10.0, 10.0, rating=r) for r in (1.0, 2.0, 3.0, 4.0)]
    right = [SpatialCellCandidate(150.0, 10.0, rating=r) for r in (7.0, 8.0)]
    for candidate in left + right:
        cell_set.insert(candidate)
    left[3].status = CandidateStatus.BAD  # the best of the left cell

    visited: list[float] = []
    n = cell_set.visit_candidates(lambda c: visited.append(c.rating), 2)
    assert n == 4 and visited == [3.0, 2.0, 8.0, 7.0]

    visited.clear()
    cell_set.visit_candidates(lambda c: visited.append(c.rating), 2, ignore_bad=False)
    assert visited == [4.0, 3.0, 8.0, 7.0]

    visited.clear()
    assert cell_set.visit_all_candidates(lambda c: visited.append(c.rating)) == 6
    assert sorted(visited) == [1.0, 2.0, 3.0, 4.0, 7.0, 8.0]


def test_a_candidate_made_bad_while_visiting_still_counts_towards_n_per_cell():
    cell_set = SpatialCellSet(Box2I(0, 0, 100, 100), 100)
    candidates = [SpatialCellCandidate(5.0, 5.0, rating=r) for r in (3.0, 2.0, 1.0)]
    for candidate in candidates:
        cell_set.insert(candidate)

    def reject(candidate: SpatialCellCandidate) -> None:
        candidate.status = CandidateStatus.BAD

    assert cell_set.visit_candidates(reject, 2) == 2
    assert [c.status for c in candidates] == [CandidateStatus.BAD, CandidateStatus.BAD, CandidateStatus.UNKNOWN]
    # the next visit moves on to the remaining good candidate
    seen: list[SpatialCellCandidate] = []
    cell_set.visit_candidates(seen.append, 2)
    assert seen == [candidates[2]]


def test_visitor_exceptions_propagate_unless_ignored():
    cell_set = SpatialCellSet(Box2I(0, 0, 100, 100), 50)
    for x in (10.0, 60.0):
        cell_set.insert(SpatialCellCandidate(x, 10.0))

    def fail(candidate: SpatialCellCandidate) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        cell_set.visit_candidates(fail)
    assert cell_set.visit_candidates(fail, ignore_exceptions=True) == 2


def test_counts_lookup_by_id_and_is_empty():
    cell_set = SpatialCellSet(Box2I(0, 0, 100, 100), 50)
    a, b, c = (SpatialCellCandidate(x, 10.0) for x in (5.0, 10.0, 70.0))
    for candidate in (a, b, c):
        cell_set.insert(candidate)
    a.status, b.status = CandidateStatus.GOOD, CandidateStatus.BAD
    assert cell_set.counts() == {"UNKNOWN": 1, "GOOD": 1, "BAD": 1}
    assert cell_set.n_candidates() == 3 and cell_set.n_candidates(CandidateStatus.BAD) == 1
    assert len(cell_set.candidates()) == 2 and len(cell_set.candidates(ignore_bad=False)) == 3
    assert cell_set.get_candidate_by_id(c.id) is c
    with pytest.raises(SpatialCellError, match="no candidate with id"):
        cell_set.get_candidate_by_id(-1)
    first = cell_set.cells[0]
    assert len(first) == 2 and first.n_good() == 1 and not first.is_empty
    a.status = CandidateStatus.BAD
    assert first.is_empty
    first.remove(a)
    assert len(first) == 1
    with pytest.raises(SpatialCellError):
        first.remove(a)


def test_candidate_ids_are_unique_and_positions_must_be_finite():
    ids = {SpatialCellCandidate(0.0, 0.0).id for _ in range(50)}
    assert len(ids) == 50
    with pytest.raises(SpatialCellError, match="finite position"):
        SpatialCellCandidate(float("nan"), 1.0)


def test_image_candidate_stamp_is_centred_on_the_nearest_pixel_and_must_fit():
    image = np.arange(100 * 80, dtype=np.float32).reshape(80, 100)
    mi = MaskedImage(image, xy0=(1000, 2000))
    candidate = SpatialCellImageCandidate(1050.4, 2030.6, width=5, height=3)
    assert candidate.center_pixel == (1050, 2031)
    assert candidate.stamp_bbox() == Box2I(1048, 2030, 5, 3)
    assert candidate.stamp_bbox(border=2) == Box2I(1046, 2028, 9, 7)
    stamp = candidate.get_masked_image(mi)
    assert stamp.shape == (3, 5) and stamp.image[1, 2] == image[31, 50]
    edge = SpatialCellImageCandidate(1001.0, 2040.0, width=7, height=7)
    with pytest.raises(SpatialCellError, match="not inside the image"):
        edge.get_masked_image(mi)
    with pytest.raises(SpatialCellError, match="odd"):
        SpatialCellImageCandidate(0.0, 0.0, width=4)


def test_psf_candidate_is_rated_by_flux():
    cell_set = SpatialCellSet(Box2I(0, 0, 64, 64), 64)
    faint = PsfCandidate(10.0, 10.0, 1e3, source_index=0, source_id=11)
    bright = PsfCandidate(20.0, 20.0, 1e5, source_index=1, source_id=12)
    cell_set.insert(faint)
    cell_set.insert(bright)
    assert cell_set.candidates() == [bright, faint]
    assert (bright.source_index, bright.source_id, bright.width) == (1, 12, 21)
    assert bright.stamp is None and np.isnan(bright.amplitude)
