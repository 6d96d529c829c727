"""Registering what quanta wrote, and the run-level provenance (configs, init-outputs, packages).

Only the main process of an execution calls these: workers write files and return manifests
(`QuantumResult`), and each manifest is registered here in one registry transaction.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from butler import Butler, DatasetRef, QuantumRecord
from butler.datastore import StoredFileInfo

from ..errors import ConfigMismatchError, QuantumExecutionError
from ..provenance import write_run_document
from ..quantum import Quantum
from ..reuse import associate_reused

if TYPE_CHECKING:
    from ..quantum_graph import QuantumGraph
    from .single_quantum import QuantumResult

__all__ = [
    "ConfigMismatchError",
    "init_input_infos",
    "init_input_refs",
    "package_versions",
    "quantum_record",
    "register_datasets",
    "register_quantum_result",
    "write_run_provenance",
]

#: Distributions whose versions are recorded in the ``packages`` dataset of every run.
PACKAGES = (
    "butler-pipelines",
    "numpy",
    "scipy",
    "astropy",
    "sqlalchemy",
    "pydantic",
    "networkx",
    "pyarrow",
    "lark",
    "pyyaml",
    "lsst-sphgeom",
)


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a run depends on (`PACKAGES`), by name.

    Returns
    -------
    versions : `dict` [`str`, `str`]
        ``{"python": "3.11.7", "numpy": "2.1.0", ...}``; packages that are not installed are left out.
    """
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def register_datasets(butler: Butler, refs: Sequence[DatasetRef], infos: Sequence[StoredFileInfo]) -> None:
    """Register datasets whose files (or inline bytes) were already written, in one transaction.

    Parameters
    ----------
    butler : `Butler`
    refs : sequence of `DatasetRef`
        The datasets, with the IDs and runs their files were written for.
    infos : sequence of `StoredFileInfo`
        Their datastore records, one per ref.

    Raises
    ------
    ButlerError
        If the registry refuses them (e.g. `DuplicateDatasetError`); nothing is registered then.
    """
    with butler.registry.transaction():
        butler.registry.import_datasets(list(refs))
        butler.registry.insert_datastore_records([info.to_record() for info in infos])


def register_quantum_result(butler: Butler, quantum: Quantum, result: QuantumResult) -> list[DatasetRef]:
    """Register every dataset a quantum wrote and its provenance, in one registry transaction (main process only).

    The provenance (`butler.QuantumRecord`: task class, config / code / package hashes, data ID, host,
    start and end time, status and error, the datasets it read and wrote) is written in the same
    transaction as the outputs, so a registered output always has its producing quantum.

    Parameters
    ----------
    butler : `Butler`
        A writeable butler of the repository the quantum wrote to.
    quantum : `Quantum`
        The quantum.
    result : `QuantumResult`
        Its manifest; ``result.written`` lists outputs, metadata and log.

    Returns
    -------
    refs : `list` [`DatasetRef`]
        The registered datasets.

    Raises
    ------
    QuantumExecutionError
        If the manifest names a dataset that is not an output of the quantum.
    ButlerError
        If the registry refuses the datasets (nothing is registered; the written files are deleted).
    """
    by_id = {ref.id: ref for ref in quantum.output_refs()}
    refs = []
    for info in result.written:
        ref = by_id.get(info.dataset_id)
        if ref is None:
            raise QuantumExecutionError(
                f"the result of quantum {quantum.task_label} {quantum.data_id} lists dataset {info.dataset_id}, "
                "which is not one of its outputs; nothing was registered."
            )
        refs.append(ref)
    record = quantum_record(quantum, result)
    try:
        with butler.registry.transaction():
            if refs:
                register_datasets(butler, refs, result.written)
            if record is not None:
                butler.registry.insert_quanta([record])
    except BaseException:
        butler.datastore.remove(result.written)
        raise
    return refs


