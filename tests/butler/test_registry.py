"""Registry: collections and chains, dataset types, dataset insertion, lookup and removal."""

from __future__ import annotations

import pytest

from butler import Butler, CollectionType, DatasetIdGenEnum, DatasetType
from butler.errors import (
    CollectionCycleError,
    CollectionTypeError,
    ConflictingDefinitionError,
    DataIdError,
    DataIdValueError,
    DuplicateDatasetError,
    MissingCollectionError,
    MissingDatasetTypeError,
)
from conftest import N_DETECTORS, N_VISITS, table_counts


@pytest.fixture
def calexp(populated: Butler) -> DatasetType:
    dt = DatasetType("calexp", ["visit", "detector"], "ArrowAstropy", universe=populated.dimensions)
    populated.registry.register_dataset_type(dt)
    return dt


def _all_data_ids():
    return [{"instrument": "Cam", "visit": v, "detector": d} for v in range(N_VISITS) for d in range(N_DETECTORS)]


def test_chain_flattens_in_order_without_duplicates(repo):
    reg = repo.registry
    for r in ("a", "b", "c"):
        reg.register_run(r)
    reg.register_collection("inner", CollectionType.CHAINED)
    reg.set_collection_chain("inner", ["b", "a"])
    reg.register_collection("outer", CollectionType.CHAINED)
    reg.set_collection_chain("outer", ["c", "inner", "a"])
    assert [c.name for c in reg.resolve_collections("outer")] == ["c", "b", "a"]
    assert reg.get_collection_chain("outer") == ("c", "inner", "a")


def test_chain_cycle_is_rejected_and_chain_unchanged(repo):
    reg = repo.registry
    reg.register_run("r")
    for name in ("x", "y"):
        reg.register_collection(name, CollectionType.CHAINED)
    reg.set_collection_chain("x", ["r"])
    reg.set_collection_chain("y", ["x"])
    with pytest.raises(CollectionCycleError, match="contain itself"):
        reg.set_collection_chain("x", ["r", "y"])
    with pytest.raises(CollectionCycleError):
        reg.set_collection_chain("x", ["x"])
    assert reg.get_collection_chain("x") == ("r",)


def test_collection_type_conflict(repo):
    repo.registry.register_run("r")
    assert repo.registry.register_run("r") is False
    with pytest.raises(ConflictingDefinitionError, match="RUN"):
        repo.registry.register_collection("r", CollectionType.TAGGED)


def test_unknown_collection_suggests_close_name(repo):
    repo.registry.register_run("calib/run1")
    with pytest.raises(MissingCollectionError, match="Did you mean 'calib/run1'"):
        repo.registry.resolve_collections(["calib/rn1"])


def test_dataset_type_conflicting_definition(populated, calexp):
    assert populated.registry.register_dataset_type(calexp) is False
    other = DatasetType("calexp", ["visit"], "ArrowAstropy", universe=populated.dimensions)
    with pytest.raises(ConflictingDefinitionError, match="already registered"):
        populated.registry.register_dataset_type(other)


def test_unknown_dataset_type_suggests_registered(populated, calexp):
    with pytest.raises(MissingDatasetTypeError, match="Did you mean 'calexp'"):
        populated.registry.get_dataset_type("calexpp")


def test_bulk_insert_then_find_each(populated, calexp):
    reg = populated.registry
    reg.register_run("run1")
    refs = reg.insert_datasets("calexp", _all_data_ids(), "run1")
    assert len(refs) == N_VISITS * N_DETECTORS
    assert len({r.id for r in refs}) == len(refs)
    found = reg.find_dataset("calexp", {"instrument": "Cam", "visit": 3, "detector": 2}, collections="run1")
    assert found == next(r for r in refs if r.data_id["visit"] == 3 and r.data_id["detector"] == 2)
    assert found.run == "run1"


def test_duplicate_in_bulk_insert_inserts_nothing(populated, calexp):
    reg = populated.registry
    reg.register_run("run1")
    reg.insert_datasets("calexp", _all_data_ids()[:5], "run1")
    before = table_counts(populated)
    with pytest.raises(DuplicateDatasetError, match="already exists in collection 'run1'"):
        reg.insert_datasets("calexp", _all_data_ids()[3:9], "run1")
    assert table_counts(populated) == before


def test_unknown_dimension_value_inserts_nothing(populated, calexp):
    reg = populated.registry
    reg.register_run("run1")
    before = table_counts(populated)
    bad = _all_data_ids()[:3] + [{"instrument": "Cam", "visit": 999, "detector": 0}]
    with pytest.raises(DataIdValueError, match="visit"):
        reg.insert_datasets("calexp", bad, "run1")
    assert table_counts(populated) == before


@pytest.mark.parametrize(
    "data_id, message",
    [
        ({"instrument": "Cam", "visit": 1}, "needs a value for detector"),
        ({"instrument": "Cam", "visit": "one", "detector": 1}, "visit must be of type int"),
        ({"instrument": "Cam", "visit": 1, "detector": 1, "vist": 3}, "Did you mean 'visit'"),
        ({"instrument": 7, "visit": 1, "detector": 1}, "instrument must be of type string"),
    ],
)
def test_wrong_data_id_keys_or_types(populated, calexp, data_id, message):
    populated.registry.register_run("run1")
    with pytest.raises(DataIdError, match=message):
        populated.registry.insert_datasets("calexp", [data_id], "run1")


