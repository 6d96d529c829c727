"""Provenance in the registry (`butler/registry/_provenance.py`), provenance chains (`butler/provenance.py`)
and run comparison (`butler/run_diff.py`), on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from butler import Butler, QuantumRecord
from butler.cli import cli
from butler.errors import CollectionTypeError, DatasetNotFoundError
from butler.provenance import provenance_chain
from butler.run_diff import diff_runs

DATA_ID = {"instrument": "Cam", "visit": 1, "detector": 0}


def _chain_repo(butler: Butler) -> dict[str, object]:
    """raw (run raws) -> calexp -> src (run r1), with the quanta that made them recorded."""
    from conftest import populate

    populate(butler)
    for name in ("raw", "calexp", "src"):
        butler.register_dataset_type(name, ["instrument", "visit", "detector"], "NumpyArray")
    raw = butler.put(np.zeros(3), "raw", DATA_ID, run="raws")
    calexp = butler.put(np.ones(3), "calexp", DATA_ID, run="r1")
    src = butler.put(np.full(3, 2.0), "src", DATA_ID, run="r1")
    q1 = QuantumRecord(
        uuid.uuid4(), "r1", "isr", "tasks.isr.IsrTask", dict(DATA_ID), "succeeded", config_hash="c1", code_hash="k1",
        packages_hash="p1", host="h", start_time="2026-01-01T00:00:00+00:00", end_time="2026-01-01T00:00:01+00:00",
        inputs=((raw.id, "exposure"),), outputs=(calexp.id,),
    )
    q2 = QuantumRecord(
        uuid.uuid4(), "r1", "calibrate", "tasks.calibrate.CalibrateTask", dict(DATA_ID), "succeeded",
        inputs=((calexp.id, "exposure"), (raw.id, "raw")), outputs=(src.id,),
    )
    butler.registry.insert_quanta([q1, q2])
    return {"raw": raw, "calexp": calexp, "src": src, "q1": q1, "q2": q2}


def test_quanta_are_stored_and_read_back_with_inputs_and_outputs(repo):
    made = _chain_repo(repo)
    records = repo.registry.query_quanta("r1")
    assert [r.task_label for r in records] == ["calibrate", "isr"]
    assert records[1] == made["q1"]
    assert repo.registry.query_quanta("r1", task_label="isr") == [made["q1"]]
    assert repo.registry.query_quanta() == records
    assert repo.registry.get_quantum_provenance(made["src"].id) == made["q2"]
    assert repo.registry.get_quantum_provenance(made["raw"].id) is None  # put, not made by a quantum


def test_a_quantum_recorded_again_replaces_its_record(repo):
    made = _chain_repo(repo)
    again = QuantumRecord(made["q1"].id, "r1", "isr", "tasks.isr.IsrTask", dict(DATA_ID), "failed", error="RuntimeError: x")
    repo.registry.insert_quanta([again])
    (record,) = repo.registry.query_quanta("r1", task_label="isr")
    assert record.status == "failed" and record.inputs == () and record.outputs == ()


def test_invalid_status_and_unknown_run_are_refused(repo):
    from butler.errors import MissingCollectionError

    made = _chain_repo(repo)
    with pytest.raises(ValueError, match="status"):
        repo.registry.insert_quanta([QuantumRecord(uuid.uuid4(), "r1", "x", "m.X", {}, "blocked")])
    with pytest.raises(MissingCollectionError):
        repo.registry.insert_quanta([QuantumRecord(uuid.uuid4(), "nope", "x", "m.X", {}, "succeeded")])
    assert len(repo.registry.query_quanta("r1")) == 2 and made


def test_query_quanta_of_a_non_run_collection_is_an_error(repo):
    _chain_repo(repo)
    repo.collection_chain("chain", ["r1"])
    with pytest.raises(CollectionTypeError, match="RUN"):
        repo.registry.query_quanta("chain")


def test_removing_a_run_removes_its_quanta_and_run_provenance(repo):
    made = _chain_repo(repo)
    repo.registry.set_run_provenance("r1", {"version": 1, "where": "visit = 1"})
    assert repo.registry.get_run_provenance("r1") == {"version": 1, "where": "visit = 1"}
    repo.remove_runs(["r1"])
    assert repo.registry.query_quanta() == []
    with repo.registry.db.transaction() as conn:
        for table in ("quantum", "quantum_input", "quantum_output", "run_provenance"):
            assert conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one() == 0
    assert repo.registry.get_quantum_provenance(made["src"].id) is None


def test_provenance_chain_reaches_the_raw_in_two_queries_per_level(repo):
    made = _chain_repo(repo)
    root = provenance_chain(repo.registry, made["src"].id)
    assert root.quantum.task_label == "calibrate"
    calexp, raw = sorted(root.inputs, key=lambda n: n.ref.dataset_type.name)
    assert calexp.quantum.task_label == "isr" and calexp.inputs[0] is raw  # one node per dataset
    assert raw.ref.run == "raws" and raw.quantum is None and raw.inputs == []
    simple = root.to_simple()
    assert simple["quantum"]["config_hash"] is None and simple["inputs"][0]["quantum"]["config_hash"] == "c1"
    text = "\n".join(root.format())
    assert "written by isr (tasks.isr.IsrTask)" in text and "not written by a quantum" in text


def test_provenance_chain_of_an_unknown_dataset_is_an_error(repo):
    with pytest.raises(DatasetNotFoundError, match="no dataset"):
        provenance_chain(repo.registry, uuid.uuid4())


def test_query_provenance_command_prints_json_down_to_the_raw(tmp_path):
    with Butler.create(tmp_path / "repo") as butler:
        made = _chain_repo(butler)
    result = CliRunner().invoke(cli, ["query-provenance", str(tmp_path / "repo"), str(made["src"].id), "--format", "json"])
    assert result.exit_code == 0, result.output
    import json

    tree = json.loads(result.output)
    leaves = []

    def walk(node):
        if not node.get("inputs"):
            leaves.append(node)
        for child in node.get("inputs", []):
            walk(child)

    walk(tree)
    assert {leaf["dataset_type"] for leaf in leaves if not leaf.get("repeated")} == {"raw"}
    result = CliRunner().invoke(cli, ["query-provenance", str(tmp_path / "repo"), "not-a-uuid"])
    assert result.exit_code == 2 and "UUID" in result.output


def test_diff_runs_lists_datasets_only_in_one_run_and_different_ones(repo):
    from conftest import populate

    populate(repo)
    repo.register_dataset_type("img", ["instrument", "visit", "detector"], "NumpyArray")
    repo.register_dataset_type("img_metadata", ["instrument", "visit", "detector"], "NumpyArray")
    for run, values in (("a", (1.0, 2.0, 3.0)), ("b", (1.0, 2.5))):
        for detector, value in enumerate(values):
            repo.put(np.full(4, value), "img", {**DATA_ID, "detector": detector}, run=run)
            repo.put(np.full(4, value + (run == "b")), "img_metadata", {**DATA_ID, "detector": detector}, run=run)
    found = {(d.data_id["detector"], d.status) for d in diff_runs(repo.registry, "a", "b")}
    assert found == {(1, "differ"), (2, "only-in-1")}
    assert len(diff_runs(repo.registry, "a", "b", ignore=())) == 5  # with the metadata
    assert diff_runs(repo.registry, "a", "a") == []


def test_diff_runs_takes_tagged_collections_with_a_run_but_not_chains(repo):
    from conftest import populate

    populate(repo)
    repo.register_dataset_type("img", ["instrument", "visit", "detector"], "NumpyArray")
    first = repo.put(np.zeros(2), "img", DATA_ID, run="a")
    repo.put(np.ones(2), "img", {**DATA_ID, "detector": 1}, run="a")
    repo.put(np.ones(2), "img", {**DATA_ID, "detector": 1}, run="b")
    repo.registry.register_collection("b/reused")
    repo.registry.associate("b/reused", [first])  # b reused a's detector-0 dataset
    assert diff_runs(repo.registry, "a", ["b", "b/reused"]) == []
    assert [d.status for d in diff_runs(repo.registry, "a", "b")] == ["only-in-1"]
    repo.collection_chain("chain", ["a"])
    with pytest.raises(CollectionTypeError, match="RUN or TAGGED"):
        diff_runs(repo.registry, "a", "chain")


def test_export_and_import_keep_the_quanta_and_run_provenance_of_exported_runs(repo, tmp_path):
    made = _chain_repo(repo)
    repo.registry.set_run_provenance("r1", {"version": 1, "input_collections": ["raws"]})
    repo.export(tmp_path / "export", collections=["r1"])
    with Butler.create(tmp_path / "target") as target:
        target.import_(tmp_path / "export")
        assert target.registry.query_quanta("r1") == repo.registry.query_quanta("r1")
        assert target.registry.get_run_provenance("r1") == {"version": 1, "input_collections": ["raws"]}
        assert target.registry.get_quantum_provenance(made["src"].id).task_label == "calibrate"
        assert target.registry.get_dataset(made["raw"].id) is None  # inputs from other runs stay behind


def test_a_registry_made_before_provenance_gets_its_tables_on_open(tmp_path):
    root = tmp_path / "repo"
    Butler.create(root).close()
    with Butler(root) as butler, butler.registry.db.transaction(write=True) as conn:
        for table in ("quantum_input", "quantum_output", "run_provenance", "quantum"):
            conn.execute(sa.schema.DropTable(sa.Table(table, sa.MetaData())))
    with Butler(root, writeable=False) as butler:  # read-only: nothing to read, nothing created
        assert butler.registry.query_quanta() == []
        assert butler.registry.get_run_provenance is not None
    with Butler(root) as butler:
        butler.registry.register_run("r")
        butler.registry.insert_quanta([QuantumRecord(uuid.uuid4(), "r", "t", "m.T", {}, "succeeded")])
        assert len(butler.registry.query_quanta("r")) == 1