def quantum_record(quantum: Quantum, result: QuantumResult) -> QuantumRecord | None:
    """The provenance record of an executed quantum (`None` for a quantum with no output refs, hence no run).

    Parameters
    ----------
    quantum : `Quantum`
        The quantum; every ref of its inputs is recorded as read (with its connection name).
    result : `QuantumResult`
        Its manifest: status, error, host, times, fingerprint and the datasets written.
    """
    run = next((ref.run for ref in quantum.output_refs()), None)
    if run is None:
        return None
    fingerprint = result.fingerprint
    return QuantumRecord(
        id=quantum.id,
        run=run,
        task_label=quantum.task_label,
        task_class=fingerprint.task_class if fingerprint is not None else "",
        data_id=dict(quantum.data_id.required),
        status=result.status,
        config_hash=fingerprint.config_hash if fingerprint is not None else None,
        code_hash=fingerprint.code_hash if fingerprint is not None else None,
        packages_hash=fingerprint.packages_hash if fingerprint is not None else None,
        host=result.host,
        start_time=result.start_time,
        end_time=result.end_time,
        error=result.error,
        inputs=tuple((ref.id, name) for name, refs in quantum.inputs.items() for ref in refs),
        outputs=tuple(info.dataset_id for info in result.written),
    )


def write_run_provenance(butler: Butler, qgraph: QuantumGraph) -> list[DatasetRef]:
    """Prepare the output run of a graph: register it and the dataset types, write configs and packages.

    On a first run, puts each task's frozen config (``{label}_config``), the init-outputs of its
    task, and the ``packages`` dataset, records the run-level provenance (`write_run_document`: the
    pipeline, input collections and data query) and associates the outputs of reused quanta
    (`associate_reused`).  Into an existing run (a resume, or ``--extend-run``), the
    stored configs and package versions are compared with the graph's instead, and nothing already
    there is written again.

    Parameters
    ----------
    butler : `Butler`
        A writeable butler.
    qgraph : `QuantumGraph`
        The graph about to be executed.

    Returns
    -------
    refs : `list` [`DatasetRef`]
        The datasets written now (empty when all existed).

    Raises
    ------
    ConfigMismatchError
        If the run already has a config of a task with other values (the message names the changed
        fields) or was made with other package versions.
    PipelineDefinitionError
        If a dataset type of the pipeline is registered with another definition.
    """
    registry = butler.registry
    run = qgraph.output_run
    registry.register_run(run)
    pipeline_graph = qgraph.pipeline_graph
    pipeline_graph.register_dataset_types(butler)
    wanted: list[tuple[DatasetRef, Any]] = []
    problems: list[str] = []
    produced: dict[uuid.UUID, Any] = {}  # init-outputs made now, for the init-inputs of later tasks
    for label, node in pipeline_graph.tasks.items():
        init_refs = qgraph.init_refs.get(label, {})
        config_ref = init_refs.get("config")
        if config_ref is not None:
            wanted.append((config_ref, node.config))
        init_outputs = {name: ref for name, ref in init_refs.items() if name != "config"}
        if init_outputs:
            init_inputs = {
                name: produced[ref.id] if ref.id in produced else butler.get(ref)
                for name, ref in init_input_refs(butler, qgraph, label).items()
            }
            task = node.make_task(initInputs=init_inputs) if init_inputs else node.make_task()
            objects = task.getInitOutputDatasets()
            for name, ref in init_outputs.items():
                if name not in objects:
                    raise QuantumExecutionError(
                        f"task {label!r} declares init-output {name!r} but getInitOutputDatasets() does not return it."
                    )
                wanted.append((ref, objects[name]))
                produced[ref.id] = objects[name]
    if qgraph.packages_ref is not None:
        wanted.append((qgraph.packages_ref, package_versions()))
    for ref, _ in wanted:
        butler.register_dataset_type(ref.dataset_type)
    todo: list[tuple[DatasetRef, Any]] = []
    for ref, obj in wanted:
        existing = registry.find_dataset(ref.dataset_type.name, ref.data_id, collections=[run])
        if existing is None:
            todo.append((ref, obj))
        else:
            problems += _compare(butler, existing, obj)
    if problems:
        raise ConfigMismatchError(
            f"output run {run!r} was made with another configuration: {'; '.join(problems)}. Write to a new "
            "output run (without --extend-run), or revert the changes."
        )
    write_run_document(butler, qgraph)
    associate_reused(butler, qgraph)
    if not todo:
        return []
    infos = []
    try:
        for ref, obj in todo:
            infos.append(butler.datastore.put(obj, ref, clobber=True))
        register_datasets(butler, [ref for ref, _ in todo], infos)
    except BaseException:
        butler.datastore.remove(infos)
        raise
    return [ref for ref, _ in todo]


