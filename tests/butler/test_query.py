"""Registry queries: data IDs, datasets and dimension records under where-expressions."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from butler import Butler, DatasetType
from butler.errors import EmptyQueryResultError, ExpressionSyntaxError, InvalidQueryError
from conftest import N_DETECTORS, N_VISITS


@pytest.fixture
def with_calexps(populated: Butler) -> Butler:
    reg = populated.registry
    reg.register_dataset_type(DatasetType("calexp", ["visit", "detector"], "ArrowAstropy", universe=populated.dimensions))
    reg.register_run("run1")
    # calexps for every visit, but only detectors 0-2 (detector 3 "failed")
    reg.insert_datasets(
        "calexp", [{"instrument": "Cam", "visit": v, "detector": d} for v in range(N_VISITS) for d in range(3)], "run1"
    )
    return populated


def _pairs(data_ids, *keys):
    return sorted(tuple(d[k] for k in keys) for d in data_ids)


def test_data_ids_are_full_cartesian_product(populated):
    ids = populated.query_data_ids(["visit", "detector"])
    assert len(ids) == N_VISITS * N_DETECTORS
    assert all(d.has_full() for d in ids)
    assert {d["band"] for d in ids} == {"r", "g"}


def test_where_on_implied_dimension_and_record_field(populated):
    ids = populated.query_data_ids(["visit"], where="band = 'r' AND visit.exposure_time > 34.5")
    assert _pairs(ids, "visit") == [(5,), (7,), (9,)]


def test_range_stride_and_bind_list(populated):
    ids = populated.query_data_ids(["visit", "detector"], where="visit IN (0..8:4) AND detector IN (dets)", bind={"dets": [1, 3]})
    assert _pairs(ids, "visit", "detector") == [(0, 1), (0, 3), (4, 1), (4, 3), (8, 1), (8, 3)]


def test_time_literal_on_record_field(populated):
    ids = populated.query_data_ids(["visit"], where="visit.datetime_begin >= T'2020-01-01T03:00:00' AND visit.datetime_begin < T'2020-01-02'")
    assert _pairs(ids, "visit") == [(3,), (4,)]


def test_data_id_constraint_and_kwargs(populated):
    ids = populated.query_data_ids(["visit", "detector"], data_id={"instrument": "Cam"}, detector=2, where="visit < 3")
    assert _pairs(ids, "visit", "detector") == [(0, 2), (1, 2), (2, 2)]


def test_order_by_and_limit(populated):
    ids = populated.query_data_ids(["visit"], order_by=["-visit.exposure_time"], limit=3)
    assert [d["visit"] for d in ids] == [9, 8, 7]


def test_datasets_constraint_projects_to_requested_dimensions(with_calexps):
    ids = with_calexps.query_data_ids(["detector"], datasets="calexp", collections="run1")
    assert _pairs(ids, "detector") == [(0,), (1,), (2,)]


def test_query_datasets_benchmark_shaped_where(with_calexps):
    refs = with_calexps.query_datasets("calexp", "run1", where="visit IN (2..5) AND detector < 2")
    assert _pairs([r.data_id for r in refs], "visit", "detector") == [(v, d) for v in range(2, 6) for d in range(2)]


def test_query_datasets_where_on_implied(with_calexps):
    refs = with_calexps.query_datasets("calexp", "run1", where="band = 'g' AND detector = 0")
    assert _pairs([r.data_id for r in refs], "visit") == [(0,), (2,), (4,), (6,), (8,)]


def test_dimension_records_query(populated):
    records = populated.query_dimension_records("detector", where="detector.full_name IN ('D1', 'D3')", order_by="detector")
    assert [r.id for r in records] == [1, 3]
    assert populated.query_dimension_records("visit", where="band = 'r'", limit=2, order_by="visit")[1].id == 3


def test_empty_result_names_the_constraint(with_calexps):
    with pytest.raises(EmptyQueryResultError) as info:
        with_calexps.query_datasets("calexp", "run1", where="visit = 3 AND detector = 3")
    reasons = " ".join(info.value.reasons)
    assert "detector = 3" in reasons
    assert "visit = 3" not in reasons


def test_empty_result_names_missing_datasets(with_calexps):
    with_calexps.registry.register_run("empty")
    with pytest.raises(EmptyQueryResultError, match="no 'calexp' datasets in collection"):
        with_calexps.query_datasets("calexp", "empty")
    assert with_calexps.query_datasets("calexp", "empty", explain=False) == []


def test_empty_result_names_unregistered_dimension(repo):
    with pytest.raises(EmptyQueryResultError, match="no 'visit' dimension records"):
        repo.query_data_ids(["visit"])


def test_injection_is_a_syntax_error_and_changes_nothing(with_calexps):
    reg = with_calexps.registry
    before = reg.count_datasets()
    with pytest.raises(ExpressionSyntaxError) as info:
        with_calexps.query_datasets("calexp", "run1", where="visit = 1; DROP TABLE dataset")
    assert info.value.column == 10
    # A string literal carrying SQL is just a value that matches nothing.
    assert with_calexps.query_datasets("calexp", "run1", where="band = 'r''; DROP TABLE dataset; --'", explain=False) == []
    with reg.db.transaction() as conn:
        assert sa.inspect(conn).has_table("dataset")
    assert reg.count_datasets() == before


def test_unknown_identifier_lists_valid_names(populated):
    with pytest.raises(InvalidQueryError, match="Did you mean 'visit'"):
        populated.query_data_ids(["visit"], where="vist = 3")
    with pytest.raises(InvalidQueryError, match="has no field 'exposure_tme'"):
        populated.query_data_ids(["visit"], where="visit.exposure_tme > 3")
    with pytest.raises(InvalidQueryError, match="integer"):
        populated.query_data_ids(["visit"], where="visit = 'three'")


def test_visit_definition_relates_exposures_to_their_visits(populated):
    """An always-join element: exposures pair only with the visits they define, not every visit."""
    reg = populated.registry
    reg.insert_dimension_data(
        "exposure",
        *[{"instrument": "Cam", "id": 100 + v, "physical_filter": "r1" if v % 2 else "g1", "day_obs": 20200101} for v in range(4)],
    )
    reg.insert_dimension_data("visit_definition", *[{"instrument": "Cam", "exposure": 100 + v, "visit": v} for v in range(4)])
    pairs = {(d["exposure"], d["visit"]) for d in populated.query_data_ids(["exposure", "visit"])}
    assert pairs == {(100 + v, v) for v in range(4)}
    with_detectors = populated.query_data_ids(["exposure", "visit", "detector"], where="visit = 2")
    assert {(d["exposure"], d["detector"]) for d in with_detectors} == {(102, d) for d in range(4)}


def test_a_dataset_constraint_over_two_collections_gives_each_data_id_once(populated):
    """A data ID with a dataset in both collections of the search is one result, not one per dataset."""
    import numpy as np

    populated.register_dataset_type("img", ["instrument", "visit", "detector"], "NumpyArray")
    for run in ("old", "new"):
        populated.put(np.zeros(2), "img", instrument="Cam", visit=1, detector=2, run=run)
    populated.collection_chain("both", ["new", "old"])
    found = populated.query_data_ids(["visit", "detector"], datasets="img", collections="both")
    assert [(d["visit"], d["detector"]) for d in found] == [(1, 2)]
