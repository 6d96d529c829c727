"""Building a `QuantumGraph` from a `PipelineGraph`, a butler and a data query.

`build_quantum_graph` works in bulk, never per quantum against the database:

1. one registry query per distinct group of task dimensions gives the candidate data IDs of every
   task of that group (constrained by the where-expression, the data ID and the overall input dataset
   types every task of the group needs);
2. one ``query_datasets`` per overall input (and prerequisite) dataset type gives the refs that exist
   in the input collections, indexed by data ID;
3. tasks are visited in pipeline order: each candidate quantum collects its input refs by dictionary
   lookups (by the dimensions it shares with each input; a spatial relation -- a visit-detector input
   of a tract-patch quantum -- is resolved by one query over both dimension groups; a calibration
   searched through CALIBRATION collections is the one valid at the time of the quantum's exposure or
   visit, chosen in Python among the candidates and validity ranges of one query), is pruned when an
   input has fewer than ``minimum`` refs or a prerequisite is missing, passes through the task's
   ``adjustQuantum``, and predicts its outputs with deterministic IDs; downstream tasks see only the
   outputs of surviving quanta, so pruning cascades;
4. one batched read of the datastore records of every existing input ref.

The result is a `QuantumGraph` and a `BuildReport` saying, per task, how many quanta were built,
skipped (already complete) and pruned, and why.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import getpass
import hashlib
import json
import logging
import operator
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from butler import (
    DataCoordinate,
    DatasetAssociation,
    DatasetIdGenEnum,
    DatasetRef,
    DatasetType,
    DimensionGroup,
    Timespan,
)
from butler.datasets import _DATASET_ID_NAMESPACE
from butler.datastore import StoredFileInfo
from butler.errors import ButlerError, EmptyQueryResultError
from butler.registry import CollectionType
from butler.registry.expressions import parse_where, referenced_identifiers

from .connections import BaseConnection, PrerequisiteInput
from .errors import GraphBuildError, NothingToDoError, NoWorkFound
from .pipeline_graph import DatasetTypeNode, PipelineGraph, TaskNode
from .quantum import _QUANTUM_NAMESPACE, Quantum
from .quantum_graph import QuantumGraph, paused_gc
from .reuse import ReusePlanner, data_id_text, reused_collection

if TYPE_CHECKING:
    from butler import Butler, Registry

__all__ = ["BuildReport", "TaskBuildReport", "build_quantum_graph"]

_LOG = logging.getLogger("graph.builder")

# A data ID as a plain tuple of values: a dataset's required values, or a quantum's full values.
Key = tuple[Any, ...]


@dataclasses.dataclass
class TaskBuildReport:
    """What happened to the quanta of one task while a graph was built.

    Attributes
    ----------
    label : `str`
    data_ids : `int`
        Candidate data IDs from the registry query of the task's dimensions.
    built : `int`
        Quanta in the graph.
    skipped : `int`
        Quanta left out because their ``{label}_metadata`` exists in ``skip_existing_in``.
    pruned : `collections.Counter` [`str`]
        Reason -> number of quanta left out for it (``"no 'raw' input"``: 12).
    examples : `dict` [`str`, `str`]
        Reason -> the full message of its first occurrence (with the data ID).
    reused : `int`
        Quanta left out because ``reuse_from`` holds them with the same code, config and inputs.
    reruns : `list` [`str`]
        With ``reuse_from``: ``"<data ID>: <reason>"`` for every quantum that runs again.
    """

    label: str
    data_ids: int = 0
    built: int = 0
    skipped: int = 0
    pruned: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)
    reused: int = 0
    reruns: list[str] = dataclasses.field(default_factory=list)

    @property
    def n_pruned(self) -> int:
        """Number of pruned quanta."""
        return sum(self.pruned.values())

    def prune(self, reason: str, example: str | None = None) -> None:
        """Count one pruned quantum."""
        self.pruned[reason] += 1
        if example is not None and reason not in self.examples:
            self.examples[reason] = example

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "label": self.label,
            "data_ids": self.data_ids,
            "built": self.built,
            "skipped": self.skipped,
            "pruned": dict(self.pruned),
            "examples": dict(self.examples),
            "reused": self.reused,
            "rerun": len(self.reruns),  # (the reasons, one per quantum, stay out of saved graphs)
        }


@dataclasses.dataclass
class BuildReport:
    """Per-task outcome of `build_quantum_graph`.

    Attributes
    ----------
    tasks : `dict` [`str`, `TaskBuildReport`]
        By task label, in pipeline order.
    timings : `dict` [`str`, `float`]
        Seconds spent in each phase of the build (``queries``, ``quanta``, ``records``, ``graph``, ``total``).
    """

    tasks: dict[str, TaskBuildReport] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def built(self) -> int:
        """Quanta in the graph."""
        return sum(t.built for t in self.tasks.values())

    @property
    def skipped(self) -> int:
        """Quanta skipped because they had already completed."""
        return sum(t.skipped for t in self.tasks.values())

    @property
    def pruned(self) -> int:
        """Quanta pruned (missing inputs, missing prerequisites, `NoWorkFound`)."""
        return sum(t.n_pruned for t in self.tasks.values())

    @property
    def reused(self) -> int:
        """Quanta reused from ``reuse_from``."""
        return sum(t.reused for t in self.tasks.values())

    def explain_reuse(self) -> str:
        """Per task label, how many quanta were reused, and why each of the others runs again."""
        lines = []
        for t in self.tasks.values():
            lines.append(f"{t.label}: {t.reused} reused, {len(t.reruns)} to run")
            lines += [f"  {line}" for line in t.reruns]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"tasks": [t.to_dict() for t in self.tasks.values()], "timings": dict(self.timings)}

    def __str__(self) -> str:
        header = ("task", "data IDs", "quanta", "skipped", "pruned", "why pruned")
        rows = [
            (
                t.label,
                str(t.data_ids),
                str(t.built),
                str(t.skipped),
                str(t.n_pruned),
                "; ".join(f"{reason}: {n}" for reason, n in t.pruned.most_common()) or "-",
            )
            for t in self.tasks.values()
        ]
        rows.append(("TOTAL", str(sum(t.data_ids for t in self.tasks.values())), str(self.built), str(self.skipped), str(self.pruned), ""))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        right = {1, 2, 3, 4}

        def line(row: Sequence[str]) -> str:
            cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            return "  ".join(cells).rstrip()

        out = [line(header), line(["-" * w for w in widths])]
        out += [line(r) for r in rows]
        return "\n".join(out)


def build_quantum_graph(
    pipeline_graph: PipelineGraph,
    butler: Butler,
    *,
    input_collections: Sequence[str],
    output_run: str,
    where: str = "",
    bind: Mapping[str, Any] | None = None,
    data_id: Mapping[str, Any] | None = None,
    skip_existing_in: Sequence[str] | None = None,
    clobber_outputs: bool = False,
    reuse_from: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[QuantumGraph, BuildReport]:
    """Build the quantum graph of a pipeline over the data that matches a query.

    Parameters
    ----------
    pipeline_graph : `PipelineGraph`
        The configured pipeline.
    butler : `Butler`
        The repository (only read).
    input_collections : sequence of `str`
        Collections to search for overall inputs and prerequisites, in order (find-first).
    output_run : `str`
        The RUN collection the outputs will be written to; it need not exist yet.
    where : `str`, optional
        A where-expression on dimensions (``"visit IN (1..10) AND detector != 3"``).
    bind : `dict`, optional
        Values of bind names used in ``where``.
    data_id : `dict`, optional
        Equality constraints on dimensions (``{"instrument": "Cam"}``).
    skip_existing_in : sequence of `str`, optional
        Collections in which a quantum whose ``{label}_metadata`` exists counts as complete: it is left
        out, and its outputs found there become ordinary inputs of downstream quanta.
    clobber_outputs : `bool`, optional
        Allow predicted outputs that already exist in ``output_run`` (the executor replaces them).
    reuse_from : sequence of `str`, optional
        Collections whose recorded quanta are reused when their task code, config and input checksums
        are unchanged (`graph.reuse`): such quanta are left out and their outputs read downstream; the
        graph's ``metadata["reuse"]`` lists the datasets to tag into ``{output_run}/reused``.  The graph
        may then be empty (everything reused).
    progress : `bool`, optional
        Show progress bars (tqdm, on stderr).

    Returns
    -------
    graph : `QuantumGraph`
        The quanta with their input and predicted output refs, the datastore records of the inputs
        that exist, ``init_refs`` and ``packages_ref``.  Output refs have deterministic IDs (UUID5 of
        dataset type, data ID and ``output_run``), so building the same graph twice gives the same IDs.
    report : `BuildReport`
        Per task: candidate data IDs, quanta built, skipped and pruned (with reasons).

    Raises
    ------
    GraphBuildError
        If an overall input dataset type is not registered, a collection does not exist, the query is
        invalid, outputs already exist in ``output_run`` (without ``skip_existing_in`` covering them or
        ``clobber_outputs``), a non-``multiple`` input matches several datasets, or the graph would be
        empty (the message says why: which query constraint matched nothing, or why quanta were pruned).
        The exception's ``report`` attribute holds the `BuildReport` when the graph is empty.
    PipelineDefinitionError
        If a registered dataset type conflicts with the pipeline's definition.
    """
    builder = _Builder(
        pipeline_graph,
        butler,
        input_collections=list(input_collections),
        output_run=output_run,
        where=where or "",
        bind=dict(bind or {}),
        data_id=dict(data_id or {}),
        skip_existing_in=list(skip_existing_in or []),
        clobber_outputs=clobber_outputs,
        reuse_from=list(reuse_from or []),
        progress=progress,
    )
    with paused_gc():
        return builder.build()


@dataclasses.dataclass
class _InputSpec:
    """How one input connection of a task finds its refs for a quantum."""

    name: str
    connection: BaseConnection
    node: DatasetTypeNode
    resolve: Callable[[Key, DataCoordinate], list[DatasetRef]]
    constraint: bool  # prunes the quantum when it has fewer than ``minimum`` refs
    prerequisite: bool
    minimum: int


@dataclasses.dataclass
class _OutputSpec:
    """How one output connection of a task predicts its ref for a quantum."""

    name: str
    connection: BaseConnection
    dataset_type: DatasetType
    positions: tuple[int, ...] | None  # of the output's full keys among the quantum's; None: same group
    register: bool  # whether downstream tasks read this dataset type
    make_id: Callable[[DataCoordinate], Any]
    follows: str | None = None  # an input connection whose refs' data IDs are this output's (finer dimensions)


class _Builder:
    """The state of one `build_quantum_graph` call (see its docstring)."""

    def __init__(
        self,
        pipeline_graph: PipelineGraph,
        butler: Butler,
        *,
        input_collections: list[str],
        output_run: str,
        where: str,
        bind: dict[str, Any],
        data_id: dict[str, Any],
        skip_existing_in: list[str],
        clobber_outputs: bool,
        reuse_from: list[str],
        progress: bool,
    ):
        self.pg = pipeline_graph
        self.butler = butler
        self.registry: Registry = butler.registry
        self.universe = pipeline_graph.universe
        self.input_collections = input_collections
        self.output_run = output_run
        self.where = where
        self.bind = bind
        self.data_id = data_id
        self.skip_existing_in = skip_existing_in
        self.clobber_outputs = clobber_outputs
        self.progress = progress
        self.report = BuildReport({label: TaskBuildReport(label) for label in pipeline_graph.tasks})
        # Refs usable as inputs, by dataset type name then required data ID values.
        self.available: dict[str, dict[Key, DatasetRef]] = {}
        # IDs of refs that exist in the repository (their datastore records go into the graph).
        self.existing_ids: set[Any] = set()
        # Dataset types read by some task (so outputs of these types must be indexed).
        self.consumed: set[str] = {name for name, node in pipeline_graph.dataset_types.items() if node.consumers}
        self.where_dims: set[str] | None = set()
        self._spatial_pairs: dict[tuple[DimensionGroup, DimensionGroup], dict[Key, list[Key]]] = {}
        self._registered: set[str] = set()
        self._search: list[Any] = []  # the input collections' search path (CollectionRecords)
        self.reuse_from = reuse_from
        self.reuse: ReusePlanner | None = None
        self._produced_anew: dict[Any, str] = {}  # predicted output ID -> label, of quanta that run
        self._reused_ids: list[Any] = []  # recorded outputs of reused quanta

    # Entry point --------------------------------------------------------------------------------------

    def build(self) -> tuple[QuantumGraph, BuildReport]:
        t_start = time.perf_counter()
        self._check()
        if self.reuse_from:
            self.reuse = ReusePlanner(self.butler, self.reuse_from)
        t0 = time.perf_counter()
        group_data_ids = self._query_quantum_data_ids()
        self.report.timings["queries"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        quanta: list[Quantum] = []
        for task in self.pg.tasks.values():
            quanta += self._make_quanta(task, group_data_ids[task.dimensions])
        self.report.timings["quanta"] = time.perf_counter() - t0
        if not quanta and not self.report.reused:
            raise self._empty_error(group_data_ids)
        self._check_existing_outputs(quanta)
        t0 = time.perf_counter()
        records = self._datastore_records(quanta)
        self.report.timings["records"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        init_refs, packages_ref = self._init_refs()
        graph = QuantumGraph(
            self.pg,
            quanta,
            output_run=self.output_run,
            input_collections=self.input_collections,
            datastore_records=records,
            init_refs=init_refs,
            packages_ref=packages_ref,
            metadata=self._metadata(),
        )
        self.report.timings["graph"] = time.perf_counter() - t0
        self.report.timings["total"] = time.perf_counter() - t_start
        _LOG.info("built a quantum graph of %d quanta in %.2f s", len(quanta), self.report.timings["total"])
        return graph, self.report

    # Checks ---------------------------------------------------------------------------------------------

    def _check(self) -> None:
        """Registered dataset types, collections, the output run and the where-expression."""
        self._registered = {dt.name for dt in self.registry.query_dataset_types()}
        overall = self.pg.overall_inputs()
        missing = sorted(name for name in overall if name not in self._registered)
        if missing:
            users = {name: ", ".join(overall[name].consumers) for name in missing}
            raise GraphBuildError(
                f"the pipeline's input dataset type(s) {', '.join(f'{n!r} (read by {users[n]})' for n in missing)} "
                f"are not registered in {self.butler.config.root}; ingest or register them first, or remove the "
                "tasks that read them."
            )
        self.pg.check_registry(self.butler)
        if not self.input_collections:
            raise GraphBuildError("no input collections: give the collections to read inputs from (-i/--input).")
        try:
            self._search = self.registry.resolve_collections(self.input_collections)
        except ButlerError as err:
            raise GraphBuildError(f"the input collections cannot be searched: {err}") from None
        known = {c.name: c for c in self.registry.query_collections()}
        run = known.get(self.output_run)
        if run is not None and run.type is not CollectionType.RUN:
            raise GraphBuildError(
                f"the output run {self.output_run!r} exists and is a {run.type.name} collection, not a RUN; "
                "choose another output run name."
            )
        self._output_run_exists = run is not None
        self.skip_existing_in = [c for c in self.skip_existing_in if c in known]
        try:
            node = parse_where(self.where)
        except ButlerError as err:
            raise GraphBuildError(f"the data query {self.where!r} is invalid: {err}") from None
        dims: set[str] = set()
        for element, _field in referenced_identifiers(node, self.bind):
            if element in self.universe.dimensions:
                dims.add(element)
            elif element in self.universe.elements:
                dims.update(self.universe[element].required)
            else:
                raise GraphBuildError(
                    f"the data query {self.where!r} names {element!r}, which is neither a dimension nor a bind name."
                )
        self.where_dims = dims

    # Candidate data IDs -----------------------------------------------------------------------------------

    def _constraints(self, label: str, memo: dict[str, frozenset[str]]) -> frozenset[str]:
        """Overall input dataset types that must exist at a quantum's data ID for it to be built.

        A task's own regular (not deferred, ``minimum`` >= 1) overall inputs whose dimensions are within
        its quantum dimensions; and, through an input written by an upstream task, that task's
        constraints whose dimensions lie within both the input's and this task's dimensions (the
        upstream quantum must exist, so its constraints hold at the shared data ID).
        """
        if label in memo:
            return memo[label]
        task = self.pg.tasks[label]
        names = set(task.dimensions.names)
        out: set[str] = set()
        for connection, node in self.pg.inputs_of(label).values():
            if isinstance(connection, PrerequisiteInput) or getattr(connection, "deferGraphConstraint", False):
                continue
            if getattr(connection, "minimum", 1) < 1:
                continue
            if node.producer is None:
                if set(node.dimensions.names) <= names:
                    out.add(node.name)
            elif node.producer in self.pg.tasks and not self.skip_existing_in:
                # (with skip_existing_in an upstream quantum may be skipped: its outputs exist whatever
                # the input collections hold now, so its constraints are not propagated)
                shared = names & set(node.dimensions.names)
                for upstream in self._constraints(node.producer, memo):
                    if set(self.pg.dataset_types[upstream].dimensions.names) <= shared:
                        out.add(upstream)
        memo[label] = frozenset(out)
        return memo[label]

    def _query_quantum_data_ids(self) -> dict[DimensionGroup, list[DataCoordinate]]:
        """One registry query per distinct group of task dimensions."""
        memo: dict[str, frozenset[str]] = {}
        groups: dict[DimensionGroup, frozenset[str] | None] = {}
        for label, task in self.pg.tasks.items():
            constraints = self._constraints(label, memo)
            previous = groups.get(task.dimensions)
            groups[task.dimensions] = constraints if previous is None else previous & constraints
        out: dict[DimensionGroup, list[DataCoordinate]] = {}
        for group, constraints in groups.items():
            if not group.names:
                out[group] = [DataCoordinate.make_empty(self.universe)]
                continue
            datasets = sorted(constraints or ())
            try:
                data_ids = self.registry.query_data_ids(
                    group,
                    where=self.where,
                    bind=self.bind,
                    data_id=self.data_id,
                    datasets=datasets or None,
                    collections=self.input_collections if datasets else None,
                    explain=False,
                )
            except ButlerError as err:
                raise GraphBuildError(f"the query for the data IDs of {group} failed: {err}") from None
            _LOG.debug("%d data IDs for %s (constrained by %s)", len(data_ids), group, datasets)
            n = len(group.required)
            data_ids.sort(key=lambda d: d.required_values[:n])
            out[group] = data_ids
        return out

    # Input refs -------------------------------------------------------------------------------------------

    def _dataset_query_args(self, dimensions: DimensionGroup) -> dict[str, Any]:
        """The where/bind/data_id constraints that can be applied to a query of datasets of these dimensions."""
        names = set(dimensions.names)
        args: dict[str, Any] = {}
        if self.where and self.where_dims is not None and self.where_dims <= names:
            args["where"] = self.where
            args["bind"] = self.bind
        data_id = {k: v for k, v in self.data_id.items() if k in names}
        if data_id:
            args["data_id"] = data_id
        return args

    def _existing_index(self, node: DatasetTypeNode) -> dict[Key, DatasetRef]:
        """Refs of an overall input (or prerequisite) dataset type in the input collections (one query)."""
        index = self.available.get(node.name)
        if index is None:
            try:
                refs = self.registry.query_datasets(
                    node.name, self.input_collections, find_first=True, explain=False,
                    **self._dataset_query_args(node.dimensions),
                )
            except ButlerError as err:
                raise GraphBuildError(f"the query for {node.name!r} datasets failed: {err}") from None
            index = {ref.data_id.required_values: ref for ref in refs}
            self.existing_ids.update(ref.id for ref in refs)
            self.available[node.name] = index
            _LOG.debug("%d %r datasets in %s", len(index), node.name, self.input_collections)
        return index

    def _related_pairs(self, quantum_dims: DimensionGroup, dataset_dims: DimensionGroup) -> dict[Key, list[Key]]:
        """Quantum required values -> related dataset required values, from one query over both groups.

        Used when the relation involves a spatial join or an always-joined element that neither group has
        on its own (see `_needs_joint_query`).
        """
        key = (quantum_dims, dataset_dims)
        pairs = self._spatial_pairs.get(key)
        if pairs is None:
            union = quantum_dims | dataset_dims
            try:
                rows = self.registry.query_data_ids(
                    union, where=self.where, bind=self.bind, data_id=self.data_id, explain=False
                )
            except ButlerError as err:
                raise GraphBuildError(f"the query relating {quantum_dims} to {dataset_dims} failed: {err}") from None
            grouped: dict[Key, dict[Key, None]] = {}
            for row in rows:
                full = row.full
                q = tuple(full[d] for d in quantum_dims.required)
                grouped.setdefault(q, {})[tuple(full[d] for d in dataset_dims.required)] = None
            pairs = {q: sorted(d) for q, d in grouped.items()}
            self._spatial_pairs[key] = pairs
        return pairs

    @staticmethod
    def _needs_joint_query(qdims: DimensionGroup, ddims: DimensionGroup) -> bool:
        """Whether quanta and datasets are related by more than their shared dimension values.

        That is when their union spans two spatial families and the datasets bring a region the quanta lack
        (visit-detector datasets of a patch quantum, or of a patch-visit quantum), or when the union holds an
        always-joined element (``visit_definition``: exposure <-> visit) that neither holds alone.
        """
        union = qdims | ddims
        spatial = union.spatial_elements()
        if len(spatial) == 2 and len(ddims.spatial_elements()) < 2 and spatial != qdims.spatial_elements():
            return True
        universe = union.universe
        return any(
            universe[name].always_join and name not in qdims.elements and name not in ddims.elements
            for name in union.elements
        )

    def _resolver(
        self, task: TaskNode, connection: BaseConnection, node: DatasetTypeNode, candidates: list[DataCoordinate]
    ) -> Callable[[Key, DataCoordinate], list[DatasetRef]]:
        """A function: quantum full values -> the input refs of one connection (dictionary lookups only)."""
        qdims = task.dimensions
        qkeys = qdims.data_coordinate_keys
        ddims = node.dimensions
        lookup = getattr(connection, "lookupFunction", None)
        if lookup is not None:
            dataset_type = node.to_dataset_type()

            def by_function(values: Key, data_id: DataCoordinate) -> list[DatasetRef]:
                refs = list(lookup(dataset_type, self.butler, data_id, self.input_collections) or [])
                self.existing_ids.update(r.id for r in refs)
                return refs

            return by_function
        if node.producer is None and self._searches_calibrations(node):
            return self._calibration_resolver(task, node, candidates)
        index = self._existing_index(node) if node.producer is None else self.available.setdefault(node.name, {})
        qnames = set(qdims.names)
        if set(ddims.required) <= qnames:
            # The quantum's data ID identifies exactly one dataset.
            positions = [qkeys.index(d) for d in ddims.required]
            if not positions:
                ref = index.get(())
                only = [ref] if ref is not None else []
                return lambda values, data_id: list(only)
            if len(positions) == 1:
                (p,) = positions

                def single(values: Key, data_id: DataCoordinate) -> list[DatasetRef]:
                    ref = index.get((values[p],))
                    return [ref] if ref is not None else []

                return single
            getter = operator.itemgetter(*positions)

            def direct(values: Key, data_id: DataCoordinate) -> list[DatasetRef]:
                ref = index.get(getter(values))
                return [ref] if ref is not None else []

            return direct
        if self._needs_joint_query(qdims, ddims):
            # A spatial relation (visit-detector datasets of a tract-patch quantum) or one through an
            # always-joined element (exposure datasets of a visit quantum, by visit_definition): one query.
            pairs = self._related_pairs(qdims, ddims)
            nreq = len(qdims.required)

            def related(values: Key, data_id: DataCoordinate) -> list[DatasetRef]:
                return [index[k] for k in pairs.get(values[:nreq], ()) if k in index]

            return related
        # The shared dimensions determine the relation: group the datasets by their values.
        shared = [d for d in ddims.data_coordinate_keys if d in qnames]
        qpositions = [qkeys.index(d) for d in shared]
        refs = sorted(index.values(), key=lambda r: r.data_id.required_values)
        if all(d in ddims.required for d in shared):
            dpositions = [ddims.required.index(d) for d in shared]
            keys = [tuple(r.data_id.required_values[i] for i in dpositions) for r in refs]
        else:
            full_ids = self._full_data_ids([r.data_id for r in refs])
            keys = [tuple(f.full[d] for d in shared) for f in full_ids]
        grouped: dict[Key, list[DatasetRef]] = {}
        for k, ref in zip(keys, refs):
            grouped.setdefault(k, []).append(ref)

        def by_shared(values: Key, data_id: DataCoordinate) -> list[DatasetRef]:
            return list(grouped.get(tuple(values[i] for i in qpositions), ()))

        return by_shared

    def _searches_calibrations(self, node: DatasetTypeNode) -> bool:
        """Whether a dataset type is a calibration and the input collections include CALIBRATION ones."""
        if not any(c.type is CollectionType.CALIBRATION for c in self._search):
            return False
        return node.name in self._registered and self.registry.get_dataset_type(node.name).is_calibration

    def _calibration_resolver(
        self, task: TaskNode, node: DatasetTypeNode, candidates: list[DataCoordinate]
    ) -> Callable[[Key, DataCoordinate], list[DatasetRef]]:
        """Refs of a calibration valid at each quantum's exposure or visit time.

        One registry query fetches every candidate dataset in the input collections with its validity
        range (`Registry.query_dataset_associations`); the quanta's times come from their exposure (else
        visit) records.  Per quantum, the calibration data IDs related through the shared dimensions
        (all detectors of a visit's physical_filter for a per-visit quantum) each get the dataset of the
        first collection in search order that is valid at the quantum's time (RUN/TAGGED: always).

        Raises
        ------
        GraphBuildError
            If the quanta have neither exposure nor visit, a quantum's record has no time, or several
            datasets of one data ID are valid at a quantum's time in one CALIBRATION collection.
        """
        qdims = task.dimensions
        qnames = set(qdims.names)
        calibs = [c.name for c in self._search if c.type is CollectionType.CALIBRATION]
        if "exposure" not in qnames and "visit" not in qnames:
            raise GraphBuildError(
                f"task {task.label!r} reads the calibration {node.name!r}, and the input collections include the "
                f"CALIBRATION collection(s) {calibs}, but its quanta ({qdims}) have no exposure or visit whose time "
                "selects the valid calibration. Give the connection a lookupFunction, or search RUN collections only."
            )
        try:
            spans = self.registry.data_id_timespans(candidates)
            associations = self.registry.query_dataset_associations(
                node.name, self.input_collections, explain=False, **self._dataset_query_args(node.dimensions)
            )
        except ButlerError as err:
            raise GraphBuildError(f"the lookup of calibration {node.name!r} for task {task.label!r} failed: {err}") from None
        nreq = len(qdims.required)
        time_of = {d.required_values: span for d, span in zip(candidates, spans)}
        ddims = node.dimensions
        qkeys = qdims.data_coordinate_keys
        shared = [d for d in ddims.data_coordinate_keys if d in qnames]
        qpositions = [qkeys.index(d) for d in shared]
        data_ids = [a.ref.data_id for a in associations]
        if not all(d in ddims.required for d in shared):
            data_ids = self._full_data_ids(data_ids)
        # shared values -> calibration data ID -> collection -> candidates
        grouped: dict[Key, dict[Key, dict[str, list[DatasetAssociation]]]] = {}
        for association, data_id in zip(associations, data_ids):
            by_data_id = grouped.setdefault(tuple(data_id[d] for d in shared), {})
            by_data_id.setdefault(data_id.required_values, {}).setdefault(association.collection, []).append(association)
        order = self._search
        label = task.label

        def pick(by_collection: dict[str, list[DatasetAssociation]], span: Timespan, data_id: DataCoordinate) -> DatasetRef | None:
            for collection in order:
                found = by_collection.get(collection.name)
                if not found:
                    continue
                if collection.type is not CollectionType.CALIBRATION:
                    return found[0].ref
                valid = {a.ref.id: a for a in found if a.timespan is not None and a.timespan.overlaps(span)}
                if len(valid) > 1:
                    listed = "; ".join(f"{a.ref.id} (run {a.ref.run!r}, valid {a.timespan})" for a in valid.values())
                    raise GraphBuildError(
                        f"quantum {label} {data_id}: {len(valid)} {node.name!r} datasets with data ID "
                        f"{next(iter(valid.values())).ref.data_id} are valid during {span} in CALIBRATION collection "
                        f"{collection.name!r}: {listed}. Decertify the overlapping ranges."
                    )
                if valid:
                    return next(iter(valid.values())).ref
            return None

        def by_time(values: Key, data_id: DataCoordinate) -> list[DatasetRef]:
            span = time_of[values[:nreq]]
            refs = []
            for _, by_collection in sorted(grouped.get(tuple(values[i] for i in qpositions), {}).items()):
                ref = pick(by_collection, span, data_id)
                if ref is not None:
                    refs.append(ref)
                    self.existing_ids.add(ref.id)
            return refs

        return by_time

    def _full_data_ids(self, data_ids: list[DataCoordinate]) -> list[DataCoordinate]:
        """Data IDs with their implied values (one registry query per element for those that lack them)."""
        lacking = [d for d in data_ids if not d.has_full()]
        if not lacking:
            return data_ids
        by_group: dict[DimensionGroup, list[DataCoordinate]] = {}
        for d in lacking:
            by_group.setdefault(d.dimensions, []).append(d)
        expanded: dict[DataCoordinate, DataCoordinate] = {}
        for group_ids in by_group.values():
            for old, new in zip(group_ids, self.registry.expand_data_ids(group_ids, full_only=True)):
                expanded[old] = new
        return [expanded.get(d, d) if not d.has_full() else d for d in data_ids]

    # Quanta -------------------------------------------------------------------------------------------------

    def _input_specs(self, task: TaskNode, candidates: list[DataCoordinate]) -> list[_InputSpec]:
        specs = []
        # Regular inputs first (they prune), then prerequisites.
        items = sorted(self.pg.inputs_of(task.label).items(), key=lambda item: isinstance(item[1][0], PrerequisiteInput))
        for name, (connection, node) in items:
            prerequisite = isinstance(connection, PrerequisiteInput)
            specs.append(
                _InputSpec(
                    name,
                    connection,
                    node,
                    self._resolver(task, connection, node, candidates),
                    constraint=not getattr(connection, "deferGraphConstraint", False),
                    prerequisite=prerequisite,
                    minimum=getattr(connection, "minimum", 1),
                )
            )
        return specs

    def _output_specs(self, task: TaskNode) -> list[_OutputSpec]:
        """How each output predicts its refs: from the quantum's data ID, or -- for a ``multiple`` output with
        dimensions beyond the quantum's (MatchBackgroundsTask: one matched warp per input warp) -- one ref per
        ref of the input connection with the same dimensions."""
        qdims = task.dimensions
        qkeys = qdims.data_coordinate_keys
        specs = []
        for name, (connection, node) in self.pg.outputs_of(task.label).items():
            odims = node.dimensions
            dataset_type = node.to_dataset_type()
            make_id = _dataset_id_maker(dataset_type, self.output_run)
            if set(odims.names) <= set(qdims.names):
                positions = None if odims == qdims else tuple(qkeys.index(d) for d in odims.data_coordinate_keys)
                specs.append(_OutputSpec(name, connection, dataset_type, positions, node.name in self.consumed, make_id))
                continue
            follows = [
                in_name for in_name, (in_connection, in_node) in self.pg.inputs_of(task.label).items()
                if in_node.dimensions == odims and getattr(in_connection, "multiple", False)
            ]
            if not getattr(connection, "multiple", False) or not follows:
                raise GraphBuildError(
                    f"output {task.label}.{name} ({node.name!r}) has dimensions {odims}, which are not all among the "
                    f"task's quantum dimensions {qdims}; an output's data ID must follow from its quantum's, or the "
                    "output must be `multiple` with the dimensions of a `multiple` input (one output per input)."
                )
            specs.append(
                _OutputSpec(name, connection, dataset_type, None, node.name in self.consumed, make_id, follows[0])
            )
        return specs

    def _skip_keys(self, task: TaskNode) -> set[Key]:
        """Required values of the quanta of a task whose metadata exists in ``skip_existing_in``."""
        name = task.metadata_dataset_type
        if not self.skip_existing_in or name not in self._registered:
            return set()
        refs = self.registry.query_datasets(name, self.skip_existing_in, find_first=True, explain=False)
        return {r.data_id.required_values for r in refs}

    def _add_skipped_outputs(self, task: TaskNode, skipped: list[DataCoordinate]) -> None:
        """Make the outputs of skipped quanta (found in ``skip_existing_in``) available downstream."""
        if not skipped:
            return
        provenance = self.pg.provenance_dataset_types
        nodes = [node for _, node in self.pg.outputs_of(task.label).values()]
        nodes += [provenance[n] for n in (task.metadata_dataset_type, task.log_dataset_type) if n in provenance]
        for node in nodes:
            if node.name not in self.consumed or node.name not in self._registered:
                continue
            keys = {d.subset(node.dimensions).required_values for d in skipped}
            refs = self.registry.query_datasets(node.name, self.skip_existing_in, find_first=True, explain=False)
            index = self.available.setdefault(node.name, {})
            for ref in refs:
                key = ref.data_id.required_values
                if key in keys:
                    index[key] = ref
                    self.existing_ids.add(ref.id)

    def _make_quanta(self, task: TaskNode, candidates: list[DataCoordinate]) -> list[Quantum]:
        """The quanta of one task over its candidate data IDs (see the module docstring)."""
        label = task.label
        report = self.report.tasks[label]
        report.data_ids = len(candidates)
        nreq = len(task.dimensions.required)
        skip_keys = self._skip_keys(task)
        if skip_keys:
            skipped = [d for d in candidates if d.required_values in skip_keys]
            report.skipped = len(skipped)
            self._add_skipped_outputs(task, skipped)
        inputs = self._input_specs(task, candidates)
        outputs = self._output_specs(task)
        single_inputs = [(spec.name, spec.node.name) for spec in inputs if not spec.connection.multiple]
        connections = task.connections
        adjust = connections.adjustQuantum
        run = self.output_run
        provenance = self.pg.provenance_dataset_types
        metadata_type = provenance[task.metadata_dataset_type].to_dataset_type()
        log_node = provenance.get(task.log_dataset_type)
        log_type = log_node.to_dataset_type() if log_node is not None else None
        metadata_id = _dataset_id_maker(metadata_type, run)
        log_id = _dataset_id_maker(log_type, run) if log_type is not None else None
        quantum_id = _quantum_id_maker(run, label, task.dimensions)
        register_metadata = metadata_type.name in self.consumed
        register_log = log_type is not None and log_type.name in self.consumed
        predicted: dict[str, dict[Key, DatasetRef]] = {
            spec.dataset_type.name: self.available.setdefault(spec.dataset_type.name, {}) for spec in outputs if spec.register
        }
        quanta: list[Quantum] = []
        iterator: Iterable[DataCoordinate] = candidates
        if self.progress:
            from tqdm import tqdm

            iterator = tqdm(candidates, desc=f"quanta of {label}", unit="quantum", file=sys.stderr, leave=False)
        for data_id in iterator:
            values = tuple(data_id.full.values())
            if skip_keys and values[:nreq] in skip_keys:
                continue
            # Inputs; prune on missing regular inputs and prerequisites.
            adjust_in: dict[str, tuple[BaseConnection, list[DatasetRef]]] = {}
            reason = None
            for spec in inputs:
                refs = spec.resolve(values, data_id)
                if len(refs) < spec.minimum and spec.constraint:
                    reason = (
                        (f"missing prerequisite {spec.node.name!r}" if spec.prerequisite else f"no {spec.node.name!r} input")
                        if not refs
                        else f"fewer than {spec.minimum} {spec.node.name!r} inputs"
                    )
                    break
                adjust_in[spec.name] = (spec.connection, refs)
            if reason is not None:
                report.prune(reason, None if reason in report.examples else f"{label} {data_id}: {reason}")
                continue
            # Predicted outputs.
            adjust_out: dict[str, tuple[BaseConnection, list[DatasetRef]]] = {}
            for spec in outputs:
                if spec.follows is not None:
                    out_ids = [ref.data_id for ref in adjust_in[spec.follows][1]]
                elif spec.positions is None:
                    out_ids = [data_id]
                else:
                    out_ids = [DataCoordinate.from_full_values(
                        spec.dataset_type.dimensions, tuple(values[i] for i in spec.positions)
                    )]
                adjust_out[spec.name] = (
                    spec.connection, [DatasetRef(spec.dataset_type, o, run, id=spec.make_id(o)) for o in out_ids]
                )
            # The task's own check (default: minimum counts; NoWorkFound prunes).
            try:
                adjusted_in, adjusted_out = adjust(adjust_in, adjust_out, label, data_id)
            except NoWorkFound as err:
                report.prune("NoWorkFound from adjustQuantum", f"{label} {data_id}: {err}")  # (rare: message kept)
                continue
            except FileNotFoundError as err:
                report.prune("missing prerequisite (adjustQuantum)", f"{label} {data_id}: {err}")
                continue
            quantum_inputs = {name: refs if type(refs) is list else list(refs) for name, (_, refs) in adjusted_in.items()}
            quantum_outputs = {name: refs if type(refs) is list else list(refs) for name, (_, refs) in adjusted_out.items()}
            for name, node_name in single_inputs:
                refs = quantum_inputs.get(name, ())
                if len(refs) > 1:
                    raise GraphBuildError(
                        f"quantum {label} {data_id}: input {name!r} is not `multiple` but {len(refs)} "
                        f"{node_name!r} datasets match it ({', '.join(str(r.data_id) for r in refs[:3])}...). "
                        "Declare the connection with multiple=True, or give it dimensions that identify one dataset."
                    )
            metadata_ref = DatasetRef(metadata_type, data_id, run, id=metadata_id(data_id))
            log_ref = DatasetRef(log_type, data_id, run, id=log_id(data_id)) if log_id is not None else None
            quanta.append(
                Quantum(
                    id=quantum_id(data_id),
                    task_label=label,
                    data_id=data_id,
                    inputs=quantum_inputs,
                    outputs=quantum_outputs,
                    metadata_ref=metadata_ref,
                    log_ref=log_ref,
                )
            )
            for spec in outputs:
                if spec.register:
                    index = predicted[spec.dataset_type.name]
                    for ref in quantum_outputs.get(spec.name, ()):
                        key = ref.data_id.required_values
                        if key in index and index[key].run == run:
                            raise GraphBuildError(
                                f"two quanta of task {label!r} would write the same {ref.dataset_type.name!r} dataset "
                                f"{ref.data_id}; give output {spec.name!r} the task's dimensions."
                            )
                        index[key] = ref
            if register_metadata:
                self.available.setdefault(metadata_ref.dataset_type.name, {})[data_id.required_values] = metadata_ref
            if register_log and log_ref is not None:
                self.available.setdefault(log_ref.dataset_type.name, {})[data_id.required_values] = log_ref
        if self.reuse is not None:
            quanta = self._apply_reuse(task, quanta)
        report.built = len(quanta)
        return quanta

    def _apply_reuse(self, task: TaskNode, quanta: list[Quantum]) -> list[Quantum]:
        """Leave out the quanta `ReusePlanner` reuses; their recorded outputs replace the predicted ones."""
        assert self.reuse is not None
        report = self.report.tasks[task.label]
        kept = []
        for decision in self.reuse.decide(task, quanta, self._produced_anew):
            quantum = decision.quantum
            if not decision.reused:
                kept.append(quantum)
                report.reruns.append(f"{data_id_text(quantum.data_id)}: {decision.reason}")
                self._produced_anew.update((ref.id, task.label) for ref in quantum.output_refs())
                continue
            report.reused += 1
            for predicted in quantum.output_refs():
                index = self.available.get(predicted.dataset_type.name)
                key = predicted.data_id.required_values
                if index is None or index.get(key) is not predicted:
                    continue
                found = decision.outputs.get(predicted.id)
                if found is None:
                    del index[key]  # (a log that was not kept): nothing stands in for it
                else:
                    index[key] = found
                    self.existing_ids.add(found.id)
            self._reused_ids += [ref.id for ref in decision.outputs.values()]
        return kept

    # After the quanta ---------------------------------------------------------------------------------------

    def _check_existing_outputs(self, quanta: list[Quantum]) -> None:
        """Refuse outputs that already exist in the output run (unless ``clobber_outputs``)."""
        if self.clobber_outputs or not self._output_run_exists:
            return
        predicted: dict[str, set[Key]] = {}
        for quantum in quanta:
            for ref in quantum.output_refs():
                predicted.setdefault(ref.dataset_type.name, set()).add(ref.data_id.required_values)
        clashes: list[DatasetRef] = []
        log_types = {node.log_dataset_type for node in self.pg.tasks.values()}
        for name, keys in predicted.items():
            # The log of an attempt that did not finish (no metadata) is replaced by the executor.
            if name not in self._registered or name in log_types:
                continue
            existing = self.registry.query_datasets(name, [self.output_run], find_first=True, explain=False)
            clashes += [r for r in existing if r.data_id.required_values in keys]
        if clashes:
            examples = ", ".join(f"{r.dataset_type.name} {r.data_id}" for r in clashes[:3])
            raise GraphBuildError(
                f"{len(clashes)} output dataset(s) of this graph already exist in the output run "
                f"{self.output_run!r} (e.g. {examples}). Pass --skip-existing-in {self.output_run} to skip the quanta "
                "that completed, --clobber-outputs to overwrite them, or write to a new output run."
            )

    def _datastore_records(self, quanta: list[Quantum]) -> dict[Any, StoredFileInfo]:
        """Datastore records of every input ref that exists in the repository (one batched read)."""
        existing = self.existing_ids
        ids = dict.fromkeys(ref.id for q in quanta for ref in q.input_refs() if ref.id in existing)
        ids.update(dict.fromkeys(self._init_input_ids()))
        if not ids:
            return {}
        rows = self.registry.get_datastore_records(ids)
        records = {i: StoredFileInfo(**row) for i, row in rows.items()}
        inline = [i for i, info in records.items() if info.is_inline]
        if inline:
            contents = self.registry.get_inline_content(inline)
            for i in inline:
                records[i] = dataclasses.replace(records[i], inline=contents.get(i))
        return records

    def _init_input_ids(self) -> list[Any]:
        """IDs of the overall init-inputs (found in the input collections)."""
        ids = []
        overall = self.pg.overall_inputs()
        for label in self.pg.tasks:
            for name, (_, node) in self.pg.init_inputs_of(label).items():
                if node.name not in overall:
                    continue
                found = self.registry.query_datasets(node.name, self.input_collections, find_first=True, explain=False)
                if not found:
                    raise GraphBuildError(
                        f"init-input {label}.{name} ({node.name!r}) is not in the input collections "
                        f"{self.input_collections}; it must exist before the pipeline runs."
                    )
                ids.append(found[0].id)
        return ids

    def _init_refs(self) -> tuple[dict[str, dict[str, DatasetRef]], DatasetRef]:
        empty = DataCoordinate.make_empty(self.universe)
        gen = DatasetIdGenEnum.DATAID_TYPE_RUN
        provenance = self.pg.provenance_dataset_types
        init_refs: dict[str, dict[str, DatasetRef]] = {}
        for label, task in self.pg.tasks.items():
            config_type = provenance[task.config_dataset_type].to_dataset_type()
            refs = {"config": DatasetRef(config_type, empty, self.output_run, id_generation_mode=gen)}
            for name, (_, node) in self.pg.init_outputs_of(label).items():
                if name == "config":
                    raise GraphBuildError(f"task {label!r} has an InitOutput connection named 'config', which is reserved.")
                refs[name] = DatasetRef(node.to_dataset_type(), empty, self.output_run, id_generation_mode=gen)
            init_refs[label] = refs
        packages_type = next(n for n in provenance.values() if n.producer is None and n.is_init).to_dataset_type()
        return init_refs, DatasetRef(packages_type, empty, self.output_run, id_generation_mode=gen)

    def _metadata(self) -> dict[str, Any]:
        return {
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "user": _user(),
            "butler_root": str(self.butler.config.root),
            "input_collections": list(self.input_collections),
            "output_run": self.output_run,
            "where": self.where,
            "bind": _json_safe(self.bind),
            "data_id": _json_safe(self.data_id),
            "skip_existing_in": list(self.skip_existing_in),
            "clobber_outputs": self.clobber_outputs,
            "report": self.report.to_dict()["tasks"],
            **({"reuse": {
                "from": list(self.reuse_from),
                "collection": reused_collection(self.output_run),
                "datasets": [str(i) for i in self._reused_ids],
            }} if self.reuse is not None else {}),
        }

    def _empty_error(self, group_data_ids: Mapping[DimensionGroup, list[DataCoordinate]]) -> GraphBuildError:
        """Say why no quantum was built."""
        lines = []
        for label, task in self.pg.tasks.items():
            if group_data_ids[task.dimensions]:
                continue
            reasons = ["no data IDs match."]
            memo: dict[str, frozenset[str]] = {}
            datasets = sorted(self._constraints(label, memo)) or None
            try:
                self.registry.query_data_ids(
                    task.dimensions, where=self.where, bind=self.bind, data_id=self.data_id,
                    datasets=datasets, collections=self.input_collections if datasets else None, explain=True,
                )
            except EmptyQueryResultError as err:
                reasons = list(err.reasons)
            except ButlerError as err:
                reasons = [str(err)]
            lines.append(f"task {label!r} ({task.dimensions}): no data IDs matched the query: {' '.join(reasons)}")
            break  # the first empty group explains the rest
        pruned = []
        for t in self.report.tasks.values():
            if t.n_pruned:
                why = "; ".join(f"{r}: {n}" for r, n in t.pruned.most_common())
                example = next(iter(t.examples.values()), "")
                pruned.append(f"task {t.label!r}: {t.n_pruned} of {t.data_ids} candidate quanta pruned ({why}), e.g. {example}")
        if not lines and self.report.skipped:
            error: GraphBuildError = NothingToDoError(
                f"nothing left to run: {self.report.skipped} quanta already completed in {self.skip_existing_in}"
                + ("; the other candidates have no inputs:\n  - " + "\n  - ".join(pruned) if pruned else ".")
            )
            error.report = self.report  # type: ignore[attr-defined]
            return error
        lines += pruned
        error = GraphBuildError(
            "the quantum graph is empty:\n  - " + "\n  - ".join(lines)
            + f"\n(input collections {self.input_collections}, data query {self.where!r})."
        )
        error.report = self.report  # type: ignore[attr-defined]
        return error


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def _json_safe(value: Any) -> Any:
    """A JSON-serialisable copy of ``value`` (unknown objects become their `str`)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    try:
        json.dumps(value)
    except TypeError:
        return str(value)
    return value


def _dataset_id_maker(dataset_type: DatasetType, run: str) -> Callable[[DataCoordinate], Any]:
    """A fast equivalent of ``DatasetRef.make_id(dataset_type, data_id, run, DATAID_TYPE_RUN)``.

    The key string is assembled from precomputed pieces (the dimension order is fixed per dataset
    type) instead of sorting a dict per data ID; ``tests/graph/test_builder.py`` checks the IDs are
    identical to `DatasetRef.make_id`'s.
    """
    required = dataset_type.dimensions.required
    order = sorted(range(len(required)), key=required.__getitem__)
    prefixes = [(f"{required[i]}=", i) for i in order]
    head = f"dataset_type={dataset_type.name}"
    tail = f"run={run}"
    namespace = _DATASET_ID_NAMESPACE.bytes

    def make(data_id: DataCoordinate) -> Any:
        values = data_id.required_values
        return _uuid5(namespace, ",".join([head, *[p + str(values[i]) for p, i in prefixes], tail]))

    return make


def _quantum_id_maker(run: str, label: str, group: DimensionGroup) -> Callable[[DataCoordinate], Any]:
    """A fast equivalent of `Quantum.make_id` for the quanta of one task (see `_dataset_id_maker`)."""
    required = group.required
    prefixes = [(f"{required[i]}=", i) for i in sorted(range(len(required)), key=required.__getitem__)]
    namespace = _QUANTUM_NAMESPACE.bytes

    def make(data_id: DataCoordinate) -> Any:
        values = data_id.required_values
        return _uuid5(namespace, ",".join([run, label, *[p + str(values[i]) for p, i in prefixes]]))

    return make


_UUID5_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID5_SET = (5 << 76) | (0x8000 << 48)


def _uuid5(namespace: bytes, name: str) -> uuid.UUID:
    """`uuid.uuid5` with the namespace given as bytes (the same result, without the per-call overhead)."""
    digest = hashlib.sha1(namespace + name.encode("utf-8")).digest()  # noqa: S324 - RFC 9562 UUIDv5
    return uuid.UUID(int=(int.from_bytes(digest[:16], "big") & _UUID5_CLEAR) | _UUID5_SET)
