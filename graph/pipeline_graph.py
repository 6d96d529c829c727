"""`PipelineGraph`: the validated graph of a pipeline's tasks and the dataset types they read and write.

A `PipelineGraph` is made from configured tasks (usually by `Pipeline.to_graph`)::

    graph = Pipeline.from_file("pipelines/DRP.yaml").to_graph()
    for label, task in graph.tasks.items():          # in topological order
        print(label, task.dimensions, list(graph.inputs_of(label)))

It is a networkx ``DiGraph`` whose nodes are ``("task", label)`` and ``("dataset", name)``; an edge goes
from a dataset type to each task reading it and from a task to each dataset type it writes.  Building
it checks that the pipeline can run: no cycles, one producer per dataset type, consistent storage
classes and dimensions, known dimensions, and no produced prerequisite inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import networkx as nx

from butler.datasets import DatasetType
from butler.dimensions import DimensionGroup, DimensionUniverse
from butler.errors import DatasetTypeError, DimensionNameError, did_you_mean

from .config import PipelineTaskConfig
from .connections import BaseConnection, DimensionedConnection, PipelineTaskConnections
from .errors import ConnectionError, PipelineDefinitionError
from .task import PipelineTask

if TYPE_CHECKING:
    from butler import Butler

__all__ = ["DatasetTypeNode", "PipelineGraph", "TaskNode"]

# Connection category (attribute of PipelineTaskConnections) -> edge kind.
_INPUT_KINDS = {"inputs": "input", "prerequisiteInputs": "prerequisite", "initInputs": "init_input"}
_OUTPUT_KINDS = {"outputs": "output", "initOutputs": "init_output"}

#: Storage classes of the provenance dataset types every task writes.
METADATA_STORAGE_CLASS = "TaskMetadata"
LOG_STORAGE_CLASS = "ButlerLogRecords"
CONFIG_STORAGE_CLASS = "Config"
PACKAGES_STORAGE_CLASS = "Packages"
PACKAGES_DATASET_TYPE = "packages"


@dataclasses.dataclass
class TaskNode:
    """One configured task of a pipeline.

    Attributes
    ----------
    label : `str`
        The task's label in the pipeline (unique).
    task_class : `type` [`PipelineTask`]
    config : `PipelineTaskConfig`
        The task's config, frozen.
    connections : `PipelineTaskConnections`
        The connections built from ``config`` (final dataset type names; removed connections gone).
    dimensions : `DimensionGroup`
        Dimensions of the task's quanta.
    """

    label: str
    task_class: type[PipelineTask]
    config: PipelineTaskConfig
    connections: PipelineTaskConnections
    dimensions: DimensionGroup

    @classmethod
    def from_config(
        cls, label: str, task_class: type[PipelineTask], config: PipelineTaskConfig, universe: DimensionUniverse
    ) -> TaskNode:
        """Build the connections and dimensions of a configured task.

        Parameters
        ----------
        label : `str`
        task_class : `type` [`PipelineTask`]
        config : `PipelineTaskConfig`
            The task's config; frozen here if it is not yet.
        universe : `DimensionUniverse`

        Raises
        ------
        PipelineDefinitionError
            If the config has no connections class, the connections cannot be built, or the task's
            dimensions are not in the universe (the message names the label).
        """
        connections_class = getattr(type(config), "ConnectionsClass", None)
        if connections_class is None:
            raise PipelineDefinitionError(
                f"task {label!r}: {type(config).__name__} has no connections; declare it as "
                "`class MyConfig(PipelineTaskConfig, pipelineConnections=MyConnections)`."
            )
        if not config.frozen:
            config.freeze()
        try:
            connections = connections_class(config=config)
        except ConnectionError as err:
            raise PipelineDefinitionError(f"task {label!r}: {err}") from None
        try:
            dimensions = universe.conform(connections.dimensions)
        except DimensionNameError as err:
            raise PipelineDefinitionError(
                f"task {label!r} ({_dotted_name(task_class)}) has unknown quantum dimensions: {err}"
            ) from None
        return cls(label, task_class, config, connections, dimensions)

    @property
    def task_class_name(self) -> str:
        """Dotted path of the task class (``package.module.Class``)."""
        return _dotted_name(self.task_class)

    def make_task(self, **kwargs: Any) -> PipelineTask:
        """Construct the task with its frozen config (``kwargs`` go to the constructor, e.g. ``initInputs``)."""
        return self.task_class(config=self.config, **kwargs)

    @property
    def metadata_dataset_type(self) -> str:
        """Name of the per-quantum task metadata dataset type."""
        return f"{self.label}_metadata"

    @property
    def log_dataset_type(self) -> str:
        """Name of the per-quantum log dataset type."""
        return f"{self.label}_log"

    @property
    def config_dataset_type(self) -> str:
        """Name of the per-run config dataset type."""
        return f"{self.label}_config"

    def __repr__(self) -> str:
        return f"TaskNode({self.label!r}, {self.task_class_name}, dimensions={self.dimensions})"


@dataclasses.dataclass
class DatasetTypeNode:
    """A dataset type of a pipeline, with the tasks that write and read it.

    Attributes
    ----------
    name : `str`
    dimensions : `DimensionGroup`
    storage_class : `str`
    is_calibration : `bool`
    producer : `str` or `None`
        Label of the task writing it, or `None` for an overall input.
    consumers : `list` [`str`]
        Labels of the tasks reading it, in pipeline definition order.
    is_prerequisite : `bool`
        Whether every task reading it reads it as a `PrerequisiteInput`.
    is_init : `bool`
        Whether it is an init-input/output (one dataset per run, no dimensions).
    """

    name: str
    dimensions: DimensionGroup
    storage_class: str
    is_calibration: bool = False
    producer: str | None = None
    consumers: list[str] = dataclasses.field(default_factory=list)
    is_prerequisite: bool = False
    is_init: bool = False

    def to_dataset_type(self) -> DatasetType:
        """The butler `DatasetType` of this node."""
        return DatasetType(self.name, self.dimensions, self.storage_class, is_calibration=self.is_calibration)

    def describe(self) -> str:
        """``name {dimensions} StorageClass``, for messages."""
        return f"{self.name} {_dims(self.dimensions)} {self.storage_class}"


@dataclasses.dataclass(frozen=True)
class _Use:
    """One connection of one task to a dataset type."""

    label: str
    connection_name: str
    connection: BaseConnection
    kind: str  # input, prerequisite, init_input, output, init_output

    @property
    def where(self) -> str:
        return f"{self.label}.{self.connection_name}"

    @property
    def is_output(self) -> bool:
        return self.kind in _OUTPUT_KINDS.values()


class PipelineGraph:
    """The validated graph of a pipeline's tasks and dataset types.

    Parameters
    ----------
    tasks : iterable of `TaskNode`
        The configured tasks, in definition order (used to break ties in the topological order).
    universe : `DimensionUniverse`
        The dimensions the connections' dimensions must belong to.
    description : `str`, optional
    instrument : `str`, optional
        The pipeline's instrument (dotted class path or name).

    Attributes
    ----------
    universe : `DimensionUniverse`
    description : `str`
    instrument : `str` or `None`
    graph : `networkx.DiGraph`
        Nodes ``("task", label)`` (attribute ``node``: `TaskNode`) and ``("dataset", name)`` (attribute
        ``node``: `DatasetTypeNode`); edges carry ``connection`` (the first connection name),
        ``connections`` (all of them) and ``kind`` (``input``, ``prerequisite``, ``init_input``,
        ``output``, ``init_output``, or ``provenance`` when a task reads another's metadata or log).
    tasks : `dict` [`str`, `TaskNode`]
        Tasks by label in topological order; ties are broken by definition order.
    dataset_types : `dict` [`str`, `DatasetTypeNode`]
        The dataset type of every connection.
    provenance_dataset_types : `dict` [`str`, `DatasetTypeNode`]
        ``{label}_metadata``, ``{label}_log`` (when the task's ``saveLogOutput``), ``{label}_config``
        per task, and ``packages``: written by the executor, not by connections.

    Raises
    ------
    PipelineDefinitionError
        If two tasks share a label, the graph has a cycle, two tasks write one dataset type, one dataset
        type has different storage classes or dimensions in different connections, a connection's
        dimensions are not in the universe, or a produced dataset type is read as a prerequisite.
    """

    def __init__(
        self,
        tasks: Iterable[TaskNode],
        universe: DimensionUniverse,
        *,
        description: str = "",
        instrument: str | None = None,
    ):
        self.universe = universe
        self.description = description
        self.instrument = instrument
        self.graph = nx.DiGraph()
        defined: dict[str, TaskNode] = {}
        for task in tasks:
            if task.label in defined:
                raise PipelineDefinitionError(f"two tasks have the label {task.label!r}; labels must be unique.")
            defined[task.label] = task
        uses: dict[str, list[_Use]] = {}
        for task in defined.values():
            self.graph.add_node(("task", task.label), node=task)
            for category, kind in {**_INPUT_KINDS, **_OUTPUT_KINDS}.items():
                for conn_name, connection in task.connections.connections_of(category).items():
                    uses.setdefault(connection.name, []).append(_Use(task.label, conn_name, connection, kind))
        self.dataset_types: dict[str, DatasetTypeNode] = {name: self._make_node(name, u) for name, u in uses.items()}
        self.provenance_dataset_types = self._make_provenance_nodes(defined.values())
        for name, node in self.dataset_types.items():
            self.graph.add_node(("dataset", name), node=node)
            for use in uses[name]:
                task_node, dataset_node = ("task", use.label), ("dataset", name)
                if use.is_output:
                    self._add_edge(task_node, dataset_node, use.connection_name, use.kind)
                else:
                    self._add_edge(dataset_node, task_node, use.connection_name, use.kind)
        self._link_provenance(uses)
        self._check_cycles()
        self.tasks: dict[str, TaskNode] = {label: defined[label] for label in self._task_order(list(defined))}

    # Construction -------------------------------------------------------------------------------------

    def _connection_dimensions(self, use: _Use) -> DimensionGroup:
        if not isinstance(use.connection, DimensionedConnection):
            return self.universe.empty
        try:
            return self.universe.conform(use.connection.dimensions)
        except DimensionNameError as err:
            raise PipelineDefinitionError(
                f"connection {use.where} (dataset type {use.connection.name!r}) has unknown dimensions: {err}"
            ) from None

    def _make_node(self, name: str, uses: list[_Use]) -> DatasetTypeNode:
        """Merge the connections to one dataset type into a node, checking they agree."""
        first = uses[0]
        node = DatasetTypeNode(
            name,
            self._connection_dimensions(first),
            first.connection.storageClass,
            is_calibration=getattr(first.connection, "isCalibration", False),
            is_init=first.kind.startswith("init"),
        )
        try:
            node.to_dataset_type()
        except DatasetTypeError as err:
            raise PipelineDefinitionError(f"connection {first.where}: {err}") from None
        for use in uses[1:]:
            other = (
                ("storage class", node.storage_class, use.connection.storageClass),
                ("dimensions", node.dimensions, self._connection_dimensions(use)),
                ("init-ness", node.is_init, use.kind.startswith("init")),
                ("isCalibration", node.is_calibration, getattr(use.connection, "isCalibration", False)),
            )
            for what, mine, theirs in other:
                if mine != theirs:
                    raise PipelineDefinitionError(
                        f"dataset type {name!r} has {what} {_show(mine)} in connection {first.where} but "
                        f"{_show(theirs)} in connection {use.where}. Make the connections agree, or rename one "
                        f"with `-c {use.label}:connections.{use.connection_name}=<other name>`."
                    )
        producers = [u for u in uses if u.is_output]
        if len(producers) > 1:
            raise PipelineDefinitionError(
                f"dataset type {name!r} is written by more than one task: "
                f"{' and '.join(u.where for u in producers)}. Each dataset type must have one producer; "
                "rename one output with `-c <label>:connections.<connection>=<other name>`."
            )
        node.producer = producers[0].label if producers else None
        readers = [u for u in uses if not u.is_output]
        node.consumers = list(dict.fromkeys(u.label for u in readers))
        node.is_prerequisite = bool(readers) and all(u.kind == "prerequisite" for u in readers)
        prerequisites = [u.where for u in readers if u.kind == "prerequisite"]
        if node.producer is not None and prerequisites:
            raise PipelineDefinitionError(
                f"dataset type {name!r} is written by task {producers[0].where} but read as a PrerequisiteInput "
                f"by {', '.join(prerequisites)}; prerequisites must exist before the pipeline runs. Make it a "
                "regular Input, or remove the producing task from the pipeline."
            )
        return node

    def _make_provenance_nodes(self, tasks: Iterable[TaskNode]) -> dict[str, DatasetTypeNode]:
        empty = self.universe.empty
        nodes: dict[str, DatasetTypeNode] = {}
        for task in tasks:
            nodes[task.metadata_dataset_type] = DatasetTypeNode(
                task.metadata_dataset_type, task.dimensions, METADATA_STORAGE_CLASS, producer=task.label
            )
            if getattr(task.config, "saveLogOutput", True):
                nodes[task.log_dataset_type] = DatasetTypeNode(
                    task.log_dataset_type, task.dimensions, LOG_STORAGE_CLASS, producer=task.label
                )
            nodes[task.config_dataset_type] = DatasetTypeNode(
                task.config_dataset_type, empty, CONFIG_STORAGE_CLASS, producer=task.label, is_init=True
            )
        nodes[PACKAGES_DATASET_TYPE] = DatasetTypeNode(PACKAGES_DATASET_TYPE, empty, PACKAGES_STORAGE_CLASS, is_init=True)
        return nodes

    def _link_provenance(self, uses: Mapping[str, list[_Use]]) -> None:
        """Check connections to provenance dataset types (e.g. a task reading another's metadata)."""
        for name in self.dataset_types.keys() & self.provenance_dataset_types.keys():
            node, provenance = self.dataset_types[name], self.provenance_dataset_types[name]
            writers = [u.where for u in uses[name] if u.is_output]
            if writers:
                raise PipelineDefinitionError(
                    f"connection {writers[0]} writes {name!r}, which is the provenance dataset type the executor "
                    f"writes for {'the run' if provenance.producer is None else f'task {provenance.producer!r}'}. "
                    "Rename the connection's dataset type."
                )
            if (node.dimensions, node.storage_class) != (provenance.dimensions, provenance.storage_class):
                raise PipelineDefinitionError(
                    f"connection {uses[name][0].where} reads {node.describe()}, but the provenance dataset type is "
                    f"{provenance.describe()}. Give the connection those dimensions and storage class."
                )
            node.producer = provenance.producer
            provenance.consumers = list(node.consumers)
            if node.producer is not None:
                self._add_edge(("task", node.producer), ("dataset", name), name, "provenance")

    def _add_edge(self, source: tuple[str, str], target: tuple[str, str], connection: str, kind: str) -> None:
        if self.graph.has_edge(source, target):
            self.graph.edges[source, target]["connections"].append(connection)
        else:
            self.graph.add_edge(source, target, connection=connection, connections=[connection], kind=kind)

    def _check_cycles(self) -> None:
        try:
            cycle = nx.find_cycle(self.graph)
        except nx.NetworkXNoCycle:
            return
        steps = [f"task {v!r}" if kind == "task" else f"dataset type {v!r}" for (kind, v), _ in cycle]
        steps.append(steps[0])
        raise PipelineDefinitionError(
            f"the pipeline has a cycle: {' -> '.join(steps)}. A task cannot (even indirectly) read its own "
            "outputs; rename a connection with `-c <label>:connections.<connection>=<other name>`."
        )

    def _task_order(self, labels: list[str]) -> list[str]:
        """Labels in topological order, ties broken by definition order."""
        index = {label: i for i, label in enumerate(labels)}
        task_graph = nx.DiGraph()
        task_graph.add_nodes_from(labels)
        for node in self.dataset_types.values():
            if node.producer is not None:
                task_graph.add_edges_from((node.producer, consumer) for consumer in node.consumers)
        return list(nx.lexicographical_topological_sort(task_graph, key=index.__getitem__))

    # Queries ------------------------------------------------------------------------------------------

    def _task(self, label: str) -> TaskNode:
        try:
            return self.tasks[label]
        except KeyError:
            raise PipelineDefinitionError(f"the pipeline has no task {label!r}. {did_you_mean(label, self.tasks)}") from None

    def _connections(self, label: str, *categories: str) -> dict[str, tuple[BaseConnection, DatasetTypeNode]]:
        connections = self._task(label).connections.connections_of(*categories)
        return {name: (conn, self.dataset_types[conn.name]) for name, conn in connections.items()}

    def inputs_of(self, label: str) -> dict[str, tuple[BaseConnection, DatasetTypeNode]]:
        """Regular and prerequisite inputs of a task: connection name -> (connection, dataset type node)."""
        return self._connections(label, "inputs", "prerequisiteInputs")

    def outputs_of(self, label: str) -> dict[str, tuple[BaseConnection, DatasetTypeNode]]:
        """Regular outputs of a task (not provenance): connection name -> (connection, dataset type node)."""
        return self._connections(label, "outputs")

    def init_inputs_of(self, label: str) -> dict[str, tuple[BaseConnection, DatasetTypeNode]]:
        """Init-inputs of a task: connection name -> (connection, dataset type node)."""
        return self._connections(label, "initInputs")

    def init_outputs_of(self, label: str) -> dict[str, tuple[BaseConnection, DatasetTypeNode]]:
        """Init-outputs of a task (not its config): connection name -> (connection, dataset type node)."""
        return self._connections(label, "initOutputs")

    def overall_inputs(self) -> dict[str, DatasetTypeNode]:
        """Dataset types read but not written by the pipeline (prerequisites and init-inputs included)."""
        return {name: node for name, node in self.dataset_types.items() if node.producer is None}

    def producer_of(self, dataset_type: str) -> str | None:
        """Label of the task writing a dataset type (provenance types included), or `None` for an input.

        Raises
        ------
        PipelineDefinitionError
            If the pipeline has no such dataset type.
        """
        node = self.dataset_types.get(dataset_type) or self.provenance_dataset_types.get(dataset_type)
        if node is None:
            known = list(self.dataset_types) + list(self.provenance_dataset_types)
            raise PipelineDefinitionError(
                f"the pipeline has no dataset type {dataset_type!r}. {did_you_mean(dataset_type, known)}"
            )
        return node.producer

    def downstream_labels(self, label: str) -> list[str]:
        """Labels of every task that depends, directly or not, on a task's outputs (topological order)."""
        self._task(label)
        descendants = nx.descendants(self.graph, ("task", label))
        return [other for other in self.tasks if ("task", other) in descendants]

    # Registry -----------------------------------------------------------------------------------------

    @staticmethod
    def _conflicts(registered: Mapping[str, DatasetType], nodes: Iterable[DatasetTypeNode]) -> list[str]:
        """Descriptions of the nodes whose registered definition differs."""
        problems = []
        for node in nodes:
            existing = registered.get(node.name)
            if existing is None:
                continue
            same = (existing.dimensions, existing.storage_class) == (node.dimensions, node.storage_class)
            if node.producer is not None:  # we would register it: the calibration flag must agree too
                same = same and existing.is_calibration == node.is_calibration
            if not same:
                problems.append(
                    f"{node.name!r} is registered as {_dims(existing.dimensions)} {existing.storage_class}"
                    f"{' (calibration)' if existing.is_calibration else ''} but the pipeline defines it as "
                    f"{_dims(node.dimensions)} {node.storage_class}{' (calibration)' if node.is_calibration else ''}"
                )
        return problems

    def check_registry(self, butler: Butler) -> None:
        """Check the pipeline's dataset types against a repository's registry.

        Parameters
        ----------
        butler : `Butler`

        Raises
        ------
        PipelineDefinitionError
            If a registered dataset type differs from the pipeline's definition (dimensions or storage
            class; both definitions are named), or an overall input is not registered.
        """
        registered = {dt.name: dt for dt in butler.registry.query_dataset_types()}
        problems = self._conflicts(registered, {**self.provenance_dataset_types, **self.dataset_types}.values())
        if problems:
            raise PipelineDefinitionError(
                f"the pipeline's dataset types conflict with {butler.config.root}: {'; '.join(problems)}. "
                "Rename the connections (`-c <label>:connections.<connection>=<name>`) or use another repository."
            )
        missing = sorted(name for name in self.overall_inputs() if name not in registered)
        if missing:
            raise PipelineDefinitionError(
                f"the pipeline's input dataset type(s) {', '.join(missing)} are not registered in "
                f"{butler.config.root}; ingest or register them first."
            )

    def register_dataset_types(self, butler: Butler, *, include_provenance: bool = True) -> list[str]:
        """Register the dataset types the pipeline writes (outputs, init-outputs and provenance).

        Parameters
        ----------
        butler : `Butler`
            A writeable butler.
        include_provenance : `bool`, optional
            Also register ``{label}_metadata``, ``{label}_log``, ``{label}_config`` and ``packages``.

        Returns
        -------
        names : `list` [`str`]
            The names that were not registered before, in registration order.

        Raises
        ------
        PipelineDefinitionError
            If one of them is registered with another definition (nothing is registered then).
        """
        nodes = [
            node for name, node in self.dataset_types.items()
            if node.producer is not None and name not in self.provenance_dataset_types
        ]
        if include_provenance:
            nodes += self.provenance_dataset_types.values()
        problems = self._conflicts({dt.name: dt for dt in butler.registry.query_dataset_types()}, nodes)
        if problems:
            raise PipelineDefinitionError(
                f"cannot register the pipeline's dataset types in {butler.config.root}: {'; '.join(problems)}."
            )
        return [node.name for node in nodes if butler.register_dataset_type(node.to_dataset_type())]

    # Display ------------------------------------------------------------------------------------------

    def to_dot(self) -> str:
        """The graph as Graphviz dot text: tasks as boxes, dataset types as ellipses.

        Prerequisite edges are dashed; init-input/output edges dotted.
        """
        lines = ["digraph pipeline {", "  rankdir=TB;", '  node [fontname="Helvetica", fontsize=10];']
        for label, task in self.tasks.items():
            text = f"{label}\\n{task.task_class_name}\\n{_dims(task.dimensions)}"
            style = 'shape=box, style="rounded,filled", fillcolor="#dbe9f6"'
            lines.append(f'  {_dot_id("task", label)} [{style}, label="{_dot_escape(text)}"];')
        for name, node in self.dataset_types.items():
            text = f"{name}\\n{_dims(node.dimensions)}\\n{node.storage_class}"
            lines.append(f'  {_dot_id("dataset", name)} [shape=ellipse, label="{_dot_escape(text)}"];')
        styles = {"prerequisite": " [style=dashed]", "init_input": " [style=dotted]", "init_output": " [style=dotted]"}
        for (skind, sname), (tkind, tname), kind in self.graph.edges(data="kind"):
            lines.append(f"  {_dot_id(skind, sname)} -> {_dot_id(tkind, tname)}{styles.get(kind, '')};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        """The graph as Mermaid ``flowchart TD`` text: tasks as rectangles, dataset types as stadiums.

        Prerequisite and init edges are dotted arrows.
        """
        ids = {node: f"{node[0][0]}{i}" for i, node in enumerate(self.graph.nodes)}
        lines = ["flowchart TD"]
        for label, task in self.tasks.items():
            text = f"<b>{label}</b><br/>{task.task_class_name}<br/>{_dims(task.dimensions)}"
            lines.append(f'    {ids["task", label]}["{_mermaid_escape(text)}"]')
        for name, node in self.dataset_types.items():
            text = f"{name}<br/>{_dims(node.dimensions)}<br/>{node.storage_class}"
            lines.append(f'    {ids["dataset", name]}(["{_mermaid_escape(text)}"])')
        for source, target, kind in self.graph.edges(data="kind"):
            arrow = "-.->" if kind in ("prerequisite", "init_input", "init_output") else "-->"
            lines.append(f"    {ids[source]} {arrow} {ids[target]}")
        lines.append("    classDef task fill:#dbe9f6,stroke:#345;")
        task_ids = ",".join(ids["task", label] for label in self.tasks)
        if task_ids:
            lines.append(f"    class {task_ids} task;")
        return "\n".join(lines) + "\n"

    def show(self) -> str:
        """Human-readable summary: per task, its class, dimensions, inputs and outputs."""
        lines = []
        if self.description:
            lines.append(f"Pipeline: {self.description.strip()}")
        if self.instrument:
            lines.append(f"Instrument: {self.instrument}")
        for label, task in self.tasks.items():
            lines.append(f"{label}: {task.task_class_name}")
            lines.append(f"  dimensions: {_dims(task.dimensions)}")
            sections = {
                "init inputs": self.init_inputs_of(label),
                "inputs": self._connections(label, "inputs"),
                "prerequisites": self._connections(label, "prerequisiteInputs"),
                "outputs": self.outputs_of(label),
                "init outputs": self.init_outputs_of(label),
            }
            for title, connections in sections.items():
                if not connections:
                    continue
                lines.append(f"  {title}:")
                for conn_name, (conn, node) in connections.items():
                    source = ""
                    if not title.endswith("outputs"):
                        source = f" (from {node.producer})" if node.producer else " (overall input)"
                    many = " [multiple]" if conn.multiple else ""
                    lines.append(f"    {conn_name}: {node.describe()}{many}{source}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"PipelineGraph({len(self.tasks)} tasks: {', '.join(self.tasks)}; {len(self.dataset_types)} dataset types)"


def _dotted_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _dims(group: DimensionGroup) -> str:
    return "{" + ", ".join(group.required) + "}"


def _show(value: Any) -> str:
    return _dims(value) if isinstance(value, DimensionGroup) else repr(value)


def _dot_escape(text: str) -> str:
    # keep the "\n" line breaks we insert; escape quotes
    return text.replace('"', '\\"')


def _dot_id(kind: str, name: str) -> str:
    return '"' + f"{kind}:{name}".replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mermaid_escape(text: str) -> str:
    return text.replace('"', "#quot;")
