"""The Parsl executor (`graph/execute/_parsl.py`, `_site.py`): site files, clustering, lost workers retried,
task failures not retried, and the ``pipetask run --executor parsl`` command.

Each Parsl execution starts local workers (a few seconds): those tests are slow-marked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import N_DETECTORS
from test_execute import (
    VALUE,
    build,
    data_ids,
    get,
    input_value,
    make_pipeline,
    make_repo,
    statuses_by_data_id,
)
from toy_tasks import VISIT_DETECTOR

from butler import Butler
from graph import (
    Input,
    Output,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    Struct,
)
from graph.builder import build_quantum_graph
from graph.cli import cli
from graph.execute import (
    ClusteringConfig,
    ParslNotInstalledError,
    SiteConfig,
    SiteConfigError,
    execute_graph,
    load_site,
)
from graph.execute._parsl import INSTALL_HINT, _retry_cost
from graph.execute._plan import ExecutionPlan, make_plan
from graph.execute._resources import ResourceClasses
from graph.execute._scheduler import Scheduler
from graph.execute._site import cluster_quanta
from graph.execute._submissions import earlier_submissions, new_submission, read_manifest, recover_results, write_manifest
from graph.execute._worker import WorkerState
from graph.execute.registration import init_input_infos, write_run_provenance
from graph.pipeline import Pipeline

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
needs_parsl = pytest.mark.skipif(importlib.util.find_spec("parsl") is None, reason="Parsl is not installed")


def local_site(**settings) -> SiteConfig:
    """Two local workers that notice a dead worker within a second; two retries."""
    return SiteConfig.model_validate(
        {"provider": {"type": "local"}, "workersPerNode": 2, "numberOfRetries": 2, "heartbeatPeriod": 1, **settings}
    )


@pytest.fixture
def worker_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsl's workers are new processes: they find the toy tasks through PYTHONPATH."""
    paths = [str(ROOT), str(TESTS), str(TESTS / "graph")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p]))


# Site files -----------------------------------------------------------------------------------------------


def test_shipped_site_files_load_with_their_documented_settings():
    local = load_site("local")
    assert local.provider.type == "local" and local.workersPerNode == 2 and local.numberOfRetries == 2
    slurm = load_site(ROOT / "repo_template" / "sites" / "slurm.yaml")
    assert slurm.provider.type == "slurm" and slurm.provider.walltime == "04:00:00"
    assert slurm.provider.workerInit.startswith("source ") and slurm.provider.workerInit.endswith(".venv/bin/activate")
    assert slurm.clustering == ClusteringConfig(dimensions=["visit", "detector"], equalDimensions={"visit": "exposure"})
    assert slurm.resources["calibrate"].memory == 4000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"provider": {"type": "slurm", "partiton": "x"}}, "unknown key 'provider.partiton'"),
        ({"provider": {"type": "local"}, "numberOfRetries": "three"}, "key 'numberOfRetries': Input should be a valid integer"),
        ({"provider": {"type": "local"}, "clustering": {"dimension": ["visit"]}}, "unknown key 'clustering.dimension'"),
        ({"provider": {"type": "pbs"}}, "key 'provider.type' must be 'local' or 'slurm', not 'pbs'"),
        ({"provider": {"type": "slurm", "walltime": "4h"}}, "key 'provider.walltime': String should match pattern"),
        ({"workersPerNode": 2}, "key 'provider' is missing"),
    ],
)
def test_site_file_errors_name_the_key(tmp_path, content, message):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(SiteConfigError, match="site file .*site.yaml: ") as info:
        load_site(path)
    assert message in str(info.value)


def test_a_missing_site_file_lists_the_shipped_ones(tmp_path):
    with pytest.raises(SiteConfigError, match=r"cannot read site file .*nowhere.yaml.*local.yaml, slurm.yaml"):
        load_site(tmp_path / "nowhere.yaml")


