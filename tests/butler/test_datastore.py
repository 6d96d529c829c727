"""Tests of butler/datastore.py: writing, reading, verifying, ingesting and removing dataset files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from astropy.table import Table

import repo_template
from butler.datasets import DatasetRef, DatasetType, StorageClassFactory
from butler.datastore import FileDatastore, StoredFileInfo
from butler.dimensions import DataCoordinate, DimensionUniverse
from butler.errors import CorruptDatasetError, DatastoreError, FileTemplateError, FormatterError, StorageClassError
from butler.formatters import Formatter
from butler.formatters.tables import FitsTableFormatter

TEMPLATE_DIR = Path(repo_template.__file__).parent


class HalfWritingFormatter(Formatter):
    """Writes some bytes, then fails: a formatter dying in the middle of a write."""

    extension = ".bin"

    def write(self, obj: Any, path: Path) -> None:
        path.write_bytes(b"partial")
        raise ValueError("disk on fire")

    def read(self, path, *, component=None, parameters=None):  # pragma: no cover - never reached
        raise NotImplementedError


def make_datastore(root: Path, **config: Any) -> FileDatastore:
    butler_config = yaml.safe_load((TEMPLATE_DIR / "butler.yaml").read_text())["datastore"]
    butler_config.update(config)
    storage_classes = StorageClassFactory(yaml.safe_load((TEMPLATE_DIR / "storage_classes.yaml").read_text()))
    formatters = yaml.safe_load((TEMPLATE_DIR / "formatters.yaml").read_text())["formatters"]
    formatters["broken"] = f"{__name__}.HalfWritingFormatter"
    return FileDatastore(root, butler_config, storage_classes, formatters)


def all_files(directory: Path) -> list[str]:
    """Every file and directory below ``directory`` (hidden ones included), as sorted relative paths."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


@pytest.fixture(scope="module")
def universe() -> DimensionUniverse:
    return DimensionUniverse.default()


@pytest.fixture()
def store(tmp_path) -> FileDatastore:
    return make_datastore(tmp_path / "repo")


@pytest.fixture()
def ref(universe) -> DatasetRef:
    dataset_type = DatasetType("src", ["visit", "detector"], "ArrowAstropy", universe=universe)
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    return DatasetRef(dataset_type, data_id, run="run1")


def catalog() -> Table:
    table = Table({"id": np.arange(5), "flux": np.linspace(1.0, 2.0, 5)})
    table["flux"].unit = "nJy"
    table.meta["visit"] = 42
    return table


def test_put_then_get_round_trips(store, ref):
    info = store.put(catalog(), ref)
    out = store.get(info)
    np.testing.assert_array_equal(out["flux"], catalog()["flux"])
    assert out["flux"].unit == "nJy" and out.meta["visit"] == 42


def test_file_is_at_the_predicted_path_with_recorded_size_and_checksum(store, ref):
    info = store.put(catalog(), ref)
    assert info.path == store.predict_path(ref) == "run1/src/src_HSC_42_7_run1.parq"
    data = (store.root / info.path).read_bytes()
    assert info.file_size == len(data)
    assert info.checksum == "sha256:" + hashlib.sha256(data).hexdigest()
    assert info.dataset_id == ref.id and info.storage_class == "ArrowAstropy"
    assert info.formatter == "butler.formatters.tables.ParquetFormatter"


def test_put_leaves_no_temporary_file(store, ref):
    store.put(catalog(), ref)
    assert all_files(store.root) == ["run1", "run1/src", "run1/src/src_HSC_42_7_run1.parq"]


def test_formatter_failure_mid_write_leaves_nothing(store, universe):
    dataset_type = DatasetType("broken", ["visit", "detector"], "ArrowAstropy", universe=universe)
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    with pytest.raises(FormatterError, match="disk on fire"):
        store.put(catalog(), DatasetRef(dataset_type, data_id, run="run1"))
    assert all_files(store.root) == []


