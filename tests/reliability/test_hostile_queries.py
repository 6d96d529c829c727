"""Hostile input to queries: random where-expressions and data ID values through the whole registry.

Only the butler's own errors (`ButlerError`) may escape, and a user's string never reaches the
database as SQL text: every statement is recorded (SQLAlchemy ``before_cursor_execute``) and
searched for the marker that starts every generated string.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import populate
from hypothesis import event, given, settings
from hypothesis import strategies as st

from butler import Butler
from butler.errors import ButlerError, ExpressionSyntaxError, InvalidQueryError

pytestmark = pytest.mark.reliability

MARKER = "\u00a7\u00b5"  # "§µ": in no SQL this package writes, so a statement holding it was built from user text
INJECTIONS = ["", "'", "''", "' OR '1'='1", "'; DROP TABLE dataset; --", '"', "\\", "%", "_", "*", "\x00", "\ud800", "é" * 40]
DIMENSIONS = ["instrument", "visit", "detector", "band", "physical_filter", "day_obs", "exposure", "tract", "patch", "skymap"]


@pytest.fixture(scope="module")
def butler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Butler]:
    """The toy camera's repository with one ``toy`` dataset per visit in run ``r``."""
    butler = Butler.create(tmp_path_factory.mktemp("queries") / "repo")
    populate(butler)
    butler.register_dataset_type("toy", ["instrument", "visit"], "NumpyArray")
    for visit in range(3):
        butler.put(np.zeros(2), "toy", instrument="Cam", visit=visit, run="r")
    yield butler
    butler.close()


@pytest.fixture(scope="module")
def statements(butler: Butler) -> list[tuple[str, object]]:
    """(SQL text, parameters) of every statement the butler's engine sends from now on (cleared by each
    test example)."""
    sent: list[tuple[str, object]] = []
    sa.event.listen(butler.registry.db.engine, "before_cursor_execute", lambda *args: sent.append((args[2], args[3])))
    return sent


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_payloads = st.tuples(st.text(max_size=20), st.sampled_from(INJECTIONS)).map(lambda t: MARKER + t[0] + t[1])
_templates = st.sampled_from([
    "instrument = {s}",
    "band != {s} AND visit > 1",
    "detector.full_name IN ({s}, 'D1')",
    "NOT (physical_filter = {s}) OR visit = 2",
    "visit.exposure_time > 1 AND instrument IN ({s})",
    "visit = {s}",  # a type error, found before any SQL is written
])  # fmt: skip


def _run_query(butler: Butler, kind: int, payload: str, template: str) -> None:
    literal = template.format(s=_quote(payload))
    bound = template.format(s="x")
    queries = [
        lambda: butler.query_data_ids(["visit", "detector"], where=literal, explain=False),
        lambda: butler.query_data_ids(["visit", "detector"], where=bound, bind={"x": payload}),
        lambda: butler.query_datasets("toy", collections="r", where=literal),
        lambda: butler.query_dimension_records("detector", where=bound, bind={"x": payload}, explain=False),
        lambda: butler.query_data_ids(["visit"], data_id={"instrument": payload}),
        lambda: butler.query_datasets("toy", collections="r", instrument="Cam", band=payload),
        lambda: butler.get("toy", instrument=payload, visit=1, collections="r"),
        lambda: butler.query_datasets("toy", collections=[payload], find_first=False),
    ]
    try:
        queries[kind]()
    except ButlerError:
        pass


@settings(max_examples=300, deadline=None)
@given(kind=st.integers(0, 7), payload=_payloads, template=_templates)
def test_user_strings_reach_the_database_only_as_bound_parameters(butler, statements, kind, payload, template):
    statements.clear()
    _run_query(butler, kind, payload, template)
    event("a SELECT reached the database" if statements else "refused before any SQL")
    assert not [s for s, _ in statements if MARKER in s]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_as_where_expression_raises_only_butler_errors(butler, text):
    try:
        butler.query_data_ids(["visit", "detector"], where=text, explain=False)
    except ButlerError:
        pass


