"""Incremental reprocessing (`graph/reuse.py`, ``pipetask run --reuse-from``) on the toy pipeline:
addOne (per visit+detector) -> stats (per visit+detector) and sum (per visit), 3 visits x 4 detectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from butler import Butler
from graph.builder import build_quantum_graph
from graph.cli import cli
from graph.execute import execute_graph
from graph.pipeline import Pipeline
from toy_repo import N_DETECTORS, N_VISITS, make_toy_repo, pipetask, toy_value

PER_DETECTOR = N_VISITS * N_DETECTORS  # quanta of addOne, and of stats
TOTAL = 2 * PER_DETECTOR + N_VISITS


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """The toy repository (inputs in run ``raw``, chained into ``in``) with the pipeline run once into ``base``."""
    root, pipeline = make_toy_repo(tmp_path, chain="in")
    result = pipetask("run", "-b", root, "-p", pipeline, "-i", "in", "-o", "out", "--output-run", "base",
                      "--register-dataset-types")
    assert result.exit_code == 0, result.output
    return root, pipeline


def _build(root: Path, pipeline: Pipeline, run: str, reuse_from=("base",), inputs=("in",)):
    with Butler(root, writeable=False) as butler:
        return build_quantum_graph(pipeline.to_graph(butler.dimensions), butler, input_collections=list(inputs),
                                   output_run=run, reuse_from=list(reuse_from))


def _reasons(report, label: str) -> list[str]:
    return [line.partition("}: ")[2] for line in report.tasks[label].reruns]


def test_unchanged_pipeline_reuses_every_quantum_and_tags_the_outputs(setup):
    root, pipeline = setup
    result = pipetask("run", "-b", root, "-p", pipeline, "-i", "in", "-o", "out", "--output-run", "again",
                      "--reuse-from", "base", "--explain")
    assert result.exit_code == 0, result.output
    assert f"addOne: {PER_DETECTOR} reused, 0 to run" in result.output
    assert f"{TOTAL} quanta reused from base; 0 to run." in result.output
    with Butler(root, writeable=False) as butler:
        registry = butler.registry
        assert registry.get_collection_chain("out")[:3] == ("again", "again/reused", "base")
        tagged = registry.query_datasets("toy_visit_sum", ["again/reused"])
        assert len(tagged) == N_VISITS and {r.run for r in tagged} == {"base"}  # associated, not copied
        assert registry.refs_in_runs(["again"]) and not registry.query_datasets("toy_visit_sum", ["again"], explain=False)
        np.testing.assert_array_equal(butler.get("toy_visit_sum", instrument="Cam", visit=1, collections="out"),
                                      sum(toy_value(1, d) + 2.0 for d in range(N_DETECTORS)))
        assert registry.query_quanta("again") == []  # nothing was executed


def test_one_changed_config_field_reruns_that_task_and_its_descendants_only(setup):
    root, pipeline_path = setup
    pipeline = Pipeline.from_file(pipeline_path)
    pipeline.add_config_override("addOne", "value", "3.0")
    graph, report = _build(root, pipeline, "cfg")
    assert graph.summary() == {"addOne": PER_DETECTOR, "stats": PER_DETECTOR, "sum": N_VISITS}
    assert set(_reasons(report, "addOne")) == {"config changed: value (2.0 -> 3.0)"}
    assert all(r.startswith("input changed: toy_output {") and r.endswith("produced anew by addOne")
               for r in _reasons(report, "sum") + _reasons(report, "stats"))
    pipeline = Pipeline.from_file(pipeline_path)
    pipeline.add_config_override("stats", "doWriteMask", "false")
    graph, report = _build(root, pipeline, "cfg")
    assert graph.summary() == {"addOne": 0, "stats": PER_DETECTOR, "sum": 0}
    assert report.reused == PER_DETECTOR + N_VISITS
    assert set(_reasons(report, "stats")) == {"config changed: doWriteMask (True -> False)"}


def test_a_changed_input_reruns_its_downstream_quanta_only(setup):
    root, pipeline_path = setup
    with Butler(root) as butler:
        butler.put(toy_value(1, 2) + 0.5, "toy_input", instrument="Cam", visit=1, detector=2, run="raw2")
        butler.collection_chain("in", ["raw2", "raw"])
    graph, report = _build(root, Pipeline.from_file(pipeline_path), "changed")
    assert graph.summary() == {"addOne": 1, "stats": 1, "sum": 1}
    assert report.reused == TOTAL - 3
    (reason,) = _reasons(report, "addOne")
    assert reason.startswith("input changed: toy_input {instrument: 'Cam', detector: 2, visit: 1} (input) differs")
    assert _reasons(report, "sum")[0].endswith("produced anew by addOne")


def test_an_input_with_the_same_checksum_under_another_id_is_reused(setup):
    root, pipeline_path = setup
    with Butler(root) as butler:
        butler.put(toy_value(1, 2), "toy_input", instrument="Cam", visit=1, detector=2, run="raw2")  # same bytes
        butler.collection_chain("in", ["raw2", "raw"])
    graph, report = _build(root, Pipeline.from_file(pipeline_path), "same")
    assert len(graph) == 0 and report.reused == TOTAL


def test_changed_code_reruns_the_quanta_of_the_changed_module(setup, monkeypatch):
    import graph.fingerprint as fingerprint

    root, pipeline_path = setup
    original = fingerprint.module_source
    monkeypatch.setattr(fingerprint, "module_source", lambda name: original(name) + (b"# edited" if name == "toy_tasks" else b""))
    graph, report = _build(root, Pipeline.from_file(pipeline_path), "code")
    assert len(graph) == TOTAL
    assert all(r.startswith("code changed (modules toy_tasks)") for r in _reasons(report, "addOne") + _reasons(report, "sum"))


def test_quanta_not_in_the_run_or_failed_there_run(setup):
    root, pipeline_path = setup
    with Butler(root, writeable=False) as butler:
        partial, _ = build_quantum_graph(Pipeline.from_file(pipeline_path).to_graph(butler.dimensions), butler,
                                         input_collections=["in"], output_run="partial", where="visit = 0")
    with Butler(root) as butler:
        assert execute_graph(partial, butler).ok
    graph, report = _build(root, Pipeline.from_file(pipeline_path), "more", reuse_from=["partial"])
    assert graph.summary() == {"addOne": PER_DETECTOR - N_DETECTORS, "stats": PER_DETECTOR - N_DETECTORS, "sum": N_VISITS - 1}
    assert set(_reasons(report, "sum")) == {"not in partial"}
    failing = Pipeline("a failing addOne")
    failing.add_task("toy_exec_tasks.FlakyAddOneTask", "addOne", {"value": 2.0, "failDetectors": [3]})
    with Butler(root) as butler:
        flaky, _ = build_quantum_graph(failing.to_graph(butler.dimensions), butler, input_collections=["in"], output_run="flaky")
        assert not execute_graph(flaky, butler).ok
    graph, report = _build(root, failing, "retry", reuse_from=["flaky"])
    assert graph.summary()["addOne"] == N_VISITS
    assert set(_reasons(report, "addOne")) == {"recorded as failed in flaky"}


def test_a_reuse_run_can_be_reused_from_through_its_output_chain(setup):
    root, pipeline = setup
    args = ["-b", root, "-p", pipeline, "-i", "in", "-o", "out2", "-c", "stats:doWriteMask=false"]
    assert pipetask("run", *args, "--output-run", "second", "--reuse-from", "base").exit_code == 0
    result = pipetask("run", *args, "--output-run", "third", "--reuse-from", "out2", "--explain")
    assert result.exit_code == 0, result.output
    assert f"{TOTAL} quanta reused from out2; 0 to run." in result.output


def test_reuse_decisions_take_a_fixed_number_of_queries(setup):
    root, pipeline_path = setup
    pipeline = Pipeline.from_file(pipeline_path)
    pipeline.add_config_override("stats", "doWriteMask", "false")
    counts = []
    for where in ("visit = 0", ""):
        with Butler(root, writeable=False) as butler:
            statements = []
            sa.event.listen(butler.registry.db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
            build_quantum_graph(pipeline.to_graph(butler.dimensions), butler, input_collections=["in"], output_run="n",
                                where=where, reuse_from=["base"])
            counts.append(len(statements))
    assert counts[0] == counts[1]  # 1 visit or 3: the same queries


def test_explain_needs_reuse_from(setup):
    root, pipeline = setup
    result = CliRunner().invoke(cli, ["run", "-b", str(root), "-p", str(pipeline), "-i", "in", "-o", "x", "--explain"])
    assert result.exit_code == 2 and "--reuse-from" in result.output
