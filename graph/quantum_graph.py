"""`QuantumGraph`: every quantum of a pipeline run and their dependencies (a networkx DiGraph).

Built by `graph.builder.build_quantum_graph`; saved and loaded as versioned, compressed JSON (never
pickle) by `QuantumGraph.save` / `QuantumGraph.load`.  The graph carries the datastore records of its
overall inputs, so a worker can run a quantum from the graph alone, without the registry.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import gzip
import hashlib
import json
import os
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from butler import DataCoordinate, DatasetRef, DatasetType, DimensionUniverse
from butler.datasets import import_dotted
from butler.datastore import StoredFileInfo

from .config import Config
from .errors import GraphFileError, PipelineError
from .quantum import Quantum

if TYPE_CHECKING:
    from .pipeline_graph import PipelineGraph

__all__ = ["QuantumGraph", "encode_pipeline", "rebuild_pipeline"]

#: Name in the ``format`` field of a saved quantum graph.
FILE_FORMAT = "butler-pipelines-qgraph"
#: Version of the saved layout that `QuantumGraph.save` writes; `QuantumGraph.load` reads up to it.
FILE_VERSION = 1


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
    quanta : `dict` [`uuid.UUID`, `Quantum`]
        The quanta by ID.
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
        self.quanta: dict[uuid.UUID, Quantum] = {q.id: q for q in quanta}

    @functools.cached_property
    def _producer(self) -> dict[int, uuid.UUID]:
        """Dataset ID -> ID of the quantum that writes it, made on first use (like `graph`).

        Building and loading do not need it (at 201,000 quanta it has 600,000 entries).  Keyed by the
        IDs' integers, which hash much faster than UUID objects.
        """
        producer: dict[int, uuid.UUID] = {}
        for qid, quantum in self.quanta.items():
            for refs in quantum.outputs.values():
                for ref in refs:
                    producer[ref.id.int] = qid
            for ref in (quantum.metadata_ref, quantum.log_ref):
                if ref is not None:
                    producer[ref.id.int] = qid
        return producer

    @functools.cached_property
    def graph(self) -> nx.DiGraph:
        """The dependencies between the quanta, made on first use.

        Nodes are quantum IDs (with attribute ``quantum``); an edge goes from the quantum producing
        a dataset to each quantum consuming it.

        Building, saving and loading a graph do not need it; executing it and iterating over it do
        (the workers of a process pool do not).  At 201,000 quanta it is 800,000 dictionaries, 100 MB,
        and takes over a second to make.
        """
        producer = self._producer
        graph = nx.DiGraph()
        with paused_gc():
            edges = []
            for qid, quantum in self.quanta.items():
                for refs in quantum.inputs.values():
                    for ref in refs:
                        source = producer.get(ref.id.int)
                        if source is not None:
                            edges.append((source, qid))
            graph.add_nodes_from((qid, {"quantum": q}) for qid, q in self.quanta.items())
            graph.add_edges_from(edges)
        return graph

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
        qid = self._producer.get(dataset_id.int)
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

    # Persistence ------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the graph as gzip-compressed JSON (never pickle).

        The file holds ``{"format": "butler-pipelines-qgraph", "version": 1, "checksum":
        "sha256:<hex>", "payload": {...}}``; the checksum is the SHA-256 of the canonical JSON of the
        payload (sorted keys, no spaces), so `load` detects damaged or edited files.  The payload holds
        the pipeline (per task: label, class dotted path, full config and subtask retargets), the
        dimension universe's namespace and version, ``output_run``, ``input_collections``,
        ``metadata``, the dataset types, a table of every dataset ref (each once: ID, dataset type,
        run, data ID values in the type's ``data_coordinate_keys`` order), the quanta (ID, label, data
        ID values, inputs and outputs as connection -> indices into the dataset table, metadata and
        log refs), ``init_refs``, ``packages_ref`` and the datastore records.

        Parameters
        ----------
        path : `str` or `pathlib.Path`
            The file to write (conventionally ``*.qgraph``); written to a temporary name then renamed,
            so a reader never sees a partial file.

        Raises
        ------
        GraphFileError
            If ``metadata`` is not JSON-serialisable, or the file cannot be written.
        """
        with paused_gc():
            payload = _encode(self)
            try:
                body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
            except (TypeError, ValueError) as err:
                raise GraphFileError(
                    f"the quantum graph cannot be saved: its metadata is not JSON-serialisable ({err})."
                ) from None
            del payload
        checksum = "sha256:" + hashlib.sha256(body).hexdigest()
        data = gzip.compress(b"".join((_header(FILE_VERSION, checksum), body, b"}")), compresslevel=4, mtime=0)
        path = Path(path)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
            try:
                with os.fdopen(fd, "wb") as stream:
                    stream.write(data)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as err:
            raise GraphFileError(f"cannot write the quantum graph to {path}: {err.strerror or err}") from None

    @classmethod
    def load(cls, path: str | Path, *, universe: DimensionUniverse | None = None) -> QuantumGraph:
        """Read a graph written by `save`.

        Parameters
        ----------
        path : `str` or `pathlib.Path`
        universe : `DimensionUniverse`, optional
            The dimension universe of the repository the graph will run against (default: the one
            shipped in ``repo_template``); it must have the namespace and version the graph was
            built with.

        Returns
        -------
        graph : `QuantumGraph`
            Equal to the saved one: same quanta (IDs, data IDs, refs), edges, configs and records.
            The pipeline is rebuilt by importing each task class, so the task modules must be
            importable.

        Raises
        ------
        GraphFileError
            If the file cannot be read, is not gzip-compressed JSON, is not a quantum graph, was
            written by a newer version, is damaged or modified (checksum mismatch), was built with
            another dimension universe, or its tasks cannot be rebuilt.
        """
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise GraphFileError(f"cannot read the quantum graph {path}: {err.strerror or err}") from None
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise GraphFileError(f"{path} is not a saved quantum graph: it is not gzip-compressed.") from None
        try:
            with paused_gc():
                document = json.loads(data)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise GraphFileError(f"{path} is not a saved quantum graph: its content is not valid JSON (damaged?).") from None
        if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
            found = document.get("format") if isinstance(document, dict) else type(document).__name__
            raise GraphFileError(f"{path} is not a saved quantum graph (format {found!r}, expected {FILE_FORMAT!r}).")
        version = document.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise GraphFileError(f"{path} has an invalid format version {version!r}.")
        if version > FILE_VERSION:
            raise GraphFileError(
                f"{path} was written by a newer version of butler-pipelines (graph format version {version}; this "
                f"version reads up to {FILE_VERSION}). Upgrade, or rebuild the graph with this version."
            )
        checksum = document.get("checksum")
        header = _header(version, checksum) if isinstance(checksum, str) else None
        body: bytes | memoryview
        if header is not None and data.startswith(header) and data.endswith(b"}"):
            body = memoryview(data)[len(header) : -1]  # the payload bytes exactly as written (not copied)
        else:
            body = json.dumps(document.get("payload"), sort_keys=True, separators=(",", ":")).encode()
        if checksum != "sha256:" + hashlib.sha256(body).hexdigest():
            raise GraphFileError(
                f"{path} is damaged or modified: its checksum does not match its content. Rebuild the graph."
            )
        try:
            with paused_gc():
                return _decode(document["payload"], universe or DimensionUniverse.default(), path)
        except GraphFileError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
            raise GraphFileError(f"{path} is malformed: {type(err).__name__}: {err}") from None


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while building many small objects that survive.

    Building or loading a large graph allocates millions of objects that all survive; each automatic
    collection then walks them all again, which made building and loading ~1.5x slower.  Reference
    counting still frees everything as usual; the collector is re-enabled (if it was on) on exit.

    On exit, the objects made meanwhile are moved to the oldest generation (``gc.freeze()`` then
    ``gc.unfreeze()``, an O(1) splice of the collector's lists), unless something else froze objects
    (`gc.get_freeze_count`), whose freeze must stand.  Left in the youngest generation, they would all
    be walked by the first collection after the pause and again by the next middle-generation one: for
    the 3.2 million objects of a 201,000-quantum graph the two walks took 1.3 s, about 20 times as
    long as for a tenth of them.  They stay collectable: full collections examine them as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def _header(version: int, checksum: str) -> bytes:
    """The bytes of a saved graph before its payload."""
    return (
        b'{"format":' + json.dumps(FILE_FORMAT).encode() + b',"version":' + str(version).encode()
        + b',"checksum":' + json.dumps(checksum).encode() + b',"payload":'
    )


# Encoding ------------------------------------------------------------------------------------------


def _config_retargets(config: Config, default: Config | None, prefix: str = "") -> list[dict[str, str]]:
    """Subtask configs whose task or config class differs from a default-constructed config's."""
    out = []
    for name, value in config:
        if not isinstance(value, Config):
            continue
        reference = getattr(default, name, None) if default is not None else None
        path = f"{prefix}{name}"
        if (
            reference is None
            or type(reference) is not type(value)
            or (value.target is not None and value.target is not reference.target)
        ):
            out.append({"field": path, "target": _dotted(value.target) if value.target is not None else None, "config_class": _dotted(type(value))})
            reference = None
        out += _config_retargets(value, reference, f"{path}.")
    return out


def _dotted(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _data_id_values(data_id: DataCoordinate) -> list[Any]:
    """The values a data ID knows, in ``data_coordinate_keys`` order (required only, or all)."""
    return list(data_id.full.values()) if data_id.has_full() else list(data_id.required_values)


def encode_pipeline(pipeline_graph: PipelineGraph) -> dict[str, Any]:
    """The JSON-safe form of a configured pipeline (per task: label, class, full config, retargets); the inverse
    of `rebuild_pipeline`.  Saved in graph files and in the run provenance."""
    return {
        "description": pipeline_graph.description,
        "instrument": pipeline_graph.instrument,
        "tasks": [
            {
                "label": label,
                "class": task.task_class_name,
                "config": task.config.to_dict(),
                "retargets": _config_retargets(task.config, type(task.config)()),
            }
            for label, task in pipeline_graph.tasks.items()
        ],
    }


def _encode(graph: QuantumGraph) -> dict[str, Any]:
    """The JSON-safe payload of a graph (see `QuantumGraph.save`)."""
    pg = graph.pipeline_graph
    universe = pg.universe
    dataset_types: dict[str, DatasetType] = {}
    runs: dict[str, int] = {}
    table: list[list[Any]] = []
    index: dict[int, int] = {}  # keyed by the UUID's integer: hashing UUID objects is slow

    def ref_index(ref: DatasetRef) -> int:
        key = ref.id.int
        i = index.get(key)
        if i is None:
            i = index[key] = len(table)
            dt = ref.dataset_type
            if dt.name not in dataset_types:
                dataset_types[dt.name] = dt
            run = runs.get(ref.run)
            if run is None:
                run = runs[ref.run] = len(runs)
            table.append([ref.id.hex, dt.name, run, _data_id_values(ref.data_id)])
        return i

    quanta = []
    for q in graph.quanta.values():
        quanta.append(
            [
                q.id.hex,
                q.task_label,
                _data_id_values(q.data_id),
                {name: [ref_index(r) for r in refs] for name, refs in q.inputs.items()},
                {name: [ref_index(r) for r in refs] for name, refs in q.outputs.items()},
                ref_index(q.metadata_ref) if q.metadata_ref is not None else None,
                ref_index(q.log_ref) if q.log_ref is not None else None,
            ]
        )
    init_refs = {label: {k: ref_index(r) for k, r in refs.items()} for label, refs in graph.init_refs.items()}
    packages = ref_index(graph.packages_ref) if graph.packages_ref is not None else None
    return {
        "universe": {"namespace": universe.namespace, "version": universe.version},
        "pipeline": encode_pipeline(pg),
        "output_run": graph.output_run,
        "input_collections": list(graph.input_collections),
        "metadata": graph.metadata,
        "dataset_types": [dt.to_simple() for dt in dataset_types.values()],
        "runs": list(runs),
        "datasets": table,
        "quanta": quanta,
        "init_refs": init_refs,
        "packages_ref": packages,
        "datastore_records": [info.to_simple() for info in graph.datastore_records.values()],
    }


# Decoding ------------------------------------------------------------------------------------------


def _assign(config: Config, values: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Set the fields of ``config`` whose dumped value differs from ``values`` (recursively)."""
    for name, value in values.items():
        field = getattr(config, name)
        if isinstance(field, Config) and isinstance(value, Mapping):
            _assign(field, value, current.get(name, {}))
        elif current.get(name, object()) != value:
            setattr(config, name, value)


def _import_class(dotted: str, base: type) -> type:
    """Import a class named in a graph file, checking its base before anything of it is called.

    A file with a recomputed checksum could name any callable (``os.abort``); only subclasses of
    ``base`` are accepted.

    Raises
    ------
    ImportError
        If it cannot be imported.
    TypeError
        If it is not a subclass of ``base``.
    """
    cls = import_dotted(dotted)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{dotted!r} is not a {base.__name__} subclass")
    return cls


def rebuild_pipeline(simple: Mapping[str, Any], universe: DimensionUniverse, path: Path | str) -> PipelineGraph:
    """The configured pipeline that `encode_pipeline` wrote, with the same task classes and configs.

    Parameters
    ----------
    simple : `dict`
        The output of `encode_pipeline`.
    universe : `DimensionUniverse`
    path : `pathlib.Path` or `str`
        Where ``simple`` came from, for the error messages.

    Raises
    ------
    GraphFileError
        If a task class cannot be imported, its config cannot be rebuilt exactly, or the pipeline is invalid.
    """
    from .pipeline_graph import PipelineGraph, TaskNode
    from .task import PipelineTask, Task

    nodes = []
    for task in simple["tasks"]:
        label = task["label"]
        try:
            task_class = _import_class(task["class"], PipelineTask)
            config = task_class.ConfigClass()
            for retarget in sorted(task.get("retargets", []), key=lambda r: r["field"].count(".")):
                owner, _, name = retarget["field"].rpartition(".")
                parent = config
                for part in filter(None, owner.split(".")):
                    parent = getattr(parent, part)
                sub = getattr(parent, name)
                target = _import_class(retarget["target"], Task) if retarget.get("target") else None
                config_class = _import_class(retarget["config_class"], Config)
                if target is not None:
                    sub.retarget(target, config_class)
                else:
                    setattr(parent, name, config_class())
            _assign(config, task["config"], config.to_dict())
        except (ImportError, PipelineError, ValueError, TypeError, AttributeError) as err:
            raise GraphFileError(
                f"{path}: cannot rebuild task {label!r} ({task.get('class')}): {err}. The task's module must be importable."
            ) from None
        if config.to_dict() != task["config"]:
            differing = [k for k, v in config.to_dict().items() if task["config"].get(k) != v]
            raise GraphFileError(
                f"{path}: the config of task {label!r} cannot be rebuilt exactly (fields {differing} differ); has "
                f"{task['class']} changed since the graph was built?"
            )
        try:
            nodes.append(TaskNode.from_config(label, task_class, config, universe))
        except PipelineError as err:
            raise GraphFileError(f"{path}: cannot rebuild task {label!r}: {err}") from None
    try:
        return PipelineGraph(nodes, universe, description=simple.get("description", ""), instrument=simple.get("instrument"))
    except PipelineError as err:
        raise GraphFileError(f"{path}: cannot rebuild the pipeline: {err}") from None


def _decode(payload: Mapping[str, Any], universe: DimensionUniverse, path: Path) -> QuantumGraph:
    saved = payload["universe"]
    if (saved["namespace"], saved["version"]) != (universe.namespace, universe.version):
        raise GraphFileError(
            f"{path} was built with dimension universe {saved['namespace']} v{saved['version']}, but this repository "
            f"uses {universe.namespace} v{universe.version}; rebuild the graph against this repository."
        )
    pipeline_graph = rebuild_pipeline(payload["pipeline"], universe, path)
    dataset_types = {s["name"]: DatasetType.from_simple(s, universe) for s in payload["dataset_types"]}
    groups = {
        name: (dt, dt.dimensions, (len(dt.dimensions.required), len(dt.dimensions.names)))
        for name, dt in dataset_types.items()
    }
    runs = payload["runs"]
    UUID = uuid.UUID
    refs: list[DatasetRef] = []
    append = refs.append
    for hex_id, type_name, run, values in payload["datasets"]:
        dt, group, sizes = groups[type_name]
        if len(values) not in sizes:
            raise GraphFileError(f"{path} is malformed: data ID values {values} do not fit {group}.")
        append(DatasetRef(dt, DataCoordinate(group, tuple(values)), runs[run], id=UUID(hex_id)))
    task_groups = {label: task.dimensions for label, task in pipeline_graph.tasks.items()}
    quanta = []
    for hex_id, label, values, inputs, outputs, metadata_ref, log_ref in payload["quanta"]:
        quanta.append(
            Quantum(
                id=UUID(hex_id),
                task_label=label,
                data_id=DataCoordinate(task_groups[label], tuple(values)),
                inputs={name: [refs[i] for i in indices] for name, indices in inputs.items()},
                outputs={name: [refs[i] for i in indices] for name, indices in outputs.items()},
                metadata_ref=refs[metadata_ref] if metadata_ref is not None else None,
                log_ref=refs[log_ref] if log_ref is not None else None,
            )
        )
    records = {}
    for simple in payload["datastore_records"]:
        info = StoredFileInfo.from_simple(simple)
        records[info.dataset_id] = info
    packages = payload.get("packages_ref")
    return QuantumGraph(
        pipeline_graph,
        quanta,
        output_run=payload["output_run"],
        input_collections=payload["input_collections"],
        datastore_records=records,
        init_refs={label: {k: refs[i] for k, i in items.items()} for label, items in payload["init_refs"].items()},
        packages_ref=refs[packages] if packages is not None else None,
        metadata=payload.get("metadata", {}),
    )
