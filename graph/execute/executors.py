"""Graph executors: run every quantum of a graph serially, in a warm pool of worker processes, or with Parsl.

Workers never write the registry.  Each worker gets the graph once (when it starts), imports the
task classes and opens the datastore once, and then receives only quantum IDs and the records of
those quanta's inputs; it returns `QuantumResult` manifests, which the main process registers (one
transaction per quantum) before handing the new records to the quanta downstream.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from butler import Butler
from butler.datastore import FileDatastore, StoredFileInfo

from ..quantum import Quantum
from ..quantum_graph import QuantumGraph
from ._parsl import require_parsl, run_parsl
from ._plan import make_plan
from ._scheduler import Scheduler
from ._site import SiteConfig, cluster_quanta, load_site
from ._worker import InitInfos, WorkerState
from .registration import init_input_infos, register_quantum_result, write_run_provenance
from .report import ExecutionReport
from .single_quantum import QuantumResult

__all__ = ["EXECUTORS", "execute_graph"]

_LOG = logging.getLogger("graph.execute")

#: The graph executors `execute_graph` and ``pipetask run --executor`` offer.
EXECUTORS = ("serial", "pool", "parsl")


def execute_graph(
    qgraph: QuantumGraph,
    butler: Butler,
    *,
    executor: Literal["serial", "pool", "parsl"] | None = None,
    jobs: int | None = None,
    site: SiteConfig | str | Path | None = None,
    fail_fast: bool = False,
    clobber: bool = False,
    progress: bool = False,
    start_method: str | None = None,
) -> ExecutionReport:
    """Execute every quantum of a graph and register what they write.

    Before the first quantum, the output run, the dataset types, the task configs and the package
    versions are written (or, in an existing run, checked: `write_run_provenance`).  Quanta whose
    ``{label}_metadata`` is already in the output run finished in an earlier execution and are
    "skipped"; the others run with their output files clobbered (files left by a killed attempt are
    not registered, so nothing owns them).

    Parameters
    ----------
    qgraph : `QuantumGraph`
        The graph to execute.
    butler : `Butler`
        A writeable butler of the repository the graph was built for.
    executor : `str`, optional
        ``"serial"`` (every quantum in this process), ``"pool"`` (``jobs`` worker processes on this
        machine) or ``"parsl"`` (Parsl apps, where the ``site`` says: local workers or Slurm jobs).
        Default: ``"parsl"`` if a ``site`` is given, else ``"pool"`` if ``jobs`` > 1, else ``"serial"``.
    jobs : `int`, optional
        Number of worker processes (per node with Parsl, overriding the site's ``workersPerNode``);
        default 1, or the site's.
    site : `SiteConfig`, `str` or `pathlib.Path`, optional
        The Parsl site: a `SiteConfig`, a site file, or the name of a shipped one (default ``"local"``).
    fail_fast : `bool`, optional
        After the first failure, start no more quanta (the rest are "not_run").
    clobber : `bool`, optional
        Remove registered outputs of quanta that did not finish before re-running them (the log of
        a failed attempt is always replaced).
    progress : `bool`, optional
        Show a progress bar on standard error.
    start_method : `str`, optional
        How pool workers start: ``"fork"`` (default where available: workers inherit the graph
        and datastore) or ``"spawn"`` (workers read the graph from a temporary saved file once).

    Returns
    -------
    report : `ExecutionReport`
        Counts of succeeded / no_work / skipped / failed / blocked / not_run quanta per task.

    Raises
    ------
    ValueError
        If the executor is unknown, ``jobs`` < 1, or ``jobs`` > 1 with the serial executor.
    ParslNotInstalledError
        If the Parsl executor is asked for and Parsl is not installed.
    SiteConfigError
        If the site file is unreadable or invalid, or does not fit the graph.
    ConfigMismatchError
        If the output run holds configs (or package versions) that differ from the graph's.
    QuantumExecutionError
        If unfinished quanta have registered outputs and ``clobber`` is false.
    """
    if executor is None:
        executor = "parsl" if site is not None else "pool" if jobs is not None and jobs > 1 else "serial"
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}.")
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}.")
    if executor == "serial" and jobs is not None and jobs > 1:
        raise ValueError(f"the serial executor runs one quantum at a time; use the pool or parsl executor for {jobs} jobs.")
    if site is not None and executor != "parsl":
        raise ValueError(f"a site is for the parsl executor only, not the {executor} executor.")
    clusters = None
    if executor == "parsl":  # fail before anything is written
        require_parsl()
        site = site if isinstance(site, SiteConfig) else load_site(site or "local")
        if site.clustering is not None:
            clusters = cluster_quanta(qgraph, site.clustering, butler.dimensions)
    elif executor == "pool":
        _pool_context(start_method)  # fail early on an unknown start method
    start = time.perf_counter()
    write_run_provenance(butler, qgraph)
    init_infos = init_input_infos(butler, qgraph)
    plan = make_plan(qgraph, butler, clobber=clobber)
    scheduler = Scheduler(qgraph, plan, fail_fast=fail_fast, clusters=clusters)
    if plan.skipped:
        _LOG.info("%d quanta finished in an earlier execution; skipping them.", len(plan.skipped))
    bar = _progress_bar(scheduler.to_run, progress)
    try:
        if executor == "parsl":

            def settle(cluster: list[Quantum], results: list[QuantumResult]) -> None:
                by_id = {q.id: q for q in cluster}
                scheduler.complete_cluster(cluster, [_register(butler, by_id[r.quantum_id], r) for r in results])
                if bar is not None:
                    bar.update(len(cluster))

            run_parsl(qgraph, butler, scheduler, init_infos, site, workers=jobs or site.workersPerNode, settle=settle)
        elif executor == "pool" and scheduler.to_run > 1:
            _run_pool(qgraph, butler, scheduler, init_infos, jobs or 1, bar, start_method)
        else:
            _run_serial(qgraph, butler, scheduler, init_infos, bar)
    finally:
        if bar is not None:
            bar.close()
    return ExecutionReport.from_statuses(qgraph, scheduler.statuses, scheduler.errors, time.perf_counter() - start)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="quanta", file=sys.stderr, desc="Executing")


def _register(butler: Butler, quantum: Quantum, result: QuantumResult) -> QuantumResult:
    """Register a result; a registration failure makes the quantum failed."""
    try:
        register_quantum_result(butler, quantum, result)
    except Exception as err:
        _LOG.error("Registering the outputs of quantum %s %s failed: %s", quantum.task_label, quantum.data_id, err)
        return QuantumResult(
            quantum.id, quantum.task_label, "failed", f"registration failed: {type(err).__name__}: {err}",
            traceback.format_exc(), [], result.timing,
        )
    return result


def _run_serial(
    qgraph: QuantumGraph, butler: Butler, scheduler: Scheduler, init_infos: InitInfos, bar: Any
) -> None:
    state = WorkerState(qgraph, butler.datastore, init_infos)
    while (quantum := scheduler.next_ready()) is not None:
        result = state.execute(quantum.id, scheduler.input_infos(quantum))
        scheduler.complete(_register(butler, quantum, result))
        if bar is not None:
            bar.update(1)


# Process pool -----------------------------------------------------------------------------------------


@dataclass
class _WorkerSetup:
    """What a worker receives once, when it starts.

    With the ``fork`` start method the objects themselves are inherited (nothing is pickled);
    with ``spawn`` the graph is read from ``graph_path`` and the datastore made from ``repo_root``.
    """

    init_infos: InitInfos
    qgraph: QuantumGraph | None = None
    datastore: FileDatastore | None = None
    graph_path: str | None = None
    repo_root: str | None = None


_STATE: WorkerState | None = None


def _init_worker(setup: _WorkerSetup) -> None:
    global _STATE
    if setup.qgraph is None or setup.datastore is None:
        _STATE = WorkerState.from_files(setup.graph_path, setup.repo_root, setup.init_infos)
    else:
        _STATE = WorkerState(setup.qgraph, setup.datastore, setup.init_infos)


def _execute_in_worker(quantum_id: uuid.UUID, input_infos: Mapping[uuid.UUID, StoredFileInfo]) -> QuantumResult:
    assert _STATE is not None, "worker not initialised"
    return _STATE.execute(quantum_id, input_infos)


def _pool_context(start_method: str | None) -> tuple[multiprocessing.context.BaseContext, bool]:
    """The requested context, else ``fork`` where available (workers inherit the graph), else ``spawn``."""
    available = multiprocessing.get_all_start_methods()
    if start_method is None:
        start_method = "fork" if "fork" in available else "spawn"
    if start_method not in available:
        raise ValueError(f"start method {start_method!r} is not available here; choose one of {available}.")
    return multiprocessing.get_context(start_method), start_method == "fork"


def _run_pool(
    qgraph: QuantumGraph,
    butler: Butler,
    scheduler: Scheduler,
    init_infos: InitInfos,
    jobs: int,
    bar: Any,
    start_method: str | None,
) -> None:
    context, forked = _pool_context(start_method)
    with tempfile.TemporaryDirectory(prefix="qgraph-") as tmp:
        if forked:
            setup = _WorkerSetup(init_infos, qgraph=qgraph, datastore=butler.datastore)
        else:
            path = Path(tmp) / "graph.qgraph"
            qgraph.save(path)
            setup = _WorkerSetup(init_infos, graph_path=str(path), repo_root=str(butler.config.root))
        while not scheduler.done:
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(setup,))
            try:
                broken = _drive_pool(pool, qgraph, butler, scheduler, jobs, bar)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            if not broken:
                break


def _drive_pool(
    pool: ProcessPoolExecutor, qgraph: QuantumGraph, butler: Butler, scheduler: Scheduler, jobs: int, bar: Any
) -> bool:
    """Submit ready quanta (keeping each worker one quantum ahead) and register results as they come.

    Returns whether the pool broke (a worker died); the quanta in flight then count as failed.
    """
    in_flight: dict[Future, Quantum] = {}
    limit = 2 * jobs
    while True:
        broken = False
        while len(in_flight) < limit and (quantum := scheduler.next_ready()) is not None:
            try:
                future = pool.submit(_execute_in_worker, quantum.id, scheduler.input_infos(quantum))
            except BrokenProcessPool:  # a worker died since the last results came in
                scheduler.requeue(quantum)
                broken = True
                break
            in_flight[future] = quantum
        if not in_flight:
            return broken
        finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for future in finished:
            broken |= _collect(future, in_flight.pop(future), butler, scheduler, bar)
        if broken:  # every other future is settled too: with a result, or with BrokenProcessPool
            for future in wait(in_flight).done:
                _collect(future, in_flight.pop(future), butler, scheduler, bar)
            return True


def _collect(future: Future, quantum: Quantum, butler: Butler, scheduler: Scheduler, bar: Any) -> bool:
    """Register the result of a finished future; return whether it found the pool broken."""
    broken = False
    try:
        result = _register(butler, quantum, future.result())
    except BrokenProcessPool:
        broken = True
        result = _died(quantum)
    except Exception as err:  # e.g. the result could not be sent back
        result = QuantumResult(
            quantum.id, quantum.task_label, "failed", f"{type(err).__name__}: {err}", traceback.format_exc()
        )
    scheduler.complete(result)
    if bar is not None:
        bar.update(1)
    return broken


def _died(quantum: Quantum) -> QuantumResult:
    message = (
        "WorkerDied: a worker process died while this quantum was running or queued (killed, out of memory, "
        "or a crash in native code); re-run the graph to retry it."
    )
    _LOG.error("Quantum %s %s: %s", quantum.task_label, quantum.data_id, message)
    return QuantumResult(quantum.id, quantum.task_label, "failed", message)
