"""Dimension universe, groups, records and data IDs."""

from __future__ import annotations

import pytest
from astropy.time import Time

from butler import DataCoordinate, DimensionRecord, DimensionUniverse
from butler.dimensions import nsec_to_time, time_to_nsec
from butler.errors import ConfigError, DataIdError, DimensionNameError
from butler.regions import polygon_from_radec


def test_universe_has_the_documented_dimensions(universe):
    assert set(universe.dimensions) == {
        "instrument", "band", "physical_filter", "detector", "day_obs", "exposure", "visit", "skymap", "tract", "patch"
    }
    assert universe.version >= 1
    assert universe["visit_detector_region"].spatial == universe["visit"].spatial == "observation"
    assert universe["patch"].spatial == "skymap"


def test_group_closure_required_and_implied(universe):
    group = universe.conform(["visit", "detector"])
    assert set(group.required) == {"instrument", "visit", "detector"}
    assert set(group.implied) == {"physical_filter", "band", "day_obs"}
    assert "visit_detector_region" in group.elements
    assert universe.conform(["patch"]).required == ("skymap", "tract", "patch")
    # physical_filter is implied by visit, so it is not required when both are asked for
    both = universe.conform(["visit", "physical_filter"])
    assert both.required == ("instrument", "visit") and "physical_filter" in both.implied


def test_unknown_dimension_suggests(universe):
    with pytest.raises(DimensionNameError, match="Did you mean 'detector'"):
        universe.conform(["detecter"])


def test_data_coordinate_equality_and_hash_use_required_values(universe):
    a = DataCoordinate.standardize(instrument="Cam", visit=1, detector=2, universe=universe)
    b = DataCoordinate.standardize({"detector": 2, "visit": 1, "instrument": "Cam"}, universe=universe)
    full = DataCoordinate.standardize(
        instrument="Cam", visit=1, detector=2, physical_filter="r1", band="r", day_obs=20200101, universe=universe
    )
    assert a == b == full and hash(a) == hash(full)
    assert not a.has_full() and full.has_full()
    assert full["band"] == "r"
    with pytest.raises(KeyError, match="expand"):
        a["band"]
    assert {a: 1}[full] == 1
    assert a.subset(["detector"]) == DataCoordinate.standardize(instrument="Cam", detector=2, universe=universe)


def test_numpy_integers_are_accepted_and_normalised(universe):
    import numpy as np

    d = DataCoordinate.standardize(instrument="Cam", visit=np.int64(5), detector=np.int32(1), universe=universe)
    assert type(d["visit"]) is int and d["visit"] == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"instrument": "Cam", "visit": 1.5, "detector": 0}, "visit must be of type int"),
        ({"instrument": "Cam", "visit": True, "detector": 0}, "visit must be of type int"),
        ({"instrument": "Cam", "visit": "1", "detector": 0}, "visit must be of type int"),
        ({"instrument": "x" * 33, "visit": 1, "detector": 0}, "at most 32"),
        ({"instrument": "Cam", "visit": 1, "detecor": 0}, "Did you mean 'detector'"),
    ],
)
def test_bad_data_id_values(universe, kwargs, message):
    with pytest.raises(DataIdError, match=message):
        DataCoordinate.standardize(kwargs, universe=universe, dimensions=["visit", "detector"])


def test_standardize_many_matches_standardize(universe):
    group = universe.conform(["visit", "detector"])
    mappings = [{"instrument": "Cam", "visit": v, "detector": d} for v in range(3) for d in range(2)]
    fast = DataCoordinate.standardize_many(mappings, group)
    slow = [DataCoordinate.standardize(m, dimensions=group) for m in mappings]
    assert fast == slow and [hash(x) for x in fast] == [hash(x) for x in slow]
    with pytest.raises(DataIdError, match="visit must be of type int"):
        DataCoordinate.standardize_many([{"instrument": "Cam", "visit": "7", "detector": 0}], group)


def test_record_round_trips_through_simple_form(universe):
    region = polygon_from_radec([1, 2, 2, 1], [0, 0, 1, 1])
    record = DimensionRecord(
        universe["visit"],
        {"instrument": "Cam", "id": 4, "physical_filter": "r1", "day_obs": 20200101, "exposure_time": 30.0,
         "datetime_begin": Time("2020-01-01T03:04:05.123456789", scale="tai"), "region": region},
    )
    again = DimensionRecord.from_simple(universe["visit"], record.to_simple())
    assert again == record
    assert again.region.contains(polygon_from_radec([1.2, 1.3, 1.3], [0.2, 0.2, 0.3]).getCentroid())
    assert record.data_id["physical_filter"] == "r1"


def test_time_round_trip_is_nanosecond_exact():
    for text in ("1970-01-01T00:00:00", "2006-09-20T03:04:05.123456789", "2262-01-01T00:00:00"):
        t = Time(text, scale="tai", precision=9)
        nsec = time_to_nsec(t)
        assert time_to_nsec(nsec_to_time(nsec)) == nsec
        back = nsec_to_time(nsec)
        back.precision = 9
        assert back.isot == t.isot
    assert time_to_nsec(Time("1970-01-01T00:00:01", scale="tai")) == 10**9


def test_record_requires_keys_and_types(universe):
    with pytest.raises(DataIdError, match="needs a value for 'id'"):
        DimensionRecord(universe["detector"], {"instrument": "Cam"})
    with pytest.raises(DataIdError, match="unknown field"):
        DimensionRecord(universe["detector"], {"instrument": "Cam", "id": 1, "colour": "red"})


def test_universe_config_errors():
    with pytest.raises(ConfigError, match="cycle"):
        DimensionUniverse({"version": 1, "elements": {"a": {"key": {"name": "id", "type": "int"}, "requires": ["b"]},
                                                      "b": {"key": {"name": "id", "type": "int"}, "requires": ["a"]}}})
    with pytest.raises(ConfigError, match="unknown element"):
        DimensionUniverse({"version": 1, "elements": {"a": {"key": {"name": "id", "type": "int"}, "implies": ["zz"]}}})
    with pytest.raises(ConfigError, match="unknown type"):
        DimensionUniverse({"version": 1, "elements": {"a": {"key": {"name": "id", "type": "complex"}}}})