_values = st.one_of(
    st.text(max_size=40),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(INJECTIONS),
)
_data_ids = st.dictionaries(st.one_of(st.sampled_from(DIMENSIONS), st.text(max_size=10)), _values, max_size=4)


@settings(max_examples=300, deadline=None)
@given(data_id=_data_ids, use=st.integers(0, 3))
def test_arbitrary_data_id_values_raise_only_butler_errors(butler, data_id, use):
    calls = [
        lambda: butler.query_data_ids(["visit", "detector"], data_id=data_id, explain=False),
        lambda: butler.query_datasets("toy", collections="r", data_id=data_id, explain=False),
        lambda: butler.get("toy", data_id, collections="r"),
        lambda: butler.registry.expand_data_id(data_id),
    ]
    try:
        calls[use]()
    except ButlerError:
        pass


@pytest.mark.parametrize(
    ("where", "bind", "error", "message"),
    [
        ("visit = " + "9" * 5000, {}, ExpressionSyntaxError, "does not fit in 64 bits"),
        ("NOT " * 3000 + "visit = 1", {}, InvalidQueryError, "nested too deeply"),
        (" OR ".join(["visit = 1"] * 1500), {}, InvalidQueryError, "too large for the database"),
        ("instrument = 'Ca\x00m'", {}, ExpressionSyntaxError, "contains a NUL character"),
        ("instrument = '\ud800'", {}, ExpressionSyntaxError, "is not valid Unicode"),
        ("instrument = x", {"x": "a\x00"}, InvalidQueryError, "contains a NUL character"),
        ("visit = x", {"x": 2**64}, InvalidQueryError, "does not fit in 64 bits"),
    ],
    ids=["5000-digit-integer", "3000-NOTs", "1500-term-OR", "NUL-literal", "surrogate-literal", "NUL-bind", "huge-bind"],
)
def test_oversized_and_unstorable_expressions_are_query_errors(butler, where, bind, error, message):
    with pytest.raises(error, match=message) as info:
        butler.query_data_ids(["visit"], where=where, bind=bind)
    str(info.value).encode("utf-8")  # the message can be printed


@pytest.mark.parametrize(
    ("data_id", "message"),
    [
        ({"instrument": "Cam", "visit": 2**63}, "does not fit in 64 bits"),
        ({"instrument": "Ca\x00m"}, "contains a NUL character"),
        ({"instrument": "\udcff"}, "is not valid Unicode"),
        ({"instrument": "C" * 5000}, "5000 characters long; at most 32"),
    ],
    ids=["int-overflow", "NUL", "surrogate", "5000-characters"],
)
def test_unstorable_data_id_values_are_data_id_errors_in_queries_and_inserts(butler, data_id, message):
    with pytest.raises(ButlerError, match=message):
        butler.query_data_ids(["visit"], data_id=data_id)
    record = {"name": data_id["instrument"]} if "visit" not in data_id else {"instrument": "Cam", "id": data_id["visit"], "full_name": "x"}
    with pytest.raises(ButlerError, match=message):
        butler.registry.insert_dimension_data("instrument" if "visit" not in data_id else "detector", record)


def test_sql_hook_sees_the_statements_and_their_parameters(butler, statements):
    """The capture works: a query's string value is among the parameters of a SELECT, not in its text."""
    statements.clear()
    butler.query_data_ids(["visit", "detector"], where="detector.full_name = 'D1\u00a7'", explain=False)
    selects = [(sql, params) for sql, params in statements if sql.lstrip().upper().startswith("SELECT")]
    values = [v for _, params in selects for v in (params.values() if isinstance(params, dict) else params)]
    assert "D1\u00a7" in values
    assert not any("D1\u00a7" in sql for sql, _ in selects)


def test_repository_is_unchanged_by_hostile_queries(butler):
    assert sorted(r.name for r in butler.registry.query_collections()) == ["r"]
    assert len(butler.registry.query_datasets("toy", ["r"])) == 3
    assert butler.verify(checksums=True).ok
