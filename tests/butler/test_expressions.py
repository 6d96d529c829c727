"""Tests of the ``where`` expression language (`butler.registry.expressions`) against SQLite."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import sqlalchemy as sa
from astropy.time import Time, TimeDelta
from hypothesis import given, settings
from hypothesis import strategies as st

from butler.errors import ButlerError, ExpressionSyntaxError, InvalidQueryError, did_you_mean
from butler.registry.expressions import (
    ColumnInfo,
    Node,
    compile_where,
    parse_where,
    referenced_identifiers,
    time_to_nsec,
)

T0 = Time("2020-01-01T00:00:00", format="isot", scale="tai")
IDS = list(range(1, 13))


def _visit_row(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "instrument": "HSC" if i <= 8 else "LSSTCam",
        "band": "gri"[i % 3],
        "exposure_time": 30.0 if i % 2 else 15.0,
        "datetime_begin": time_to_nsec(T0 + TimeDelta(i * 3600, format="sec")),
    }


VISITS = [_visit_row(i) for i in IDS]
DETECTORS = [{"id": i, "full_name": f"R22_S{i // 3}{i % 3}", "purpose": "SCIENCE" if i < 7 else "WAVEFRONT"} for i in range(9)]

metadata = sa.MetaData()
visit = sa.Table(
    "visit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("instrument", sa.String(32)),
    sa.Column("band", sa.String(8)),
    sa.Column("exposure_time", sa.Float),
    sa.Column("datetime_begin", sa.BigInteger),
)
detector = sa.Table(
    "detector",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("full_name", sa.String(32)),
    sa.Column("purpose", sa.String(32)),
)

COLUMNS: dict[tuple[str, str | None], ColumnInfo] = {
    ("visit", None): ColumnInfo(visit.c.id, "int"),
    ("visit", "exposure_time"): ColumnInfo(visit.c.exposure_time, "float"),
    ("visit", "datetime_begin"): ColumnInfo(visit.c.datetime_begin, "time"),
    ("instrument", None): ColumnInfo(visit.c.instrument, "string"),
    ("band", None): ColumnInfo(visit.c.band, "string"),
    ("detector", None): ColumnInfo(detector.c.id, "int"),
    ("detector", "full_name"): ColumnInfo(detector.c.full_name, "string"),
    ("detector", "purpose"): ColumnInfo(detector.c.purpose, "string"),
}


def resolve(element: str, field: str | None) -> ColumnInfo:
    """Toy resolver: the names above, `InvalidQueryError` for anything else."""
    try:
        return COLUMNS[element, field]
    except KeyError:
        name = element if field is None else f"{element}.{field}"
        valid = [e if f is None else f"{e}.{f}" for e, f in COLUMNS]
        raise InvalidQueryError(f"unknown name {name!r} in the where-expression. {did_you_mean(name, valid)}") from None


@functools.cache
def engine() -> sa.Engine:
    eng = sa.create_engine("sqlite://")
    metadata.create_all(eng)
    with eng.begin() as conn:
        conn.execute(visit.insert(), VISITS)
        conn.execute(detector.insert(), DETECTORS)
    return eng


def select_ids(table: sa.Table, where: str, bind: Mapping[str, Any] | None = None) -> list[int]:
    condition = compile_where(parse_where(where), resolve, bind)
    query = sa.select(table.c.id).order_by(table.c.id)
    if condition is not None:
        query = query.where(condition)
    with engine().connect() as conn:
        return [row[0] for row in conn.execute(query)]


def visit_ids(where: str, bind: Mapping[str, Any] | None = None) -> list[int]:
    return select_ids(visit, where, bind)


def ids_where(predicate: Callable[[dict[str, Any]], bool]) -> list[int]:
    return [row["id"] for row in VISITS if predicate(row)]


def test_empty_expression_means_no_constraint():
    assert parse_where("") is None
    assert parse_where(" \t\n ") is None
    assert compile_where(None, resolve) is None
    assert referenced_identifiers(None) == set()
    assert visit_ids("   ") == IDS


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("visit = 3", [3]),
        ("visit != 3", [i for i in IDS if i != 3]),
        ("visit <> 3", [i for i in IDS if i != 3]),
        ("visit < 3", [1, 2]),
        ("visit <= 3", [1, 2, 3]),
        ("visit > 10", [11, 12]),
        ("visit >= 10", [10, 11, 12]),
        ("3 > visit", [1, 2]),
        ("instrument = 'LSSTCam'", [9, 10, 11, 12]),
        ('band = "g"', [3, 6, 9, 12]),
        ("band < 'h'", [3, 6, 9, 12]),
        ("visit.exposure_time > 20", [1, 3, 5, 7, 9, 11]),
        ("visit.exposure_time = 15", [2, 4, 6, 8, 10, 12]),
        ("visit.exposure_time = 1.5e1", [2, 4, 6, 8, 10, 12]),
        ("visit = -3", []),
    ],
)
def test_comparison_selects_exactly_matching_rows(where, expected):
    assert visit_ids(where) == expected


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        # AND binds tighter than OR: visit = 1 OR (visit = 2 AND LSSTCam) -> [1]; left-to-right would give [].
        ("visit = 1 OR visit = 2 AND instrument = 'LSSTCam'", [1]),
        ("instrument = 'LSSTCam' AND visit = 12 OR visit = 1", [1, 12]),
        # NOT binds tighter than AND: (NOT visit = 1) AND visit < 3 -> [2]; NOT over both would give 2..12.
        ("NOT visit = 1 AND visit < 3", [2]),
        ("NOT (visit = 1 AND visit < 3)", IDS[1:]),
        ("(visit = 1 OR visit = 2) AND visit.exposure_time = 15", [2]),
        ("((visit > 2)) AND NOT NOT visit < 5", [3, 4]),
    ],
)
def test_precedence_and_parentheses(where, expected):
    assert visit_ids(where) == expected


def test_keywords_are_case_insensitive_and_identifiers_are_not():
    assert visit_ids("visit in (1, 2) and not visit = 1 Or visit = 12 OR visit NoT iN (1..11)") == [2, 12]
    with pytest.raises(InvalidQueryError, match="'VISIT'"):
        visit_ids("VISIT = 1")


def test_identifiers_starting_with_a_keyword_are_names():
    with pytest.raises(InvalidQueryError, match="unknown name 'order'"):
        visit_ids("order = 1")
    with pytest.raises(InvalidQueryError, match="unknown name 'notes.andx'"):
        visit_ids("notes.andx = 1")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("visit IN (1, 5, 7)", [1, 5, 7]),
        ("visit IN (7)", [7]),
        ("visit NOT IN (1..10)", [11, 12]),
        ("visit IN (3..6)", [3, 4, 5, 6]),
        ("visit IN (2..11:3)", [2, 5, 8, 11]),
        ("visit IN (2..12:5)", [2, 7, 12]),
        ("visit IN (1, 4..5, 10..12:2)", [1, 4, 5, 10, 12]),
        ("visit IN (-5..1)", [1]),
        ("visit NOT IN (1..12:2)", [2, 4, 6, 8, 10, 12]),
        ("band IN ('r', 'i')", ids_where(lambda r: r["band"] in "ri")),
        ("visit.exposure_time IN (15)", [2, 4, 6, 8, 10, 12]),
    ],
)
def test_in_lists_and_ranges_select_exact_ids(where, expected):
    assert visit_ids(where) == expected


def test_scalar_bind_values_are_used_as_values_not_columns():
    assert visit_ids("visit = v", {"v": 4}) == [4]
    assert visit_ids("instrument = inst AND visit < n", {"inst": "LSSTCam", "n": 11}) == [9, 10]
    assert visit_ids("visit.exposure_time > t", {"t": 20.5}) == [1, 3, 5, 7, 9, 11]
    # A bind name shadows nothing else: the dotted form is still a column reference.
    assert referenced_identifiers(parse_where("visit = v AND v.x = 1"), {"v": 4}) == {("visit", None), ("v", "x")}


@pytest.mark.parametrize("values", [[1, 3, 12], (1, 3, 12), {12, 3, 1}])
def test_bound_list_expands_inside_in(values):
    assert visit_ids("visit IN (vs)", {"vs": values}) == [1, 3, 12]
    assert visit_ids("visit IN (vs, 5, 8..9)", {"vs": values}) == [1, 3, 5, 8, 9, 12]
    assert visit_ids("visit NOT IN (vs)", {"vs": values}) == [i for i in IDS if i not in (1, 3, 12)]


def test_empty_bound_list_matches_nothing_and_not_in_matches_everything():
    condition = compile_where(parse_where("visit IN (vs)"), resolve, {"vs": []})
    assert str(condition.compile(compile_kwargs={"literal_binds": True})) in ("false", "0 = 1")
    assert visit_ids("visit IN (vs)", {"vs": []}) == []
    assert visit_ids("visit NOT IN (vs)", {"vs": []}) == IDS
    assert visit_ids("visit IN (vs, 2)", {"vs": []}) == [2]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("visit.datetime_begin > T'2020-01-01T05:30:00'", [6, 7, 8, 9, 10, 11, 12]),
        ("visit.datetime_begin <= T'2020-01-01 03:00:00'", [1, 2, 3]),
        ("visit.datetime_begin = T'2020-01-01T03:00:00.000000000'", [3]),
        # 2020-01-01 00:00:00 TAI is 2019-12-31 23:59:23 UTC (TAI - UTC = 37 s).
        ("visit.datetime_begin = T'2020-01-01T02:59:23/utc'", [3]),
        ("visit.datetime_begin = T'2020-01-01T02:59:23/isot/utc'", [3]),
        ("visit.datetime_begin = T'58849.125/mjd'", [3]),  # 2020-01-01 is MJD 58849
        ("visit.datetime_begin = T'58849.125'", [3]),
        ("visit.datetime_begin < T'2020-01-01'", []),
        ("T'2020-01-01T10:30' < visit.datetime_begin", [11, 12]),
    ],
)
def test_time_literals_compare_exactly_with_time_columns(where, expected):
    assert visit_ids(where) == expected


def test_time_bind_value_is_converted_to_nanoseconds():
    start = Time("2020-01-01T04:00:00", scale="tai")
    assert visit_ids("visit.datetime_begin = t", {"t": start}) == [4]
    assert visit_ids("visit.datetime_begin = t", {"t": start.utc}) == [4]


def test_time_to_nsec_is_tai_nanoseconds_since_1970():
    assert time_to_nsec(Time("1970-01-01T00:00:00", scale="tai")) == 0
    assert time_to_nsec(Time("1970-01-01T00:00:01.000000001", scale="tai")) == 1_000_000_001
    assert time_to_nsec(T0) == 18262 * 86_400 * 10**9  # 18262 days from 1970-01-01 to 2020-01-01
    utc_minus_tai = time_to_nsec(Time("2020-01-01T00:00:00", scale="utc")) - time_to_nsec(T0)
    assert utc_minus_tai == 37 * 10**9
    with pytest.raises(ValueError, match="scalar"):
        time_to_nsec(Time(["2020-01-01", "2020-01-02"], scale="tai"))


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("visit * 2 = 8", [4]),
        ("visit % 5 = 0", [5, 10]),
        ("-visit > -3", [1, 2]),
        ("visit + 1 - 1 * 2 = 3", [4]),
        ("visit.exposure_time / 2 = 7.5", [2, 4, 6, 8, 10, 12]),
        ("(visit + 1) * 2 = 8", [3]),
    ],
)
def test_arithmetic(where, expected):
    assert visit_ids(where) == expected


def test_dotted_identifiers_of_another_element():
    assert select_ids(detector, "detector.full_name = 'R22_S11'") == [4]
    assert select_ids(detector, "detector.purpose != 'SCIENCE' AND detector > 7") == [8]


def test_referenced_identifiers_excludes_bind_names():
    node = parse_where("visit.exposure_time > t AND (detector.full_name = 'x' OR v IN (w, 3)) AND band = band2")
    assert referenced_identifiers(node, {"t": 1.0, "v": 1, "w": [1]}) == {
        ("visit", "exposure_time"),
        ("detector", "full_name"),
        ("band", None),
        ("band2", None),
    }


@pytest.mark.parametrize(
    ("where", "column", "fragment"),
    [
        ("visit = 1; DROP TABLE dataset", 10, "';'"),
        ("instrument = 'HSC", 14, "unterminated string"),
        ("visit = ", 8, "end of expression"),
        ("visit = 1 AND", 14, "end of expression"),
        ("visit = = 1", 9, "'='"),
        ("visit IN (1..)", 14, "')'"),
        ("visit IN ()", 11, "')'"),
        ("visit IN (1..5:0)", 16, "stride must be positive"),
        ("visit IN (9..3)", 11, "start is after its stop"),
        ("visit IN (1..x)", 14, "integer literals"),
        ("visit.exposure_time.x = 1", 20, "'.'"),
        ("visit.datetime_begin > T'2020-13-45'", 24, "invalid time literal"),
        ("visit.datetime_begin > T'58000/furlongs'", 24, "invalid time literal"),
        ("(visit = 1", 11, "end of expression"),
        ("visit = 1)", 10, "')'"),
        ("visit @ 3", 7, "'@'"),
        ("visit = 1 = 2", 11, "'='"),
        ("visit = 99999999999999999999", 9, "64 bits"),
        ("visit IN 1", 10, "'1'"),
    ],
)
def test_syntax_error_reports_exact_column(where, column, fragment):
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_where(where)
    err = info.value
    assert err.column == column
    assert err.expression == where
    assert f"column {column}" in str(err)
    assert fragment in str(err)


@pytest.mark.parametrize(
    ("where", "bind", "fragments"),
    [
        ("visit = 'abc'", None, ["visit is an integer; cannot compare it with the string 'abc'", "column 7"]),
        ("'abc' = visit", None, ["visit is an integer; cannot compare it with the string 'abc'"]),
        ("instrument = 3", None, ["instrument is a string", "the integer 3"]),
        ("visit.datetime_begin > 58000", None, ["visit.datetime_begin is a time", "the integer 58000"]),
        ("visit.exposure_time = T'2020-01-01'", None, ["visit.exposure_time is a float", "T'2020-01-01'"]),
        ("visit = band", None, ["visit is an integer", "band, which is a string"]),
        ("visit = v", {"v": "abc"}, ["visit is an integer", "bind value v = 'abc'"]),
        ("visit IN (1, 'a')", None, ["visit is an integer", "the string 'a' in its IN list"]),
        ("visit IN (vs)", {"vs": [1, "a"]}, ["visit is an integer", "in its IN list"]),
        ("instrument IN (1..3)", None, ["instrument is a string", "1..3", "integers"]),
        ("visit.exposure_time IN (1..3)", None, ["visit.exposure_time is a float", "1..3"]),
        ("visit", None, ["must be a condition", "visit, which is an integer"]),
        ("visit = 1 AND 3", None, ["AND", "the integer 3"]),
        ("NOT band", None, ["NOT", "band, which is a string"]),
        ("band + 1 = 2", None, ["'+'", "band, which is a string"]),
        ("visit = v", {"v": [1, 2]}, ["'v' is a list", "IN (...)"]),
        ("visit = v", {"v": object()}, ["'v' has type object"]),
        ("visit = v", {"v": 2**70}, ["64 bits"]),
        ("visitt = 1", None, ["unknown name 'visitt'", "Did you mean 'visit'?"]),
    ],
)
def test_type_errors_name_the_identifier(where, bind, fragments):
    with pytest.raises(InvalidQueryError) as info:
        compile_where(parse_where(where), resolve, bind)
    for fragment in fragments:
        assert fragment in str(info.value)


INJECTION = "x'; DROP TABLE visit; --"


def _assert_visit_table_intact() -> None:
    with engine().connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(visit)).scalar_one() == len(VISITS)
        tables = set(conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())
    assert {"visit", "detector"} <= tables


def test_string_literals_are_bound_parameters_not_sql():
    node = parse_where("instrument = 'x''; DROP TABLE visit; --'")
    assert node.rhs.value == INJECTION
    compiled = compile_where(node, resolve).compile(dialect=sa.dialects.sqlite.dialect())
    assert "DROP" not in str(compiled)
    assert "?" in str(compiled)
    assert INJECTION in compiled.params.values()
    assert visit_ids("instrument = 'x''; DROP TABLE visit; --'") == []
    _assert_visit_table_intact()


def test_bind_values_and_numbers_are_bound_parameters_not_sql():
    condition = compile_where(parse_where("instrument IN (names) OR visit = 42"), resolve, {"names": [INJECTION, "HSC"]})
    compiled = condition.compile(dialect=sa.dialects.sqlite.dialect())
    assert "DROP" not in str(compiled) and "42" not in str(compiled)
    assert sorted(map(str, compiled.params.values())) == sorted([INJECTION, "HSC", "42"])
    assert visit_ids("instrument IN (names)", {"names": [INJECTION]}) == []
    _assert_visit_table_intact()


def test_long_or_chain_is_flat_and_compiles_without_recursion():
    n = 5000
    node = parse_where(" OR ".join(f"visit = {i}" for i in range(n)))
    assert len(node.operands) == n
    assert len(compile_where(node, resolve).clauses) == n
    assert visit_ids(" OR ".join(f"visit = {i}" for i in (3, 5, 99) * 100)) == [3, 5]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_parse_arbitrary_text_returns_node_or_raises_syntax_error(text):
    try:
        node = parse_where(text)
    except ExpressionSyntaxError as err:
        assert 1 <= err.column <= len(text) + 1
    else:
        assert node is None or isinstance(node, Node)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="visteaxn.=<>!()'\"T0123456789-+*/%:, INnOTtDdRr", max_size=40))
def test_parse_grammar_like_text_returns_node_or_raises_syntax_error(text):
    try:
        parse_where(text)
    except ExpressionSyntaxError as err:
        assert 1 <= err.column <= len(text) + 1


_names = st.sampled_from(["visit", "visit.exposure_time", "visit.datetime_begin", "instrument", "band", "v", "vs"])
_ints = st.integers(-(10**6), 10**6).map(str)
_floats = st.floats(-1e6, 1e6, allow_nan=False).map(repr)
# Storable strings: NUL and lone surrogates are refused (tests/reliability/test_hostile_queries.py).
_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8)
_strings = _text.map(lambda s: "'" + s.replace("'", "''") + "'")
_times = st.sampled_from(["T'2020-01-01T03:00:00'", "T'58849.1/mjd'", "T'2020-01-01/utc'"])
_ranges = st.tuples(st.integers(-20, 20), st.integers(-20, 20), st.integers(-1, 4)).map(lambda t: f"{t[0]}..{t[1]}:{t[2]}")
_binary_ops = st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "AND", "OR", "+", "-", "*", "/", "%"])


def _compound(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, _binary_ops, children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda c: f"NOT ({c})"),
        children.map(lambda c: f"-({c})"),
        st.tuples(children, st.lists(st.one_of(children, _ranges), min_size=1, max_size=4), st.booleans()).map(
            lambda t: f"{t[0]} {'NOT ' if t[2] else ''}IN ({', '.join(t[1])})"
        ),
    )


_expressions = st.recursive(st.one_of(_names, _ints, _floats, _strings, _times), _compound, max_leaves=10)


@settings(max_examples=150, deadline=None)
@given(_expressions)
def test_generated_expressions_execute_or_raise_only_butler_errors(where):
    try:
        visit_ids(where, {"v": 3, "vs": [1, 2]})
    except (ExpressionSyntaxError, InvalidQueryError):
        pass


_valid_ranges = st.tuples(st.integers(-20, 20), st.integers(0, 10), st.integers(1, 4)).map(
    lambda t: f"{t[0]}..{t[0] + t[1]}:{t[2]}"
)
_numeric = st.recursive(
    st.one_of(st.sampled_from(["visit", "visit.exposure_time", "v"]), _ints, _floats),
    lambda c: st.one_of(
        st.tuples(c, st.sampled_from("+-*/%"), c).map(lambda t: f"({t[0]} {t[1]} {t[2]})"), c.map(lambda c: f"-({c})")
    ),
    max_leaves=4,
)
_comparison_ops = st.sampled_from(["=", "!=", "<>", "<", "<=", ">", ">="])
_typed_comparisons = st.one_of(
    st.tuples(_numeric, _comparison_ops, _numeric),
    st.tuples(st.one_of(st.sampled_from(["instrument", "band"]), _strings), _comparison_ops, _strings),
    st.tuples(st.just("visit.datetime_begin"), _comparison_ops, st.one_of(_times, st.just("t"))),
    st.tuples(
        _numeric,
        st.sampled_from(["IN", "NOT IN"]),
        st.lists(st.one_of(_ints, _floats, st.just("vs"), st.just("empty")), min_size=1, max_size=4).map(
            lambda items: f"({', '.join(items)})"
        ),
    ),
    st.tuples(st.just("visit"), st.sampled_from(["IN", "not in"]), st.lists(_valid_ranges, min_size=1, max_size=3)).map(
        lambda t: (t[0], t[1], f"({', '.join(t[2])})")
    ),
).map(" ".join)
_conditions = st.recursive(
    _typed_comparisons,
    lambda c: st.one_of(
        st.tuples(c, st.sampled_from(["AND", "OR", "and", "or"]), c).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
        c.map(lambda c: f"NOT ({c})"),
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(_conditions)
def test_generated_well_typed_conditions_always_execute(where):
    bind = {"v": 3, "vs": [1, 2.5], "empty": [], "t": T0}
    rows = visit_ids(where, bind)
    assert set(rows) <= set(IDS)
    assert referenced_identifiers(parse_where(where), bind) <= set(COLUMNS)


def _comparison() -> st.SearchStrategy[tuple[str, Callable[[int], bool]]]:
    ops = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}

    def in_list(items: list[int | tuple[int, int, int]], negated: bool) -> tuple[str, Callable[[int], bool]]:
        text = ", ".join(str(i) if isinstance(i, int) else f"{i[0]}..{i[0] + i[1]}:{i[2]}" for i in items)
        allowed = {i for i in items if isinstance(i, int)}
        for start, length, stride in (i for i in items if not isinstance(i, int)):
            allowed |= set(range(start, start + length + 1, stride))
        return f"visit {'NOT ' if negated else ''}IN ({text})", lambda x: (x in allowed) != negated

    return st.one_of(
        st.tuples(st.sampled_from(sorted(ops)), st.integers(-2, 14)).map(
            lambda t: (f"visit {t[0]} {t[1]}", lambda x, op=ops[t[0]], n=t[1]: op(x, n))
        ),
        st.builds(
            in_list,
            st.lists(
                st.one_of(st.integers(-2, 14), st.tuples(st.integers(-2, 14), st.integers(0, 8), st.integers(1, 4))),
                min_size=1,
                max_size=4,
            ),
            st.booleans(),
        ),
    )


def _combine(children: st.SearchStrategy[tuple[str, Callable[[int], bool]]]) -> st.SearchStrategy:
    return st.one_of(
        st.tuples(children, st.sampled_from(["AND", "or"]), children).map(
            lambda t: (
                f"({t[0][0]}) {t[1]} ({t[2][0]})",
                (lambda x, a=t[0][1], b=t[2][1]: a(x) and b(x)) if t[1] == "AND" else (lambda x, a=t[0][1], b=t[2][1]: a(x) or b(x)),
            )
        ),
        children.map(lambda c: (f"not ({c[0]})", lambda x, f=c[1]: not f(x))),
    )


@settings(max_examples=150, deadline=None)
@given(st.recursive(_comparison(), _combine, max_leaves=6))
def test_generated_integer_conditions_select_the_rows_python_selects(case):
    where, predicate = case
    assert visit_ids(where) == [i for i in IDS if predicate(i)]


def test_all_errors_are_butler_errors():
    assert issubclass(ExpressionSyntaxError, ButlerError) and issubclass(InvalidQueryError, ButlerError)
