"""The Butler facade: put/get/ingest/remove round trips, and bad input that must change nothing."""

from __future__ import annotations


import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import Table

from butler import Butler, CollectionType, DatasetIdGenEnum, FileDataset
from butler.errors import (
    ButlerError,
    CollectionTypeError,
    ConfigError,
    CorruptDatasetError,
    DataIdError,
    DataIdValueError,
    DatasetNotFoundError,
    DuplicateDatasetError,
    FileTemplateError,
    MissingCollectionError,
    MissingDatasetTypeError,
    RepositoryNotFoundError,
    StorageClassError,
)

from conftest import table_counts

DATA_ID = {"instrument": "Cam", "visit": 3, "detector": 1}


def snapshot(butler: Butler) -> tuple[dict[str, int], list[str]]:
    """Row count of every registry table and every file under the root."""
    counts = table_counts(butler)
    root = butler.config.root
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "sqlite3" not in p.name)
    return counts, files


@pytest.fixture
def table() -> Table:
    t = Table({"id": np.arange(5), "flux": np.linspace(1.0, 2.0, 5)})
    t["flux"].unit = "nJy"
    return t


@pytest.fixture
def butler(populated: Butler) -> Butler:
    populated.register_dataset_type("src", ["visit", "detector"], "ArrowAstropy")
    populated.register_dataset_type("summary", ["visit"], "StructuredDataDict")
    populated.registry.register_run("run1")
    populated.run = "run1"
    populated.collections = ("run1",)
    return populated


def test_put_get_round_trip_with_units(butler, table):
    ref = butler.put(table, "src", DATA_ID)
    got = butler.get("src", DATA_ID)
    assert list(got["flux"]) == list(table["flux"]) and got["flux"].unit == table["flux"].unit
    assert butler.get(ref)["id"].tolist() == [0, 1, 2, 3, 4]
    # The file lands where the template says, in the run's directory, with band and day_obs filled in.
    path = butler.datastore.abspath(butler._stored_info(ref))
    assert path.relative_to(butler.config.root).as_posix() == "run1/src/r/20200101/src_Cam_3_1_run1.parq"


def test_get_with_parameters_and_deferred(butler, table):
    butler.put(table, "src", DATA_ID)
    assert butler.get("src", DATA_ID, parameters={"columns": ["flux"]}).colnames == ["flux"]
    handle = butler.get_deferred("src", DATA_ID)
    assert handle.data_id["visit"] == 3
    assert len(handle.get()) == 5


def test_find_first_get_prefers_first_collection(butler, table):
    butler.put(table, "src", DATA_ID, run="run1")
    newer = table.copy()
    newer["flux"] *= 2
    butler.put(newer, "src", DATA_ID, run="run2")
    assert butler.get("src", DATA_ID, collections=["run2", "run1"])["flux"][0] == 2.0
    assert butler.get("src", DATA_ID, collections=["run1", "run2"])["flux"][0] == 1.0


def test_exists(butler, table):
    assert not butler.exists("src", DATA_ID)
    ref = butler.put(table, "src", DATA_ID)
    assert butler.exists("src", DATA_ID)
    butler.datastore.abspath(butler._stored_info(ref)).unlink()
    assert not butler.exists("src", DATA_ID)


def test_get_uri_is_the_file_astropy_reads(butler, table):
    butler.register_dataset_type("srcFits", ["visit", "detector"], "AstropyFitsTable")
    ref = butler.put(table, "srcFits", DATA_ID)
    uri = butler.get_uri("srcFits", DATA_ID)
    assert uri == butler.get_uri(ref) and uri.is_absolute() and uri.is_file()
    assert Table.read(uri)["flux"].tolist() == table["flux"].tolist()
    with pytest.raises(DatasetNotFoundError, match="no 'srcFits' dataset"):
        butler.get_uri("srcFits", {**DATA_ID, "detector": 2})
    butler.register_dataset_type("summary_packages", ["visit"], "Packages")
    butler.put({"numpy": "2.0"}, "summary_packages", instrument="Cam", visit=3)
    with pytest.raises(DatasetNotFoundError, match="stored in the registry, not as a file"):
        butler.get_uri("summary_packages", instrument="Cam", visit=3)
    butler.remove_runs(["run1"])
    with pytest.raises(DatasetNotFoundError, match="is not in this repository's registry"):
        butler.get_uri(ref)


def test_nested_run_name(butler, table):
    ref = butler.put(table, "src", DATA_ID, run="u/someone/run1")
    path = butler.datastore.abspath(butler._stored_info(ref)).relative_to(butler.config.root).as_posix()
    assert path == "u/someone/run1/src/r/20200101/src_Cam_3_1_u_someone_run1.parq"
    assert len(butler.get(ref)) == 5


