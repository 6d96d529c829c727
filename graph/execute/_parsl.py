"""Executing a quantum graph with Parsl: each app runs one quantum, or one cluster of quanta, from the saved graph.

The submitting process saves the graph under ``<repo>/.parsl/submissions/``; each app loads it (once per
worker process), runs its quanta with the records of their inputs (sent with the app), writes their
files and a JSON manifest of their `QuantumResult` next to the graph, and returns the manifest's path.
It never opens the registry: the submitting process registers each quantum's outputs (one transaction
per quantum) as the apps finish.  Apps are retried after a lost worker or node only; a task's exception
is a failed quantum, recorded in the manifest like a success.  Parsl's run directory (its logs, submit
scripts) is ``<repo>/.parsl/runinfo``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import sys
import sysconfig
import tempfile
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from butler import Butler
from butler.datastore import StoredFileInfo

from ..errors import PipelineError
from ..quantum import Quantum
from ..quantum_graph import QuantumGraph
from ._scheduler import Scheduler
from ._site import SiteConfig
from ._worker import InitInfos, WorkerState
from .single_quantum import QuantumResult

__all__ = ["INSTALL_HINT", "ParslNotInstalledError", "require_parsl", "run_cluster_app", "run_parsl"]

_LOG = logging.getLogger("graph.execute")

#: The command that installs the optional Parsl dependency.
INSTALL_HINT = "pip install 'butler-pipelines[parsl]'"
_LABEL = "htex"
_MANIFEST_FORMAT = "butler-pipelines-quantum-results"
_MANIFEST_VERSION = 1


class ParslNotInstalledError(PipelineError):
    """The Parsl executor was asked for, and Parsl is not installed."""


def require_parsl() -> None:
    """Check that Parsl can be imported.

    Raises
    ------
    ParslNotInstalledError
        If it cannot; the message gives the install command.
    """
    try:
        import parsl  # noqa: F401
    except ImportError:
        raise ParslNotInstalledError(
            f"the Parsl executor needs Parsl, which is not installed here; install it with: {INSTALL_HINT}"
        ) from None


# In the worker ----------------------------------------------------------------------------------------

# The graph file a worker process loaded, with what it made from it (one submission per worker).
_STATE: tuple[str, WorkerState] | None = None


def run_cluster_app(
    graph_path: str,
    repo_root: str,
    init_infos: InitInfos,
    quantum_ids: list[uuid.UUID],
    input_infos: Mapping[uuid.UUID, StoredFileInfo],
    manifest_path: str,
) -> str:
    """The body of every Parsl app: run a cluster of quanta and write the manifest of their results.

    Parameters
    ----------
    graph_path : `str`
        The saved graph (read once per worker process).
    repo_root : `str`
        The repository root (its datastore is opened, never its registry).
    init_infos : `dict` [`str`, `dict` [`str`, `StoredFileInfo`]]
        Records of every task's init-inputs.
    quantum_ids : `list` [`uuid.UUID`]
        The quanta, every producer before its consumers.
    input_infos : `dict` [`uuid.UUID`, `StoredFileInfo`]
        Records of the datasets the quanta read from outside the cluster.
    manifest_path : `str`
        Where to write the JSON manifest (atomically).

    Returns
    -------
    manifest_path : `str`
    """
    global _STATE
    if _STATE is None or _STATE[0] != graph_path:
        _STATE = (graph_path, WorkerState.from_files(graph_path, repo_root, init_infos))
    results = _STATE[1].execute_cluster(quantum_ids, input_infos)
    manifest = {
        "format": _MANIFEST_FORMAT,
        "version": _MANIFEST_VERSION,
        "results": [result.to_simple() for result in results],
    }
    path = Path(manifest_path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, path)
    return manifest_path


def read_manifest(path: str | Path) -> list[QuantumResult]:
    """The results in a manifest written by `run_cluster_app`."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != _MANIFEST_FORMAT or data.get("version") != _MANIFEST_VERSION:
        raise PipelineError(f"{path} is not a version-{_MANIFEST_VERSION} manifest of quantum results.")
    return [QuantumResult.from_simple(simple) for simple in data["results"]]


# In the submitting process ----------------------------------------------------------------------------


def _is_lost(error: BaseException) -> bool:
    """Whether an app failed because its worker process or its node (manager) was lost."""
    from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

    return isinstance(error, (WorkerLost, ManagerLost))


def _retry_cost(error: Exception, task_record: Any) -> float:
    """Parsl's retry handler: a lost worker or node costs one retry; any other error is final."""
    return 1.0 if _is_lost(error) else math.inf