def test_without_parsl_the_command_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "parsl", None)  # makes `import parsl` fail
    result = CliRunner().invoke(cli, ["run", "-b", str(tmp_path), "-g", __file__, "--executor", "parsl"])
    assert result.exit_code == 1
    assert f"install it with: {INSTALL_HINT}" in result.output and INSTALL_HINT == "pip install 'butler-pipelines[parsl]'"


def test_without_parsl_nothing_is_written(butler, monkeypatch):
    monkeypatch.setitem(sys.modules, "parsl", None)
    with pytest.raises(ParslNotInstalledError, match=r"pip install 'butler-pipelines\[parsl\]'"):
        execute_graph(build(butler, make_pipeline(stats=False), where="visit = 1"), butler, executor="parsl")
    assert "out" not in butler.registry.query_collections()


@needs_parsl
def test_only_lost_workers_are_retried():
    from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

    assert _retry_cost(WorkerLost(0, "node"), {}) == 1 and _retry_cost(ManagerLost(b"m", "node"), {}) == 1
    assert _retry_cost(RuntimeError("task error"), {}) == float("inf")


def resource_classes(butler: Butler, graph, site: SiteConfig) -> ResourceClasses:
    """The resource classes of the apps of a whole graph run on a site."""
    clusters = cluster_quanta(graph, site.clustering, butler.dimensions) if site.clustering else None
    return ResourceClasses(site.task_requests(graph), Scheduler(graph, ExecutionPlan(), clusters=clusters).clusters())


@needs_parsl
def test_apps_go_to_the_executor_of_their_tasks_resource_class(butler, tmp_path):
    from graph.execute._parsl import _parsl_config

    graph = build(butler, make_pipeline())  # 10 visits: addOne and stats per detector, sum per visit
    site = local_site(resources={"stats": {"cores": 1, "memory": 500}, "sum": {"cores": 2}, "isr": {"cores": 8}})
    classes = resource_classes(butler, graph, site)
    assert classes.apps == {"cores1_mem500": 40, "cores2": 10, "default": 40}
    assert classes.tasks == {"cores1_mem500": ["stats"], "cores2": ["sum"], "default": ["addOne"]}
    expected = {"addOne": "default", "stats": "cores1_mem500", "sum": "cores2"}
    assert all(classes.label_of([q]) == expected[q.task_label] for q in graph)
    config = _parsl_config(site, classes, workers=6, run_dir=tmp_path / "runinfo")
    executors = {ex.label: (ex.cores_per_worker, ex.mem_per_worker, ex.max_workers_per_node) for ex in config.executors}
    # One worker each (4 cores), then the other 2 cores one at a time to the class with most apps per worker.
    assert executors == {"cores1_mem500": (1, 500 / 1024, 2), "cores2": (2, None, 1), "default": (1, None, 2)}
    assert len({id(ex.provider) for ex in config.executors}) == 3


def test_a_cluster_goes_to_the_class_of_its_largest_request(butler):
    graph = build(butler, make_pipeline())
    resources = {"stats": {"cores": 1, "memory": 500}, "sum": {"cores": 2}}
    by_ccd = resource_classes(butler, graph, local_site(resources=resources, clustering={"dimensions": ["visit", "detector"]}))
    assert by_ccd.apps == {"cores1_mem500": 40, "cores2": 10}  # addOne + stats (the larger); sum alone
    by_visit = resource_classes(butler, graph, local_site(resources=resources, clustering={"dimensions": ["visit"]}))
    assert by_visit.apps == {"cores2_mem500": 10}  # the most cores and the most memory of the visit's tasks
    assert {by_visit.label_of([q]) for q in graph} == {"cores2_mem500"}


