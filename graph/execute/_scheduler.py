"""The main process's view of an execution: which quanta are ready, blocked, done, and with what records."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Hashable, Iterator, Mapping

from butler.datastore import StoredFileInfo

from ..quantum import Quantum
from ..quantum_graph import QuantumGraph
from ._plan import ExecutionPlan
from .single_quantum import QuantumResult

__all__ = ["Scheduler", "inherited_status"]

_USABLE = frozenset({"succeeded", "skipped"})


def inherited_status(
    qgraph: QuantumGraph,
    quantum: Quantum,
    statuses: Mapping[uuid.UUID, str],
    infos: Mapping[uuid.UUID, StoredFileInfo],
) -> str | None:
    """Whether the quanta upstream of one keep it from running.

    Parameters
    ----------
    qgraph : `QuantumGraph`
    quantum : `Quantum`
    statuses : `dict` [`uuid.UUID`, `str`]
        Status of the quanta done so far.  Predecessors without one are ignored: they run before this
        quantum in the same cluster (see `Scheduler`), or, in a worker running a cluster, outside it
        (and were usable, or the main process would not have sent this quantum).
    infos : `dict` [`uuid.UUID`, `StoredFileInfo`]
        Records of the datasets available.

    Returns
    -------
    status : `str` or `None`
        ``"blocked"`` if a predecessor failed, was blocked or had no work, or if a finished predecessor
        did not write an input of this quantum; else ``"not_run"`` if a predecessor was not run; else
        `None` (the quantum can run).
    """
    upstream = [s for p in qgraph.graph.predecessors(quantum.id) if (s := statuses.get(p)) is not None]
    if any(s not in _USABLE and s != "not_run" for s in upstream):
        return "blocked"
    if "not_run" in upstream:
        return "not_run"
    for ref in quantum.input_refs():
        if ref.id not in infos:
            producer = qgraph.producer_of(ref.id)
            if producer is not None and producer.id in statuses:
                return "blocked"
    return None


class Scheduler:
    """Hands out quanta, or clusters of quanta, in dependency order and records their outcomes.

    A cluster is handed out once every quantum outside it that its quanta depend on is done; its
    quanta then run in order in one worker (without clusters each quantum is a cluster of one).  If
    an upstream quantum failed, was blocked or had no work, a quantum is "blocked" instead (and so,
    in turn, are its descendants); after a failure with ``fail_fast``, quanta not yet handed out are
    "not_run".

    Parameters
    ----------
    qgraph : `QuantumGraph`
    plan : `ExecutionPlan`
        Finished (skipped) quanta and the records of the datasets available before the execution.
    fail_fast : `bool`, optional
        Hand out nothing more after the first failure.
    clusters : `dict` [`uuid.UUID`, `~collections.abc.Hashable`], optional
        Quantum ID -> cluster key (`cluster_quanta`); the clusters must form an acyclic graph.
        Default: every quantum alone.
    """

    def __init__(
        self,
        qgraph: QuantumGraph,
        plan: ExecutionPlan,
        *,
        fail_fast: bool = False,
        clusters: Mapping[uuid.UUID, Hashable] | None = None,
    ):
        self.qgraph = qgraph
        self.fail_fast = fail_fast
        self.stopped = False
        self.statuses: dict[uuid.UUID, str] = {qid: "skipped" for qid in plan.skipped}
        self.errors: dict[uuid.UUID, str] = {}
        self.infos = plan.infos
        graph = qgraph.graph
        # Only the records of datasets some quantum reads are kept (with their inline bytes).
        self._consumed = {ref.id for q in qgraph.quanta.values() for ref in q.input_refs()}
        order = {qid: i for i, qid in enumerate(q.id for q in qgraph)}
        to_run = sorted((qid for qid in qgraph.quanta if qid not in plan.skipped), key=order.__getitem__)
        self._cluster_of: dict[uuid.UUID, Hashable] = {
            qid: clusters[qid] if clusters is not None else qid for qid in to_run
        }
        self._members: dict[Hashable, list[uuid.UUID]] = {}
        for qid in to_run:  # in execution order
            self._members.setdefault(self._cluster_of[qid], []).append(qid)
        self._waiting = {
            key: len({p for qid in members for p in graph.predecessors(qid)
                      if p in self._cluster_of and self._cluster_of[p] != key})
            for key, members in self._members.items()
        }
        self._ready: deque[Hashable] = deque(key for key, n in self._waiting.items() if n == 0)
        self.to_run = len(to_run)

    def __iter__(self) -> Iterator[Quantum]:
        """Quanta ready to run now (the iteration ends when none is; call again after `complete`)."""
        while True:
            quantum = self.next_ready()
            if quantum is None:
                return
            yield quantum

    def next_ready(self) -> Quantum | None:
        """The next quantum to run, or `None` when none is ready (without clusters)."""
        cluster = self.next_cluster()
        if cluster is None:
            return None
        (quantum,) = cluster
        return quantum

    def next_cluster(self) -> list[Quantum] | None:
        """The quanta of the next ready cluster that may run, in order, or `None` when none is ready.

        Quanta of the cluster that upstream quanta keep from running are marked "blocked" or
        "not_run" on the way (and clusters whose every quantum is are passed over).
        """
        quanta = self.qgraph.quanta
        while self._ready:
            runnable = []
            for qid in self._members[self._ready.popleft()]:
                quantum = quanta[qid]
                status = inherited_status(self.qgraph, quantum, self.statuses, self.infos)
                if status is None and self.stopped:
                    status = "not_run"
                if status is None:
                    runnable.append(quantum)
                else:
                    self._finish(qid, status)
            if runnable:
                return runnable
        return None

    def clusters(self) -> Iterator[list[Quantum]]:
        """The quanta to run, cluster by cluster (each in execution order), as planned at construction."""
        quanta = self.qgraph.quanta
        return ([quanta[qid] for qid in members] for members in self._members.values())

    def requeue(self, quantum: Quantum) -> None:
        """Give back a quantum from `next_ready` that could not be started; it is handed out next."""
        self._ready.appendleft(self._cluster_of[quantum.id])

    def input_infos(self, quanta: Quantum | list[Quantum]) -> dict[uuid.UUID, StoredFileInfo]:
        """The records of the inputs (those that exist) of a quantum, or of the quanta of a cluster."""
        infos = self.infos
        refs = quanta.input_refs() if isinstance(quanta, Quantum) else (r for q in quanta for r in q.input_refs())
        return {ref.id: infos[ref.id] for ref in refs if ref.id in infos}

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

    def complete_cluster(self, cluster: list[Quantum], results: list[QuantumResult]) -> None:
        """Record the outcomes of a cluster's quanta (`next_cluster`) from the results of those that ran.

        A quantum without a result was left out by the worker because a quantum before it in the
        cluster kept it from running; it gets the status that implies (or fails, if none does).
        """
        by_id = {result.quantum_id: result for result in results}
        for quantum in cluster:
            result = by_id.get(quantum.id)
            if result is not None:
                self.complete(result)
                continue
            status = inherited_status(self.qgraph, quantum, self.statuses, self.infos)
            if status is None:
                self.complete(QuantumResult(
                    quantum.id, quantum.task_label, "failed",
                    "QuantumExecutionError: the worker returned no result for this quantum of its cluster.",
                ))
            else:
                self._finish(quantum.id, status)

    def _finish(self, qid: uuid.UUID, status: str) -> None:
        self.statuses[qid] = status
        cluster_of = self._cluster_of
        own = cluster_of[qid]
        # Successors finished in an earlier execution have no cluster; those in this one do not wait.
        for key in {cluster_of[s] for s in self.qgraph.graph.successors(qid) if s in cluster_of} - {own}:
            n = self._waiting[key] - 1
            self._waiting[key] = n
            if n == 0:
                self._ready.append(key)

    @property
    def done(self) -> bool:
        """Whether every quantum has a status."""
        return len(self.statuses) == len(self.qgraph.quanta)