def test_formatter_refusal_leaves_nothing(store, ref):
    table = catalog()
    table.meta["bad"] = object()  # a valid ArrowAstropy object the Parquet formatter cannot write
    with pytest.raises(FormatterError, match="meta"):
        store.put(table, ref)
    assert list(store.temp_files()) == [] and list(store.walk_files()) == []


@pytest.mark.parametrize(
    ("storage_class", "obj"),
    [
        ("ArrowAstropy", catalog()),
        ("AstropyFitsTable", catalog()),
        ("StructuredDataDict", {"a": [1, 2.5, "x"], "b": {"c": None}}),
        ("StructuredDataDictJson", {"a": [1, 2.5, "x"], "b": {"c": None}}),
        ("NumpyArray", np.arange(12.0).reshape(3, 4)),
    ],
)
def test_every_shipped_storage_class_round_trips_through_a_temporary_name(store, universe, storage_class, obj):
    dataset_type = DatasetType("thing", ["visit", "detector"], storage_class, universe=universe)
    data_id = DataCoordinate.standardize(instrument="HSC", visit=42, detector=7, universe=universe)
    info = store.put(obj, DatasetRef(dataset_type, data_id, run="run1"))
    assert list(store.walk_files()) == [info.path] and list(store.temp_files()) == []
    out = store.get(info)
    if isinstance(obj, Table):
        assert out.colnames == obj.colnames and out["flux"].unit == "nJy"
        np.testing.assert_array_equal(out["flux"], obj["flux"])
    elif isinstance(obj, np.ndarray):
        np.testing.assert_array_equal(out, obj)
    else:
        assert out == obj


def test_put_of_wrong_type_raises_storage_class_error(store, ref):
    with pytest.raises(StorageClassError, match="astropy.table.Table"):
        store.put({"not": "a table"}, ref)


def test_put_refuses_to_overwrite(store, ref):
    info = store.put(catalog(), ref)
    before = (store.root / info.path).read_bytes()
    again = DatasetRef(ref.dataset_type, ref.data_id, run="run1")  # same path, new dataset ID
    with pytest.raises(DatastoreError, match="already exists.*butler verify --fix"):
        store.put(Table({"x": [1]}), again)
    assert (store.root / info.path).read_bytes() == before


def test_get_of_deleted_file_is_corrupt(store, ref):
    info = store.put(catalog(), ref)
    (store.root / info.path).unlink()
    with pytest.raises(CorruptDatasetError, match=f"of dataset {ref.id} is missing"):
        store.get(info)


def test_get_of_truncated_file_is_corrupt(store, ref):
    info = store.put(catalog(), ref)
    path = store.root / info.path
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptDatasetError, match=f"expected {info.file_size} bytes, found {info.file_size - 10}"):
        store.get(info)


def test_get_of_bit_flipped_file_is_corrupt(store, ref):
    info = store.put(catalog(), ref)
    path = store.root / info.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDatasetError, match="checksum"):
        store.get(info)


def test_check_finds_a_bit_flip_even_when_get_does_not_verify(tmp_path, ref):
    store = make_datastore(tmp_path / "repo", verify_on_get=False)
    info = store.put(catalog(), ref)
    path = store.root / info.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDatasetError, match="checksum"):
        store.check(info)
    store.check(info, checksum=False)  # the size still matches


def test_get_of_unreadable_file_is_corrupt_even_without_checksums(tmp_path, ref):
    store = make_datastore(tmp_path / "repo", checksum=False)
    info = store.put(catalog(), ref)
    assert info.checksum is None
    path = store.root / info.path
    path.write_bytes(b"\0" * info.file_size)
    with pytest.raises(CorruptDatasetError, match="cannot read"):
        store.get(info)


def test_get_passes_parameters_to_the_formatter(store, ref):
    info = store.put(catalog(), ref)
    assert store.get(info, parameters={"columns": ["flux"]}).colnames == ["flux"]
    with pytest.raises(FormatterError, match="columns"):
        store.get(info, parameters={"rows": 1})


