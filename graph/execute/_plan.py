"""What an execution must do before its first quantum: find finished quanta, clear leftovers of
unfinished ones, and collect the records of the datasets finished quanta produced."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from butler import Butler, DataCoordinate, DatasetRef
from butler.datastore import INLINE_PATH, StoredFileInfo

from ..errors import QuantumExecutionError
from ..quantum_graph import QuantumGraph

__all__ = ["ExecutionPlan", "make_plan"]

_LOG = logging.getLogger("graph.execute")


@dataclass
class ExecutionPlan:
    """The state of an output run before execution.

    Attributes
    ----------
    skipped : `set` [`uuid.UUID`]
        Quanta whose ``{label}_metadata`` is already in the output run (finished earlier).
    infos : `dict` [`uuid.UUID`, `StoredFileInfo`]
        Records of the datasets quanta will read, by the graph's dataset ID: the graph's overall
        inputs and what the skipped quanta produced.
    removed : `int`
        Number of registered leftovers of unfinished quanta removed (logs of failed attempts, and
        outputs with ``clobber``).
    """

    skipped: set[uuid.UUID] = field(default_factory=set)
    infos: dict[uuid.UUID, StoredFileInfo] = field(default_factory=dict)
    removed: int = 0


def _existing(butler: Butler, name: str, run: str) -> dict[DataCoordinate, DatasetRef]:
    """Datasets of one type in the run, by data ID (one query)."""
    return {ref.data_id: ref for ref in butler.registry.query_datasets(name, [run], explain=False)}


def make_plan(qgraph: QuantumGraph, butler: Butler, *, clobber: bool = False) -> ExecutionPlan:
    """Inspect the output run of a graph (after `write_run_provenance`) and prepare the execution.

    Parameters
    ----------
    qgraph : `QuantumGraph`
    butler : `Butler`
    clobber : `bool`, optional
        Remove registered outputs of quanta that did not finish (without it they are an error).

    Returns
    -------
    plan : `ExecutionPlan`

    Raises
    ------
    QuantumExecutionError
        If quanta that did not finish have registered outputs (other than the log of a failed
        attempt) and ``clobber`` is false.
    """
    run = qgraph.output_run
    plan = ExecutionPlan(infos=dict(qgraph.datastore_records))
    by_label: dict[str, list[Any]] = defaultdict(list)
    for quantum in qgraph.quanta.values():
        if quantum.metadata_ref is not None:
            by_label[quantum.metadata_ref.dataset_type.name].append(quantum)
    for name, quanta in by_label.items():  # one query per task label
        done = _existing(butler, name, run)
        if done:
            plan.skipped.update(q.id for q in quanta if q.metadata_ref.data_id in done)
    _clear_leftovers(qgraph, butler, plan, clobber=clobber)
    if plan.skipped:
        _collect_finished_outputs(qgraph, butler, plan)
    return plan


def _clear_leftovers(qgraph: QuantumGraph, butler: Butler, plan: ExecutionPlan, *, clobber: bool) -> None:
    """Remove registered outputs of the quanta about to run (from failed or partial attempts)."""
    run = qgraph.output_run
    wanted: dict[str, set[DataCoordinate]] = defaultdict(set)
    logs = set()
    for quantum in qgraph.quanta.values():
        if quantum.id in plan.skipped:
            continue
        for ref in quantum.output_refs():
            wanted[ref.dataset_type.name].add(ref.data_id)
        if quantum.log_ref is not None:
            logs.add(quantum.log_ref.dataset_type.name)
    leftovers: list[DatasetRef] = []
    for name, data_ids in wanted.items():
        existing = _existing(butler, name, run)
        leftovers += [ref for data_id, ref in existing.items() if data_id in data_ids]
    if not leftovers:
        return
    blocking = [ref for ref in leftovers if ref.dataset_type.name not in logs]
    if blocking and not clobber:
        shown = ", ".join(f"{r.dataset_type.name} {r.data_id}" for r in blocking[:5])
        raise QuantumExecutionError(
            f"{len(blocking)} output(s) of quanta that did not finish are already registered in run {run!r} "
            f"({shown}{', ...' if len(blocking) > 5 else ''}). Re-run with clobber=True (--clobber-outputs) to "
            "replace them, or write to a new output run."
        )
    registry = butler.registry
    infos = [StoredFileInfo(**row) for row in registry.get_datastore_records([r.id for r in leftovers]).values()]
    with registry.transaction():
        registry.remove_datasets(leftovers)
    butler.datastore.remove(infos)
    plan.removed = len(leftovers)
    _LOG.info("Removed %d dataset(s) left in run %r by unfinished quanta.", len(leftovers), run)


def _collect_finished_outputs(qgraph: QuantumGraph, butler: Butler, plan: ExecutionPlan) -> None:
    """Records of the skipped quanta's outputs that the quanta about to run will read."""
    needed: dict[uuid.UUID, DatasetRef] = {}
    for quantum in qgraph.quanta.values():
        if quantum.id in plan.skipped:
            continue
        for ref in quantum.input_refs():
            if ref.id not in plan.infos:
                producer = qgraph.producer_of(ref.id)
                if producer is not None and producer.id in plan.skipped:
                    needed[ref.id] = ref
    if not needed:
        return
    registry = butler.registry
    records = registry.get_datastore_records(list(needed))
    # A rebuilt graph gives the finished datasets other IDs: find the rest by dataset type and data ID.
    actual: dict[uuid.UUID, uuid.UUID] = {i: i for i in records}
    missing_by_type: dict[str, list[DatasetRef]] = defaultdict(list)
    for graph_id, ref in needed.items():
        if graph_id not in records:
            missing_by_type[ref.dataset_type.name].append(ref)
    for name, refs in missing_by_type.items():
        existing = _existing(butler, name, qgraph.output_run)
        for ref in refs:
            found = existing.get(ref.data_id)
            if found is not None:
                actual[ref.id] = found.id
    if len(actual) > len(records):
        records.update(registry.get_datastore_records([i for g, i in actual.items() if g != i]))
    inline_ids = [i for i in actual.values() if i in records and records[i].get("path") == INLINE_PATH]
    content = registry.get_inline_content(inline_ids) if inline_ids else {}
    for graph_id, dataset_id in actual.items():
        row = records.get(dataset_id)
        if row is None:
            continue  # produced nothing (no work): the consumers will be blocked
        row = {k: v for k, v in row.items() if k != "inline"}
        info = StoredFileInfo(**row)
        if info.is_inline:
            info = dataclasses.replace(info, inline=content.get(dataset_id))
        plan.infos[graph_id] = info
