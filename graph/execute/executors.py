"""Graph executors: run every quantum of a graph, serially or in a warm pool of worker processes.

Workers never write the registry.  Each worker gets the graph once (when it starts), imports the
task classes and opens the datastore once, and then receives only a quantum ID and the records of
that quantum's inputs; it returns a `QuantumResult`, which the main process registers in one
transaction before handing the new records to the quanta downstream.
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
from typing import Any

from butler import Butler
from butler.datastore import FileDatastore, StoredFileInfo

from ..quantum import Quantum
from ..quantum_graph import QuantumGraph
from ._plan import make_plan
from ._scheduler import Scheduler
from .registration import init_input_infos, register_quantum_result, write_run_provenance
from .report import ExecutionReport
from .single_quantum import QuantumResult, SingleQuantumExecutor

__all__ = ["execute_graph"]

_LOG = logging.getLogger("graph.execute")

# Task label -> init-input connection name -> datastore record.
InitInfos = Mapping[str, Mapping[str, StoredFileInfo]]


def execute_graph(
    qgraph: QuantumGraph,
    butler: Butler,
    *,
    jobs: int = 1,
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
    jobs : `int`, optional
        Number of worker processes; 1 runs every quantum in this process.
    fail_fast : `bool`, optional
        After the first failure, start no more quanta (the rest are "not_run").
    clobber : `bool`, optional
        Remove registered outputs of quanta that did not finish before re-running them (the log of
        a failed attempt is always replaced).
    progress : `bool`, optional
        Show a progress bar on standard error.
    start_method : `str`, optional
        How worker processes start: ``"fork"`` (default where available: workers inherit the graph
        and datastore) or ``"spawn"`` (workers read the graph from a temporary saved file once).

    Returns
    -------
    report : `ExecutionReport`
        Counts of succeeded / no_work / skipped / failed / blocked / not_run quanta per task.

    Raises
    ------
    ConfigMismatchError
        If the output run holds configs (or package versions) that differ from the graph's.
    QuantumExecutionError
        If unfinished quanta have registered outputs and ``clobber`` is false.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}.")
    if jobs > 1:
        _pool_context(start_method)  # fail early on an unknown start method
    start = time.perf_counter()
    write_run_provenance(butler, qgraph)
    init_infos = init_input_infos(butler, qgraph)
    plan = make_plan(qgraph, butler, clobber=clobber)
    scheduler = Scheduler(qgraph, plan, fail_fast=fail_fast)
    if plan.skipped:
        _LOG.info("%d quanta finished in an earlier execution; skipping them.", len(plan.skipped))
    bar = _progress_bar(scheduler.to_run, progress)
    try:
        if jobs > 1 and scheduler.to_run > 1:
            _run_pool(qgraph, butler, scheduler, init_infos, jobs, bar, start_method)
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
    executor = SingleQuantumExecutor(init_infos)
    tasks = qgraph.pipeline_graph.tasks
    datastore = butler.datastore
    while (quantum := scheduler.next_ready()) is not None:
        result = executor.execute(
            tasks[quantum.task_label], quantum, datastore, scheduler.input_infos(quantum), clobber=True
        )
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


class _WorkerState:
    """A worker's graph, datastore and executor (module-global in each worker process)."""

    def __init__(self, qgraph: QuantumGraph, datastore: FileDatastore, init_infos: InitInfos):
        self.qgraph = qgraph
        self.datastore = datastore
        self.executor = SingleQuantumExecutor(init_infos)
        for node in qgraph.pipeline_graph.tasks.values():  # import every task class once
            node.task_class


_STATE: _WorkerState | None = None


def _init_worker(setup: _WorkerSetup) -> None:
    global _STATE
    qgraph, datastore = setup.qgraph, setup.datastore
    if qgraph is None or datastore is None:
        from butler._config import ButlerConfig

        config = ButlerConfig(setup.repo_root)
        datastore = FileDatastore(config.root, config.datastore, config.storage_classes, config.formatters)
        qgraph = QuantumGraph.load(setup.graph_path, universe=config.universe)
    _STATE = _WorkerState(qgraph, datastore, setup.init_infos)


def _execute_in_worker(quantum_id: uuid.UUID, input_infos: Mapping[uuid.UUID, StoredFileInfo]) -> QuantumResult:
    state = _STATE
    assert state is not None, "worker not initialised"
    quantum = state.qgraph.quanta[quantum_id]
    node = state.qgraph.pipeline_graph.tasks[quantum.task_label]
    return state.executor.execute(node, quantum, state.datastore, input_infos, clobber=True)


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