def test_a_site_that_cannot_start_one_worker_per_class_says_so(butler, tmp_path):
    graph = build(butler, make_pipeline())
    classes = resource_classes(butler, graph, local_site(resources={"sum": {"cores": 2}}))
    assert classes.split_cores(3) == {"cores2": 1, "default": 1}
    assert classes.split_cores(4) == {"cores2": 1, "default": 2}
    with pytest.raises(SiteConfigError, match=r"needs 3 cores \(cores2 \(sum\): 2, default \(addOne, stats\): 1\), more than "
                                              r"the 2 .*give -j 3 or more"):
        classes.split_cores(2)
    with pytest.raises(SiteConfigError, match=r"a worker of resource class\(es\) cores2 \(sum: 2 cores\) does not fit on "
                                              r"a node, which has 1 cores; lower"):
        classes.require_fit(cores=1, memory=None, node="a node")


@needs_parsl
def test_slurm_site_submits_the_documented_job(butler, tmp_path, monkeypatch):
    """The shipped Slurm site as a Parsl config, and the script it gives ``sbatch`` (a fake one here)."""
    from graph.execute._parsl import _parsl_config

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 42"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    graph = build(butler, make_pipeline(stats=False), where="visit = 1")
    site = SiteConfig.model_validate({**load_site("slurm").model_dump(), "resources": {"addOne": {"cores": 2, "memory": 3072}}})
    config = _parsl_config(site, resource_classes(butler, graph, site), workers=16, run_dir=tmp_path / "runinfo")
    assert config.retries == 3
    executors = {ex.label: ex for ex in config.executors}
    assert sorted(executors) == ["cores2_mem3072", "default"]  # sum: 1 core, no memory
    big, default = executors["cores2_mem3072"], executors["default"]
    assert (big.cores_per_worker, big.mem_per_worker, default.cores_per_worker, default.mem_per_worker) == (2, 3.0, 1, None)
    assert big.max_workers_per_node == default.max_workers_per_node == 16  # per node; 32 cores hold 16 of either
    provider = big.provider
    provider.script_dir = str(tmp_path)
    assert provider.submit("launch-workers", tasks_per_node=1, job_name="block-0") == "42"
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=normal", "#SBATCH --exclusive", "#SBATCH --time=240", "#SBATCH --nodes=1",
                 "#SBATCH --cpus-per-task=32", "source /path/to/butler-pipelines/.venv/bin/activate", "launch-workers"):
        assert line in script, line
    assert "--account" not in script and "--qos" not in script
    small_nodes = SiteConfig.model_validate({**site.model_dump(), "provider": {**site.provider.model_dump(), "memPerNode": 2}})
    with pytest.raises(SiteConfigError, match=r"class\(es\) cores2_mem3072 \(addOne: 2 cores, 3072 MB\) does not fit on a node "
                                              r"of the site \(provider.coresPerNode, provider.memPerNode\), which has 32 cores and 2048 MB"):
        _parsl_config(small_nodes, resource_classes(butler, graph, small_nodes), workers=16, run_dir=tmp_path / "runinfo")


# Clustering -----------------------------------------------------------------------------------------------


@pytest.fixture
def butler(tmp_path: Path) -> Butler:
    b = make_repo(tmp_path / "repo")
    yield b
    b.close()


def test_clustering_by_visit_groups_each_visits_quanta(butler):
    graph = build(butler, make_pipeline())
    clusters = cluster_quanta(graph, ClusteringConfig(dimensions=["visit"]), butler.dimensions)
    members = defaultdict(list)
    for q in graph:
        members[clusters[q.id]].append(q.task_label)
    assert len(members) == 10 and all(Counter(labels) == {"addOne": 4, "stats": 4, "sum": 1} for labels in members.values())


def test_quanta_lacking_a_clustering_dimension_run_alone(butler):
    graph = build(butler, make_pipeline())
    clusters = cluster_quanta(graph, ClusteringConfig(dimensions=["visit", "detector"]), butler.dimensions)
    sizes = Counter(Counter(clusters.values()).values())
    assert sizes == {2: 40, 1: 10}  # addOne + stats per detector; each sum alone
    assert all(clusters[q.id] == q.id for q in graph.quanta_for("sum"))


