"""CALIBRATION collections: `Timespan`, `Registry.certify` / `decertify`, lookups by time, the
``certify-calibrations`` command and export/import of validity ranges (`butler/registry/_calibrations.py`).

Registry tests run on SQLite and, with ``BUTLER_TEST_POSTGRES_URL``, on PostgreSQL (the ``repo``
fixture).  The toy camera of ``tests/conftest.py`` has visit ``v`` at 2020-01-01T0v:00 (v < 5) or
2020-01-02T0(v-5):00 (v >= 5) TAI, lasting 30 + v s; odd visits are in filter r1, even ones in g1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.time import Time
from click.testing import CliRunner
from conftest import N_DETECTORS, table_counts

from butler import Butler, CollectionType, DataCoordinate, DatasetRef, Timespan
from butler.cli import cli
from butler.dimensions import time_to_nsec
from butler.errors import (
    CalibrationLookupError,
    CollectionTypeError,
    ConflictingDefinitionError,
    DatasetTypeError,
    TimespanError,
)

A_SPAN = Timespan("2020-01-01T00:00:00", "2020-01-01T02:30:00")
B_SPAN = Timespan("2020-01-01T02:30:00", None)
DETECTORS = range(N_DETECTORS)


def at(iso: str) -> Timespan:
    """The 1 ns timespan of an instant (ISO TAI)."""
    t = time_to_nsec(iso)
    return Timespan.from_nsec(t, t + 1)


def put_biases(butler: Butler, run: str, value: float, detectors=DETECTORS) -> dict[int, DatasetRef]:
    return {d: butler.put(np.full(2, value), "bias", instrument="Cam", detector=d, run=run) for d in detectors}


@dataclass
class Calib:
    butler: Butler
    a: dict[int, DatasetRef]  # by detector
    b: dict[int, DatasetRef]


@pytest.fixture
def c(populated: Butler) -> Calib:
    """``bias`` (instrument, detector) calibrations: run calib/A (value 1) certified in CALIBRATION collection
    ``calib`` over A_SPAN, run calib/B (value 2) over B_SPAN (unbounded end)."""
    populated.register_dataset_type("bias", ["instrument", "detector"], "NumpyArray", is_calibration=True)
    calib = Calib(populated, put_biases(populated, "calib/A", 1.0), put_biases(populated, "calib/B", 2.0))
    reg = populated.registry
    assert reg.register_collection("calib", CollectionType.CALIBRATION)
    assert reg.certify("calib", list(calib.a.values()), A_SPAN) == N_DETECTORS
    assert reg.certify("calib", list(calib.b.values()), B_SPAN) == N_DETECTORS
    return calib


def associations(butler: Butler, collection: str = "calib") -> set[tuple]:
    return {
        (a.ref.id, a.ref.data_id["detector"], a.timespan)
        for a in butler.registry.query_dataset_associations("bias", [collection])
    }


def run_cli(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


# Timespan ---------------------------------------------------------------------------------------------------


def test_timespan_is_half_open_with_unbounded_sides():
    span = Timespan("2020-01-01T00:00:00", "2020-01-01T01:00:00")
    assert span.contains("2020-01-01T00:00:00") and not span.contains("2020-01-01T01:00:00")
    assert span.contains(Time("2020-01-01T00:59:59.999999999", scale="tai", precision=9))
    assert not span.overlaps(Timespan("2020-01-01T01:00:00", None))  # touching ends do not overlap
    assert span.overlaps(Timespan("2020-01-01T00:59:59.999999999", None))
    assert Timespan(None, None).overlaps(span) and Timespan(None, None).contains("1700-01-01T00:00:00")
    assert span.begin.isot == "2020-01-01T00:00:00.000" and Timespan(None, None).end is None
    empty = Timespan("2020-01-01T00:00:00", "2020-01-01T00:00:00")
    assert empty.is_empty() and not empty.overlaps(Timespan(None, None))
    # The same instant given in UTC and in TAI (37 s apart in 2020) is the same timespan.
    assert Timespan(Time("2020-01-01T00:00:00", scale="utc"), None) == Timespan("2020-01-01T00:00:37", None)


def test_timespan_difference_truncates_and_splits():
    outer = Timespan("2020-01-01T00:00:00", "2020-01-01T04:00:00")
    assert outer.difference(Timespan("2020-01-01T01:00:00", "2020-01-01T02:00:00")) == [
        Timespan("2020-01-01T00:00:00", "2020-01-01T01:00:00"),
        Timespan("2020-01-01T02:00:00", "2020-01-01T04:00:00"),
    ]
    assert outer.difference(Timespan("2020-01-01T03:00:00", None)) == [Timespan("2020-01-01T00:00:00", "2020-01-01T03:00:00")]
    assert outer.difference(Timespan(None, None)) == []
    assert outer.difference(Timespan("2021-01-01T00:00:00", None)) == [outer]


def test_timespan_simple_form_round_trips_and_bad_input_is_refused():
    for span in (A_SPAN, B_SPAN, Timespan(None, "2020-01-01T00:00:00"), Timespan(None, None)):
        simple = span.to_simple()
        assert json.loads(json.dumps(simple)) == simple
        assert Timespan.from_simple(simple) == span and hash(Timespan.from_simple(simple)) == hash(span)
    assert B_SPAN.to_simple() == [time_to_nsec("2020-01-01T02:30:00"), None]
    with pytest.raises(TimespanError, match="before it begins"):
        Timespan("2020-01-02T00:00:00", "2020-01-01T00:00:00")
    with pytest.raises(TimespanError, match="must be a time"):
        Timespan("yesterday", None)
    with pytest.raises(TimespanError, match=r"\[begin_nsec, end_nsec\]"):
        Timespan.from_simple({"begin": 1})


# Certify ------------------------------------------------------------------------------------------------------


def test_certify_needs_a_calibration_collection(c):
    reg = c.butler.registry
    reg.register_collection("tagged", CollectionType.TAGGED)
    for name in ("calib/A", "tagged"):
        with pytest.raises(CollectionTypeError, match=f"{name!r} is a .* collection.*CALIBRATION"):
            reg.certify(name, [c.a[0]], A_SPAN)


def test_certify_needs_a_calibration_dataset_type(c):
    c.butler.register_dataset_type("toy", ["instrument", "detector"], "NumpyArray")
    ref = c.butler.put(np.ones(2), "toy", instrument="Cam", detector=0, run="calib/A")
    with pytest.raises(DatasetTypeError, match="'toy' is not a calibration dataset type.*is_calibration=True"):
        c.butler.registry.certify("calib", [ref], A_SPAN)


def test_lookup_by_time_inside_outside_and_at_the_edges(c):
    def find(span: Timespan, detector: int = 0):
        return c.butler.registry.find_dataset("bias", instrument="Cam", detector=detector, collections="calib", timespan=span)

    a0, b0 = c.a[0], c.b[0]
    assert find(at("2020-01-01T00:00:00")) == a0  # begin is inside
    assert find(at("2020-01-01T02:29:59.999999999")) == a0
    assert find(at("2020-01-01T02:30:00")) == b0  # A's end is outside A, B's begin inside B
    assert find(at("2019-12-31T23:59:59.999999999")) is None
    assert find(at("2250-01-01T00:00:00")) == b0  # unbounded end (the stored sentinel)
    assert find(at("2020-01-01T01:00:00"), detector=3) == c.a[3]
    with pytest.raises(CalibrationLookupError, match="2 'bias' datasets .* valid during .* in CALIBRATION collection 'calib'") as err:
        find(Timespan("2020-01-01T02:00:00", "2020-01-01T03:00:00"))
    assert str(a0.id) in str(err.value) and str(b0.id) in str(err.value) and str(A_SPAN) in str(err.value)


def test_overlapping_range_is_refused_naming_both_and_nothing_is_certified(c):
    before = associations(c.butler)
    refs_c = put_biases(c.butler, "calib/C", 3.0, detectors=(0, 1))
    new = Timespan("2020-01-01T01:00:00", "2020-01-01T02:00:00")
    with pytest.raises(ConflictingDefinitionError) as err:
        c.butler.registry.certify("calib", list(refs_c.values()), new)
    message = str(err.value)
    assert str(new) in message and str(A_SPAN) in message and "may not overlap" in message
    assert associations(c.butler) == before  # one transaction: detector 1's was not certified either


def test_touching_ranges_are_accepted(c):
    refs_c = put_biases(c.butler, "calib/C", 3.0, detectors=(0,))
    c.butler.registry.certify("calib", [refs_c[0]], Timespan("2019-12-31T00:00:00", "2020-01-01T00:00:00"))
    find = c.butler.registry.find_dataset
    assert find("bias", instrument="Cam", detector=0, collections="calib", timespan=at("2019-12-31T23:59:59")) == refs_c[0]
    assert find("bias", instrument="Cam", detector=0, collections="calib", timespan=at("2020-01-01T00:00:00")) == c.a[0]


def test_decertify_truncates_splits_and_removes_ranges(c):
    reg = c.butler.registry
    a0, a1, b0 = c.a[0], c.a[1], c.b[0]
    n = reg.decertify("calib", "bias", Timespan("2020-01-01T01:00:00", "2020-01-01T02:00:00"), data_ids=[{"instrument": "Cam", "detector": 0}])
    assert n == 1
    got = associations(c.butler)
    assert (a0.id, 0, Timespan("2020-01-01T00:00:00", "2020-01-01T01:00:00")) in got
    assert (a0.id, 0, Timespan("2020-01-01T02:00:00", "2020-01-01T02:30:00")) in got
    assert (a0.id, 0, A_SPAN) not in got and (a1.id, 1, A_SPAN) in got  # detector 1 untouched
    assert reg.find_dataset("bias", instrument="Cam", detector=0, collections="calib", timespan=at("2020-01-01T01:30:00")) is None
    # A lookup across the hole still finds one dataset (two ranges of the same dataset are not ambiguous).
    assert reg.find_dataset("bias", instrument="Cam", detector=0, collections="calib",
                            timespan=Timespan("2020-01-01T00:30:00", "2020-01-01T02:15:00")) == a0
    # From 02:15 on: A's ranges are truncated, B's removed, for every detector.
    reg.decertify("calib", "bias", Timespan("2020-01-01T02:15:00", None))
    got = associations(c.butler)
    assert {span for _, _, span in got} == {
        Timespan("2020-01-01T00:00:00", "2020-01-01T01:00:00"),
        Timespan("2020-01-01T02:00:00", "2020-01-01T02:15:00"),
        Timespan("2020-01-01T00:00:00", "2020-01-01T02:15:00"),
    }
    assert b0.id not in {i for i, _, _ in got} and len(got) == N_DETECTORS + 1


def test_chains_search_calibration_members_in_order(c):
    reg = c.butler.registry
    fallback = put_biases(c.butler, "calib/fallback", 9.0, detectors=(0,))[0]
    c.butler.collection_chain("defaults", ["calib", "calib/fallback"])
    c.butler.collection_chain("override", ["calib/fallback", "calib"])
    for span, expected in ((at("2019-06-01T00:00:00"), fallback), (at("2020-01-01T01:00:00"), c.a[0])):
        assert reg.find_dataset("bias", instrument="Cam", detector=0, collections="defaults", timespan=span) == expected
        assert reg.find_dataset("bias", instrument="Cam", detector=0, collections="override", timespan=span) == fallback
    c.butler.collection_chain("outer", ["defaults"])  # nested chains flatten to [calib, calib/fallback]
    assert c.butler.get("bias", instrument="Cam", detector=0, visit=3, collections="outer")[0] == 2.0  # B at 03:00


def test_get_and_exists_use_the_visit_time_and_the_filter_it_implies(c):
    c.butler.register_dataset_type("skyFrame", ["instrument", "physical_filter", "detector"], "NumpyArray", is_calibration=True)
    reg = c.butler.registry
    for value, run, physical_filter, span in (
        (10.0, "skyFrames/r_day1", "r1", Timespan("2020-01-01T00:00:00", "2020-01-02T00:00:00")),
        (20.0, "skyFrames/r_day2", "r1", Timespan("2020-01-02T00:00:00", None)),
        (30.0, "skyFrames/g", "g1", Timespan(None, None)),
    ):
        refs = [c.butler.put(np.full(2, value), "skyFrame", instrument="Cam", physical_filter=physical_filter, detector=d, run=run)
                for d in DETECTORS]
        reg.register_collection("calib", CollectionType.CALIBRATION)
        reg.certify("calib", refs, span)
    sky = lambda visit: c.butler.get("skyFrame", instrument="Cam", visit=visit, detector=2, collections="calib")[0]  # noqa: E731
    assert (sky(1), sky(7), sky(2), sky(6)) == (10.0, 20.0, 30.0, 30.0)
    assert c.butler.get("bias", {"instrument": "Cam", "visit": 1, "detector": 1}, collections="calib")[0] == 1.0
    assert c.butler.get("bias", instrument="Cam", visit=3, detector=1, collections="calib")[0] == 2.0
    assert c.butler.exists("bias", instrument="Cam", visit=3, detector=1, collections="calib")
    assert not c.butler.exists("bias", instrument="Cam", detector=1, collections="calib", timespan=at("2019-01-01T00:00:00"))
    assert c.butler.get("bias", instrument="Cam", detector=1, collections="calib", timespan=at("2020-01-01T00:10:00"))[0] == 1.0
    with pytest.raises(CalibrationLookupError, match="timespan=.*exposure or visit"):
        c.butler.get("bias", instrument="Cam", detector=1, collections="calib")


def test_find_datasets_takes_each_visits_time_and_keys_results_by_the_given_data_ids(c):
    reg = c.butler.registry
    data_ids = [reg.expand_data_id(instrument="Cam", visit=v, detector=1) for v in (1, 3)]
    data_ids.append(DataCoordinate.standardize(instrument="Cam", visit=0, detector=2, universe=reg.universe))
    found = reg.find_datasets("bias", data_ids, collections="calib")
    assert found == {data_ids[0]: c.a[1], data_ids[1]: c.b[1], data_ids[2]: c.a[2]}
    plain = [DataCoordinate.standardize(instrument="Cam", detector=d, universe=reg.universe) for d in (0, 3)]
    found = reg.find_datasets("bias", plain, collections="calib", timespans=[at("2020-01-01T00:00:00"), at("2019-01-01T00:00:00")])
    assert found == {plain[0]: c.a[0]}
    with pytest.raises(CalibrationLookupError, match="no exposure or visit"):
        reg.find_datasets("bias", plain, collections="calib")


def test_query_datasets_find_first_needs_a_time_and_lists_everything_without(c):
    all_refs = set(c.a.values()) | set(c.b.values())
    assert set(c.butler.query_datasets("bias", "calib", find_first=False)) == all_refs
    assert set(c.butler.query_datasets("bias", "calib", instrument="Cam", visit=1)) == set(c.a.values())
    assert set(c.butler.query_datasets("bias", "calib", timespan=at("2021-01-01T00:00:00"))) == set(c.b.values())
    assert c.butler.query_datasets("bias", "calib", timespan=at("2019-01-01T00:00:00"), explain=False) == []
    with pytest.raises(CalibrationLookupError, match="'bias' is a calibration.*CALIBRATION collection"):
        c.butler.query_datasets("bias", "calib")


def test_removing_runs_and_collections_keeps_certifications_consistent(c):
    table = "dataset_calibs_instrument_detector"
    assert table_counts(c.butler)[table] == 2 * N_DETECTORS
    c.butler.remove_runs(["calib/A"])
    assert table_counts(c.butler)[table] == N_DETECTORS
    assert {a.ref for a in c.butler.registry.query_dataset_associations("bias", ["calib"])} == set(c.b.values())
    assert c.butler.registry.find_dataset("bias", instrument="Cam", detector=0, collections="calib", timespan=at("2020-01-01T01:00:00")) is None
    c.butler.registry.remove_collection("calib")
    assert table_counts(c.butler)[table] == 0
    assert len(c.butler.query_datasets("bias", "calib/B")) == N_DETECTORS  # the datasets stay in their run


# The butler command ---------------------------------------------------------------------------------------------


def test_cli_certify_calibrations_creates_the_collection_and_reports_the_count(c):
    root = c.butler.config.root
    result = run_cli("certify-calibrations", root, "calib/A", "new/calib", "bias",
                     "--begin-date", "2020-01-01T00:00:00", "--end-date", "2020-01-02T00:00:00")
    assert result.exit_code == 0, result.output
    assert f"Certified {N_DETECTORS} 'bias' dataset(s) from 'calib/A'" in result.stdout
    with Butler(root) as butler:
        assert butler.registry.get_collection_type("new/calib") is CollectionType.CALIBRATION
        expected = {(r.id, d, Timespan("2020-01-01T00:00:00", "2020-01-02T00:00:00")) for d, r in c.a.items()}
        assert associations(butler, "new/calib") == expected
    again = run_cli("certify-calibrations", root, "calib/A", "new/calib", "bias", "--begin-date", "2020-01-01T12:00:00")
    assert again.exit_code == 1 and "may not overlap" in again.stderr and "Traceback" not in again.output
    rows = json.loads(run_cli("query-datasets", root, "bias", "-c", "new/calib", "--format", "json").stdout)
    assert len(rows) == N_DETECTORS
    assert {(r["calibration"], r["valid_from"], r["valid_until"]) for r in rows} == {
        ("new/calib", "2020-01-01T00:00:00.000", "2020-01-02T00:00:00.000")
    }


def test_cli_query_datasets_shows_one_row_per_validity_range(c):
    rows = json.loads(run_cli("query-datasets", c.butler.config.root, "bias", "-c", "calib,calib/A", "--format", "json").stdout)
    ranges = {(r["run"], r["detector"], r["calibration"], r["valid_from"], r["valid_until"]) for r in rows}
    assert ("calib/B", 0, "calib", "2020-01-01T02:30:00.000", None) in ranges  # unbounded end is empty
    assert ("calib/A", 3, "calib", "2020-01-01T00:00:00.000", "2020-01-01T02:30:00.000") in ranges
    assert len(rows) == 2 * N_DETECTORS


def test_cli_certify_takes_the_first_child_of_a_chain_unless_searching_all_inputs(c):
    root = c.butler.config.root
    put_biases(c.butler, "calib/partial", 5.0, detectors=(0,))
    c.butler.collection_chain("bias/inputs", ["calib/partial", "calib/A"])
    first = run_cli("certify-calibrations", root, "bias/inputs", "c1", "bias")
    assert first.exit_code == 0 and "Certified 1 'bias' dataset(s) from 'calib/partial'" in first.stdout
    every = run_cli("certify-calibrations", root, "bias/inputs", "c2", "bias", "--search-all-inputs")
    assert every.exit_code == 0 and f"Certified {N_DETECTORS} 'bias'" in every.stdout
    with Butler(root) as butler:
        runs = {a.ref.data_id["detector"]: a.ref.run for a in butler.registry.query_dataset_associations("bias", ["c2"])}
    assert runs == {0: "calib/partial", 1: "calib/A", 2: "calib/A", 3: "calib/A"}


def test_cli_certify_refuses_non_calibrations_and_bad_dates(c):
    root = c.butler.config.root
    c.butler.register_dataset_type("toy", ["instrument", "detector"], "NumpyArray")
    c.butler.put(np.ones(2), "toy", instrument="Cam", detector=0, run="toys")
    result = run_cli("certify-calibrations", root, "toys", "c3", "toy")
    assert result.exit_code == 1 and "'toy' is not a calibration dataset type" in result.stderr
    result = run_cli("certify-calibrations", root, "calib/A", "c3", "bias", "--begin-date", "soon")
    assert result.exit_code == 1 and "must be a time" in result.stderr
    result = run_cli("certify-calibrations", root, "calib/A", "calib/B", "bias")
    assert result.exit_code == 1 and "already exists as a RUN collection" in result.stderr


def test_cli_remove_collection_drops_its_certifications(c):
    result = run_cli("remove-collection", c.butler.config.root, "calib", "--no-confirm")
    assert result.exit_code == 0 and "Removed CALIBRATION collection 'calib'" in result.stdout
    assert table_counts(c.butler)["dataset_calibs_instrument_detector"] == 0
    assert run_cli("remove-collection", c.butler.config.root, "calib/A", "--no-confirm").exit_code == 1


# Export and import -----------------------------------------------------------------------------------------------


def test_export_import_round_trips_calibration_collections_and_their_ranges(c, tmp_path: Path):
    c.butler.registry.decertify("calib", "bias", Timespan("2020-01-01T01:00:00", "2020-01-01T02:00:00"))  # split A's ranges
    c.butler.collection_chain("defaults", ["calib", "calib/A"])
    n = c.butler.export(tmp_path / "export", collections=["defaults"])
    assert n == 2 * N_DETECTORS
    with Butler.create(tmp_path / "other") as other:
        assert other.import_(tmp_path / "export") == n
        assert other.registry.get_collection_type("calib") is CollectionType.CALIBRATION
        assert other.registry.get_collection_chain("defaults") == ("calib", "calib/A")
        assert associations(other) == associations(c.butler) and len(associations(other)) == 3 * N_DETECTORS
        for when, value in (("2020-01-01T00:30:00", 1.0), ("2020-01-01T01:30:00", None), ("2020-01-01T03:00:00", 2.0)):
            ref = other.find_dataset("bias", instrument="Cam", detector=2, collections="calib", timespan=at(when))
            assert (None if ref is None else other.get(ref)[0]) == value
