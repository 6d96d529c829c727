"""Tests of export and import between repositories (`butler.transfers`)."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from astropy.table import Table
from astropy.time import Time, TimeDelta

from butler import Butler, CollectionType, DatasetRef, FileDataset
from butler.errors import (
    ButlerError,
    ConfigError,
    ConflictingDefinitionError,
    CorruptDatasetError,
    DuplicateDatasetError,
)
from butler.regions import polygon_from_radec
from butler.transfers import MANIFEST_NAME, export_datasets, import_datasets

INSTRUMENT = "SimCam"
# visit -> (physical_filter, day_obs); band "i" and day_obs 20240103 are registered but never used.
VISITS = {1: ("g_sim", 20240101), 2: ("r_sim", 20240101), 3: ("g_sim", 20240102), 4: ("r_sim", 20240102)}
ELEMENTS = ("instrument", "band", "physical_filter", "day_obs", "detector", "visit")


def _insert_dimension_records(butler: Butler) -> None:
    reg = butler.registry
    reg.insert_dimension_data(
        "instrument",
        {
            "name": INSTRUMENT, "class_name": "tasks.instruments.SimCam",
            "visit_max": 1000, "exposure_max": 1000, "detector_max": 4,
        },
    )
    reg.insert_dimension_data("band", {"name": "g"}, {"name": "r"}, {"name": "i"})
    reg.insert_dimension_data(
        "physical_filter",
        {"instrument": INSTRUMENT, "name": "g_sim", "band": "g"},
        {"instrument": INSTRUMENT, "name": "r_sim", "band": "r"},
    )
    reg.insert_dimension_data("day_obs", *({"instrument": INSTRUMENT, "id": d} for d in (20240101, 20240102, 20240103)))
    reg.insert_dimension_data(
        "detector", *({"instrument": INSTRUMENT, "id": i, "full_name": f"S{i}", "purpose": "SCIENCE"} for i in (0, 1))
    )
    reg.insert_dimension_data("visit", *(_visit(v) for v in VISITS))


def _visit(v: int) -> dict[str, Any]:
    physical_filter, day_obs = VISITS[v]
    return {
        "instrument": INSTRUMENT,
        "id": v,
        "physical_filter": physical_filter,
        "day_obs": day_obs,
        "name": f"visit{v}",
        "exposure_time": 30.0 + v / 3,
        "datetime_begin": Time("2024-01-01T03:00:00", scale="tai") + TimeDelta(600 * v, format="sec"),
        "region": polygon_from_radec([10.0 + v, 10.5 + v, 10.5 + v, 10.0 + v], [-1.0, -1.0, -0.5, -0.5]),
    }


def _summary(v: int) -> dict[str, Any]:
    return {"visit": v, "seeing": 0.7 + 0.01 * v, "stars": list(range(v))}


def _catalog(v: int) -> Table:
    return Table({"id": np.arange(5) + 100 * v, "flux": np.linspace(1.0, 2.0, 5) * v})


def _image(v: int) -> np.ndarray:
    return np.arange(12, dtype=np.float32).reshape(3, 4) * v


def _build_source(root: Path) -> tuple[Butler, dict[str, list[DatasetRef]]]:
    """A repository with 12 datasets in two runs, a TAGGED collection and a CHAINED one."""
    butler = Butler.create(root)
    _insert_dimension_records(butler)
    butler.register_dataset_type("summary", ["visit"], "StructuredDataDict")
    butler.register_dataset_type("catalog", ["visit", "detector"], "ArrowAstropy")
    butler.register_dataset_type("image", ["visit", "detector"], "NumpyArray")
    refs: dict[str, list[DatasetRef]] = {"summary": [], "catalog": [], "image": []}
    for v in VISITS:
        data_id = {"instrument": INSTRUMENT, "visit": v}
        refs["summary"].append(butler.put(_summary(v), "summary", data_id, run="run_a"))
        refs["image"].append(butler.put(_image(v), "image", data_id, detector=0, run="run_a"))
        refs["catalog"].append(butler.put(_catalog(v), "catalog", data_id, detector=1, run="run_b"))
    butler.registry.register_run("run_empty")
    butler.registry.register_collection("best", CollectionType.TAGGED)
    butler.registry.associate("best", [refs["image"][0], refs["image"][2], refs["catalog"][1]])
    butler.collection_chain("all", ["best", "run_b", "run_a"])
    butler.collection_chain("partial", ["run_a", "run_empty"])
    return butler, refs


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Butler, dict[str, list[DatasetRef]]]:
    butler, refs = _build_source(tmp_path_factory.mktemp("source") / "repo")
    yield butler, refs
    butler.close()


@pytest.fixture(scope="module")
def export_dir(source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export of visits 1 and 2 from the chain ``all``."""
    butler, _ = source
    directory = tmp_path_factory.mktemp("export") / "out"
    export_datasets(butler, directory, collections=["all"], where="visit IN (1..2)")
    return directory


