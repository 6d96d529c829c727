"""Executing a quantum graph with Parsl: each app runs one quantum, or one cluster of quanta, from the saved graph.

The submitting process saves the graph under ``<repo>/.parsl/submissions/``; each app loads it (once per
worker process), runs its quanta with the records of their inputs (sent with the app), writes their
files and a JSON manifest of their `QuantumResult` next to the graph, and returns the manifest's path.
It never opens the registry: the submitting process registers each quantum's outputs (one transaction
per quantum) as the apps finish.  Apps are retried after a lost worker or node only; a task's exception
is a failed quantum, recorded in the manifest like a success.  Each resource class of the apps (the
cores and memory they ask for) has a Parsl executor of its own, with workers of its size
(`graph.execute._resources`).  Parsl's run directory (its logs, submit scripts) is ``<repo>/.parsl/runinfo``.
An execution into a run that a killed one left manifests of first registers the results in them that
are certainly right, instead of running their quanta again (`graph.execute._submissions`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import shutil
import sys
import sysconfig
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from butler import Butler
from butler.datastore import StoredFileInfo

from ..errors import PipelineError
from ..quantum import Quantum
from ..quantum_graph import QuantumGraph
from ._resources import ResourceClasses
from ._scheduler import Scheduler
from ._site import SiteConfig
from ._submissions import earlier_submissions, new_submission, read_manifest, recover_results, write_manifest
from ._worker import InitInfos, WorkerState
from .single_quantum import QuantumResult

__all__ = ["INSTALL_HINT", "ParslNotInstalledError", "require_parsl", "run_cluster_app", "run_parsl"]

_LOG = logging.getLogger("graph.execute")

#: The command that installs the optional Parsl dependency.
INSTALL_HINT = "pip install 'butler-pipelines[parsl]'"


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
    state = _STATE[1]
    write_manifest(Path(manifest_path), state.qgraph, state.execute_cluster(quantum_ids, input_infos), input_infos)
    return manifest_path


# In the submitting process ----------------------------------------------------------------------------


def _is_lost(error: BaseException) -> bool:
    """Whether an app failed because its worker process or its node (manager) was lost."""
    from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

    return isinstance(error, (WorkerLost, ManagerLost))


def _retry_cost(error: Exception, task_record: Any) -> float:
    """Parsl's retry handler: a lost worker or node costs one retry; any other error is final."""
    return 1.0 if _is_lost(error) else math.inf


