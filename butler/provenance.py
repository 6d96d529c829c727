"""The provenance chain of a dataset: the quantum that wrote it, that quantum's inputs, and so on back to
datasets no quantum wrote (raws, ingested or put datasets).  ``butler query-provenance`` prints it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .datasets import DatasetRef
from .errors import DatasetNotFoundError
from .registry import QuantumRecord, Registry

__all__ = ["ProvenanceNode", "provenance_chain"]


@dataclass
class ProvenanceNode:
    """One dataset of a provenance chain.

    Attributes
    ----------
    dataset_id : `uuid.UUID`
    ref : `DatasetRef` or `None`
        The dataset (`None` if it was removed since it was read).
    quantum : `QuantumRecord` or `None`
        The quantum that wrote it (`None` for raws and other ingested or put datasets).
    inputs : `list` [`ProvenanceNode`]
        The datasets that quantum read (shared nodes when several quanta read one dataset).
    """

    dataset_id: uuid.UUID
    ref: DatasetRef | None = None
    quantum: QuantumRecord | None = None
    inputs: list[ProvenanceNode] = field(default_factory=list)

    def to_simple(self, _seen: set[uuid.UUID] | None = None) -> dict[str, Any]:
        """A JSON-safe nested dictionary; a dataset met again is ``{"dataset_id": ..., "repeated": true}``."""
        seen = set() if _seen is None else _seen
        if self.dataset_id in seen:
            return {"dataset_id": str(self.dataset_id), "repeated": True}
        seen.add(self.dataset_id)
        ref = self.ref
        quantum = None
        if self.quantum is not None:
            quantum = {k: v for k, v in self.quantum.to_simple().items() if k not in ("inputs", "outputs")}
        return {
            "dataset_id": str(self.dataset_id),
            "dataset_type": ref.dataset_type.name if ref is not None else None,
            "data_id": dict(ref.data_id.required) if ref is not None else None,
            "run": ref.run if ref is not None else None,
            "quantum": quantum,
            "inputs": [node.to_simple(seen) for node in self.inputs],
        }

    def format(self) -> list[str]:
        """The chain as indented text lines (a dataset met again is not expanded twice)."""
        lines: list[str] = []
        seen: set[uuid.UUID] = set()

        def visit(node: ProvenanceNode, indent: str, arrow: str) -> None:
            ref = node.ref
            head = f"{ref.dataset_type.name} {_text(ref)}  run {ref.run}" if ref is not None else "(removed dataset)"
            again = node.dataset_id in seen
            lines.append(f"{indent}{arrow}{head}  id {node.dataset_id}" + ("  (see above)" if again and node.quantum else ""))
            if again:
                return
            seen.add(node.dataset_id)
            q = node.quantum
            pad = indent + " " * len(arrow) + "  "
            if q is None:
                lines.append(f"{pad}not written by a quantum (ingested or put)")
                return
            lines.append(f"{pad}written by {q.task_label} ({q.task_class}), quantum {q.id}: {q.status}"
                         + (f" ({q.error})" if q.error else ""))
            lines.append(f"{pad}config {q.config_hash}  code {q.code_hash}  packages {q.packages_hash}")
            lines.append(f"{pad}on {q.host}, {q.start_time} -> {q.end_time}")
            for child in node.inputs:
                visit(child, pad, "<- ")

        visit(self, "", "")
        return lines


def _text(ref: DatasetRef) -> str:
    """A data ID's required values as ``{instrument: 'Cam', visit: 1}``."""
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in ref.data_id.required.items()) + "}"


def provenance_chain(registry: Registry, dataset_id: uuid.UUID, *, max_depth: int | None = None) -> ProvenanceNode:
    """Follow a dataset back through the quanta that wrote it and their inputs.

    Two registry queries per level of the chain (the datasets, and the quanta that wrote them), whatever
    the number of datasets at that level.

    Parameters
    ----------
    registry : `Registry`
    dataset_id : `uuid.UUID`
        The dataset to start from.
    max_depth : `int`, optional
        Follow at most this many quanta back (default: to the end).

    Returns
    -------
    root : `ProvenanceNode`

    Raises
    ------
    DatasetNotFoundError
        If no dataset has that ID.
    """
    root = ProvenanceNode(dataset_id)
    nodes = {dataset_id: root}
    level = [root]
    depth = 0
    while level and (max_depth is None or depth <= max_depth):
        ids = [n.dataset_id for n in level]
        refs = registry.get_datasets(ids)
        producers = registry.get_quantum_provenances(ids) if max_depth is None or depth < max_depth else {}
        if depth == 0 and dataset_id not in refs:
            raise DatasetNotFoundError(f"no dataset has ID {dataset_id} in this repository; check the ID (butler query-datasets).")
        following = []
        for node in level:
            node.ref = refs.get(node.dataset_id)
            node.quantum = producers.get(node.dataset_id)
            if node.quantum is None:
                continue
            for input_id, _ in node.quantum.inputs:
                child = nodes.get(input_id)
                if child is None:
                    child = nodes[input_id] = ProvenanceNode(input_id)
                    following.append(child)
                node.inputs.append(child)
        level = following
        depth += 1
    return root