class ScaleConnections(PipelineTaskConnections, dimensions=VISIT_DETECTOR):
    image = Input(name="toy_output", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="An image.")
    total = Input(name="toy_visit_sum", storageClass="NumpyArray", dimensions=("instrument", "visit"), doc="Its visit's sum.")
    output = Output(name="toy_scaled", storageClass="NumpyArray", dimensions=VISIT_DETECTOR, doc="image / total.")


class ScaleConfig(PipelineTaskConfig, pipelineConnections=ScaleConnections):
    pass


class ScaleTask(PipelineTask):
    """A detector-level task reading a visit-level output (so a visit's detectors wait for their visit)."""

    ConfigClass = ScaleConfig
    _DefaultName = "scale"

    def run(self, image: np.ndarray, total: np.ndarray) -> Struct:
        return Struct(output=image / total)


def test_clusters_that_need_each_other_are_refused(butler):
    pipeline = make_pipeline(stats=False)
    pipeline.add_task("test_execute_parsl.ScaleTask", "scale")
    graph = build(butler, pipeline, where="visit IN (1, 2)")
    assert len(set(cluster_quanta(graph, ClusteringConfig(dimensions=["visit"]), butler.dimensions).values())) == 2
    with pytest.raises(SiteConfigError, match=r"clustering by \['visit', 'detector'\] makes clusters that need each other") as info:
        cluster_quanta(graph, ClusteringConfig(dimensions=["visit", "detector"]), butler.dimensions)
    cycle = str(info.value).partition("(")[2].partition(")")[0].split(" -> ")
    assert len(cycle) == 3 and cycle[0] == cycle[2]  # a detector's cluster -> its visit's sum -> that cluster
    assert {step.partition(" ")[0] for step in cycle} == {"sum", "cluster"}


def test_clustering_by_an_unknown_dimension_names_it(butler):
    graph = build(butler, make_pipeline(stats=False), where="visit = 1")
    with pytest.raises(SiteConfigError, match="site file key 'clustering': 'visitt' is not a dimension"):
        cluster_quanta(graph, ClusteringConfig(dimensions=["visitt"]), butler.dimensions)


# Execution ------------------------------------------------------------------------------------------------


@needs_parsl
@pytest.mark.slow
def test_parsl_run_gives_the_serial_statuses_values_and_does_not_retry_task_failures(tmp_path, worker_path):
    """With a memory request for the stats task: its quanta run in their own executor's one worker."""
    markers = tmp_path / "markers"
    markers.mkdir()
    config = {"failDetectors": [1], "failVisits": [5], "markerDir": str(markers)}
    outcomes = {}
    for executor in ("serial", "parsl"):
        with make_repo(tmp_path / executor) as butler:
            graph = build(butler, make_pipeline(config))
            site = local_site(resources={"stats": {"memory": 500}}) if executor == "parsl" else None
            report = execute_graph(graph, butler, executor=executor, site=site)
            sums = {v: get(butler, "toy_visit_sum", visit=v) for v in range(10) if v != 5}
            outcomes[executor] = (statuses_by_data_id(graph, report), sums, [f.error for f in report.failed])
            assert butler.verify(checksums=True).ok  # no orphan files: manifests are gone, .parsl/ is not data
            assert len(data_ids(butler, "toy_output")) == 39 and len(data_ids(butler, "addOne_log")) == 40
            pids = {label: {butler.get(ref)["quantum.pid"] for ref in butler.registry.query_datasets(f"{label}_metadata", ["out"])}
                    for label in ("addOne", "stats")}
            if executor == "parsl":  # 2 cores: one worker of the default class (addOne, sum), one of stats's
                assert len(pids["stats"]) == 1 and len(pids["addOne"]) == 1 and pids["stats"] != pids["addOne"]
        marker = markers / "5-1"
        assert marker.read_text().count("\n") == 1, marker.read_text()  # failed once, not retried
        marker.unlink()
    (serial, serial_sums, serial_errors), (parsl, parsl_sums, parsl_errors) = outcomes["serial"], outcomes["parsl"]
    assert parsl == serial and Counter(parsl.values()) == {"succeeded": 87, "failed": 1, "blocked": 2}
    assert parsl_errors == serial_errors == ["RuntimeError: detector 1 is configured to fail"]
    for v, value in serial_sums.items():
        np.testing.assert_array_equal(parsl_sums[v], value)
    assert not list((tmp_path / "parsl" / ".parsl" / "submissions").iterdir())