@pytest.fixture(scope="module")
def imported(export_dir, tmp_path_factory: pytest.TempPathFactory) -> Butler:
    """A fresh repository into which ``export_dir`` was imported once."""
    butler = Butler.create(tmp_path_factory.mktemp("target") / "repo")
    import_datasets(butler, export_dir)
    yield butler
    butler.close()


def _manifest(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / MANIFEST_NAME).read_text())


def _selected(refs: dict[str, list[DatasetRef]]) -> list[DatasetRef]:
    return [r for group in refs.values() for r in group if r.data_id["visit"] in (1, 2)]


def _snapshot(root: Path) -> dict[str, Any]:
    """Row counts, dataset IDs, collections and files of a repository, read through a new Butler."""
    with Butler(root) as butler:
        reg = butler.registry
        return {
            "datasets": reg.count_datasets(),
            "records": sorted(str(r["dataset_id"]) for r in reg.all_datastore_records()),
            "collections": [(c.name, c.type) for c in reg.query_collections("*")],
            "dataset_types": [dt.name for dt in reg.query_dataset_types("*")],
            "dimensions": {e: len(reg.query_dimension_records(e)) for e in ELEMENTS},
            "files": sorted(butler.datastore.walk_files()),
        }


def _copy_export(export_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "export_copy"
    shutil.copytree(export_dir, copy)
    return copy


# Export ------------------------------------------------------------------------------------------------


def test_manifest_holds_exactly_the_selected_datasets(source, export_dir):
    _, refs = source
    listed = {d["id"] for d in _manifest(export_dir)["datasets"]}
    assert listed == {str(r.id) for r in _selected(refs)}
    assert len(listed) == 6


def test_export_returns_the_number_of_datasets(source, tmp_path):
    butler, _ = source
    n = export_datasets(butler, tmp_path / "out", collections="run_a", dataset_types="image", where="visit > 1")
    assert n == 3
    assert len(_manifest(tmp_path / "out")["datasets"]) == 3


def test_exported_files_are_byte_copies_at_the_source_paths(source, export_dir):
    butler, _ = source
    for d in _manifest(export_dir)["datasets"]:
        record = butler.registry.get_datastore_records([uuid.UUID(d["id"])])[uuid.UUID(d["id"])]
        assert d["path"] == record["path"]
        assert (export_dir / d["path"]).read_bytes() == (butler.datastore.root / record["path"]).read_bytes()
        assert d["file_size"] == record["file_size"] and d["checksum"] == record["checksum"]


def test_manifest_records_are_exactly_those_the_data_ids_need(export_dir):
    keys = {
        (block["element"], _key(block["element"], r))
        for block in _manifest(export_dir)["dimension_records"]
        for r in block["records"]
    }
    assert keys == {
        ("instrument", (INSTRUMENT,)),
        ("band", ("g",)),
        ("band", ("r",)),
        ("physical_filter", (INSTRUMENT, "g_sim")),
        ("physical_filter", (INSTRUMENT, "r_sim")),
        ("day_obs", (INSTRUMENT, 20240101)),
        ("detector", (INSTRUMENT, 0)),
        ("detector", (INSTRUMENT, 1)),
        ("visit", (INSTRUMENT, 1)),
        ("visit", (INSTRUMENT, 2)),
    }


def _key(element: str, record: dict[str, Any]) -> tuple:
    if element in ("instrument", "band"):
        return (record["name"],)
    if element == "physical_filter":
        return (record["instrument"], record["name"])
    return (record["instrument"], record["id"])


def test_manifest_records_come_in_dependency_order(source, export_dir):
    butler, _ = source
    order = list(butler.dimensions.elements)
    elements = [block["element"] for block in _manifest(export_dir)["dimension_records"]]
    assert elements == sorted(elements, key=order.index)
    assert elements.index("band") < elements.index("physical_filter") < elements.index("visit")


def test_manifest_collections_with_tagged_members_and_chain(source, export_dir):
    _, refs = source
    collections = {c["name"]: c for c in _manifest(export_dir)["collections"]}
    assert {n: c["type"] for n, c in collections.items()} == {
        "run_a": "RUN", "run_b": "RUN", "best": "TAGGED", "all": "CHAINED"
    }
    # image of visit 3 is tagged too, but outside the selection
    assert set(collections["best"]["datasets"]) == {str(refs["image"][0].id), str(refs["catalog"][1].id)}
    assert collections["all"]["children"] == ["best", "run_b", "run_a"]


def test_default_collections_export_runs_only(source, tmp_path):
    butler, _ = source
    n = export_datasets(butler, tmp_path / "out")  # the butler has no default collections: every RUN
    types = {c["name"]: c["type"] for c in _manifest(tmp_path / "out")["collections"]}
    assert n == 12
    assert types == {"run_a": "RUN", "run_b": "RUN"}


def test_chain_with_an_unexported_child_is_skipped_with_a_warning(source, tmp_path, caplog):
    butler, _ = source
    with caplog.at_level(logging.WARNING, logger="butler.transfers"):
        export_datasets(butler, tmp_path / "out", collections="partial")
    names = [c["name"] for c in _manifest(tmp_path / "out")["collections"]]
    assert names == ["run_a"]
    assert "partial" in caplog.text and "run_empty" in caplog.text


def test_export_refuses_a_non_empty_directory(source, tmp_path):
    butler, _ = source
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_datasets(butler, tmp_path / "out", collections="run_a")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_externally_stored_files_are_exported_under_direct(tmp_path):
    butler = Butler.create(tmp_path / "repo")
    _insert_dimension_records(butler)
    butler.register_dataset_type("summary", ["visit"], "StructuredDataDict")
    outside = tmp_path / "outside.yaml"
    outside.write_text(yaml.safe_dump(_summary(1)))
    dataset = FileDataset(outside, "summary", {"instrument": INSTRUMENT, "visit": 1})
    (ref,) = butler.ingest(dataset, transfer="direct", run="ext")
    export_datasets(butler, tmp_path / "out", collections="ext")
    (entry,) = _manifest(tmp_path / "out")["datasets"]
    assert entry["path"] == f"direct/{ref.id.hex}_outside.yaml"
    assert (tmp_path / "out" / entry["path"]).read_bytes() == outside.read_bytes()
    butler.close()


# Import ------------------------------------------------------------------------------------------------


def test_import_keeps_ids_data_ids_and_runs(source, imported):
    _, refs = source
    for ref in _selected(refs):
        got = imported.registry.get_dataset(ref.id)
        assert got is not None
        assert (got.dataset_type.name, got.run, got.data_id) == (ref.dataset_type.name, ref.run, ref.data_id)
    assert imported.registry.count_datasets() == 6


def test_imported_datasets_read_back_equal(source, imported):
    _, refs = source
    for ref in _selected(refs):
        v = ref.data_id["visit"]
        got = imported.get(ref)
        if ref.dataset_type.name == "summary":
            assert got == _summary(v)
        elif ref.dataset_type.name == "image":
            np.testing.assert_array_equal(got, _image(v))
        else:
            assert got.colnames == ["id", "flux"]
            np.testing.assert_array_equal(got["id"], _catalog(v)["id"])
            np.testing.assert_allclose(got["flux"], _catalog(v)["flux"], rtol=0, atol=0)


def test_imported_tagged_and_chained_collections(source, imported):
    _, refs = source
    members = {r.id for r in imported.query_datasets("image", "best", find_first=False, explain=False)}
    members |= {r.id for r in imported.query_datasets("catalog", "best", find_first=False, explain=False)}
    assert members == {refs["image"][0].id, refs["catalog"][1].id}
    assert imported.registry.get_collection_chain("all") == ("best", "run_b", "run_a")


def test_imported_dimension_records_equal_the_source(source, imported):
    butler, _ = source
    for element in ELEMENTS:
        for record in imported.registry.query_dimension_records(element):
            original = butler.registry.get_dimension_record(element, dict(record.data_id.required))
            # each repository has its own universe object, so compare the values (times, regions included)
            assert record.to_simple() == original.to_simple()
    visit2 = imported.registry.get_dimension_record("visit", {"instrument": INSTRUMENT, "visit": 2})
    assert visit2.region.encode() == _visit(2)["region"].encode()
    assert len(imported.registry.query_dimension_records("band")) == 2  # "i" was not needed


def test_importing_twice_fails_and_changes_nothing(imported, export_dir):
    root = imported.datastore.root
    before = _snapshot(root)
    with pytest.raises(DuplicateDatasetError):
        import_datasets(imported, export_dir)
    assert _snapshot(root) == before
    assert before["datasets"] == 6 and len(before["files"]) == 6


def test_universe_mismatch_is_a_config_error(export_dir, tmp_path):
    copy = _copy_export(export_dir, tmp_path)
    manifest = _manifest(copy)
    manifest["universe"]["version"] += 1
    (copy / MANIFEST_NAME).write_text(yaml.safe_dump(manifest))
    target = Butler.create(tmp_path / "target")
    before = _snapshot(target.datastore.root)
    with pytest.raises(ConfigError, match="dimension universe"):
        import_datasets(target, copy)
    assert _snapshot(target.datastore.root) == before


def test_unknown_format_version_is_a_config_error(export_dir, tmp_path):
    copy = _copy_export(export_dir, tmp_path)
    manifest = _manifest(copy)
    manifest["format_version"] = 99
    (copy / MANIFEST_NAME).write_text(yaml.safe_dump(manifest))
    with pytest.raises(ConfigError, match="format version 99"):
        import_datasets(Butler.create(tmp_path / "target"), copy)


def test_a_directory_without_manifest_is_not_an_export(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ButlerError, match="not an export directory"):
        import_datasets(Butler.create(tmp_path / "target"), tmp_path / "nothing")


def test_corrupted_file_fails_import_and_leaves_target_unchanged(export_dir, tmp_path):
    copy = _copy_export(export_dir, tmp_path)
    last = copy / _manifest(copy)["datasets"][-1]["path"]  # earlier files are written before the failure
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    target = Butler.create(tmp_path / "target")
    before = _snapshot(target.datastore.root)
    with pytest.raises(CorruptDatasetError, match="checksum"):
        import_datasets(target, copy)
    assert _snapshot(target.datastore.root) == before
    assert before["files"] == [] and before["datasets"] == 0


def test_conflicting_dimension_record_fails_and_changes_nothing(export_dir, tmp_path):
    target = Butler.create(tmp_path / "target")
    target.registry.insert_dimension_data("instrument", {"name": INSTRUMENT, "class_name": "other.Camera"})
    before = _snapshot(target.datastore.root)
    with pytest.raises(ConflictingDefinitionError, match="instrument"):
        import_datasets(target, export_dir)
    assert _snapshot(target.datastore.root) == before


def test_identical_existing_records_and_types_are_accepted(export_dir, tmp_path):
    target = Butler.create(tmp_path / "target")
    _insert_dimension_records(target)
    target.register_dataset_type("image", ["visit", "detector"], "NumpyArray")
    assert import_datasets(target, export_dir) == 6
    assert len(target.registry.query_dimension_records("band")) == 3


def test_move_transfer_removes_sources_after_success(export_dir, tmp_path):
    copy = _copy_export(export_dir, tmp_path)
    target = Butler.create(tmp_path / "target")
    import_datasets(target, copy, transfer="move")
    paths = [d["path"] for d in _manifest(copy)["datasets"]]
    assert not any((copy / p).exists() for p in paths)
    assert len(list(target.datastore.walk_files())) == 6
    assert all(target.exists(r) for r in target.registry.refs_in_runs(["run_a", "run_b"]))
