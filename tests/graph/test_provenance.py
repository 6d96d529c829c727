"""Provenance written by execution (`graph/execute/registration.py`, `graph/fingerprint.py`,
`graph/provenance.py`), re-creating a run from it (`graph/rerun.py`, ``pipetask rerun``) and comparing
runs (``pipetask diff-runs``), on the toy pipeline (addOne -> stats, sum)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from toy_repo import TOY_PIPELINE, fill_toy_repo, make_toy_repo, pipetask

from butler import Butler
from graph.builder import build_quantum_graph
from graph.cli import cli
from graph.execute import QuantumResult, execute_graph, package_versions
from graph.fingerprint import TaskFingerprint, code_hash, packages_hash, task_fingerprint, task_modules
from graph.pipeline import Pipeline
from graph.provenance import read_run_document

def _pipeline(**config: object) -> Pipeline:
    pipeline = Pipeline.from_string(TOY_PIPELINE)
    for key, value in config.items():
        pipeline.add_config_override("addOne", key, value)
    return pipeline


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    return make_toy_repo(tmp_path, chain="in")


def test_every_executed_quantum_is_recorded_with_what_it_ran_read_and_wrote(repo):
    """On SQLite and PostgreSQL: one record per quantum, in the transaction of its outputs."""
    fill_toy_repo(repo, chain="in")
    pipeline_graph = _pipeline().to_graph(repo.dimensions)
    graph, _ = build_quantum_graph(pipeline_graph, repo, input_collections=["in"], output_run="out", where="visit = 1")
    assert execute_graph(graph, repo).ok
    records = {r.id: r for r in repo.registry.query_quanta("out")}
    assert len(records) == len(graph) == 9
    packages = packages_hash(package_versions())
    assert packages == packages_hash(repo.get("packages", collections="out"))  # the run's packages dataset
    for quantum in graph:
        record = records[quantum.id]
        node = pipeline_graph.tasks[quantum.task_label]
        assert record.task_class == node.task_class_name and record.status == "succeeded"
        assert record.config_hash == node.config.digest()
        assert record.code_hash == code_hash(node.task_class, node.config) and record.packages_hash == packages
        assert record.data_id == dict(quantum.data_id.required) and record.host
        assert record.start_time <= record.end_time
        assert set(record.inputs) == {(ref.id, name) for name, refs in quantum.inputs.items() for ref in refs}
        assert set(record.outputs) == {ref.id for ref in quantum.output_refs()}  # metadata and log included
        for ref in quantum.output_refs():
            assert repo.registry.get_quantum_provenance(ref.id).id == quantum.id


def test_a_failed_quantum_is_recorded_and_its_successful_retry_replaces_the_record(setup, tmp_path):
    root, _ = setup
    flag = tmp_path / "fail"
    flag.touch()
    with Butler(root) as butler:
        pipeline = Pipeline("a flaky addOne")
        pipeline.add_task("toy_exec_tasks.FlakyAddOneTask", "addOne", {"failDetectors": [2], "failFlagFile": str(flag)})
        graph, _ = build_quantum_graph(pipeline.to_graph(butler.dimensions), butler, input_collections=["in"], output_run="out")
        assert not execute_graph(graph, butler).ok
        failed = [r for r in butler.registry.query_quanta("out", task_label="addOne") if r.status == "failed"]
        assert len(failed) == 3 and all(r.error.startswith("RuntimeError") for r in failed)
        assert all(len(r.outputs) == 1 for r in failed)  # the log only
        flag.unlink()
        assert execute_graph(graph, butler).ok  # resume: the failed quanta run again
        records = butler.registry.query_quanta("out")
        assert len(records) == len(graph) and {r.status for r in records} == {"succeeded"}


def test_the_run_records_the_pipeline_and_query_it_was_built_from(setup):
    root, pipeline = setup
    assert pipetask("run", "-b", root, "-p", pipeline, "-i", "in", "-o", "out", "--output-run", "first",
                    "-d", "visit IN (0, 1)", "-c", "addOne:value=4.5", "--register-dataset-types").exit_code == 0
    with Butler(root, writeable=False) as butler:
        document = read_run_document(butler, "first")
    assert document.where == "visit IN (0, 1)" and document.input_collections == ["in"]
    assert list(document.pipeline.tasks) == ["addOne", "stats", "sum"]
    assert document.pipeline.tasks["addOne"].config.value == 4.5
    expected = _pipeline(value=4.5).to_graph()
    assert all(document.pipeline.tasks[label].config.digest() == node.config.digest() for label, node in expected.tasks.items())


def test_rerun_reproduces_the_run_from_its_exact_inputs_and_diff_runs_finds_no_difference(setup):
    root, pipeline = setup
    assert pipetask("run", "-b", root, "-p", pipeline, "-i", "in", "-o", "out", "--output-run", "first",
                    "-d", "visit < 2", "--register-dataset-types").exit_code == 0
    with Butler(root) as butler:  # a newer input of one data ID, chained first: a plain re-run would read it
        butler.put(np.full(3, -1.0), "toy_input", instrument="Cam", visit=0, detector=0, run="raw2")
        butler.collection_chain("in", ["raw2", "raw"])
    result = pipetask("rerun", "-b", root, "--from-run", "first", "-o", "again", "--output-run", "second")
    assert result.exit_code == 0, result.output
    result = pipetask("diff-runs", "-b", root, "first", "second")
    assert result.exit_code == 0 and "identical" in result.output
    with Butler(root, writeable=False) as butler:
        assert butler.registry.get_collection_chain("again") == ("second", "second/inputs")
        assert len(butler.registry.query_quanta("second")) == len(butler.registry.query_quanta("first")) == 18
    assert pipetask("run", "-b", root, "-p", pipeline, "-i", "in", "-o", "plain", "--output-run", "third",
                    "-d", "visit < 2").exit_code == 0
    result = pipetask("diff-runs", "-b", root, "first", "third", "--format", "json")
    assert result.exit_code == 1
    import json

    rows = json.loads(result.output)
    # (toy_mask, pixels above the mean, is all False for both constant inputs)
    assert {(r["dataset_type"], r["status"]) for r in rows} == {("toy_output", "differ"), ("toy_stats", "differ"),
                                                                ("toy_visit_sum", "differ")}
    assert all("visit=0" in r["data_id"] for r in rows)
    result = pipetask("diff-runs", "-b", root, "first", "third", "--ignore", "toy_*")
    assert result.exit_code == 1 and "addOne_metadata" in result.output  # metadata compared when not ignored


def test_rerun_of_a_run_without_provenance_says_why(setup):
    root, _ = setup
    result = CliRunner().invoke(cli, ["rerun", "-b", str(root), "--from-run", "raw", "-o", "x"])
    assert result.exit_code == 1 and "has no recorded pipeline" in result.output


def test_task_modules_cover_the_subtask_tree():
    from tasks.characterize import CharacterizeImageTask

    config = CharacterizeImageTask.ConfigClass()
    modules = task_modules(CharacterizeImageTask, config)
    assert {"tasks.characterize", "tasks.measure_psf", "tasks.detection", "tasks.repair"} <= set(modules)
    assert not any(m.startswith(("graph", "butler", "pydantic")) for m in modules)


def test_fingerprint_follows_config_and_code():
    nodes = _pipeline().to_graph().tasks
    changed = _pipeline(value=3.0).to_graph().tasks
    a, b = task_fingerprint(nodes["addOne"]), task_fingerprint(changed["addOne"])
    assert a.task_class == "toy_tasks.AddOneTask" and a.code_hash == b.code_hash
    assert a.config_hash != b.config_hash and len(a.config_hash) == 64
    assert task_modules(nodes["addOne"].task_class, nodes["addOne"].config) == ["toy_tasks"]
    from toy_exec_tasks import FlakyAddOneTask

    assert task_modules(FlakyAddOneTask, FlakyAddOneTask.ConfigClass()) == ["toy_exec_tasks", "toy_tasks"]  # with its base


def test_quantum_result_keeps_its_provenance_fields_through_json():
    result = QuantumResult(
        uuid.uuid4(), "addOne", "succeeded", host="h", start_time="2026-01-01T00:00:00+00:00",
        end_time="2026-01-01T00:00:01+00:00", fingerprint=TaskFingerprint("m.T", "c" * 64, "k" * 64, "p" * 64),
    )
    assert QuantumResult.from_simple(result.to_simple()) == result
