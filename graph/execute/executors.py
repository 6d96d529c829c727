"""Graph executors: run every quantum of a graph serially, in a warm pool of worker processes, or with Parsl.

Workers never write the registry.  Each worker gets the graph once (when it starts), imports the
task classes and opens the datastore once, and then receives only quantum IDs and the records of
those quanta's inputs; it returns `QuantumResult` manifests, which the main process registers (one
transaction per quantum) before handing the new records to the quanta downstream.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Literal

from butler import Butler
from butler.locks import run_lock

from ..quantum import Quantum
from ..quantum_graph import QuantumGraph
from ._parsl import require_parsl, run_parsl
from ._plan import make_plan
from ._pool import pool_context, run_pool
from ._scheduler import Scheduler
from ._site import SiteConfig, cluster_quanta, load_site
from ._timeout import check_timeout
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
    timeout: float | None = None,
) -> ExecutionReport:
    """Execute every quantum of a graph and register what they write.

    The execution holds the output run's lock (`butler.locks.run_lock`) throughout, so a second
    execution into the same run fails at once with `RunLockedError` instead of overwriting its files.
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
    timeout : `float`, optional
        Seconds each quantum may run; one that runs longer fails with `QuantumTimeoutError` (its
        descendants are blocked, the other quanta go on).  The serial executor interrupts it with
        SIGALRM (so it must run in the main thread, and cannot stop a task stuck in native code);
        the pool executor also kills and replaces a worker whose quantum does not stop (see
        `graph.execute._timeout`).  Not available with the parsl executor (use the site's walltime).

    Returns
    -------
    report : `ExecutionReport`
        Counts of succeeded / no_work / skipped / failed / blocked / not_run quanta per task.

    Raises
    ------
    ValueError
        If the executor is unknown, ``jobs`` < 1, ``jobs`` > 1 with the serial executor, or the
        timeout is not a positive number, is given to the parsl executor, or to the serial executor
        outside the main thread.
    ReadOnlyRepositoryError
        If the butler was opened with ``writeable=False``.
    RunLockedError
        If another process is executing into the output run.
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
    if timeout is not None and executor == "parsl":
        raise ValueError("the parsl executor takes no per-quantum timeout; set the walltime of the site's jobs.")
    check_timeout(timeout, in_this_thread=executor == "serial")
    butler.require_writeable("execute_graph")
    clusters = None
    if executor == "parsl":  # fail before anything is written
        require_parsl()
        site = site if isinstance(site, SiteConfig) else load_site(site or "local")
        if site.clustering is not None:
            clusters = cluster_quanta(qgraph, site.clustering, butler.dimensions)
    elif executor == "pool":
        pool_context(start_method)  # fail early on an unknown start method
    with run_lock(butler.datastore.root, qgraph.output_run):
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
            elif executor == "pool" and (scheduler.to_run > 1 or timeout is not None):

                def settle_one(quantum: Quantum, result: QuantumResult) -> None:
                    scheduler.complete(_register(butler, quantum, result))
                    if bar is not None:
                        bar.update(1)

                run_pool(
                    qgraph, butler, scheduler, init_infos, jobs=jobs or 1, settle=settle_one, start_method=start_method,
                    timeout=timeout,
                )
            else:
                _run_serial(qgraph, butler, scheduler, init_infos, bar, timeout)
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
    qgraph: QuantumGraph, butler: Butler, scheduler: Scheduler, init_infos: InitInfos, bar: Any, timeout: float | None
) -> None:
    state = WorkerState(qgraph, butler.datastore, init_infos, timeout=timeout)
    while (quantum := scheduler.next_ready()) is not None:
        result = state.execute(quantum.id, scheduler.input_infos(quantum))
        scheduler.complete(_register(butler, quantum, result))
        if bar is not None:
            bar.update(1)