def _parsl_config(site: SiteConfig, classes: ResourceClasses, *, workers: int, run_dir: Path) -> Any:
    """The Parsl `~parsl.config.Config` of a site: one HighThroughputExecutor per resource class.

    Each executor is labelled by its class, sizes its workers for the class's request and has its own
    provider (its own blocks).  On the local provider the classes share ``workers`` cores
    (`ResourceClasses.split_cores`); on Slurm each class has up to ``workers`` workers per node, fewer
    if the node's ``coresPerNode`` or ``memPerNode`` hold fewer (Parsl divides them by the request).

    Raises
    ------
    SiteConfigError
        If the cores do not allow one local worker per class, or a class's worker would not fit on a
        node (this machine, or a Slurm node of ``coresPerNode`` and ``memPerNode``).
    """
    import psutil
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
    from parsl.launchers import SrunLauncher
    from parsl.providers import LocalProvider, SlurmProvider
    from parsl.providers.base import ExecutionProvider

    # Parsl starts its interchange (here) and local workers as scripts of this environment, which need
    # not be on the PATH; workers on Slurm nodes find theirs on the PATH the site's workerInit sets.
    scripts = Path(sysconfig.get_path("scripts"))
    interchange = [sys.executable, str(scripts / "interchange.py")]
    spec = site.provider
    if spec.type == "local":
        # Parsl's worker pool starts as many workers as the machine's cores and available memory hold.
        classes.require_fit(cores=os.cpu_count(), memory=psutil.virtual_memory().available / 2**20, node="this machine")
        per_class = classes.split_cores(workers)
        script, arguments = DEFAULT_LAUNCH_CMD.split(" ", 1)
        launch_cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(scripts / script))} {arguments}"

        def provider() -> ExecutionProvider:
            return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=spec.workerInit)
    else:
        classes.require_fit(
            cores=spec.coresPerNode, memory=spec.memPerNode * 1024 if spec.memPerNode is not None else None,
            node="a node of the site (provider.coresPerNode, provider.memPerNode)",
        )
        per_class = dict.fromkeys(classes.requests, workers)
        launch_cmd = None

        def provider() -> ExecutionProvider:
            return SlurmProvider(
                partition=spec.partition, account=spec.account, qos=spec.qos, walltime=spec.walltime,
                nodes_per_block=spec.nodesPerBlock, cores_per_node=spec.coresPerNode, mem_per_node=spec.memPerNode,
                init_blocks=spec.initBlocks, min_blocks=spec.minBlocks, max_blocks=spec.maxBlocks,
                exclusive=spec.exclusive, scheduler_options=spec.schedulerOptions, worker_init=spec.workerInit,
                launcher=SrunLauncher(),
            )

    executors = [
        HighThroughputExecutor(
            label=name,
            provider=provider(),
            interchange_launch_cmd=interchange,
            launch_cmd=launch_cmd,
            max_workers_per_node=per_class[name],
            cores_per_worker=request.cores,
            mem_per_worker=request.memory / 1024 if request.memory is not None else None,
            heartbeat_period=site.heartbeatPeriod,
            heartbeat_threshold=site.heartbeatThreshold,
        )
        for name, request in classes.requests.items()
    ]
    return Config(
        executors=executors,
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

    Clusters whose every quantum has a result recovered from an earlier, killed submission into the
    same run (`recover_results`) are settled with those results instead; that submission's directory
    is then removed.

    Parameters
    ----------
    qgraph : `QuantumGraph`
    butler : `Butler`
        The repository (its root holds ``.parsl/``).
    scheduler : `Scheduler`
    init_infos : `dict` [`str`, `dict` [`str`, `StoredFileInfo`]]
    site : `SiteConfig`
    workers : `int`
        Cores the local workers share, or worker processes per Slurm node of each resource class.
    settle : callable
        Called in this process with each cluster and the results of its quanta (registers them).
    """
    root = Path(butler.config.root)
    submissions = root / ".parsl" / "submissions"
    earlier = earlier_submissions(submissions, qgraph.output_run)
    to_run = {quantum.id for cluster in scheduler.clusters() for quantum in cluster}
    recovered = recover_results(earlier, qgraph, to_run, scheduler.infos, butler.datastore)
    classes = ResourceClasses(
        site.task_requests(qgraph), (c for c in scheduler.clusters() if not all(q.id in recovered for q in c))
    )
    work = new_submission(submissions, qgraph.output_run)
    try:
        graph_path = work / "graph.qgraph"
        with _parsl_logs_to_file_only(), contextlib.ExitStack() as stack:
            # Parsl starts only if some app is to run (not if every quantum left was recovered).
            apps, limit = _start_apps(stack, site, classes, workers=workers, run_dir=root / ".parsl" / "runinfo")
            if apps:
                qgraph.save(graph_path)
            in_flight: dict[Future, list[Quantum]] = {}
            while True:
                while len(in_flight) < limit and (cluster := scheduler.next_cluster()) is not None:
                    if all(q.id in recovered for q in cluster):
                        settle(cluster, [recovered[q.id] for q in cluster])
                        continue
                    future = apps[classes.label_of(cluster)](
                        str(graph_path), str(root), init_infos, [q.id for q in cluster],
                        scheduler.input_infos(cluster), str(work / f"{cluster[0].id}.json"),
                    )
                    in_flight[future] = cluster
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    cluster = in_flight.pop(future)
                    settle(cluster, _results(future, cluster, site.numberOfRetries))
        for directory in earlier:  # their results are registered, or were run again
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _start_apps(
    stack: contextlib.ExitStack, site: SiteConfig, classes: ResourceClasses, *, workers: int, run_dir: Path
) -> tuple[dict[str, Callable[..., Future]], int]:
    """Start Parsl with an executor per resource class (stopped when ``stack`` closes), if there is any class.

    Returns
    -------
    apps : `dict` [`str`, callable]
        Class label -> `run_cluster_app` as a Parsl app of the class's executor (empty without classes).
    limit : `int`
        How many apps to keep submitted: enough to keep every worker busy, few enough for
        ``fail_fast`` to stop soon (at least 1).
    """
    from parsl.app.app import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    if not classes.requests:
        return {}, 1
    config = _parsl_config(site, classes, workers=workers, run_dir=run_dir)
    dfk = DataFlowKernel(config)
    stack.callback(dfk.cleanup)
    _LOG.info("Parsl run directory: %s", dfk.run_dir)
    per_node = " per node" if site.provider.type == "slurm" else ""
    for ex in config.executors:
        _LOG.info("Parsl executor %s: %s worker(s)%s for %d app(s) of %s.", ex.label, ex.workers_per_node, per_node,
                  classes.apps[ex.label], ", ".join(classes.tasks[ex.label]))
    apps = {label: python_app(run_cluster_app, data_flow_kernel=dfk, executors=[label]) for label in classes.requests}
    capacity = sum(ex.workers_per_node * ex.provider.nodes_per_block * ex.provider.max_blocks for ex in config.executors)
    return apps, 4 * capacity


def _results(future: Future, cluster: list[Quantum], retries: int) -> list[QuantumResult]:
    """The results in a finished app's manifest, or failed results for its quanta if the app failed."""
    try:
        path = Path(future.result())
        results, _ = read_manifest(path)
        path.unlink()
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