def init_input_refs(butler: Butler, qgraph: QuantumGraph, label: str) -> dict[str, DatasetRef]:
    """The datasets of a task's init-input connections, by connection name.

    An init-input written by another task of the pipeline is that task's init-output in the output
    run; any other is found in the graph's input collections.

    Raises
    ------
    QuantumExecutionError
        If an init-input cannot be found.
    """
    pipeline_graph = qgraph.pipeline_graph
    refs: dict[str, DatasetRef] = {}
    for name, (_, node) in pipeline_graph.init_inputs_of(label).items():
        if node.producer is not None:
            found = [r for r in qgraph.init_refs.get(node.producer, {}).values() if r.dataset_type.name == node.name]
            ref = found[0] if found else None
        else:
            ref = butler.registry.find_dataset(node.name, None, collections=qgraph.input_collections)
        if ref is None:
            raise QuantumExecutionError(
                f"init-input {label}.{name} ({node.name!r}) is neither written by the pipeline nor in the input "
                f"collections {qgraph.input_collections}."
            )
        refs[name] = ref
    return refs


def init_input_infos(butler: Butler, qgraph: QuantumGraph) -> dict[str, dict[str, StoredFileInfo]]:
    """Datastore records of every task's init-inputs (label -> connection name -> record).

    Call after `write_run_provenance` (which writes the init-outputs other tasks read).
    """
    refs = {label: init_input_refs(butler, qgraph, label) for label in qgraph.pipeline_graph.tasks}
    ids = [ref.id for by_name in refs.values() for ref in by_name.values()]
    if not ids:
        return {}
    registry = butler.registry
    infos = {i: StoredFileInfo(**row) for i, row in registry.get_datastore_records(ids).items()}
    content = registry.get_inline_content([i for i, info in infos.items() if info.is_inline])
    infos = {i: dataclasses.replace(info, inline=content.get(i)) if info.is_inline else info for i, info in infos.items()}
    out: dict[str, dict[str, StoredFileInfo]] = {}
    for label, by_name in refs.items():
        for name, ref in by_name.items():
            if ref.id not in infos:
                raise QuantumExecutionError(f"init-input {label}.{name} ({ref.dataset_type.name!r}) has no datastore record.")
            out.setdefault(label, {})[name] = infos[ref.id]
    return out


def _compare(butler: Butler, existing: DatasetRef, obj: Any) -> list[str]:
    """Why an existing run-level dataset differs from what this run would write (empty if it does not)."""
    name = existing.dataset_type.name
    stored = butler.get(existing)
    if existing.dataset_type.storage_class == "Config":
        if type(stored) is not type(obj):
            return [f"{name!r} is a {type(stored).__name__}, the pipeline's is a {type(obj).__name__}"]
        changed = obj.changes_from(stored)
        if changed:
            return [f"{name!r} differs in field(s) {', '.join(changed)}"]
        return []
    if existing.dataset_type.storage_class == "Packages":
        changed = sorted(k for k in set(stored) & set(obj) if stored[k] != obj[k])
        if changed:
            return [f"package versions differ: {', '.join(f'{k} {stored[k]} -> {obj[k]}' for k in changed)}"]
        return []
    return [] if _same(stored, obj) else [f"init-output {name!r} differs from the stored one"]


def _same(a: Any, b: Any) -> bool:
    try:
        result = a == b
        return bool(result.all()) if hasattr(result, "all") else bool(result)
    except Exception:
        return False
