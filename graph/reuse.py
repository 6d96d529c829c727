"""Incremental reprocessing: reuse the quanta of an earlier run whose code, config and inputs are unchanged.

`build_quantum_graph(..., reuse_from=[RUN])` asks a `ReusePlanner`, task by task in pipeline order, which
of the task's quanta the recorded provenance of ``RUN`` (`Registry.query_quanta`) already covers.  A
quantum is reused only when ``RUN`` (or, for a CHAINED collection, its first RUN that has one) recorded a
succeeded quantum of the same task label and data ID with

- the same task class, code hash and config hash (`graph.fingerprint`), and
- the same inputs: per connection, the same dataset types and data IDs, each the same dataset or one with
  the same checksum; an input written by a quantum that runs again in this graph never is.

A reused quantum leaves the graph; its recorded outputs stand in for its predicted ones, so downstream
quanta read them (and are reused in turn when nothing else changed).  Every re-run quantum gets a reason
(``explain``).  Queries are batched: one for the recorded quanta, then per task one for the datasets and
one for the datastore records of the inputs and outputs to compare, and one config read per task label
(plus, up front, one run-provenance read per run searched).

When the graph executes, `associate_reused` tags the outputs of the reused quanta (no copy) into the
TAGGED collection ``{output_run}/reused``, which ``pipetask run -o`` chains right after the new run.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from butler import CollectionType, DatasetRef, QuantumRecord
from butler.errors import ButlerError
from butler.registry import canonical_data_id

from .errors import GraphBuildError
from .fingerprint import TaskFingerprint, task_fingerprint, task_modules

if TYPE_CHECKING:
    from butler import Butler

    from .pipeline_graph import TaskNode
    from .quantum import Quantum
    from .quantum_graph import QuantumGraph

__all__ = ["REUSED_SUFFIX", "ReuseDecision", "ReusePlanner", "associate_reused", "data_id_text", "reused_collection"]

#: Suffix of the TAGGED collection that holds the outputs of the reused quanta of a run.
REUSED_SUFFIX = "reused"


def reused_collection(output_run: str) -> str:
    """The TAGGED collection of the reused outputs of an output run (``{output_run}/reused``)."""
    return f"{output_run}/{REUSED_SUFFIX}"


@dataclass
class ReuseDecision:
    """Whether one quantum is reused, and why not.

    Attributes
    ----------
    quantum : `Quantum`
        The candidate quantum (with its predicted outputs).
    record : `QuantumRecord` or `None`
        The recorded quantum of the same task label and data ID.
    reason : `str` or `None`
        Why it runs again (``"config changed: ..."``, ``"input changed: ..."``, ``"code changed"``, ``"not
        in ..."``); `None` when it is reused.
    outputs : `dict` [`uuid.UUID`, `DatasetRef`]
        For a reused quantum: predicted output ID -> the recorded dataset that replaces it.
    """

    quantum: Quantum
    record: QuantumRecord | None
    reason: str | None = None
    outputs: dict[uuid.UUID, DatasetRef] = field(default_factory=dict)

    @property
    def reused(self) -> bool:
        """Whether the quantum is reused."""
        return self.reason is None


class ReusePlanner:
    """Decides which quanta of a graph being built can be reused from recorded runs.

    Parameters
    ----------
    butler : `Butler`
        The repository (read only).
    reuse_from : sequence of `str`
        Collections whose RUN collections (CHAINED ones flattened, in search order) hold the quanta to reuse;
        a run that itself reused quanta leads on to the runs it reused them from.

    Raises
    ------
    GraphBuildError
        If a collection does not exist or none of them is or holds a RUN collection.
    """

    def __init__(self, butler: Butler, reuse_from: Sequence[str]):
        self.butler = butler
        self.collections = list(reuse_from)
        registry = butler.registry
        runs = self._runs(self.collections)
        if not runs:
            raise GraphBuildError(f"--reuse-from {self.collections} names no RUN collection, so no quanta to reuse.")
        self.runs = runs
        rank = {run: i for i, run in enumerate(runs)}
        self._recorded: dict[tuple[str, str], QuantumRecord] = {}
        for record in sorted(registry.query_quanta(runs), key=lambda r: rank[r.run]):
            self._recorded.setdefault((record.task_label, record.data_id_key), record)
        self._configs: dict[tuple[str, str], Any] = {}

    def _runs(self, collections: Sequence[str]) -> list[str]:
        """RUN collections to look for quanta in, in order: those of the search path, each followed by the
        runs it reused quanta from (recorded in its run-level provenance), recursively."""
        registry = self.butler.registry
        out: list[str] = []
        todo = list(collections)
        while todo:
            try:
                found = [c.name for c in registry.resolve_collections(todo.pop(0)) if c.type is CollectionType.RUN]
            except ButlerError as err:
                raise GraphBuildError(f"--reuse-from {self.collections}: {err}") from None
            for run in found:
                if run not in out:
                    out.append(run)
                    todo += (registry.get_run_provenance(run) or {}).get("reuse_from") or []
        return out

    @property
    def source(self) -> str:
        """The reuse-from collections, for messages."""
        return ", ".join(self.collections)

    def decide(self, task: TaskNode, quanta: Sequence[Quantum], produced_anew: Mapping[uuid.UUID, str]) -> list[ReuseDecision]:
        """Decide, for every quantum of one task, whether it is reused.

        Parameters
        ----------
        task : `TaskNode`
            The task (its current class, config and code).
        quanta : sequence of `Quantum`
            Its quanta, with their inputs resolved and outputs predicted.
        produced_anew : `dict` [`uuid.UUID`, `str`]
            Predicted dataset ID -> label of the task that writes it, for every quantum upstream that runs
            again in this graph.

        Returns
        -------
        decisions : `list` [`ReuseDecision`]
            One per quantum, in order.
        """
        fingerprint = task_fingerprint(task)
        decisions = []
        for quantum in quanta:
            record = self._recorded.get((task.label, canonical_data_id(quantum.data_id.required)))
            decision = ReuseDecision(quantum, record)
            decision.reason = self._first_reason(task, fingerprint, decision, produced_anew)
            decisions.append(decision)
        candidates = [d for d in decisions if d.reason is None]
        if not candidates:
            return decisions
        refs, checksums = self._lookups(candidates)
        for decision in candidates:
            decision.reason = self._input_reason(decision, refs, checksums) or self._map_outputs(decision, refs)
        return decisions

    # Reasons ------------------------------------------------------------------------------------------------

    def _first_reason(
        self, task: TaskNode, fingerprint: TaskFingerprint, decision: ReuseDecision, produced_anew: Mapping[uuid.UUID, str]
    ) -> str | None:
        """The reasons that need no dataset lookups: absent, failed, class, code, config, upstream re-run."""
        record = decision.record
        if record is None:
            return f"not in {self.source}"
        if record.status != "succeeded":
            return f"recorded as {record.status} in {record.run}"
        if record.task_class != fingerprint.task_class:
            return f"task class changed: {record.task_class} -> {fingerprint.task_class}"
        if record.code_hash != fingerprint.code_hash:
            return f"code changed (modules {', '.join(task_modules(task.task_class, task.config))})"
        if record.config_hash != fingerprint.config_hash:
            return self._config_reason(task, record)
        for name, refs in decision.quantum.inputs.items():
            for ref in refs:
                producer = produced_anew.get(ref.id)
                if producer is not None:
                    return f"input changed: {_describe(ref)} ({name}) produced anew by {producer}"
        return None

    def _config_reason(self, task: TaskNode, record: QuantumRecord) -> str:
        """``config changed: field (old -> new), ...`` against the config stored in the recorded run."""
        key = (task.label, record.run)
        if key not in self._configs:
            try:
                self._configs[key] = self.butler.get(task.config_dataset_type, collections=[record.run])
            except (ButlerError, LookupError, ValueError, TypeError):
                self._configs[key] = None
        old = self._configs[key]
        if old is None or type(old) is not type(task.config):
            return f"config changed (the config stored in {record.run} cannot be compared)"
        changes = task.config.changes_from(old)
        return "config changed: " + (", ".join(changes) if changes else "same values, other config hash")

    def _lookups(self, decisions: Sequence[ReuseDecision]) -> tuple[dict[uuid.UUID, DatasetRef], dict[uuid.UUID, str | None]]:
        """Refs of the recorded outputs and of recorded inputs that differ; checksums of differing inputs."""
        registry = self.butler.registry
        wanted: set[uuid.UUID] = set()
        compare: set[uuid.UUID] = set()
        for decision in decisions:
            record = decision.record
            assert record is not None
            wanted.update(record.outputs)
            current = {ref.id for ref in decision.quantum.input_refs()}
            recorded = {dataset_id for dataset_id, _ in record.inputs}
            compare.update(current ^ recorded)
        wanted |= compare
        refs = registry.get_datasets(wanted) if wanted else {}
        rows = registry.get_datastore_records(compare) if compare else {}
        return refs, {i: row.get("checksum") for i, row in rows.items()}

    def _input_reason(
        self, decision: ReuseDecision, refs: Mapping[uuid.UUID, DatasetRef], checksums: Mapping[uuid.UUID, str | None]
    ) -> str | None:
        """Why the inputs differ from the recorded ones (`None` when they are the same or have the same checksums)."""
        record = decision.record
        assert record is not None
        current = {(ref.id, name) for name, refs_ in decision.quantum.inputs.items() for ref in refs_}
        if current == set(record.inputs):
            return None
        recorded: dict[tuple[Any, ...], uuid.UUID] = {}
        for dataset_id, name in record.inputs:
            ref = refs.get(dataset_id)
            if ref is not None:  # a recorded input removed since is not compared (its successor counts as new)
                recorded[(name, ref.dataset_type.name, ref.data_id.required_values)] = dataset_id
        for name, refs_ in decision.quantum.inputs.items():
            for ref in refs_:
                old = recorded.pop((name, ref.dataset_type.name, ref.data_id.required_values), None)
                if old is None:
                    return f"input changed: {_describe(ref)} ({name}) was not an input in {record.run}"
                if old != ref.id and (checksums.get(old) is None or checksums.get(old) != checksums.get(ref.id)):
                    return f"input changed: {_describe(ref)} ({name}) differs from the one read in {record.run}"
        if recorded:
            (name, _, _), dataset_id = next(iter(recorded.items()))
            return f"input changed: {_describe(refs[dataset_id])} ({name}) is no longer an input"
        return None

    def _map_outputs(self, decision: ReuseDecision, refs: Mapping[uuid.UUID, DatasetRef]) -> str | None:
        """Match the predicted outputs with the recorded ones (every output but the log must exist)."""
        record = decision.record
        assert record is not None
        written = {(r.dataset_type.name, r.data_id.required_values): r for i in record.outputs if (r := refs.get(i)) is not None}
        quantum = decision.quantum
        for predicted in quantum.output_refs():
            found = written.get((predicted.dataset_type.name, predicted.data_id.required_values))
            if found is not None:
                decision.outputs[predicted.id] = found
            elif predicted is not quantum.log_ref:
                decision.outputs.clear()
                return f"recorded output missing: {_describe(predicted)} is not in {record.run}"
        return None


def data_id_text(data_id: Any) -> str:
    """A data ID's required values as ``{instrument: 'Cam', visit: 1}`` (no implied values)."""
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in data_id.required.items()) + "}"


