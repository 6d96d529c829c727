"""`QuantumGraph`: every quantum of a pipeline run and their dependencies (a networkx DiGraph).

Built by `graph.builder.build_quantum_graph`; saved and loaded as versioned, compressed JSON (never
pickle) by `QuantumGraph.save` / `QuantumGraph.load`.  The graph carries the datastore records of its
overall inputs, so a worker can run a quantum from the graph alone, without the registry.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import networkx as nx

from butler import DatasetRef
from butler.datastore import StoredFileInfo

from .quantum import Quantum

if TYPE_CHECKING:
    from .pipeline_graph import PipelineGraph

__all__ = ["QuantumGraph"]


class QuantumGraph:
    """The quanta of a pipeline run.

    Parameters
    ----------
    pipeline_graph : `PipelineGraph`
        The pipeline (tasks with their frozen configs).
    quanta : iterable of `Quantum`
    output_run : `str`
        The RUN collection the outputs go to.
    input_collections : `list` [`str`]
        The collections inputs were found in (search order).
    datastore_records : `dict` [`uuid.UUID`, `StoredFileInfo`]
        Records of the datasets that exist before the run (overall inputs), by dataset ID.
    init_refs : `dict` [`str`, `dict` [`str`, `DatasetRef`]]
        Per task label: the run-level datasets it writes once (``"config"`` -> the ``{label}_config``
        ref, and its InitOutput connections) .
    packages_ref : `DatasetRef` or `None`
        The run's ``packages`` dataset.
    metadata : `dict`
        Free-form facts about the build (user, time, where-expression, butler root...).

    Attributes
    ----------
    graph : `networkx.DiGraph`
        Nodes are quantum IDs (with attribute ``quantum``); an edge goes from the quantum producing
        a dataset to each quantum consuming it.
    """

    def __init__(
        self,
        pipeline_graph: PipelineGraph,
        quanta: Iterable[Quantum],
        *,
        output_run: str,
        input_collections: list[str],
        datastore_records: Mapping[uuid.UUID, StoredFileInfo] | None = None,
        init_refs: Mapping[str, Mapping[str, DatasetRef]] | None = None,
        packages_ref: DatasetRef | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        self.pipeline_graph = pipeline_graph
        self.output_run = output_run
        self.input_collections = list(input_collections)
        self.datastore_records = dict(datastore_records or {})
        self.init_refs = {k: dict(v) for k, v in (init_refs or {}).items()}
        self.packages_ref = packages_ref
        self.metadata = dict(metadata or {})
        self.quanta: dict[uuid.UUID, Quantum] = {}
        self._producer: dict[uuid.UUID, uuid.UUID] = {}
        self.graph = nx.DiGraph()
        for quantum in quanta:
            self.quanta[quantum.id] = quantum
            self.graph.add_node(quantum.id)
            for ref in quantum.output_refs():
                self._producer[ref.id] = quantum.id
        for quantum in self.quanta.values():
            for ref in quantum.input_refs():
                producer = self._producer.get(ref.id)
                if producer is not None:
                    self.graph.add_edge(producer, quantum.id)

    def __len__(self) -> int:
        return len(self.quanta)

    def __iter__(self) -> Iterator[Quantum]:
        """Quanta in a topological order (every producer before its consumers)."""
        return (self.quanta[q] for q in nx.lexicographical_topological_sort(self.graph, key=str))

    def quanta_for(self, label: str) -> list[Quantum]:
        """The quanta of one task label."""
        return [q for q in self.quanta.values() if q.task_label == label]

    def producer_of(self, dataset_id: uuid.UUID) -> Quantum | None:
        """The quantum that writes a dataset, or `None` for an overall input."""
        qid = self._producer.get(dataset_id)
        return self.quanta[qid] if qid is not None else None

    def descendants(self, quantum_id: uuid.UUID) -> set[uuid.UUID]:
        """IDs of every quantum that depends, directly or not, on this one."""
        return nx.descendants(self.graph, quantum_id)

    def summary(self) -> dict[str, int]:
        """Number of quanta per task label, in pipeline order."""
        counts = {label: 0 for label in self.pipeline_graph.tasks}
        for q in self.quanta.values():
            counts[q.task_label] += 1
        return counts

    def __repr__(self) -> str:
        return f"QuantumGraph({len(self)} quanta: {self.summary()}, output_run={self.output_run!r})"
