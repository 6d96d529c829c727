"""Execution of quantum graphs: values, provenance, failures, parallel runs, resume, and overhead."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import N_DETECTORS, N_VISITS, detector_corners, populate

from butler import Butler
from butler.regions import polygon_from_radec
from graph import Input, InputQuantizedConnection, OutputQuantizedConnection, Struct
from graph.builder import build_quantum_graph
from graph.errors import QuantumExecutionError
from graph.execute import (
    ConfigMismatchError,
    QuantumContext,
    QuantumResult,
    SingleQuantumExecutor,
    execute_graph,
)
from graph.logs import ButlerLogRecords
from graph.pipeline import Pipeline
from graph.task_metadata import TaskMetadata

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
VALUE = 2.5  # what addOne adds


def input_value(visit: int, detector: int) -> np.ndarray:
    """The toy_input of a data ID: distinct per data ID and per pixel."""
    return np.arange(6, dtype=np.float64).reshape(2, 3) + 100 * visit + 10 * detector


def make_repo(root: Path, n_visits: int = N_VISITS) -> Butler:
    """A repository of the toy camera (with extra visits beyond 10) and one toy_input per visit+detector."""
    butler = Butler.create(root)
    populate(butler)
    if n_visits > N_VISITS:
        region = polygon_from_radec([10, 10.2, 10.2, 10], [0, 0, 0.05, 0.05])
        butler.registry.insert_dimension_data(
            "visit",
            *[{"instrument": "Cam", "id": v, "physical_filter": "r1" if v % 2 else "g1", "day_obs": 20200102,
               "exposure_time": 30.0, "datetime_begin": "2020-01-02T03:00:00", "region": region}
              for v in range(N_VISITS, n_visits)],
        )
        butler.registry.insert_dimension_data(
            "visit_detector_region",
            *[{"instrument": "Cam", "visit": v, "detector": d, "region": polygon_from_radec(*detector_corners(v % N_VISITS, d))}
              for v in range(N_VISITS, n_visits) for d in range(N_DETECTORS)],
        )
    butler.register_dataset_type("toy_input", ["instrument", "visit", "detector"], "NumpyArray")
    for v in range(n_visits):
        for d in range(N_DETECTORS):
            butler.put(input_value(v, d), "toy_input", {"instrument": "Cam", "visit": v, "detector": d}, run="inputs")
    return butler


def make_pipeline(add_config: dict | None = None, *, stats: bool = True, add_task: str = "FlakyAddOneTask") -> Pipeline:
    pipeline = Pipeline("execution tests")
    pipeline.add_task(f"toy_exec_tasks.{add_task}", "addOne", {"value": VALUE, **(add_config or {})})
    pipeline.add_task("toy_tasks.SumDetectorsTask", "sum")
    if stats:
        pipeline.add_task("toy_tasks.StatsTask", "stats")
    return pipeline


def build(butler: Butler, pipeline: Pipeline, *, run: str = "out", where: str = "", **kwargs):
    graph, _ = build_quantum_graph(
        pipeline.to_graph(butler.dimensions), butler, input_collections=["inputs"], output_run=run, where=where, **kwargs
    )
    return graph


@pytest.fixture
def butler(tmp_path: Path) -> Butler:
    b = make_repo(tmp_path / "repo")
    yield b
    b.close()


def data_ids(butler: Butler, name: str, run: str = "out") -> list[tuple]:
    """(visit, detector) of every dataset of a type in a run, None where it has no such dimension (duplicates kept)."""
    return [(r.data_id.get("visit"), r.data_id.get("detector")) for r in butler.registry.query_datasets(name, [run], find_first=False)]


def get(butler: Butler, name: str, run: str = "out", **data_id):
    return butler.get(name, {"instrument": "Cam", **data_id}, collections=run)


def statuses_by_data_id(graph, report) -> dict[tuple[str, int, int | None], str]:
    """(label, visit, detector) -> status of every quantum."""
    return {(q.task_label, q.data_id["visit"], q.data_id.get("detector")): report.statuses[q.id] for q in graph}


# Serial execution: values and provenance ----------------------------------------------------------------


def test_serial_run_writes_each_output_once_with_the_right_values(butler):
    graph = build(butler, make_pipeline())
    report = execute_graph(graph, butler)
    assert report.ok
    assert report.counts["addOne"]["succeeded"] == 40 and report.counts["sum"]["succeeded"] == 10
    for name, n in {"toy_output": 40, "toy_visit_sum": 10, "toy_stats": 40, "toy_mask": 40}.items():
        found = data_ids(butler, name)
        assert len(found) == n and len(set(found)) == n, name
    for v in range(N_VISITS):
        for d in range(N_DETECTORS):
            np.testing.assert_array_equal(get(butler, "toy_output", visit=v, detector=d), input_value(v, d) + VALUE)
        expected_sum = sum(input_value(v, d) + VALUE for d in range(N_DETECTORS))
        np.testing.assert_allclose(get(butler, "toy_visit_sum", visit=v), expected_sum, rtol=0, atol=1e-12)
    stats = get(butler, "toy_stats", visit=3, detector=1)
    assert stats["mean"] == pytest.approx(float((input_value(3, 1) + VALUE).mean()))


def test_provenance_is_readable_and_stored_inline(butler):
    graph = build(butler, make_pipeline())
    execute_graph(graph, butler)
    metadata = get(butler, "addOne_metadata", visit=2, detector=3)
    assert isinstance(metadata, TaskMetadata)
    assert 0 < metadata["quantum.wallTime"] < 10 and metadata["quantum.cpuTime"] >= 0
    assert metadata["quantum.maxRss"] > 1e6 and metadata["quantum.host"]
    assert metadata["quantum.startUtc"] <= metadata["quantum.endUtc"]
    log = get(butler, "addOne_log", visit=2, detector=3)
    assert isinstance(log, ButlerLogRecords)
    assert any(f"adding {VALUE} to detector 3" in r.message for r in log)
    config = butler.get("addOne_config", collections="out")
    assert config.value == VALUE
    packages = butler.get("packages", collections="out")
    assert {"python", "numpy", "astropy", "sqlalchemy", "butler-pipelines"} <= set(packages)
    assert butler.get("toy_stats_schema", collections="out") == {"keys": ["mean", "std", "n"]}
    # Only the outputs of connections are files: metadata, logs, configs and packages are inline.
    # The run's files: one per output of every quantum, and the init-output schema (a YAML file).
    n_outputs = sum(len(refs) for q in graph for refs in q.outputs.values())
    files = list(butler.datastore.walk_files())
    run_files = [f for f in files if f.startswith("out/") and not f.startswith("out/toy_stats_schema/")]
    assert len(run_files) == n_outputs == 130
    assert len(files) == n_outputs + 1 + 40  # + the schema + the inputs
    assert butler.verify(checksums=True).ok


def test_init_inputs_are_passed_to_the_task_constructor(butler):
    pipeline = make_pipeline()
    pipeline.add_task("toy_exec_tasks.SchemaUserTask", "schemaUser")
    report = execute_graph(build(butler, pipeline, where="visit = 4"), butler)
    assert report.ok and report.counts["schemaUser"]["succeeded"] == 4
    stats = get(butler, "toy_stats", visit=4, detector=2)
    np.testing.assert_array_equal(get(butler, "toy_stats_values", visit=4, detector=2), [stats["mean"], stats["std"], stats["n"]])


# Failures -----------------------------------------------------------------------------------------------


def test_failure_blocks_exactly_the_descendants(butler):
    graph = build(butler, make_pipeline({"failDetectors": [2], "failVisits": [3]}))
    report = execute_graph(graph, butler)
    assert not report.ok
    by_id = statuses_by_data_id(graph, report)
    failed = {k for k, s in by_id.items() if s == "failed"}
    blocked = {k for k, s in by_id.items() if s == "blocked"}
    assert failed == {("addOne", 3, 2)}
    assert blocked == {("sum", 3, None), ("stats", 3, 2)}
    (failed_id,) = [q.id for q in graph if report.statuses[q.id] == "failed"]
    assert {q for q, s in report.statuses.items() if s == "blocked"} == graph.descendants(failed_id)
    assert Counter(report.statuses.values()) == {"succeeded": len(graph) - 3, "failed": 1, "blocked": 2}
    assert report.failed[0].error == "RuntimeError: detector 2 is configured to fail"
    assert report.failed[0].data_id == {"instrument": "Cam", "detector": 2, "visit": 3}
    assert (3, 2) not in data_ids(butler, "toy_output") and len(data_ids(butler, "toy_output")) == 39
    assert (3, 2) not in data_ids(butler, "addOne_metadata")


def test_failed_quantum_log_holds_the_traceback(butler):
    graph = build(butler, make_pipeline({"failDetectors": [1], "failVisits": [0]}, stats=False))
    execute_graph(graph, butler)
    log = get(butler, "addOne_log", visit=0, detector=1)
    errors = [r for r in log if r.levelname == "ERROR"]
    assert errors and "RuntimeError: detector 1 is configured to fail" in errors[-1].exc_text
    assert "Traceback (most recent call last)" in errors[-1].exc_text and "runQuantum" in errors[-1].exc_text


def test_no_work_found_writes_metadata_and_blocks_consumers(butler):
    graph = build(butler, make_pipeline({"noWorkDetectors": [0]}))
    report = execute_graph(graph, butler)
    assert report.ok
    assert report.counts["addOne"] == {**report.counts["addOne"], "no_work": 10, "succeeded": 30}
    assert report.counts["sum"]["blocked"] == 10 and report.counts["stats"] == {**report.counts["stats"], "succeeded": 30, "blocked": 10}
    assert len(data_ids(butler, "addOne_metadata")) == 40
    assert len(data_ids(butler, "toy_output")) == 30 and all(d != 0 for _, d in data_ids(butler, "toy_output"))


def test_fail_fast_stops_starting_quanta(butler):
    graph = build(butler, make_pipeline({"failDetectors": [0, 1, 2, 3]}, stats=False))
    report = execute_graph(graph, butler, fail_fast=True)
    counts = Counter(report.statuses.values())
    assert counts["failed"] == 1 and counts["succeeded"] == 0
    assert counts["not_run"] + counts["blocked"] == len(graph) - 1 and counts["not_run"] >= 30


# Parallel execution -------------------------------------------------------------------------------------


def test_parallel_run_gives_the_serial_values_ids_and_statuses(tmp_path):
    results = {}
    for jobs in (1, 2):
        with make_repo(tmp_path / f"repo{jobs}") as butler:
            graph = build(butler, make_pipeline({"failDetectors": [1], "failVisits": [5]}))
            report = execute_graph(graph, butler, jobs=jobs)
            refs = {
                (name, ref.data_id.get("visit"), ref.data_id.get("detector")): ref.id
                for name in ("toy_output", "toy_visit_sum", "toy_stats", "addOne_metadata", "addOne_log")
                for ref in butler.registry.query_datasets(name, ["out"])
            }
            values = {v: get(butler, "toy_visit_sum", visit=v) for v in range(N_VISITS) if v != 5}
            results[jobs] = (refs, values, statuses_by_data_id(graph, report))
    (refs1, values1, status1), (refs2, values2, status2) = results[1], results[2]
    assert refs1 == refs2 and len(refs1) == 39 + 9 + 39 + 39 + 40  # outputs, sums, stats, metadata, logs
    assert status1 == status2
    for v in values1:
        np.testing.assert_array_equal(values1[v], values2[v])


def test_spawned_workers_read_the_saved_graph(butler):
    graph = build(butler, make_pipeline(stats=False), where="visit IN (2, 3)")
    report = execute_graph(graph, butler, jobs=2, start_method="spawn")
    assert report.ok and report.total("succeeded") == len(graph) == 10
    np.testing.assert_array_equal(get(butler, "toy_visit_sum", visit=3), sum(input_value(3, d) + VALUE for d in range(4)))


def test_a_dead_worker_fails_only_its_quanta(butler):
    graph = build(butler, make_pipeline({"killDetectors": [3]}, stats=False), where="visit IN (0..3)")
    report = execute_graph(graph, butler, jobs=2)
    by_id = statuses_by_data_id(graph, report)
    assert {k for k, s in by_id.items() if s == "failed"} >= {("addOne", v, 3) for v in range(4)}
    # Quanta queued in the dead pool also fail; every other quantum of addOne ran.
    assert report.counts["addOne"]["succeeded"] + report.counts["addOne"]["failed"] == 16
    assert all("WorkerDied" in f.error for f in report.failed)
    assert report.counts["sum"]["blocked"] == 4
    assert len(data_ids(butler, "toy_output")) == report.counts["addOne"]["succeeded"]


# Resume -------------------------------------------------------------------------------------------------

_KILLED_RUN = """
import sys
sys.path[:0] = {paths!r}
from butler import Butler
from test_execute import build, make_pipeline
from graph.execute import execute_graph
with Butler({root!r}) as butler:
    execute_graph(build(butler, make_pipeline({{"sleep": 0.03}}, stats=False)), butler)