@needs_parsl
@pytest.mark.slow
def test_killed_workers_are_retried_until_every_quantum_succeeds(tmp_path, worker_path):
    """Through ``pipetask run --executor parsl --site``: each quantum of detector 3 kills its worker once."""
    root = tmp_path / "repo"
    make_repo(root).close()
    markers = tmp_path / "markers"
    markers.mkdir()
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(make_pipeline({"killDetectors": [3], "markerDir": str(markers)}, stats=False).to_yaml())
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"provider": {"type": "local"}, "workersPerNode": 1, "numberOfRetries": 1,
                                    "heartbeatPeriod": 1}))
    result = CliRunner().invoke(cli, [
        "run", "-b", str(root), "-p", str(pipeline), "-i", "inputs", "--output-run", "out", "-d", "visit IN (0..3)",
        "--register-dataset-types", "--site", str(site), "-j", "2",
    ])
    assert result.exit_code == 0, result.output
    attempts = {path.name: path.read_text().splitlines() for path in markers.iterdir()}
    assert sorted(attempts) == [f"{v}-3" for v in range(4)]
    assert all(len(lines) == 2 and lines[0].split()[-1] != lines[1].split()[-1] for lines in attempts.values()), attempts
    with Butler(root) as butler:
        assert sorted(data_ids(butler, "toy_output")) == [(v, d) for v in range(4) for d in range(N_DETECTORS)]
        np.testing.assert_array_equal(get(butler, "toy_output", visit=2, detector=3), input_value(2, 3) + VALUE)
        assert len(data_ids(butler, "sum_metadata")) == 4 and butler.verify().ok


@needs_parsl
@pytest.mark.slow
def test_a_cluster_runs_in_one_process_and_a_failure_blocks_only_its_descendants(butler, worker_path):
    graph = build(butler, make_pipeline({"failDetectors": [2], "failVisits": [3]}), where="visit IN (2..5)")
    site = local_site(clustering={"dimensions": ["visit"]})
    report = execute_graph(graph, butler, site=site, jobs=2)
    by_id = statuses_by_data_id(graph, report)
    assert {k for k, s in by_id.items() if s == "failed"} == {("addOne", 3, 2)}
    assert {k for k, s in by_id.items() if s == "blocked"} == {("sum", 3, None), ("stats", 3, 2)}
    pids = defaultdict(set)
    for name in ("addOne_metadata", "stats_metadata", "sum_metadata"):
        for ref in butler.registry.query_datasets(name, ["out"]):
            pids[ref.data_id["visit"]].add(butler.get(ref)["quantum.pid"])
    assert sorted(pids) == [2, 3, 4, 5] and all(len(p) == 1 for p in pids.values())
    np.testing.assert_array_equal(get(butler, "toy_visit_sum", visit=4), sum(input_value(4, d) + VALUE for d in range(4)))


# SimCam ProcessCcd --------------------------------------------------------------------------------------

CCD_VISITS = 2  # x 9 detectors; the acceptance figure (4 visits) was checked by setting it to 4