@pytest.mark.parametrize(
    "values",
    [
        {"instrument": ".."},
        {"band": "../../x"},
        {"band": "../.."},
        {"physical_filter": "../../x"},  # not in the default template, so used via a dataset-type template
    ],
)
def test_path_escaping_values_write_nothing_anywhere(tmp_path, universe, values):
    default = yaml.safe_load((TEMPLATE_DIR / "butler.yaml").read_text())["datastore"]["templates"]["default"]
    filtered = "{run}/{physical_filter}/{datasetType}_{instrument}_{visit}_{detector}"
    store = make_datastore(tmp_path / "repo", templates={"default": default, "filtered": filtered})
    full = {"instrument": "HSC", "detector": 7, "visit": 42, "band": "r", "physical_filter": "HSC-R", "day_obs": 20240101}
    full.update(values)
    group = universe.conform(["visit", "detector"])
    data_id = DataCoordinate.from_full_values(group, tuple(full[k] for k in group.data_coordinate_keys))
    name = "filtered" if "physical_filter" in values else "src"
    dataset_type = DatasetType(name, ["visit", "detector"], "ArrowAstropy", universe=universe)
    before = all_files(tmp_path)
    with pytest.raises(FileTemplateError):
        store.put(catalog(), DatasetRef(dataset_type, data_id, run="run1"))
    assert all_files(tmp_path) == before


