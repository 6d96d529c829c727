"""The process-pool executor: quanta run in a warm pool of worker processes on this machine (``-j N``).

Each worker gets the graph once (inherited with ``fork``, read from a saved file with ``spawn``),
imports the task classes once, and then receives only quantum IDs and the records of their inputs;
it returns `QuantumResult` manifests, which the main process registers.  A worker exits as soon as
the main process dies (even by SIGKILL), so no orphan goes on writing files of the run.

With a per-quantum time limit, the quantum is interrupted inside its worker (`time_limit`); workers
also report which quantum they start, and one whose quantum is still running `KILL_GRACE` seconds
after the limit (stuck in native code) is killed: that quantum fails with `QuantumTimeoutError`, the
other quanta in flight are handed out again, and a new pool replaces the broken one.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from butler import Butler
from butler.datastore import FileDatastore, StoredFileInfo
from butler.errors import ButlerError

from ..logs import ButlerLogRecord, ButlerLogRecords
from ..quantum import Quantum
from ..quantum_graph import QuantumGraph
from ._scheduler import Scheduler
from ._timeout import KILL_GRACE
from ._worker import InitInfos, WorkerState
from .single_quantum import QuantumResult

__all__ = ["failure_result", "pool_context", "run_pool"]

_LOG = logging.getLogger("graph.execute")

#: Called by `run_pool` with each quantum that ended and its result (to register it).
Settle = Callable[[Quantum, QuantumResult], None]

_WORKER_DIED = (
    "WorkerDied: a worker process died while this quantum was running or queued (killed, out of memory, "
    "or a crash in native code); re-run the graph to retry it."
)


@dataclasses.dataclass
class _WorkerSetup:
    """What a worker receives once, when it starts.

    With the ``fork`` start method the graph and datastore are inherited (nothing is pickled); with
    ``spawn`` the graph is read from ``graph_path`` and the datastore made from ``repo_root``.
    ``started`` (with a time limit) is where the worker reports ``(quantum ID, pid)`` as it starts one.
    """

    init_infos: InitInfos
    timeout: float | None
    qgraph: QuantumGraph | None = None
    datastore: FileDatastore | None = None
    graph_path: str | None = None
    repo_root: str | None = None
    started: Any = None


_STATE: WorkerState | None = None
_STARTED: Any = None


def _init_worker(setup: _WorkerSetup) -> None:
    global _STATE, _STARTED
    _exit_with_parent()
    if setup.qgraph is None or setup.datastore is None:
        _STATE = WorkerState.from_files(setup.graph_path, setup.repo_root, setup.init_infos, timeout=setup.timeout)
    else:
        _STATE = WorkerState(setup.qgraph, setup.datastore, setup.init_infos, timeout=setup.timeout)
    _STARTED = setup.started


def _exit_with_parent() -> None:
    """End this worker process when the main process ends, however it ends."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _execute_in_worker(quantum_id: uuid.UUID, input_infos: Mapping[uuid.UUID, StoredFileInfo]) -> QuantumResult:
    assert _STATE is not None, "worker not initialised"
    if _STARTED is not None:
        _STARTED.put((quantum_id, os.getpid()))
    return _STATE.execute(quantum_id, input_infos)


def pool_context(start_method: str | None) -> tuple[multiprocessing.context.BaseContext, bool]:
    """The requested context, else ``fork`` where available (workers inherit the graph), else ``spawn``.

    Returns the context and whether it forks.

    Raises
    ------
    ValueError
        If the start method is not available here.
    """
    available = multiprocessing.get_all_start_methods()
    if start_method is None:
        start_method = "fork" if "fork" in available else "spawn"
    if start_method not in available:
        raise ValueError(f"start method {start_method!r} is not available here; choose one of {available}.")
    return multiprocessing.get_context(start_method), start_method == "fork"


def run_pool(
    qgraph: QuantumGraph,
    butler: Butler,
    scheduler: Scheduler,
    init_infos: InitInfos,
    *,
    jobs: int,
    settle: Settle,
    start_method: str | None = None,
    timeout: float | None = None,
) -> None:
    """Run the scheduler's quanta in ``jobs`` worker processes, replacing the pool when it breaks.

    Parameters
    ----------
    qgraph : `QuantumGraph`
    butler : `Butler`
    scheduler : `Scheduler`
        Hands out the quanta and records their outcomes (``settle`` completes them).
    init_infos : `dict` [`str`, `dict` [`str`, `StoredFileInfo`]]
        Records of every task's init-inputs.
    jobs : `int`
        Number of worker processes.
    settle : callable
        Called with each quantum that ended and its result.
    start_method : `str`, optional
        ``"fork"`` (default where available) or ``"spawn"``.
    timeout : `float`, optional
        Seconds a quantum may run.
    """
    context, forked = pool_context(start_method)
    with tempfile.TemporaryDirectory(prefix="qgraph-") as tmp:
        if forked:
            setup = _WorkerSetup(init_infos, timeout, qgraph=qgraph, datastore=butler.datastore)
        else:
            path = Path(tmp) / "graph.qgraph"
            qgraph.save(path)
            setup = _WorkerSetup(init_infos, timeout, graph_path=str(path), repo_root=str(butler.config.root))
        while not scheduler.done:
            # A new report queue per pool: a killed worker may have left the old one's lock taken.
            started = context.SimpleQueue() if timeout is not None else None
            setup = dataclasses.replace(setup, started=started)
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(setup,))
            try:
                broken = _PoolDriver(pool, butler.datastore, scheduler, jobs, settle, timeout, started).run()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                if started is not None:
                    started.close()
            if not broken:
                break