def test_remove_runs_deletes_rows_files_and_chain_membership(butler, table):
    refs = [butler.put(table, "src", DATA_ID | {"visit": v}) for v in range(4)]
    butler.put({"n": 1}, "summary", instrument="Cam", visit=0, run="keep")
    butler.collection_chain("all", ["run1", "keep"])
    files = [butler.datastore.abspath(butler._stored_info(r)) for r in refs]
    assert butler.remove_runs(["run1"]) == 4
    assert not any(f.exists() for f in files)
    assert not (butler.config.root / "run1").exists()
    assert butler.registry.get_collection_chain("all") == ("keep",)
    assert butler.get("summary", instrument="Cam", visit=0, collections="all") == {"n": 1}
    with pytest.raises(MissingCollectionError):
        butler.registry.get_collection("run1")


def test_ingest_with_deterministic_ids_is_idempotent_by_skip(butler, tmp_path):
    paths = []
    for v in range(3):
        p = tmp_path / f"s{v}.yaml"
        p.write_text(f"visit: {v}\n")
        paths.append(p)
    datasets = [FileDataset(p, "summary", {"instrument": "Cam", "visit": v}) for v, p in enumerate(paths)]
    refs = butler.ingest(*datasets, transfer="copy", run="raw", id_generation_mode=DatasetIdGenEnum.DATAID_TYPE)
    assert [butler.get(r) for r in refs] == [{"visit": v} for v in range(3)]
    before = snapshot(butler)
    assert butler.ingest(*datasets, run="raw", id_generation_mode=DatasetIdGenEnum.DATAID_TYPE, skip_existing=True) == []
    assert snapshot(butler) == before
    with pytest.raises(DuplicateDatasetError):
        butler.ingest(*datasets, run="raw", id_generation_mode=DatasetIdGenEnum.DATAID_TYPE)
    assert snapshot(butler) == before


def test_ingest_move_deletes_sources_only_after_success(butler, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\n")
    bad = FileDataset(tmp_path / "missing.yaml", "summary", {"instrument": "Cam", "visit": 1})
    before = snapshot(butler)
    with pytest.raises(ButlerError):
        butler.ingest(FileDataset(good, "summary", {"instrument": "Cam", "visit": 0}), bad, transfer="move", run="raw")
    assert good.exists() and snapshot(butler) == before
    butler.ingest(FileDataset(good, "summary", {"instrument": "Cam", "visit": 0}), transfer="move", run="raw")
    assert not good.exists()


# Bad input: a specific error, and the repository is unchanged ---------------------------------------------------


def _bad_inputs(butler: Butler, table: Table):
    butler.registry.register_collection("tagged", CollectionType.TAGGED)
    butler.collection_chain("chain", ["run1"])
    butler.registry.insert_dimension_data("band", {"name": "../../x"})
    butler.registry.insert_dimension_data("physical_filter", {"instrument": "Cam", "name": "evil", "band": "../../x"})
    butler.registry.insert_dimension_data(
        "visit", {"instrument": "Cam", "id": 66, "physical_filter": "evil", "day_obs": 20200101}
    )
    butler.put(table, "src", DATA_ID)
    return [
        (lambda: butler.put(table, "srcc", DATA_ID), MissingDatasetTypeError, "Did you mean 'src'"),
        (lambda: butler.put(table, "src", DATA_ID), DuplicateDatasetError, "already exists"),
        (lambda: butler.put(table, "src", DATA_ID, run="tagged"), CollectionTypeError, "RUN"),
        (lambda: butler.put(table, "src", DATA_ID, run="chain"), CollectionTypeError, "RUN"),
        (lambda: butler.put(table, "src", {"instrument": "Cam", "visit": 3}), DataIdError, "detector"),
        (lambda: butler.put(table, "src", DATA_ID | {"visit": "3"}), DataIdError, "int"),
        (lambda: butler.put(table, "src", DATA_ID | {"visit": 999}), DataIdValueError, "visit"),
        (lambda: butler.put({"a": 1}, "src", DATA_ID | {"visit": 4}), StorageClassError, "astropy.table.Table"),
        (lambda: butler.put(table, "src", DATA_ID | {"visit": 66}, run="new"), FileTemplateError, "../../x"),
        (lambda: butler.get("src", DATA_ID, collections="nope"), MissingCollectionError, "does not exist"),
        (lambda: butler.get("src", DATA_ID | {"visit": 4}), DatasetNotFoundError, "run1"),
        (lambda: butler.query_datasets("src", where="visit = 1; DROP TABLE dataset"), ButlerError, "column 10"),
        (lambda: butler.collection_chain("chain", ["chain"]), ButlerError, "itself"),
        (lambda: butler.remove_runs(["chain"]), CollectionTypeError, "not a RUN"),
    ]


def test_bad_inputs_raise_and_change_nothing(butler, table):
    cases = _bad_inputs(butler, table)
    for action, error, message in cases:
        before = snapshot(butler)
        with pytest.raises(error, match=message.replace(".", r"\.").replace("(", r"\(")):
            action()
        assert snapshot(butler) == before, f"repository changed by {error.__name__} case"
    assert butler.registry.query_collections("new") == []


def test_missing_and_corrupt_files_on_get(butler, table):
    ref = butler.put(table, "src", DATA_ID)
    path = butler.datastore.abspath(butler._stored_info(ref))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDatasetError, match="checksum"):
        butler.get(ref)
    path.unlink()
    with pytest.raises(CorruptDatasetError, match="missing"):
        butler.get(ref)