@needs_parsl
@pytest.mark.slow
def test_process_ccd_through_parsl_writes_the_serial_runs_files(tmp_path, worker_path):
    """ProcessCcd on 9 detectors x `CCD_VISITS` SimCam visits, one app per visit+detector on 2 local workers: every
    output's checksum equals that of the same graph run serially (in a copy of the repository).  The
    metadata (timings, pids) and logs are not outputs of connections and are not compared."""
    from tasks.instruments.simcam import ingest_simulation, simulate_raws

    truth = simulate_raws(tmp_path / "sim", n_visits=CCD_VISITS, seed=23, sky_frames=False)
    serial_root, parsl_root = tmp_path / "serial", tmp_path / "parsl"
    with Butler.create(serial_root) as butler:
        ingest_simulation(butler, truth)
        pipeline = Pipeline.from_file(str(ROOT / "repo_template/pipelines/SimCam/ProcessCcd.yaml#processCcd"))
        graph, _ = build_quantum_graph(pipeline.to_graph(butler.dimensions), butler,
                                       input_collections=["SimCam/raw/all", "refcats"], output_run="ccd")
    n = 9 * CCD_VISITS
    assert graph.summary() == {"isr": n, "characterizeImage": n, "calibrate": n}
    shutil.copytree(serial_root, parsl_root, symlinks=True)
    site = local_site(clustering={"dimensions": ["visit", "detector"], "equalDimensions": {"visit": "exposure"}})
    checksums = {}
    for root, options in ((serial_root, {}), (parsl_root, {"site": site})):
        with Butler(root) as butler:
            report = execute_graph(graph, butler, **options)
            assert report.ok and report.total("succeeded") == 3 * n, str(report)
            refs = [ref for quantum in graph for refs in quantum.outputs.values() for ref in refs]
            records = butler.registry.get_datastore_records([r.id for r in refs])
            checksums[root] = {(r.dataset_type.name, tuple(r.data_id.required.values())): records[r.id]["checksum"] for r in refs}
    serial, parallel = checksums[serial_root], checksums[parsl_root]
    assert {name for name, _ in serial} >= {"postISRCCD", "calexp", "calexpBackground", "src", "icSrc"}
    assert all(serial.values())
    assert parallel == serial


# A killed submitter -------------------------------------------------------------------------------------


def _manifest_start_times(submissions: Path) -> dict[str, str]:
    """Quantum ID -> start time of every result in the apps' manifests under ``.parsl/submissions``."""
    return {result["quantum_id"]: result["start_time"]
            for path in submissions.glob("*/*.json") if path.name != "submission.json"
            for result in json.loads(path.read_text())["results"]}


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_only_results_beyond_doubt_are_recovered(butler):
    """Results left by a killed submission: one with a damaged file and one whose quantum read another
    version of an input are not recovered; the others are."""
    graph = build(butler, make_pipeline(stats=False), where="visit = 1")
    write_run_provenance(butler, graph)
    plan = make_plan(graph, butler)
    state = WorkerState(graph, butler.datastore, init_input_infos(butler, graph))
    submissions = Path(butler.config.root) / ".parsl" / "submissions"
    work = new_submission(submissions, "out")
    adds = list(graph.quanta_for("addOne"))
    for quantum in adds:
        write_manifest(work / f"{quantum.id}.json", graph, state.execute_cluster([quantum.id], plan.infos), plan.infos)

    def recovered() -> set:
        return set(recover_results(earlier_submissions(submissions, "out"), graph, set(graph.quanta), plan.infos,
                                   butler.datastore))

    assert recovered() == {q.id for q in adds} and earlier_submissions(submissions, "other") == []
    (damaged_result,), _ = read_manifest(work / f"{adds[0].id}.json")
    output = next(info for info in damaged_result.written if not info.is_inline)
    with open(butler.datastore.abspath(output), "ab") as stream:
        stream.write(b"\0")
    path = work / f"{adds[1].id}.json"
    manifest = json.loads(path.read_text())
    (records,) = manifest["inputs"].values()
    next(iter(records.values()))[0] = "sha256:" + "0" * 64
    path.write_text(json.dumps(manifest))
    assert recovered() == {q.id for q in adds[2:]}