class _PoolDriver:
    """Keeps one pool busy (each worker one quantum ahead), settles results, and enforces the time limit."""

    def __init__(
        self,
        pool: ProcessPoolExecutor,
        datastore: FileDatastore,
        scheduler: Scheduler,
        jobs: int,
        settle: Settle,
        timeout: float | None,
        started: Any,
    ):
        self.pool, self.datastore, self.scheduler, self.jobs, self.settle = pool, datastore, scheduler, jobs, settle
        self.timeout, self.started = timeout, started
        self.in_flight: dict[Future, Quantum] = {}
        self.running: dict[uuid.UUID, tuple[int, float]] = {}  # quantum ID -> (worker pid, start time)
        self.killed: dict[uuid.UUID, str] = {}  # quanta whose worker was killed for overrunning -> reason

    def run(self) -> bool:
        """Submit and settle quanta until none is ready or in flight; return whether the pool broke.

        When a worker dies, the quanta in flight fail (`_WORKER_DIED`); when it was killed for a time
        limit, only its quantum fails and the others are handed out again.
        """
        while True:
            broken = False
            while len(self.in_flight) < 2 * self.jobs and (quantum := self.scheduler.next_ready()) is not None:
                try:
                    future = self.pool.submit(_execute_in_worker, quantum.id, self.scheduler.input_infos(quantum))
                except BrokenProcessPool:  # a worker died since the last results came in
                    self.scheduler.requeue(quantum)
                    broken = True
                    break
                self.in_flight[future] = quantum
            if not self.in_flight:
                return broken
            finished, _ = wait(self.in_flight, timeout=self._poll_interval(), return_when=FIRST_COMPLETED)
            for future in finished:
                broken |= self._collect(future)
            if broken:  # every other future is settled too: with a result, or with BrokenProcessPool
                for future in wait(self.in_flight).done:
                    self._collect(future)
                return True
            self._kill_overdue()

    def _poll_interval(self) -> float | None:
        """How long to wait for results before checking the time limits again (`None`: no limit)."""
        if self.timeout is None:
            return None
        self._read_started()
        now = time.monotonic()
        deadlines = [start + self.timeout + KILL_GRACE - now for _, start in self.running.values()]
        return max(0.0, min([0.5, *deadlines])) if deadlines else 0.1

    def _read_started(self) -> None:
        """Note the quanta workers have started (a report can come after the quantum's result: ignored)."""
        in_flight = {quantum.id for quantum in self.in_flight.values()}
        while not self.started.empty():
            quantum_id, pid = self.started.get()
            if quantum_id in in_flight:
                self.running[quantum_id] = (pid, time.monotonic())

    def _kill_overdue(self) -> None:
        """Kill the workers of quanta still running `KILL_GRACE` seconds after their time limit."""
        if self.timeout is None:
            return
        self._read_started()
        now = time.monotonic()
        for quantum_id, (pid, start) in self.running.items():
            if quantum_id in self.killed or now < start + self.timeout + KILL_GRACE:
                continue
            self.killed[quantum_id] = (
                f"QuantumTimeoutError: the quantum ran longer than its time limit of {self.timeout:g} s and did not "
                f"stop when interrupted; its worker (pid {pid}) was killed and replaced. Raise the limit (--timeout) "
                "if it needs more time."
            )
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended meanwhile
                pass

    def _collect(self, future: Future) -> bool:
        """Settle a finished future (or hand its quantum out again); return whether the pool is broken."""
        quantum = self.in_flight.pop(future)
        self.running.pop(quantum.id, None)
        broken = False
        try:
            result = future.result()
        except BrokenProcessPool:
            broken = True
            if quantum.id in self.killed:
                result = failure_result(self.datastore, quantum, self.killed[quantum.id])
            elif self.killed:  # the pool broke because another quantum's worker was killed: run this again
                self.scheduler.requeue(quantum)
                return True
            else:
                result = failure_result(self.datastore, quantum, _WORKER_DIED)
        except Exception as err:  # e.g. the result could not be sent back
            result = QuantumResult(
                quantum.id, quantum.task_label, "failed", f"{type(err).__name__}: {err}", traceback.format_exc()
            )
        self.settle(quantum, result)
        return broken


def failure_result(datastore: FileDatastore, quantum: Quantum, reason: str) -> QuantumResult:
    """The result of a quantum whose worker died: its partial files removed, and a log saying why.

    Parameters
    ----------
    datastore : `FileDatastore`
    quantum : `Quantum`
    reason : `str`
        ``"ErrorType: message"``.

    Returns
    -------
    result : `QuantumResult`
        Status ``"failed"``; ``written`` has the quantum's log (when it has one), for `pipetask report`.
    """
    message = f"Quantum {quantum.task_label} {quantum.data_id} failed: {reason}"
    _LOG.error("%s", message)
    for ref in quantum.output_refs(provenance=False):  # files of the outputs it wrote before it died
        try:
            path = datastore.root / datastore.predict_path(ref)
        except ButlerError:
            continue
        for leftover in (path, *path.parent.glob(f".{glob.escape(path.name)}.tmp-*")):
            leftover.unlink(missing_ok=True)
    written = []
    if quantum.log_ref is not None:
        record = ButlerLogRecord(name=_LOG.name, levelname="ERROR", levelno=logging.ERROR, message=message, created=time.time())
        try:
            written.append(datastore.put(ButlerLogRecords(records=[record]), quantum.log_ref, clobber=True))
        except ButlerError as err:
            _LOG.warning("Cannot write the log of quantum %s %s: %s", quantum.task_label, quantum.data_id, err)
    return QuantumResult(quantum.id, quantum.task_label, "failed", reason, written=written)
