"""Resource faults: a quantum that exceeds the per-quantum timeout or raises MemoryError fails with the
reason (in the execution report, in its log, in ``pipetask report``), its descendants are blocked, and
every other quantum runs; serially and in a process pool, whose stuck workers are killed and replaced."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from reliability_support import make_repo, pipetask_cli

from butler import Butler
from graph.builder import build_quantum_graph
from graph.execute import execute_graph
from graph.execute._timeout import KILL_GRACE
from graph.pipeline import Pipeline

pytestmark = pytest.mark.reliability

TIMEOUT = 0.5


@pytest.fixture
def butler(tmp_path: Path) -> Butler:
    """Inputs of 2 visits x 4 detectors: 8 addOne quanta and 2 sum quanta."""
    butler = make_repo(tmp_path / "repo", n_visits=2)
    yield butler
    butler.close()


def _pipeline(**faults) -> Pipeline:
    pipeline = Pipeline("resource faults")
    pipeline.add_task("faulty_tasks.FaultyAddOneTask", "addOne", {"value": 2.5, **faults})
    pipeline.add_task("toy_tasks.SumDetectorsTask", "sum")
    return pipeline


def _graph(butler: Butler, pipeline: Pipeline, where: str = ""):
    graph, _ = build_quantum_graph(
        pipeline.to_graph(butler.dimensions), butler, input_collections=["inputs"], output_run="out", where=where
    )
    return graph


def _check_faulted(butler: Butler, report, reason: str, *, failed: int = 2) -> None:
    """``failed`` addOne quanta (one per visit) failed with ``reason`` (in the report and in their
    logs), the sums of their visits are blocked, the other 3 detectors of each visit succeeded, and no
    file was left behind."""
    assert (report.counts["addOne"]["failed"], report.counts["addOne"]["succeeded"]) == (failed, 3 * failed)
    assert report.counts["sum"]["blocked"] == failed
    assert all(reason in f.error for f in report.failed), [f.error for f in report.failed]
    logs = [butler.get(ref) for ref in butler.registry.query_datasets("addOne_log", ["out"])]
    assert sum(any(reason in r.message for r in log) for log in logs) == failed
    assert butler.verify(checksums=True).ok


@pytest.mark.parametrize("jobs", [1, 2])
def test_quantum_over_its_timeout_fails_with_the_reason_and_the_others_run(butler, jobs):
    graph = _graph(butler, _pipeline(hangDetectors=[1]))
    start = time.monotonic()
    report = execute_graph(graph, butler, jobs=jobs, timeout=TIMEOUT)
    assert time.monotonic() - start < 10  # not the 30 s the quanta would hang
    _check_faulted(butler, report, "QuantumTimeoutError: quantum addOne {instrument: 'Cam', detector: 1")
    assert "ran longer than its time limit of 0.5 s" in report.failed[0].error
    print(f"\ntimeout, -j {jobs}: {report.total('failed')} quanta over the limit failed, {report.total('succeeded')} ran, "
          f"{report.total('blocked')} blocked; wall {report.wall_time:.1f} s")


def test_task_that_swallows_the_timeout_is_interrupted_again(butler):
    graph = _graph(butler, _pipeline(hangDetectors=[1], swallowErrors=True), where="visit = 0")
    report = execute_graph(graph, butler, timeout=TIMEOUT)
    _check_faulted(butler, report, "QuantumTimeoutError", failed=1)
    log = butler.get("addOne_log", instrument="Cam", visit=0, detector=1, collections="out")
    assert any("ignoring QuantumTimeoutError" in r.message for r in log)


def test_pool_worker_stuck_where_signals_cannot_reach_is_killed_and_replaced(butler):
    graph = _graph(butler, _pipeline(hangDetectors=[1], blockAlarm=True), where="visit = 0")
    start = time.monotonic()
    report = execute_graph(graph, butler, jobs=2, timeout=TIMEOUT)
    wall = time.monotonic() - start
    assert TIMEOUT + KILL_GRACE < wall < TIMEOUT + KILL_GRACE + 8
    _check_faulted(butler, report, "did not stop when interrupted; its worker (pid", failed=1)
    print(f"\nstuck in native code, -j 2: killed after {wall:.1f} s, worker replaced, {report.total('succeeded')} others ran")


@pytest.mark.parametrize("jobs", [1, 2])
def test_memory_error_fails_the_quantum_with_the_reason_and_the_others_run(butler, jobs):
    report = execute_graph(_graph(butler, _pipeline(memoryDetectors=[1])), butler, jobs=jobs)
    _check_faulted(butler, report, "MemoryError: Unable to allocate 4.00 EiB")


def test_pipetask_report_shows_why_quanta_failed(butler, tmp_path):
    pipeline = tmp_path / "faulty.yaml"
    pipeline.write_text(_pipeline(hangDetectors=[1], memoryDetectors=[2]).to_yaml())
    root = str(butler.config.root)
    run = CliRunner().invoke(pipetask_cli, [
        "run", "-b", root, "-p", str(pipeline), "-i", "inputs", "--output-run", "out", "-j", "2", "--timeout", "0.5",
        "--register-dataset-types",
    ])  # fmt: skip
    assert run.exit_code == 1 and "4 quanta failed" in run.stdout, run.output
    table = CliRunner().invoke(pipetask_cli, ["report", "-b", root, "--output-run", "out"])
    assert table.exit_code == 0
    assert "Failed quanta:" in table.stdout and table.stdout.count("QuantumTimeoutError") == 2
    assert table.stdout.count("MemoryError: Unable to allocate") == 2
    rows = json.loads(CliRunner().invoke(pipetask_cli, ["report", "-b", root, "--output-run", "out", "--format", "json"]).stdout)
    addone = next(row for row in rows if row["task"] == "addOne")
    assert (addone["succeeded"], addone["failed"]) == (4, 4)
    assert sorted((f["data_id"]["visit"], f["data_id"]["detector"]) for f in addone["failures"]) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert sorted(f["reason"].partition(":")[0] for f in addone["failures"]) == ["MemoryError", "MemoryError"] + [
        "QuantumTimeoutError"
    ] * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "positive number of seconds"),
        ({"timeout": float("nan")}, "positive number of seconds"),
        ({"timeout": "1"}, "positive number of seconds"),
        ({"timeout": 1, "executor": "parsl"}, "set the walltime"),
    ],
)
def test_bad_timeouts_are_refused_before_anything_runs(butler, kwargs, message):
    graph = _graph(butler, _pipeline())
    with pytest.raises(ValueError, match=message):
        execute_graph(graph, butler, **kwargs)
    assert butler.registry.query_collections("out") == []


def test_serial_timeout_outside_the_main_thread_is_refused(butler):
    graph = _graph(butler, _pipeline())
    errors = []

    def run() -> None:
        try:
            execute_graph(graph, butler, timeout=1)
        except ValueError as err:
            errors.append(str(err))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in errors[0]


def test_no_timeout_lets_a_slow_quantum_finish(butler):
    report = execute_graph(_graph(butler, _pipeline(hangDetectors=[1], hangSeconds=0.2), where="visit = 0"), butler, timeout=5)
    assert report.ok and np.array_equal(
        butler.get("toy_output", instrument="Cam", visit=0, detector=1, collections="out"),
        np.arange(6, dtype=np.float64).reshape(2, 3) + 10 + 2.5,
    )
