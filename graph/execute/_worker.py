"""What a worker process keeps between quanta (graph, datastore, executor), and running a cluster of quanta.

Used by the process pool (`executors`) and by Parsl apps (`_parsl`): workers read inputs and write
files through the datastore only, and return `QuantumResult` manifests; they never open the registry.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from butler.datastore import FileDatastore, StoredFileInfo

from ..quantum_graph import QuantumGraph
from ._scheduler import inherited_status
from .single_quantum import QuantumResult, SingleQuantumExecutor

__all__ = ["InitInfos", "WorkerState"]

# Task label -> init-input connection name -> datastore record.
InitInfos = Mapping[str, Mapping[str, StoredFileInfo]]


class WorkerState:
    """A worker's graph, datastore and executor, made once per worker process.

    Parameters
    ----------
    qgraph : `QuantumGraph`
    datastore : `FileDatastore`
    init_infos : `dict` [`str`, `dict` [`str`, `StoredFileInfo`]]
        Records of every task's init-inputs (`init_input_infos`).
    timeout : `float`, optional
        Seconds each quantum may run (see `SingleQuantumExecutor`).
    """

    def __init__(
        self, qgraph: QuantumGraph, datastore: FileDatastore, init_infos: InitInfos, *, timeout: float | None = None
    ):
        self.qgraph = qgraph
        self.datastore = datastore
        self.executor = SingleQuantumExecutor(init_infos, timeout=timeout)
        for node in qgraph.pipeline_graph.tasks.values():  # import every task class once
            node.task_class

    @classmethod
    def from_files(
        cls, graph_path: str | Path, repo_root: str | Path, init_infos: InitInfos, *, timeout: float | None = None
    ) -> WorkerState:
        """Read a saved graph and open the datastore of a repository (without its registry).

        Parameters
        ----------
        graph_path : `str` or `pathlib.Path`
            A graph written by `QuantumGraph.save`.
        repo_root : `str` or `pathlib.Path`
            The repository's root directory.
        init_infos : `dict` [`str`, `dict` [`str`, `StoredFileInfo`]]
            Records of every task's init-inputs.
        timeout : `float`, optional
            Seconds each quantum may run.
        """
        from butler._config import ButlerConfig

        config = ButlerConfig(repo_root)
        datastore = FileDatastore(config.root, config.datastore, config.storage_classes, config.formatters)
        return cls(QuantumGraph.load(graph_path, universe=config.universe), datastore, init_infos, timeout=timeout)

    def execute(self, quantum_id: uuid.UUID, input_infos: Mapping[uuid.UUID, StoredFileInfo]) -> QuantumResult:
        """Run one quantum of the graph (its output files clobber orphans of killed attempts)."""
        quantum = self.qgraph.quanta[quantum_id]
        node = self.qgraph.pipeline_graph.tasks[quantum.task_label]
        return self.executor.execute(node, quantum, self.datastore, input_infos, clobber=True)

    def execute_cluster(
        self, quantum_ids: Iterable[uuid.UUID], input_infos: Mapping[uuid.UUID, StoredFileInfo]
    ) -> list[QuantumResult]:
        """Run the quanta of a cluster in order, each reading what the ones before it wrote.

        Parameters
        ----------
        quantum_ids : iterable of `uuid.UUID`
            The quanta, every producer before its consumers.
        input_infos : `dict` [`uuid.UUID`, `StoredFileInfo`]
            Records of the inputs the cluster reads from outside itself.

        Returns
        -------
        results : `list` [`QuantumResult`]
            One per quantum that ran; a quantum that a failed (or workless) quantum before it keeps
            from running is left out (the main process marks it blocked).
        """
        qgraph = self.qgraph
        infos = dict(input_infos)
        statuses: dict[uuid.UUID, str] = {}
        results = []
        for qid in quantum_ids:
            quantum = qgraph.quanta[qid]
            if inherited_status(qgraph, quantum, statuses, infos) is not None:
                statuses[qid] = "blocked"
                continue
            result = self.execute(qid, {r.id: infos[r.id] for r in quantum.input_refs() if r.id in infos})
            results.append(result)
            statuses[qid] = result.status
            if result.status != "failed":
                infos.update((info.dataset_id, info) for info in result.written)
        return results