def test_symlinked_directory_leading_outside_root_is_refused(tmp_path, store, ref):
    outside = tmp_path / "outside"
    outside.mkdir()
    store.root.mkdir()
    (store.root / "run1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FileTemplateError, match="outside"):
        store.put(catalog(), ref)
    assert all_files(outside) == []


# Ingest --------------------------------------------------------------------------------------------


@pytest.fixture()
def source(tmp_path) -> Path:
    path = tmp_path / "incoming" / "catalog.parq"
    path.parent.mkdir()
    from butler.datasets import StorageClass
    from butler.formatters.tables import ParquetFormatter

    ParquetFormatter(StorageClass("ArrowAstropy", "astropy.table.Table")).write(catalog(), path)
    return path


def test_ingest_copy_leaves_the_source(store, ref, source):
    info = store.ingest(source, ref, transfer="copy")
    assert source.exists()
    assert (store.root / info.path).read_bytes() == source.read_bytes()
    assert not (store.root / info.path).is_symlink()
    assert list(store.get(info)["id"]) == [0, 1, 2, 3, 4]


def test_ingest_move_removes_the_source(store, ref, source):
    data = source.read_bytes()
    info = store.ingest(source, ref, transfer="move")
    assert not source.exists()
    assert (store.root / info.path).read_bytes() == data


def test_ingest_hardlink_shares_the_inode(store, ref, source):
    info = store.ingest(source, ref, transfer="hardlink")
    assert (store.root / info.path).stat().st_ino == source.stat().st_ino


def test_ingest_symlink_makes_a_link_and_remove_keeps_the_target(store, ref, source):
    info = store.ingest(source, ref, transfer="symlink")
    link = store.root / info.path
    assert link.is_symlink() and Path(os.readlink(link)) == source
    assert len(store.get(info)) == 5
    store.remove([info])
    assert not os.path.lexists(link) and source.exists()


def test_ingest_direct_records_absolute_path_and_remove_leaves_it(store, ref, source):
    info = store.ingest(source, ref, transfer="direct")
    assert info.path == str(source) and Path(info.path).is_absolute()
    assert len(store.get(info)) == 5
    store.remove([info])
    assert source.exists()
    assert store.ingest(source, DatasetRef(ref.dataset_type, ref.data_id, "run2"), transfer=None).path == str(source)


def test_ingest_auto_takes_files_inside_root_in_place(store, ref, source):
    inside = store.root / "staging" / "cat.parq"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(source.read_bytes())
    info = store.ingest(inside, ref, transfer="auto")
    assert info.path == "staging/cat.parq"
    other = store.ingest(source, DatasetRef(ref.dataset_type, ref.data_id, "run2"), transfer="auto")
    assert other.path == "run2/src/src_HSC_42_7_run2.parq" and source.exists()


def test_ingest_with_formatter_keeps_source_extension(store, ref, tmp_path):
    path = tmp_path / "raw.fits"
    FitsTableFormatter(store.formatters.get(ref.dataset_type).storage_class).write(catalog(), path)
    info = store.ingest(path, ref, transfer="copy", formatter="butler.formatters.tables.FitsTableFormatter")
    assert info.path.endswith("src_HSC_42_7_run1.fits")
    assert info.formatter == "butler.formatters.tables.FitsTableFormatter"
    assert store.get(info)["flux"].unit == "nJy"


def test_ingest_unknown_transfer_lists_valid_modes(store, ref, source):
    with pytest.raises(DatastoreError, match="copy, direct, hardlink, move, symlink"):
        store.ingest(source, ref, transfer="link")


def test_ingest_missing_source_is_an_error(store, ref, tmp_path):
    with pytest.raises(DatastoreError, match="does not exist"):
        store.ingest(tmp_path / "nope.parq", ref)


# Remove and inventory -----------------------------------------------------------------------------


def test_remove_deletes_files_and_empty_directories_but_not_root(store, ref, universe):
    info = store.put(catalog(), ref)
    store.remove([info, info])  # the second time the file is already gone: ignored
    assert store.root.is_dir() and all_files(store.root) == []


def test_remove_keeps_directories_still_in_use(store, ref):
    first = store.put(catalog(), ref)
    other_id = DataCoordinate.standardize(instrument="HSC", visit=43, detector=7, universe=ref.data_id.universe)
    second = store.put(catalog(), DatasetRef(ref.dataset_type, other_id, "run1"))
    store.remove([first])
    assert list(store.walk_files()) == [second.path]


def test_walk_files_excludes_repository_and_temporary_files(store, ref):
    info = store.put(catalog(), ref)
    for name in ["butler.yaml", "dimensions.yaml", "storage_classes.yaml", "formatters.yaml", "gen3.sqlite3",
                 "gen3.sqlite3-wal", "gen3.sqlite3-shm", "gen3.sqlite3-journal"]:
        (store.root / name).write_text("x")
    temp = store.root / "run1" / "src" / (".orphan.parq.tmp-" + "0" * 32)
    temp.write_text("partial")
    (store.root / "run1" / "stray.txt").write_text("orphan")
    assert sorted(store.walk_files()) == [info.path, "run1/stray.txt"]
    assert list(store.temp_files()) == ["run1/src/" + temp.name]


def test_stored_file_info_round_trips_through_json(store, ref):
    info = store.put(catalog(), ref)
    assert StoredFileInfo.from_simple(json.loads(json.dumps(info.to_simple()))) == info


def test_validate_dataset_type(store, universe):
    store.validate_dataset_type(DatasetType("src", ["visit", "detector"], "ArrowAstropy", universe=universe))
    with pytest.raises(StorageClassError):
        store.validate_dataset_type(DatasetType("src", ["visit"], "NoSuchClass", universe=universe))
    narrow = make_datastore(store.root, templates={"default": "{run}/{datasetType}_{visit}"})
    with pytest.raises(FileTemplateError, match="detector"):
        narrow.validate_dataset_type(DatasetType("src", ["visit", "detector"], "ArrowAstropy", universe=universe))


def test_unknown_config_key_is_an_error(tmp_path):
    with pytest.raises(DatastoreError, match="checksum"):
        make_datastore(tmp_path, checksums=False)


def test_put_with_clobber_replaces_an_orphan_file(store, ref):
    path = store.abspath(store.put(catalog(), ref))
    path.write_bytes(b"left by a killed attempt")
    with pytest.raises(DatastoreError, match="already exists"):
        store.put(catalog(), ref)
    again = store.put(catalog(), ref, clobber=True)
    np.testing.assert_array_equal(store.get(again)["flux"], catalog()["flux"])