def _parsl_config(site: SiteConfig, qgraph: QuantumGraph, *, workers: int, run_dir: Path) -> Any:
    """The Parsl `~parsl.config.Config` of a site: one HighThroughputExecutor on its provider."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
    from parsl.launchers import SrunLauncher
    from parsl.providers import LocalProvider, SlurmProvider

    # Parsl starts its interchange (here) and local workers as scripts of this environment, which need
    # not be on the PATH; workers on Slurm nodes find theirs on the PATH the site's workerInit sets.
    scripts = Path(sysconfig.get_path("scripts"))
    interchange = [sys.executable, str(scripts / "interchange.py")]
    launch_cmd = None
    spec = site.provider
    if spec.type == "local":
        provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=spec.workerInit)
        script, arguments = DEFAULT_LAUNCH_CMD.split(" ", 1)
        launch_cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(scripts / script))} {arguments}"
    else:
        provider = SlurmProvider(
            partition=spec.partition, account=spec.account, qos=spec.qos, walltime=spec.walltime,
            nodes_per_block=spec.nodesPerBlock, cores_per_node=spec.coresPerNode, mem_per_node=spec.memPerNode,
            init_blocks=spec.initBlocks, min_blocks=spec.minBlocks, max_blocks=spec.maxBlocks,
            exclusive=spec.exclusive, scheduler_options=spec.schedulerOptions, worker_init=spec.workerInit,
            launcher=SrunLauncher(),
        )
    request = site.worker_request(qgraph)
    executor = HighThroughputExecutor(
        label=_LABEL,
        provider=provider,
        interchange_launch_cmd=interchange,
        launch_cmd=launch_cmd,
        max_workers_per_node=workers,
        cores_per_worker=request.cores,
        mem_per_worker=request.memory / 1024 if request.memory is not None else None,
        heartbeat_period=site.heartbeatPeriod,
        heartbeat_threshold=site.heartbeatThreshold,
    )
    return Config(
        executors=[executor],
        retries=site.numberOfRetries,
        retry_handler=_retry_cost,
        run_dir=str(run_dir),
        strategy="none" if spec.type == "local" else "simple",
        # Blocks start at the first poll: soon for local workers; Slurm's queue is polled at Parsl's default.
        strategy_period=0.5 if spec.type == "local" else 5,
        usage_tracking=0,
    )


@contextlib.contextmanager
def _parsl_logs_to_file_only() -> Iterator[None]:
    """Keep Parsl's (debug-level) records out of our console handlers: they go to its run directory."""
    log = logging.getLogger("parsl")
    previous = log.propagate
    log.propagate = False
    try:
        yield
    finally:
        log.propagate = previous


def run_parsl(
    qgraph: QuantumGraph,
    butler: Butler,
    scheduler: Scheduler,
    init_infos: InitInfos,
    site: SiteConfig,
    *,
    workers: int,
    settle: Callable[[list[Quantum], list[QuantumResult]], None],
) -> None:
    """Run every cluster the scheduler hands out as a Parsl app; settle each as it finishes.

    Parameters
    ----------
    qgraph : `QuantumGraph`
    butler : `Butler`
        The repository (its root holds ``.parsl/``).
    scheduler : `Scheduler`
    init_infos : `dict` [`str`, `dict` [`str`, `StoredFileInfo`]]
    site : `SiteConfig`
    workers : `int`
        Worker processes per node.
    settle : callable
        Called in this process with each cluster and the results of its quanta (registers them).
    """
    from parsl.app.app import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    root = Path(butler.config.root)
    submissions = root / ".parsl" / "submissions"
    submissions.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=submissions))
    try:
        graph_path = work / "graph.qgraph"
        qgraph.save(graph_path)
        spec = site.provider
        capacity = workers * (1 if spec.type == "local" else spec.nodesPerBlock * spec.maxBlocks)
        limit = 4 * capacity  # enough queued to keep workers busy; few enough for --fail-fast to stop soon
        with _parsl_logs_to_file_only():
            dfk = DataFlowKernel(_parsl_config(site, qgraph, workers=workers, run_dir=root / ".parsl" / "runinfo"))
            try:
                app = python_app(run_cluster_app, data_flow_kernel=dfk, executors=[_LABEL])
                _LOG.info("Parsl run directory: %s", dfk.run_dir)
                in_flight: dict[Future, list[Quantum]] = {}
                while True:
                    while len(in_flight) < limit and (cluster := scheduler.next_cluster()) is not None:
                        manifest = work / f"{cluster[0].id}.json"
                        future = app(
                            str(graph_path), str(root), init_infos, [q.id for q in cluster],
                            scheduler.input_infos(cluster), str(manifest),
                        )
                        in_flight[future] = cluster
                    if not in_flight:
                        break
                    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        cluster = in_flight.pop(future)
                        settle(cluster, _results(future, cluster, site.numberOfRetries))
            finally:
                dfk.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _results(future: Future, cluster: list[Quantum], retries: int) -> list[QuantumResult]:
    """The results in a finished app's manifest, or failed results for its quanta if the app failed."""
    try:
        path = future.result()
        results = read_manifest(path)
        Path(path).unlink()
        return results
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
        if _is_lost(err):
            message += f" (after {retries} retries); re-run the graph to retry it."
        tb = "".join(traceback.format_exception(err))
        first = cluster[0]
        _LOG.error("The app of quantum %s %s%s failed: %s", first.task_label, first.data_id,
                   f" and {len(cluster) - 1} more" if len(cluster) > 1 else "", message)
        return [QuantumResult(q.id, q.task_label, "failed", message, tb) for q in cluster]
