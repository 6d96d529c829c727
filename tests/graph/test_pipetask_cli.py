"""The ``pipetask`` command: build, qgraph, run (serial, -j 2, saved graph, resume) and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from butler import Butler
from butler.cli import cli as butler_cli
from toy_repo import make_toy_repo
from toy_repo import pipetask as run


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    return make_toy_repo(tmp_path, lambda v, d: np.full(3, float(v)))


def _sums(root: Path, collection: str) -> dict[int, list[float]]:
    with Butler(root, collections=collection) as butler:
        return {r.data_id["visit"]: butler.get(r).tolist() for r in butler.query_datasets("toy_visit_sum")}


def test_build_shows_graph_and_exports_dot(tmp_path, setup):
    _, pipeline = setup
    result = run("build", "-p", f"{pipeline}#perDetector", "--show", "graph", "--pipeline-dot", tmp_path / "p.dot")
    assert result.exit_code == 0
    assert "addOne: toy_tasks.AddOneTask" in result.output and "sum:" not in result.output
    dot = (tmp_path / "p.dot").read_text()
    assert "addOne" in dot and "toy_output" in dot and dot.count("{") == dot.count("}")


def test_bad_override_is_a_user_error(setup):
    _, pipeline = setup
    result = run("build", "-p", pipeline, "-c", "addOne:value=oops")
    assert result.exit_code == 1
    assert "addOne" in result.stderr and "value" in result.stderr and "Traceback" not in result.stderr


def test_run_with_chain_and_two_jobs(setup):
    root, pipeline = setup
    result = run("run", "-b", root, "-i", "raw", "-o", "u/me/toy", "-p", pipeline, "-j", "2", "--register-dataset-types")
    assert result.exit_code == 0, result.output
    # every visit sums its 4 detectors of (visit + 2)
    assert _sums(root, "u/me/toy") == {v: [4.0 * (v + 2)] * 3 for v in range(3)}
    chain = json.loads(run("query-collections", root, "u/me/toy", "--format", "json", app=butler_cli).stdout)
    assert chain[0]["Type"] == "CHAINED"


def test_unregistered_outputs_need_the_flag(setup):
    root, pipeline = setup
    result = run("run", "-b", root, "-i", "raw", "-o", "u/me/toy", "-p", pipeline)
    assert result.exit_code == 1 and "--register-dataset-types" in result.stderr


def test_saved_graph_runs_and_resume_has_nothing_to_do(tmp_path, setup):
    root, pipeline = setup
    qgraph = tmp_path / "g.qgraph"
    result = run("qgraph", "-b", root, "-i", "raw", "--output-run", "u/me/run1", "-p", pipeline, "-d", "visit < 2", "-q", qgraph)
    assert result.exit_code == 0 and "18 quanta in total" in result.output
    result = run("run", "-b", root, "-g", qgraph, "--register-dataset-types")
    assert result.exit_code == 0, result.output
    assert _sums(root, "u/me/run1") == {0: [8.0] * 3, 1: [12.0] * 3}
    again = run("run", "-b", root, "-i", "raw", "--output-run", "u/me/run1", "-p", pipeline, "-d", "visit < 2",
                "--extend-run", "--skip-existing")
    assert again.exit_code == 0 and "Nothing to do" in again.output
    report = json.loads(run("report", "-b", root, "--output-run", "u/me/run1", "--format", "json").stdout)
    assert {row["task"]: row["succeeded"] for row in report if row["task"] != "TOTAL"} == {"addOne": 8, "stats": 8, "sum": 2}


def test_changed_config_in_same_run_is_refused(setup):
    root, pipeline = setup
    assert run("run", "-b", root, "-i", "raw", "--output-run", "r1", "-p", pipeline, "-d", "visit = 0",
               "--register-dataset-types").exit_code == 0
    result = run("run", "-b", root, "-i", "raw", "--output-run", "r1", "-p", pipeline, "-d", "visit = 1",
                 "--extend-run", "-c", "addOne:value=5")
    assert result.exit_code == 1 and "value" in result.stderr and "new output run" in result.stderr