def _describe(ref: DatasetRef) -> str:
    return f"{ref.dataset_type.name} {data_id_text(ref.data_id)}"


def associate_reused(butler: Butler, qgraph: QuantumGraph) -> int:
    """Tag the outputs of the quanta a graph reuses into ``{output_run}/reused`` (no copy).

    Datasets of the same type and data ID already in that collection (from an earlier execution of an
    extended run) are replaced.  Does nothing for a graph built without ``reuse_from``.

    Returns
    -------
    n : `int`
        Number of datasets tagged.
    """
    reuse = qgraph.metadata.get("reuse") or {}
    ids = [uuid.UUID(i) for i in reuse.get("datasets") or []]
    if not ids:
        return 0
    registry = butler.registry
    collection = reuse.get("collection") or reused_collection(qgraph.output_run)
    refs = list(registry.get_datasets(ids).values())
    if len(refs) != len(ids):
        raise GraphBuildError(
            f"{len(ids) - len(refs)} dataset(s) of the quanta reused from {reuse.get('from')} no longer exist; "
            "build the graph again."
        )
    with registry.transaction():
        registry.register_collection(collection, CollectionType.TAGGED)
        by_type: dict[str, set[Any]] = {}
        for ref in refs:
            by_type.setdefault(ref.dataset_type.name, set()).add(ref.data_id.required_values)
        stale = [
            ref for name, keys in by_type.items()
            for ref in registry.query_datasets(name, [collection], find_first=False, explain=False)
            if ref.data_id.required_values in keys
        ]
        if stale:
            registry.disassociate(collection, stale)
        registry.associate(collection, refs)
    return len(refs)
