"""`ExecutionReport`: what happened to every quantum of an execution, per task label."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from butler import Butler

    from ..logs import ButlerLogRecords
    from ..quantum_graph import QuantumGraph

__all__ = ["STATUSES", "ExecutionReport", "FailedQuantum", "failure_reason", "format_data_id", "report_from_registry"]

#: Every status a quantum can end an execution with, in report column order.
STATUSES = ("succeeded", "no_work", "skipped", "failed", "blocked", "not_run")
_MAX_FAILED_SHOWN = 20



def format_data_id(data_id: Mapping[str, Any]) -> str:
    """``visit=12, detector=3`` for a data ID (its keys in order)."""
    return ", ".join(f"{k}={v}" for k, v in data_id.items())


@dataclass(frozen=True)
class FailedQuantum:
    """A quantum that failed.

    Attributes
    ----------
    task_label : `str`
    quantum_id : `uuid.UUID`
    data_id : `dict` [`str`, `object`]
        The quantum's data ID (required dimensions).
    error : `str`
        The first line of the error (``"RuntimeError: detector 2 is bad"``).
    """

    task_label: str
    quantum_id: uuid.UUID
    data_id: dict[str, Any]
    error: str


@dataclass
class ExecutionReport:
    """The outcome of `execute_graph`.

    Attributes
    ----------
    output_run : `str`
    counts : `dict` [`str`, `dict` [`str`, `int`]]
        Task label -> status (see `STATUSES`) -> number of quanta.
    failed : `list` [`FailedQuantum`]
        The failed quanta, in execution order.
    wall_time : `float`
        Seconds the whole execution took (provenance and registration included).
    statuses : `dict` [`uuid.UUID`, `str`]
        Quantum ID -> status.
    """

    output_run: str
    counts: dict[str, dict[str, int]]
    failed: list[FailedQuantum] = field(default_factory=list)
    wall_time: float = 0.0
    statuses: dict[uuid.UUID, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_statuses(
        cls,
        qgraph: QuantumGraph,
        statuses: Mapping[uuid.UUID, str],
        errors: Mapping[uuid.UUID, str],
        wall_time: float,
    ) -> ExecutionReport:
        """Summarise the status of each quantum of a graph (``errors``: first error line of failures)."""
        counts = {label: dict.fromkeys(STATUSES, 0) for label in qgraph.pipeline_graph.tasks}
        for qid, status in statuses.items():
            counts.setdefault(qgraph.quanta[qid].task_label, dict.fromkeys(STATUSES, 0))[status] += 1
        failed = [
            FailedQuantum(q.task_label, q.id, dict(q.data_id.required), errors.get(q.id, ""))
            for q in (qgraph.quanta[qid] for qid in errors)
            if statuses.get(q.id) == "failed"
        ]
        return cls(qgraph.output_run, counts, failed, wall_time, dict(statuses))

    @property
    def ok(self) -> bool:
        """Whether no quantum failed (blocked quanta then only follow quanta with no work)."""
        return not any(c["failed"] or c["not_run"] for c in self.counts.values())

    def total(self, status: str) -> int:
        """Number of quanta of every task with a status."""
        return sum(c[status] for c in self.counts.values())

    def to_simple(self) -> dict[str, Any]:
        """JSON-safe dictionary of the report."""
        return {
            "output_run": self.output_run,
            "ok": self.ok,
            "wall_time": self.wall_time,
            "counts": {label: dict(c) for label, c in self.counts.items()},
            "failed": [
                {"task": f.task_label, "quantum_id": str(f.quantum_id), "data_id": f.data_id, "error": f.error}
                for f in self.failed
            ],
        }

    def __str__(self) -> str:
        from astropy.table import Table

        rows = [[label] + [c[s] for s in STATUSES] for label, c in self.counts.items()]
        rows.append(["TOTAL"] + [self.total(s) for s in STATUSES])
        table = Table(rows=rows, names=("task",) + STATUSES)
        lines = [line.rstrip() for line in table.pformat(max_lines=-1, max_width=-1, align=["<"] + [">"] * len(STATUSES))]
        if self.failed:
            lines.append("")
            lines.append("Failed quanta:")
            shown = sorted(self.failed, key=lambda f: (f.task_label, sorted(f.data_id.items())))
            for f in shown[:_MAX_FAILED_SHOWN]:
                lines.append(f"  {f.task_label} {{{format_data_id(f.data_id)}}}: {f.error}")
            if len(shown) > _MAX_FAILED_SHOWN:
                lines.append(f"  ... and {len(shown) - _MAX_FAILED_SHOWN} more (see ExecutionReport.failed or to_simple()).")
        lines.append("")
        verdict = "all quanta succeeded or were skipped" if self.ok else f"{self.total('failed')} quanta failed"
        lines.append(f"Output run {self.output_run!r}: {verdict}; wall time {self.wall_time:.2f} s.")
        return "\n".join(lines)


def report_from_registry(
    butler: Butler, *, graph: QuantumGraph | None = None, output_run: str | None = None
) -> list[dict[str, Any]]:
    """Per task label, how many quanta of a run succeeded (metadata) and failed (a log, no metadata).

    Parameters
    ----------
    butler : `Butler`
    graph : `QuantumGraph`, optional
        The graph that was run: also counts the quanta that have not run.
    output_run : `str`, optional
        The run (default: the graph's).

    Returns
    -------
    rows : `list` [`dict`]
        One per task label: ``task``, ``succeeded``, ``failed`` and, with a graph, ``quanta`` and
        ``not_run``; then ``failures``: a list of ``{"data_id": dict, "reason": str}``, the reason of
        each failure read from the quantum's log (`failure_reason`).
    """
    run = output_run or (graph.output_run if graph is not None else None)
    if run is None:
        raise ValueError("report_from_registry needs the output run or the graph.")
    registry = butler.registry
    registered = {dt.name for dt in registry.query_dataset_types()}
    if graph is not None:
        labels = list(graph.pipeline_graph.tasks)
    else:
        labels = sorted(n[: -len("_metadata")] for n in registered if n.endswith("_metadata"))
    rows = []
    for label in labels:
        done = _refs(registry, f"{label}_metadata", run, registered)
        logged = _refs(registry, f"{label}_log", run, registered)
        if graph is None and not done and not logged:
            continue
        failed = [ref for data_id, ref in logged.items() if data_id not in done]
        row: dict[str, Any] = {"task": label}
        if graph is not None:
            row["quanta"] = len(graph.quanta_for(label))
        row["succeeded"] = len(done)
        row["failed"] = len(failed)
        if graph is not None:
            row["not_run"] = row["quanta"] - row["succeeded"] - row["failed"]
        row["failures"] = [
            {"data_id": dict(ref.data_id.required), "reason": failure_reason(butler.get(ref))}
            for ref in sorted(failed, key=lambda r: tuple(r.data_id.required.values()))
        ]
        rows.append(row)
    return rows


def failure_reason(log: ButlerLogRecords) -> str:
    """Why a quantum failed, from its log: the error of its last ``Quantum ... failed: ...`` record.

    Parameters
    ----------
    log : `ButlerLogRecords`
        The quantum's ``{label}_log`` dataset.

    Returns
    -------
    reason : `str`
        ``"ErrorType: message"`` (first line), or a note that the log names no error.
    """
    for record in reversed(log.records):
        head, found, reason = record.message.partition(" failed: ")
        if found and record.levelno >= logging.ERROR and head.startswith("Quantum "):
            return reason.strip().partition("\n")[0]
    return "unknown: the quantum's log records no error"


def _refs(registry: Any, name: str, run: str, registered: set[str]) -> dict[Any, Any]:
    """The datasets of one type in a run, by data ID (none if the type is not registered)."""
    if name not in registered:
        return {}
    return {ref.data_id: ref for ref in registry.query_datasets(name, [run], explain=False)}