def test_insert_into_non_run_collection_rejected(populated, calexp):
    reg = populated.registry
    reg.register_collection("tagged", CollectionType.TAGGED)
    with pytest.raises(CollectionTypeError, match="RUN"):
        reg.insert_datasets("calexp", _all_data_ids()[:1], "tagged")


def test_find_first_follows_chain_order(populated, calexp):
    reg = populated.registry
    reg.register_run("old")
    reg.register_run("new")
    old = reg.insert_datasets("calexp", _all_data_ids(), "old")
    new = reg.insert_datasets("calexp", _all_data_ids()[:4], "new")
    reg.register_collection("chain", CollectionType.CHAINED)
    reg.set_collection_chain("chain", ["new", "old"])
    refs = reg.query_datasets("calexp", "chain")
    assert len(refs) == len(old)
    chosen = {r.id for r in refs}
    assert {r.id for r in new} <= chosen
    assert len(chosen & {r.id for r in old}) == len(old) - len(new)
    everything = reg.query_datasets("calexp", "chain", find_first=False)
    assert len(everything) == len(old) + len(new)


def test_tagged_collection_membership(populated, calexp):
    reg = populated.registry
    reg.register_run("run1")
    refs = reg.insert_datasets("calexp", _all_data_ids(), "run1")
    reg.register_collection("best", CollectionType.TAGGED)
    reg.associate("best", refs[:3])
    assert {r.id for r in reg.query_datasets("calexp", "best")} == {r.id for r in refs[:3]}
    assert {r.run for r in reg.query_datasets("calexp", "best")} == {"run1"}
    with pytest.raises(DuplicateDatasetError):
        reg.associate("best", refs[:1])
    reg.disassociate("best", refs[:1])
    assert len(reg.query_datasets("calexp", "best")) == 2


def test_deterministic_ids(populated, calexp):
    reg = populated.registry
    reg.register_run("a")
    reg.register_run("b")
    (ra,) = reg.insert_datasets("calexp", _all_data_ids()[:1], "a", id_generation_mode=DatasetIdGenEnum.DATAID_TYPE)
    (rb,) = reg.insert_datasets("calexp", _all_data_ids()[:1], "b", id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN)
    assert ra.id.version == 5 and rb.id.version == 5
    assert ra.id != rb.id
    # The same dataset type and data ID always give the same DATAID_TYPE ID: a re-ingest is a duplicate.
    with pytest.raises(DuplicateDatasetError):
        reg.insert_datasets("calexp", _all_data_ids()[:1], "b", id_generation_mode=DatasetIdGenEnum.DATAID_TYPE)


def test_expand_data_id_fills_implied_values_and_records(populated):
    data_id = populated.registry.expand_data_id(instrument="Cam", visit=3, detector=1)
    assert data_id["band"] == "r" and data_id["physical_filter"] == "r1" and data_id["day_obs"] == 20200101
    assert data_id.records["visit"].exposure_time == 33.0
    assert data_id.records["detector"].full_name == "D1"
    assert data_id.region is not None
    with pytest.raises(DataIdValueError, match="no visit record"):
        populated.registry.expand_data_id(instrument="Cam", visit=77, detector=1)


def test_dimension_record_conflicts(populated):
    reg = populated.registry
    assert reg.sync_dimension_data("band", {"name": "r"}) is False
    assert reg.sync_dimension_data("band", {"name": "i"}) is True
    with pytest.raises(ConflictingDefinitionError, match="already exists"):
        reg.insert_dimension_data("detector", {"instrument": "Cam", "id": 0, "full_name": "other"})
    with pytest.raises(ConflictingDefinitionError, match="different values"):
        reg.sync_dimension_data("detector", {"instrument": "Cam", "id": 0, "full_name": "other"})
    with pytest.raises(DataIdValueError, match="physical_filter"):
        reg.insert_dimension_data("visit", {"instrument": "Cam", "id": 50, "physical_filter": "nope", "day_obs": 20200101})


def test_registry_persists_across_butlers(populated, calexp):
    populated.registry.register_run("run1")
    refs = populated.registry.insert_datasets("calexp", _all_data_ids(), "run1")
    root = populated.config.root
    populated.close()
    again = Butler(root)
    assert len(again.registry.query_datasets("calexp", "run1")) == len(refs)
    assert again.registry.get_dataset(refs[5].id) == refs[5]
    again.close()


def test_replace_updates_referenced_records_in_place(populated):
    """replace=True overwrites a visit that detector regions and datasets refer to, and re-indexes its region."""
    from butler.regions import polygon_from_radec

    reg = populated.registry
    moved = polygon_from_radec([50.0, 50.1, 50.1, 50.0], [5.0, 5.0, 5.1, 5.1])
    new = {"instrument": "Cam", "id": 3, "physical_filter": "r1", "day_obs": 20200101, "exposure_time": 99.0, "region": moved}
    assert reg.insert_dimension_data("visit", new, replace=True) == 1
    record = reg.get_dimension_record("visit", {"instrument": "Cam", "visit": 3})
    assert record.exposure_time == 99.0
    assert reg.get_dimension_record("visit_detector_region", {"instrument": "Cam", "visit": 3, "detector": 0}) is not None
    # The spatial index follows the new region: visit 3 no longer overlaps the tract at RA 9-12.
    overlapping = {d["visit"] for d in populated.query_data_ids(["visit", "tract"])}
    assert 3 not in overlapping and 2 in overlapping