def test_not_a_repository(tmp_path):
    with pytest.raises(RepositoryNotFoundError, match="butler create"):
        Butler(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="already holds files"):
        Butler.create(tmp_path)


def test_read_only_butler_refuses_writes(butler, table):
    root = butler.config.root
    before = snapshot(butler)
    ro = Butler(root, writeable=False, collections="run1")
    with pytest.raises(ButlerError, match="read-only"):
        ro.put(table, "src", DATA_ID, run="run1")
    with pytest.raises(ButlerError, match="read-only"):
        ro.registry.register_run("x")
    assert snapshot(butler) == before
    ro.close()


def test_verify_finds_and_fixes_orphans_and_missing(butler, table):
    refs = [butler.put(table, "src", DATA_ID | {"visit": v}) for v in range(3)]
    assert butler.verify().ok
    orphan = butler.config.root / "run1" / "stray.parq"
    orphan.write_bytes(b"x")
    butler.datastore.abspath(butler._stored_info(refs[0])).unlink()
    report = butler.verify()
    assert report.orphan_files == ["run1/stray.parq"]
    assert report.missing_files == [(str(refs[0].id), butler._stored_info(refs[0]).path)]
    fixed = butler.verify(fix=True)
    assert fixed.fixed and butler.verify().ok
    assert (butler.config.root / ".quarantine" / "run1" / "stray.parq").exists()
    assert butler.find_dataset(refs[0]) is None and butler.find_dataset(refs[1]) == refs[1]


def test_butler_create_with_explicit_sqlite_url(tmp_path):
    db = tmp_path / "elsewhere.sqlite3"
    b = Butler.create(tmp_path / "repo", db=f"sqlite:///{db}")
    assert db.exists() and not (tmp_path / "repo" / "gen3.sqlite3").exists()
    b.close()
    assert Butler(tmp_path / "repo").registry.query_collections() == []


def test_inline_datasets_live_in_the_registry(butler, tmp_path):
    from graph.task_metadata import TaskMetadata

    butler.register_dataset_type("isr_metadata", ["visit", "detector"], "TaskMetadata")
    md = TaskMetadata()
    md["isr.nSaturated"] = 12
    files_before = snapshot(butler)[1]
    ref = butler.put(md, "isr_metadata", DATA_ID)
    assert snapshot(butler)[1] == files_before  # no file was written
    assert butler.get("isr_metadata", DATA_ID)["isr.nSaturated"] == 12
    assert butler.get(ref) == md and butler.exists(ref)
    assert butler.verify(checksums=True).ok
    # Tampering with the stored bytes is detected on get.
    with butler.registry.db.transaction(write=True) as conn:
        conn.execute(sa.update(butler.registry.tables.datastore_inline).values(content=b'{"scalars": {}}'))
    with pytest.raises(CorruptDatasetError, match="registry-stored content"):
        butler.get(ref)


def test_inline_datasets_export_import_and_remove(butler, tmp_path):
    from graph.task_metadata import TaskMetadata

    butler.register_dataset_type("isr_metadata", ["visit", "detector"], "TaskMetadata")
    md = TaskMetadata.from_dict({"a": 1, "b": {"c": [1.5, 2.5]}})
    ref = butler.put(md, "isr_metadata", DATA_ID)
    assert butler.export(tmp_path / "out", collections="run1") == 1
    other = Butler.create(tmp_path / "other")
    populate_other(other)
    assert other.import_(tmp_path / "out") == 1
    assert other.get(ref) == md
    assert butler.remove_runs(["run1"]) == 1
    with butler.registry.db.transaction() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(butler.registry.tables.datastore_inline)).scalar_one() == 0


def populate_other(other: Butler) -> None:
    from conftest import populate

    populate(other)