@needs_parsl
@pytest.mark.slow
def test_a_resumed_run_registers_what_the_killed_submitters_apps_finished(tmp_path, worker_path):
    """The submitter is stopped as its first quantum starts, its submitted apps finish and leave their
    manifests, and it is SIGKILLed with its Parsl processes (as if its machine went down).  The resumed
    run (``--extend-run --skip-existing``) registers those quanta without running them again."""
    import psutil

    root, markers = tmp_path / "repo", tmp_path / "markers"
    make_repo(root).close()
    markers.mkdir()
    # Every addOne quantum notes each start in a marker (failDetectors, without the flag file: none fails).
    config = {"sleep": 1.0, "failDetectors": list(range(N_DETECTORS)), "failFlagFile": str(tmp_path / "absent"),
              "markerDir": str(markers)}
    pipeline, site = tmp_path / "pipeline.yaml", tmp_path / "site.yaml"
    pipeline.write_text(make_pipeline(config, stats=False).to_yaml())
    site.write_text(yaml.safe_dump({"provider": {"type": "local"}, "workersPerNode": 2, "heartbeatPeriod": 1}))
    args = ["run", "-b", str(root), "-p", str(pipeline), "-i", "inputs", "--output-run", "out", "-d", "visit IN (0..3)",
            "--site", str(site)]
    with open(tmp_path / "killed.log", "w") as log:
        submitter = subprocess.Popen([sys.executable, "-c", "from graph.cli import main; main()", *args,
                                      "--register-dataset-types"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: any(markers.iterdir()), 120, "the first quantum to start")
        submitter.send_signal(signal.SIGSTOP)
        # It had submitted 8 apps (4 per worker) at once, long before a worker started the first.
        submissions = root / ".parsl" / "submissions"
        _wait_for(lambda: len(_manifest_start_times(submissions)) == 8, 60, "the 8 submitted apps to finish")
        time.sleep(1)
        assert len(list(markers.iterdir())) == 8  # and no other quantum started
    finally:
        # The interchange is a child of the submitter; Parsl's local worker pool is not (its command names the repo).
        parsl = psutil.Process(submitter.pid).children(recursive=True)
        pools = [p for p in psutil.process_iter(["cmdline"]) if str(root) in " ".join(p.info["cmdline"] or [])]
        parsl += pools + [child for pool in pools for child in pool.children(recursive=True)]
        submitter.kill()
        submitter.wait()
        for process in parsl:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(parsl, timeout=10)
    finished = _manifest_start_times(submissions)

    result = CliRunner().invoke(cli, [*args, "--extend-run", "--skip-existing"])
    assert result.exit_code == 0, result.output
    assert "left the results of 8 of the quanta to run: 8 are recovered" in result.output
    with Butler(root) as butler:
        records = {str(record.id): record for record in butler.registry.query_quanta("out")}
        assert {qid: records[qid].start_time for qid in finished} == finished  # registered, not run again
        assert len(records) == 4 * N_DETECTORS + 4 and {r.status for r in records.values()} == {"succeeded"}
        assert sorted(data_ids(butler, "toy_output")) == [(v, d) for v in range(4) for d in range(N_DETECTORS)]
        assert sorted(data_ids(butler, "toy_visit_sum")) == [(v, None) for v in range(4)]
        np.testing.assert_array_equal(get(butler, "toy_visit_sum", visit=3), sum(input_value(3, d) + VALUE for d in range(N_DETECTORS)))
        assert butler.verify(checksums=True).ok
    attempts = {path.name: path.read_text().count("\n") for path in markers.iterdir()}
    assert len(attempts) == 4 * N_DETECTORS and set(attempts.values()) == {1}  # each quantum started once in all
    assert not list(submissions.iterdir())  # the killed submission's directory is gone with this one's
