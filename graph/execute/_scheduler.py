"""The main process's view of an execution: which quanta are ready, blocked, done, and with what records."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterator

from butler.datastore import StoredFileInfo

from ..quantum import Quantum
from ..quantum_graph import QuantumGraph
from ._plan import ExecutionPlan
from .single_quantum import QuantumResult

__all__ = ["Scheduler"]

_USABLE = frozenset({"succeeded", "skipped"})


class Scheduler:
    """Hands out quanta in dependency order and records their outcomes.

    A quantum is handed out once every quantum it depends on is done.  If one of those failed,
    was blocked or had no work, the quantum is "blocked" instead (and so, in turn, are its
    descendants); after a failure with ``fail_fast``, quanta not yet handed out are "not_run".

    Parameters
    ----------
    qgraph : `QuantumGraph`
    plan : `ExecutionPlan`
        Finished (skipped) quanta and the records of the datasets available before the execution.
    fail_fast : `bool`, optional
        Hand out nothing more after the first failure.
    """

    def __init__(self, qgraph: QuantumGraph, plan: ExecutionPlan, *, fail_fast: bool = False):
        self.qgraph = qgraph
        self.fail_fast = fail_fast
        self.stopped = False
        self.statuses: dict[uuid.UUID, str] = {qid: "skipped" for qid in plan.skipped}
        self.errors: dict[uuid.UUID, str] = {}
        self.infos = plan.infos
        graph = qgraph.graph
        # Only the records of datasets some quantum reads are kept (with their inline bytes).
        self._consumed = {ref.id for q in qgraph.quanta.values() for ref in q.input_refs()}
        self._waiting = {
            qid: sum(1 for p in graph.predecessors(qid) if p not in plan.skipped)
            for qid in qgraph.quanta if qid not in plan.skipped
        }
        order = {qid: i for i, qid in enumerate(q.id for q in qgraph)}
        ready = sorted((qid for qid, n in self._waiting.items() if n == 0), key=order.__getitem__)
        self._ready: deque[uuid.UUID] = deque(ready)
        self.to_run = len(self._waiting)

    def __iter__(self) -> Iterator[Quantum]:
        """Quanta ready to run now (the iteration ends when none is; call again after `complete`)."""
        while True:
            quantum = self.next_ready()
            if quantum is None:
                return
            yield quantum

    def next_ready(self) -> Quantum | None:
        """The next quantum to run, or `None` when none is ready; marks blocked / not-run ones on the way."""
        while self._ready:
            qid = self._ready.popleft()
            quantum = self.qgraph.quanta[qid]
            status = self._inherited_status(quantum)
            if status is None and self.stopped:
                status = "not_run"
            if status is None:
                return quantum
            self._finish(qid, status)
        return None

    def requeue(self, quantum: Quantum) -> None:
        """Give back a quantum from `next_ready` that could not be started; it is handed out next."""
        self._ready.appendleft(quantum.id)

    def _inherited_status(self, quantum: Quantum) -> str | None:
        """"blocked" / "not_run" if an upstream quantum keeps this one from running, else `None`."""
        upstream = [self.statuses[p] for p in self.qgraph.graph.predecessors(quantum.id)]
        if any(s not in _USABLE and s != "not_run" for s in upstream):
            return "blocked"
        if "not_run" in upstream:
            return "not_run"
        for ref in quantum.input_refs():  # outputs a finished (skipped) quantum did not write
            if ref.id not in self.infos and self.qgraph.producer_of(ref.id) is not None:
                return "blocked"
        return None

    def input_infos(self, quantum: Quantum) -> dict[uuid.UUID, StoredFileInfo]:
        """The records of a quantum's inputs (those that exist)."""
        infos = self.infos
        return {ref.id: infos[ref.id] for ref in quantum.input_refs() if ref.id in infos}

    def complete(self, result: QuantumResult) -> None:
        """Record the outcome of a quantum that ran (its outputs become available to its consumers)."""
        if result.status == "failed":
            self.errors[result.quantum_id] = result.error_line
            if self.fail_fast:
                self.stopped = True
        else:
            consumed = self._consumed
            for info in result.written:
                if info.dataset_id in consumed:
                    self.infos[info.dataset_id] = info
        self._finish(result.quantum_id, result.status)

    def _finish(self, qid: uuid.UUID, status: str) -> None:
        self.statuses[qid] = status
        for successor in self.qgraph.graph.successors(qid):
            if successor not in self._waiting:  # finished in an earlier execution
                continue
            n = self._waiting[successor] - 1
            self._waiting[successor] = n
            if n == 0:
                self._ready.append(successor)

    @property
    def done(self) -> bool:
        """Whether every quantum has a status."""
        return len(self.statuses) == len(self.qgraph.quanta)