"""


def _count(butler: Butler, name: str) -> int:
    try:
        return len(butler.registry.query_datasets(name, ["out"]))
    except Exception:  # run or dataset type not registered yet
        return 0


def test_rerun_after_sigkill_completes_the_run_once(butler, tmp_path):
    graph = build(butler, make_pipeline({"sleep": 0.03}, stats=False))
    script = tmp_path / "killed_run.py"
    script.write_text(_KILLED_RUN.format(paths=[str(ROOT), str(TESTS), str(TESTS / "graph")], root=str(butler.config.root)))
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _count(butler, "addOne_metadata") < 12:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the killed run never got going"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = _count(butler, "addOne_metadata") + _count(butler, "sum_metadata")
    assert 12 <= finished < len(graph)
    report = execute_graph(graph, butler)
    assert report.ok
    assert report.total("skipped") == finished and report.total("succeeded") == len(graph) - finished
    for name, n in {"toy_output": 40, "toy_visit_sum": 10, "addOne_metadata": 40, "addOne_log": 40, "sum_metadata": 10}.items():
        found = data_ids(butler, name)
        assert len(found) == len(set(found)) == n, name
    assert len(data_ids(butler, "addOne_config")) == 1 and len(data_ids(butler, "packages")) == 1
    np.testing.assert_array_equal(get(butler, "toy_visit_sum", visit=9), sum(input_value(9, d) + VALUE for d in range(4)))
    butler.verify(fix=True)  # removes temporary files of the killed write, if any
    assert butler.verify(checksums=True).ok


def test_rerun_retries_failed_quanta_and_replaces_their_log(butler, tmp_path):
    flag = tmp_path / "fail-now"
    flag.touch()
    graph = build(butler, make_pipeline({"failDetectors": [2], "failFlagFile": str(flag)}, stats=False))
    first = execute_graph(graph, butler)
    assert first.counts["addOne"]["failed"] == 10 and first.counts["sum"]["blocked"] == 10
    flag.unlink()
    second = execute_graph(graph, butler)
    assert second.ok
    assert second.counts["addOne"] == {**second.counts["addOne"], "skipped": 30, "succeeded": 10}
    assert second.counts["sum"]["succeeded"] == 10
    log = get(butler, "addOne_log", visit=4, detector=2)
    assert not any(r.levelname == "ERROR" for r in log)
    assert len(data_ids(butler, "addOne_log")) == 40 and len(data_ids(butler, "toy_output")) == 40
    assert butler.verify().ok


def test_registered_outputs_of_an_unfinished_quantum_need_clobber(butler):
    graph = build(butler, make_pipeline(stats=False), where="visit = 1")
    execute_graph(graph, butler)
    metadata = butler.find_dataset("addOne_metadata", instrument="Cam", visit=1, detector=0, collections="out")
    butler.registry.remove_datasets([metadata])  # the quantum now looks unfinished, with its output registered
    with pytest.raises(QuantumExecutionError, match=r"toy_output .*clobber=True"):
        execute_graph(graph, butler)
    report = execute_graph(graph, butler, clobber=True)
    assert report.counts["addOne"]["succeeded"] == 1 and report.counts["addOne"]["skipped"] == 3
    assert len(data_ids(butler, "toy_output")) == 4 and butler.verify().ok


def test_changed_config_in_an_existing_run_is_refused(butler):
    execute_graph(build(butler, make_pipeline(stats=False), where="visit = 1"), butler)
    changed = build(butler, make_pipeline({"scale": 3.0}, stats=False), where="visit = 2")
    with pytest.raises(ConfigMismatchError, match=r"'addOne_config' differs in field\(s\) scale \(1.0 -> 3.0\).*new output run"):
        execute_graph(changed, butler)
    assert sorted(data_ids(butler, "toy_output")) == [(1, d) for d in range(4)]


def test_same_config_extends_a_run_without_rewriting_provenance(butler):
    execute_graph(build(butler, make_pipeline(stats=False), where="visit = 1"), butler)
    config_ids = data_ids(butler, "addOne_config")
    report = execute_graph(build(butler, make_pipeline(stats=False), where="visit = 2"), butler)
    assert report.ok and report.total("succeeded") == 5
    assert data_ids(butler, "addOne_config") == config_ids and len(data_ids(butler, "packages")) == 1
    assert len(data_ids(butler, "toy_output")) == 8


# The pieces ----------------------------------------------------------------------------------------------


def _infos(butler, graph):
    return dict(graph.datastore_records)


def test_quantum_context_refuses_datasets_of_other_quanta(butler):
    graph = build(butler, make_pipeline(stats=False), where="visit = 1")
    first, second = [q for q in graph if q.task_label == "addOne"][:2]
    context = QuantumContext(butler.datastore, first, _infos(butler, graph))
    (own,) = first.inputs["input"]
    np.testing.assert_array_equal(context.get(own), input_value(1, first.data_id["detector"]))
    with pytest.raises(QuantumExecutionError, match="is not one of its inputs"):
        context.get(second.inputs["input"][0])
    with pytest.raises(QuantumExecutionError, match="is not one of its outputs"):
        context.put(np.zeros(3), second.outputs["output"][0])
    assert context.written == [] and context.dataId == first.data_id


def test_quantum_context_puts_structs_and_names_missing_outputs(butler):
    graph = build(butler, make_pipeline(stats=False), where="visit = 1")
    quantum = next(q for q in graph if q.task_label == "addOne")
    context = QuantumContext(butler.datastore, quantum, _infos(butler, graph))
    outputs = OutputQuantizedConnection({"output": quantum.outputs["output"][0]})
    with pytest.raises(QuantumExecutionError, match="no 'output' output"):
        context.put(Struct(result=np.zeros(2)), outputs)
    context.put(Struct(output=np.ones(2)), outputs)
    assert [i.dataset_id for i in context.written] == [quantum.outputs["output"][0].id]
    np.testing.assert_array_equal(butler.datastore.get(context.written[0]), np.ones(2))
    summer = next(q for q in graph if q.task_label == "sum")
    infos = {**_infos(butler, graph), **{context.written[0].dataset_id: context.written[0]}}
    sum_context = QuantumContext(butler.datastore, summer, infos, connections=graph.pipeline_graph.tasks["sum"].connections)
    got = sum_context.get(InputQuantizedConnection({"images": [quantum.outputs["output"][0]]}))
    assert list(got) == ["images"] and isinstance(got["images"], list)


def test_quantum_context_defers_loading_of_defer_load_inputs(butler):
    graph = build(butler, make_pipeline(stats=False), where="visit = 6")
    quantum = next(q for q in graph if q.task_label == "addOne")
    deferred = Input(name="toy_input", storageClass="NumpyArray", dimensions=("instrument", "visit", "detector"), deferLoad=True)
    connections = type("Connections", (), {"allConnections": {"input": deferred}})()
    context = QuantumContext(butler.datastore, quantum, _infos(butler, graph), connections=connections)
    (ref,) = quantum.inputs["input"]
    handle = context.get(InputQuantizedConnection({"input": ref}))["input"]
    assert handle.ref == ref and handle.dataId == quantum.data_id
    np.testing.assert_array_equal(handle.get(), input_value(6, quantum.data_id["detector"]))


def test_single_quantum_executor_fails_on_missing_input_records(butler):
    graph = build(butler, make_pipeline(stats=False), where="visit = 1")
    summer = next(q for q in graph if q.task_label == "sum")
    result = SingleQuantumExecutor().execute(graph.pipeline_graph.tasks["sum"], summer, butler.datastore, {})
    assert result.status == "failed" and "4 input(s)" in result.error and "no datastore record" in result.error
    assert [i.dataset_id for i in result.written] == [summer.log_ref.id]  # the log only, inline
    assert result.written[0].is_inline and result.written[0].inline


def test_quantum_result_survives_json_and_pickle(butler):
    graph = build(butler, make_pipeline(stats=False), where="visit = 1")
    quantum = next(q for q in graph if q.task_label == "addOne")
    result = SingleQuantumExecutor().execute(graph.pipeline_graph.tasks["addOne"], quantum, butler.datastore, _infos(butler, graph))
    assert result.status == "succeeded" and len(result.written) == 3
    for copy in (QuantumResult.from_simple(json.loads(json.dumps(result.to_simple()))), pickle.loads(pickle.dumps(result))):
        assert copy == result
        assert [i.inline for i in copy.written] == [i.inline for i in result.written]


def test_report_prints_an_aligned_table_and_json(butler):
    graph = build(butler, make_pipeline({"failDetectors": [0], "failVisits": [7]}, stats=False))
    report = execute_graph(graph, butler)
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split() == ["task", "succeeded", "no_work", "skipped", "failed", "blocked", "not_run"]
    assert len({len(line) for line in lines[:5]}) == 1  # aligned columns
    assert "addOne {instrument=Cam, detector=0, visit=7}: RuntimeError: detector 0 is configured to fail" in text
    simple = json.loads(json.dumps(report.to_simple()))
    assert simple["ok"] is False and simple["counts"]["sum"]["blocked"] == 1 and len(simple["failed"]) == 1


# Performance --------------------------------------------------------------------------------------------


def _serial_overhead_ms(tmp_path: Path, n_visits: int) -> float:
    with make_repo(tmp_path / "perf", n_visits=n_visits) as butler:
        pipeline = Pipeline("no-op")
        pipeline.add_task("toy_exec_tasks.NoOpTask", "noop")
        graph = build(butler, pipeline)
        start = time.perf_counter()
        report = execute_graph(graph, butler)
        elapsed = time.perf_counter() - start
        assert report.ok and report.total("succeeded") == len(graph) == n_visits * N_DETECTORS
    return 1000 * elapsed / len(graph)


def test_serial_overhead_per_quantum_is_small(tmp_path):
    assert _serial_overhead_ms(tmp_path, 100) <= 3.0


@pytest.mark.slow
def test_serial_overhead_per_quantum_on_2000_quanta(tmp_path):
    assert _serial_overhead_ms(tmp_path, 500) <= 3.0


def _timed_run(graph, butler: Butler, jobs: int) -> tuple[float, float]:
    """Wall seconds of an execution, and the CPU seconds other processes of the machine used meanwhile."""
    import psutil

    def busy() -> float:
        t = psutil.cpu_times()
        return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    def own() -> float:
        t = os.times()  # workers are reaped before execute_graph returns: their time is in children_*
        return t.user + t.system + t.children_user + t.children_system

    busy0, own0, start = busy(), own(), time.perf_counter()
    assert execute_graph(graph, butler, jobs=jobs).ok
    wall = time.perf_counter() - start
    return wall, max(0.0, (busy() - busy0) - (own() - own0))


def test_two_jobs_halve_the_wall_time_of_cpu_bound_quanta(butler):
    pipeline = Pipeline("burn")
    pipeline.add_task("toy_exec_tasks.BurnTask", "burn", {"millis": 50})
    ratios, contended = [], []
    for attempt in range(3):  # the machine may be shared: retry, and ignore runs other processes slowed
        serial, others_serial = _timed_run(build(butler, pipeline, run=f"serial{attempt}"), butler, 1)
        parallel, others_parallel = _timed_run(build(butler, pipeline, run=f"parallel{attempt}"), butler, 2)
        assert serial >= 40 * 0.05
        if max(others_serial / serial, others_parallel / parallel) > 0.2:
            contended.append((serial, parallel, others_serial, others_parallel))
            continue
        ratios.append(parallel / serial)
        if ratios[-1] <= 0.6:
            break
    if not ratios:
        pytest.skip(f"other processes kept the CPUs busy (serial, jobs=2, their CPU seconds): {contended}")
    assert min(ratios) <= 0.6, (ratios, contended)
