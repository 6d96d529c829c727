"""Export datasets with their files to a directory, and import such a directory into a repository.

An export directory holds ``export.yaml`` (the manifest: dimension records, dataset types,
collections and datasets with their datastore records) and the datasets' files at their paths
relative to the source repository's root.  `import_datasets` re-creates all of it in another
repository with the same dimension universe, keeping the dataset IDs, in one registry transaction:
on any failure the target repository is left exactly as it was.

Manifest layout (format version 1)::

    format_version: 1
    universe: {namespace: butler, version: 1}
    dimension_records:                 # universe (dependency) order
      - {element: instrument, records: [{name: HSC, ...}, ...]}
    dataset_types: [{name: calexp, dimensions: [...], storage_class: ..., is_calibration: false}]
    collections:                       # RUN, TAGGED, CALIBRATION, then CHAINED (children before parents)
      - {name: run1, type: RUN, doc: null}
      - {name: best, type: TAGGED, doc: null, datasets: [<uuid>, ...]}
      - {name: calib, type: CALIBRATION, doc: null,
         certifications: [{dataset: <uuid>, timespan: [<begin TAI ns or null>, <end TAI ns or null>]}, ...]}
      - {name: all, type: CHAINED, doc: null, children: [best, calib, run1]}
    datasets:
      - {id: <uuid>, dataset_type: calexp, run: run1, data_id: {instrument: HSC, ...},
         path: run1/calexp/..., formatter: ..., storage_class: ..., checksum: "sha256:...",
         file_size: 1234}
    quanta:                            # provenance of the exported runs (QuantumRecord.to_simple)
      - {id: <uuid>, run: run1, task_label: calibrate, task_class: ..., data_id: {...}, status: succeeded,
         config_hash: ..., code_hash: ..., packages_hash: ..., host: ..., start_time: ..., end_time: ...,
         error: null, inputs: [[<dataset uuid>, <connection>], ...], outputs: [<exported dataset uuid>, ...]}
    run_provenance: [{run: run1, content: {pipeline: ..., input_collections: [...], ...}}]

The ``quanta`` and ``run_provenance`` sections are optional (manifests written before provenance was
recorded have neither).  A quantum's ``outputs`` list only the datasets the export holds.
"""

from __future__ import annotations

import logging
import os
import hashlib
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ._butler import Butler
from .datasets import DatasetRef, DatasetType
from .datastore import INLINE_PATH, FileDatastore, StoredFileInfo
from .dimensions import DataCoordinate, DimensionRecord, DimensionUniverse
from .errors import (
    ButlerError,
    ConfigError,
    ConflictingDefinitionError,
    CorruptDatasetError,
    DatasetNotFoundError,
)
from .registry import CollectionType, QuantumRecord, Registry
from .registry._collections import CollectionArg, CollectionRecord
from .timespan import Timespan

__all__ = ["EXPORT_FORMAT_VERSION", "MANIFEST_NAME", "export_datasets", "import_datasets"]

_LOG = logging.getLogger("butler.transfers")

#: Version of the manifest layout; `import_datasets` refuses any other.
EXPORT_FORMAT_VERSION = 1
#: Name of the manifest file inside an export directory.
MANIFEST_NAME = "export.yaml"
#: Folder (inside an export directory) for files the source repository only referred to by absolute path.
_DIRECT_DIR = "direct"
_INLINE_DIR = "inline"  # registry-stored datasets, written out as files
_PATTERN_CHARS = "*?["


# Export ---------------------------------------------------------------------------------------------------


@dataclass
class _ExportPlan:
    """Everything an export writes, gathered before anything is written."""

    refs: list[DatasetRef]
    infos: dict[uuid.UUID, StoredFileInfo]
    records: list[DimensionRecord]
    dataset_types: list[DatasetType]
    collections: list[dict[str, Any]]
    paths: dict[uuid.UUID, str] = field(default_factory=dict)
    quanta: list[QuantumRecord] = field(default_factory=list)
    run_provenance: dict[str, dict[str, Any]] = field(default_factory=dict)


def export_datasets(
    butler: Butler,
    directory: str | Path,
    *,
    collections: CollectionArg = None,
    dataset_types: Iterable[str] | str | None = None,
    where: str = "",
    bind: Mapping[str, Any] | None = None,
) -> int:
    """Export datasets, their files, dimension records and collections to a new directory.

    Parameters
    ----------
    butler : `Butler`
        The source repository.
    directory : `str` or `pathlib.Path`
        Where to write; created if absent, and it must be empty if it exists.
    collections : `str` or sequence of `str`, optional
        Collections to export datasets from (glob patterns allowed).  Default: the Butler's
        collections, or every RUN collection when it has none.  When given explicitly, the TAGGED,
        CALIBRATION and CHAINED collections among them (and inside the chains) are exported too.
    dataset_types : `str` or iterable of `str`, optional
        Names or glob patterns of the dataset types to export (default: all registered types).
    where : `str`, optional
        A where-expression selecting the datasets (``"visit IN (1..2) AND band = 'r'"``).
    bind : `dict`, optional
        Values of bind names in ``where``.

    Returns
    -------
    n_datasets : `int`
        Number of datasets exported.

    Raises
    ------
    ConfigError
        If ``directory`` is a file or a non-empty directory.
    DatasetNotFoundError
        If a selected dataset has no file in the datastore.
    MissingDatasetTypeError, MissingCollectionError, ExpressionSyntaxError, InvalidQueryError
        On bad selections.  Nothing is written in any of these cases.

    Notes
    -----
    Each file is copied to ``directory/<its path relative to the source root>``; files the source
    only refers to by absolute path (ingested with ``transfer="direct"``) go to
    ``directory/direct/<id>_<name>``.  The dimension records exported are those of every element of
    each dataset's data ID (implied ones included) and every record those depend on, so an import
    never lacks a referenced record.  RUN collections holding exported datasets are always exported;
    TAGGED collections (with their exported members), CALIBRATION collections (with the validity
    ranges of their exported members) and CHAINED collections (with their children) only when
    ``collections`` is given, and a chain only if all of its children are exported.
    """
    root = Path(directory).expanduser()
    _check_export_directory(root)
    explicit = collections is not None
    search = _export_search(butler, collections)
    plan = _plan_export(butler, search, explicit, dataset_types, where, bind)
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        _copy_files(butler, plan, root)
        _write_manifest(root / MANIFEST_NAME, _manifest(butler.dimensions, plan))
    except BaseException:
        _clean_export(root, created)
        raise
    _LOG.info("exported %d dataset(s) to %s", len(plan.refs), root)
    return len(plan.refs)


def _check_export_directory(root: Path) -> None:
    """Raise `ConfigError` unless ``root`` is absent or an empty directory."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"cannot export to {root}: it is a file; choose a new or empty directory.")
    if root.is_dir() and any(root.iterdir()):
        raise ConfigError(f"cannot export to {root}: the directory is not empty; choose a new or empty directory.")


def _clean_export(root: Path, created: bool) -> None:
    """Remove what a failed export wrote (the directory itself if the export created it)."""
    if created:
        shutil.rmtree(root, ignore_errors=True)
        return
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _export_search(butler: Butler, collections: CollectionArg) -> list[str]:
    """The collections to select datasets from."""
    if collections is not None:
        return [collections] if isinstance(collections, str) else list(collections)
    if butler.collections:
        return list(butler.collections)
    return [r.name for r in butler.registry.query_collections("*", types=[CollectionType.RUN])]


def _select_dataset_types(registry: Registry, dataset_types: Iterable[str] | str | None) -> list[DatasetType]:
    """Registered dataset types by name or glob pattern (all of them for `None`)."""
    if dataset_types is None:
        return registry.query_dataset_types("*")
    names = [dataset_types] if isinstance(dataset_types, str) else list(dataset_types)
    out: dict[str, DatasetType] = {}
    for name in names:
        if any(c in name for c in _PATTERN_CHARS):
            out.update((dt.name, dt) for dt in registry.query_dataset_types(name))
        else:
            dt = registry.get_dataset_type(name)  # raises MissingDatasetTypeError with suggestions
            out[dt.name] = dt
    return [out[n] for n in sorted(out)]


def _plan_export(
    butler: Butler,
    search: list[str],
    explicit: bool,
    dataset_types: Iterable[str] | str | None,
    where: str,
    bind: Mapping[str, Any] | None,
) -> _ExportPlan:
    """Query everything the export needs, without writing anything."""
    registry = butler.registry
    types = _select_dataset_types(registry, dataset_types)
    refs = _query_refs(butler, types, search, where, bind)
    infos = _stored_infos(registry, refs)
    exported_types = {r.dataset_type.name for r in refs}
    collections = _export_collections(butler, refs, search, types, where, bind) if explicit else []
    runs = sorted({r.run for r in refs})
    run_docs = {name: registry.get_collection(name).doc for name in runs}
    collections = [{"name": n, "type": "RUN", "doc": run_docs[n]} for n in runs] + collections
    plan = _ExportPlan(
        refs=refs,
        infos=infos,
        records=_needed_records(registry, refs),
        dataset_types=[dt for dt in types if dt.name in exported_types],
        collections=collections,
    )
    plan.paths = {ref.id: _export_path(infos[ref.id]) for ref in refs}
    exported_ids = {ref.id for ref in refs}
    plan.quanta = [
        replace(q, outputs=tuple(i for i in q.outputs if i in exported_ids)) for q in registry.query_quanta(runs)
    ] if runs else []
    plan.run_provenance = {run: doc for run in runs if (doc := registry.get_run_provenance(run)) is not None}
    return plan


def _query_refs(
    butler: Butler, types: Sequence[DatasetType], search: list[str], where: str, bind: Mapping[str, Any] | None
) -> list[DatasetRef]:
    """The datasets of the given types in the collections that match ``where``, each once."""
    if not search:
        return []
    found: dict[uuid.UUID, DatasetRef] = {}
    for dt in types:
        for ref in butler.query_datasets(dt, search, where=where, bind=bind, find_first=False, explain=False):
            found.setdefault(ref.id, ref)
    return list(found.values())


def _stored_infos(registry: Registry, refs: Sequence[DatasetRef]) -> dict[uuid.UUID, StoredFileInfo]:
    """The datastore records of the datasets; raise `DatasetNotFoundError` if one has none."""
    rows = registry.get_datastore_records([r.id for r in refs])
    missing = [r for r in refs if r.id not in rows]
    if missing:
        first = missing[0]
        raise DatasetNotFoundError(
            f"{len(missing)} selected dataset(s) have no file in the datastore, e.g. {first.dataset_type.name} "
            f"{first.data_id} in run {first.run!r} ({first.id}); nothing was exported. Run `butler verify` to list "
            "them, or narrow the selection."
        )
    return {i: StoredFileInfo(**row) for i, row in rows.items()}


def _export_path(info: StoredFileInfo) -> str:
    """The POSIX path of a dataset's file inside the export directory."""
    if info.is_inline:  # registry-stored bytes become a file of the export
        return f"{_INLINE_DIR}/{info.dataset_id.hex}"
    if info.is_external:
        return f"{_DIRECT_DIR}/{info.dataset_id.hex}_{PurePosixPath(info.path).name}"
    return info.path


def _needed_records(registry: Registry, refs: Sequence[DatasetRef]) -> list[DimensionRecord]:
    """The dimension records of every element of the datasets' data IDs and all they depend on.

    Returned in universe (dependency) order, then by key.
    """
    by_group: dict[Any, list[DataCoordinate]] = {}
    for ref in refs:
        by_group.setdefault(ref.dataset_type.dimensions, []).append(ref.data_id)
    found: dict[tuple[str, tuple], DimensionRecord] = {}
    todo: list[DimensionRecord] = []
    for data_ids in by_group.values():
        for data_id in registry.expand_data_ids(list(dict.fromkeys(data_ids))):
            todo += [r for r in data_id.records.values() if r is not None]
    while todo:
        record = todo.pop()
        key = (record.element.name, record.key_tuple())
        if key in found:
            continue
        found[key] = record
        todo += _dependencies(registry, record)
    universe = registry.universe
    order = {name: i for i, name in enumerate(universe.elements)}
    return sorted(found.values(), key=lambda r: (order[r.element.name], tuple(map(str, r.key_tuple()))))


def _dependencies(registry: Registry, record: DimensionRecord) -> list[DimensionRecord]:
    """The records of the dimensions a record requires or implies (other than its own)."""
    element = record.element
    out = []
    for dim in element.required + element.implied:
        if dim == element.name:
            continue
        target = registry.universe[dim]
        key = {d: record.get(d) for d in target.required}
        if any(v is None for v in key.values()):
            continue  # an implied value left empty
        dep = registry.get_dimension_record(dim, key)
        if dep is None:
            raise ButlerError(f"the registry lacks the {dim} record {key} that {record!r} refers to; it is damaged.")
        out.append(dep)
    return out


def _export_collections(
    butler: Butler,
    refs: Sequence[DatasetRef],
    search: list[str],
    types: Sequence[DatasetType],
    where: str,
    bind: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """Manifest entries of the TAGGED and CHAINED collections named (or reached through chains)."""
    registry = butler.registry
    named = _named_collections(registry, search)
    runs = {r.run for r in refs}
    exported_ids = {r.id for r in refs}
    tagged = [c for c in named if c.type is CollectionType.TAGGED]
    calibrations = [c for c in named if c.type is CollectionType.CALIBRATION]
    chains = [c for c in named if c.type is CollectionType.CHAINED]
    out = []
    for record in tagged:
        members = _tagged_members(butler, record.name, types, where, bind) & exported_ids
        ids = sorted(str(i) for i in members)
        out.append({"name": record.name, "type": "TAGGED", "doc": record.doc, "datasets": ids})
    for record in calibrations:
        certifications = [
            {"dataset": str(a.ref.id), "timespan": a.timespan.to_simple()}
            for dt in types
            if dt.is_calibration
            for a in registry.query_dataset_associations(dt.name, [record.name], where=where, bind=bind)
            if a.ref.id in exported_ids and a.timespan is not None
        ]
        out.append({"name": record.name, "type": "CALIBRATION", "doc": record.doc, "certifications": certifications})
    available = runs | {c.name for c in tagged} | {c.name for c in calibrations}
    for record in _chains_children_first(registry, chains):
        children = list(registry.get_collection_chain(record.name))
        lacking = [c for c in children if c not in available]
        if lacking:
            _LOG.warning(
                "not exporting chained collection %r: its children %s are not exported (no selected datasets, or "
                "of an unsupported type).", record.name, lacking,
            )
            continue
        available.add(record.name)
        out.append({"name": record.name, "type": "CHAINED", "doc": record.doc, "children": children})
    return out


def _named_collections(registry: Registry, search: list[str]) -> list[CollectionRecord]:
    """The collections named in ``search`` (patterns expanded) and, recursively, inside named chains."""
    out: dict[str, CollectionRecord] = {}
    todo: list[CollectionRecord] = []
    for name in search:
        if any(c in name for c in _PATTERN_CHARS):
            todo += registry.query_collections(name)
        else:
            todo.append(registry.get_collection(name))
    while todo:
        record = todo.pop()
        if record.name in out:
            continue
        out[record.name] = record
        if record.type is CollectionType.CHAINED:
            todo += [registry.get_collection(c) for c in registry.get_collection_chain(record.name)]
    return sorted(out.values(), key=lambda r: r.name)


def _chains_children_first(registry: Registry, chains: Sequence[CollectionRecord]) -> list[CollectionRecord]:
    """CHAINED collections ordered so that a chain comes after the chains it contains."""
    names = {c.name: c for c in chains}
    ordered: list[CollectionRecord] = []
    done: set[str] = set()

    def visit(record: CollectionRecord) -> None:
        if record.name in done:
            return
        done.add(record.name)
        for child in registry.get_collection_chain(record.name):
            if child in names:
                visit(names[child])
        ordered.append(record)

    for record in chains:
        visit(record)
    return ordered


def _tagged_members(
    butler: Butler, tagged: str, types: Sequence[DatasetType], where: str, bind: Mapping[str, Any] | None
) -> set[uuid.UUID]:
    """IDs of the datasets of a TAGGED collection that match the selection."""
    ids: set[uuid.UUID] = set()
    for dt in types:
        refs = butler.query_datasets(dt, [tagged], where=where, bind=bind, find_first=False, explain=False)
        ids.update(r.id for r in refs)
    return ids


def _copy_files(butler: Butler, plan: _ExportPlan, root: Path) -> None:
    """Copy every dataset's file (or registry-stored bytes) to its export path."""
    datastore = butler.datastore
    inline = butler.registry.get_inline_content([i for i, info in plan.infos.items() if info.is_inline])
    for ref in plan.refs:
        target = root / plan.paths[ref.id]
        target.parent.mkdir(parents=True, exist_ok=True)
        if ref.id in inline:
            target.write_bytes(inline[ref.id])
            continue
        source = datastore.abspath(plan.infos[ref.id])
        try:
            shutil.copyfile(source, target)
        except FileNotFoundError:
            raise CorruptDatasetError(
                f"file {source} of dataset {ref.dataset_type.name} {ref.data_id} ({ref.id}) is missing; nothing "
                "was exported. `butler verify` lists such datasets."
            ) from None


def _manifest(universe: DimensionUniverse, plan: _ExportPlan) -> dict[str, Any]:
    """The manifest of an export, as plain YAML-safe values."""
    by_element: dict[str, list[dict[str, Any]]] = {}
    for record in plan.records:
        by_element.setdefault(record.element.name, []).append(record.to_simple())
    datasets = []
    for ref in plan.refs:
        info = plan.infos[ref.id]
        datasets.append({
            "id": str(ref.id),
            "dataset_type": ref.dataset_type.name,
            "run": ref.run,
            "data_id": dict(ref.data_id.required),
            "path": plan.paths[ref.id],
            "formatter": info.formatter,
            "storage_class": info.storage_class,
            "checksum": info.checksum,
            "file_size": info.file_size,
            "inline": info.is_inline,
        })
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "universe": {"namespace": universe.namespace, "version": universe.version},
        "dimension_records": [{"element": name, "records": recs} for name, recs in by_element.items()],
        "dataset_types": [dt.to_simple() for dt in plan.dataset_types],
        "collections": plan.collections,
        "datasets": datasets,
        "quanta": [q.to_simple() for q in plan.quanta],
        "run_provenance": [{"run": run, "content": doc} for run, doc in plan.run_provenance.items()],
    }


def _write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write the manifest with `yaml.safe_dump`, through a temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as stream:
        yaml.safe_dump(manifest, stream, sort_keys=False)
    os.replace(tmp, path)


# Import ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImportedDataset:
    """One dataset of a manifest: its ref and its file's record in the export."""

    ref: DatasetRef
    source: Path
    formatter: str
    storage_class: str
    checksum: str | None
    file_size: int
    inline: bool = False


@dataclass
class _Manifest:
    """A parsed and validated manifest."""

    records: list[DimensionRecord]
    dataset_types: list[DatasetType]
    runs: list[tuple[str, str | None]]
    tagged: list[tuple[str, str | None, list[uuid.UUID]]]
    calibrations: list[tuple[str, str | None, list[tuple[uuid.UUID, Timespan]]]]
    chains: list[tuple[str, str | None, list[str]]]
    datasets: list[_ImportedDataset]
    quanta: list[QuantumRecord] = field(default_factory=list)
    run_provenance: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def import_datasets(butler: Butler, directory: str | Path, *, transfer: str = "copy") -> int:
    """Import an export directory (see `export_datasets`) into a repository, keeping the dataset IDs.

    Parameters
    ----------
    butler : `Butler`
        The target repository; its dimension universe must be the export's.
    directory : `str` or `pathlib.Path`
        The export directory, holding ``export.yaml``.
    transfer : `str`, optional
        How files enter the datastore: ``copy`` (default), ``move`` (sources deleted only after
        everything succeeded), ``hardlink``, ``symlink``, ``direct`` or ``auto``.

    Returns
    -------
    n_datasets : `int`
        Number of datasets imported.

    Raises
    ------
    ButlerError
        If ``directory`` holds no ``export.yaml``.
    ConfigError
        If the manifest is malformed, of an unknown format version, or made with another dimension
        universe.
    ConflictingDefinitionError
        If a dimension record, dataset type or collection exists in the target with another definition.
    DuplicateDatasetError
        If a dataset (same ID, or same type and data ID in its run) is already in the target, e.g.
        when the directory was already imported.
    CorruptDatasetError
        If a file's size or checksum differs from the manifest's.

    Notes
    -----
    Everything happens in one registry transaction; on any error it is rolled back and every file
    the import wrote into the datastore is removed, so the target is left exactly as it was.
    """
    root = Path(directory).expanduser()
    manifest = _parse_manifest(_read_manifest(root), root, butler.dimensions)
    if transfer == "move":  # sources are deleted only after the commit, so a failure keeps them
        ingest_mode = "copy"
    else:
        ingest_mode = transfer
    written: list[StoredFileInfo] = []
    try:
        with butler.registry.transaction():
            _import_all(butler, manifest, ingest_mode, written)
    except BaseException:
        butler.datastore.remove(written)
        raise
    if transfer == "move":
        for dataset in manifest.datasets:
            dataset.source.unlink(missing_ok=True)
    _LOG.info("imported %d dataset(s) from %s", len(manifest.datasets), root)
    return len(manifest.datasets)


def _read_manifest(root: Path) -> Any:
    """Load ``export.yaml`` with `yaml.safe_load`."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ButlerError(
            f"{root} is not an export directory: it has no {MANIFEST_NAME}. Give a directory written by "
            "`butler export` (Butler.export)."
        )
    try:
        with open(path) as stream:
            return yaml.safe_load(stream)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None


def _parse_manifest(raw: Any, root: Path, universe: DimensionUniverse) -> _Manifest:
    """Validate a loaded manifest and turn it into records, dataset types, refs and collections."""
    where = root / MANIFEST_NAME
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} is not an export manifest (expected a mapping at the top level).")
    version = raw.get("format_version")
    if version != EXPORT_FORMAT_VERSION:
        raise ConfigError(
            f"{where} has export format version {version!r}; this butler reads version {EXPORT_FORMAT_VERSION}. "
            "Re-export with a matching butler version."
        )
    _check_universe(raw.get("universe"), universe, where)
    try:
        return _build_manifest(raw, root, universe)
    except ButlerError as err:
        raise ConfigError(f"{where} is malformed: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{where} is malformed: {type(err).__name__}: {err}") from None


def _check_universe(given: Any, universe: DimensionUniverse, where: Path) -> None:
    """Raise `ConfigError` unless the manifest's universe is the repository's."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"{where} does not say which dimension universe it was made with.")
    if given.get("namespace") != universe.namespace or given.get("version") != universe.version:
        raise ConfigError(
            f"{where} was exported from dimension universe {given.get('namespace')} v{given.get('version')}, "
            f"but this repository uses {universe.namespace} v{universe.version}; its records and data IDs cannot be "
            "imported here. Import into a repository with the same dimensions.yaml."
        )


def _build_manifest(raw: Mapping[str, Any], root: Path, universe: DimensionUniverse) -> _Manifest:
    """Turn the sections of a loaded manifest into records, dataset types, collections and refs."""
    records = [
        DimensionRecord.from_simple(universe[block["element"]], simple)
        for block in raw.get("dimension_records") or []
        for simple in block["records"] or []
    ]
    order = {name: i for i, name in enumerate(universe.elements)}
    records.sort(key=lambda r: order[r.element.name])  # stable: keeps the manifest's order per element
    types = {d["name"]: DatasetType.from_simple(d, universe) for d in raw.get("dataset_types") or []}
    collections = list(raw.get("collections") or [])
    datasets = [_parse_dataset(d, root, types, universe) for d in raw.get("datasets") or []]
    runs = {c["name"]: c.get("doc") for c in collections if c["type"] == "RUN"}
    for dataset in datasets:  # a run holding datasets is registered even if the manifest omits it
        runs.setdefault(dataset.ref.run, None)
    return _Manifest(
        records=records,
        dataset_types=list(types.values()),
        runs=list(runs.items()),
        tagged=[
            (c["name"], c.get("doc"), [uuid.UUID(str(i)) for i in c.get("datasets") or []])
            for c in collections if c["type"] == "TAGGED"
        ],
        calibrations=[
            (
                c["name"],
                c.get("doc"),
                [(uuid.UUID(str(e["dataset"])), Timespan.from_simple(e["timespan"])) for e in c.get("certifications") or []],
            )
            for c in collections if c["type"] == "CALIBRATION"
        ],
        chains=[
            (c["name"], c.get("doc"), [str(x) for x in c["children"]])
            for c in collections if c["type"] == "CHAINED"
        ],
        datasets=datasets,
        quanta=[QuantumRecord.from_simple(q) for q in raw.get("quanta") or []],
        run_provenance=[(str(e["run"]), dict(e["content"])) for e in raw.get("run_provenance") or []],
    )


def _parse_dataset(
    entry: Mapping[str, Any], root: Path, types: Mapping[str, DatasetType], universe: DimensionUniverse
) -> _ImportedDataset:
    """One ``datasets`` entry of a manifest, with its file checked to lie inside the export."""
    name = entry["dataset_type"]
    if name not in types:
        raise ValueError(f"dataset {entry['id']} has dataset type {name!r}, which the manifest does not define")
    dt = types[name]
    data_id = DataCoordinate.standardize(entry["data_id"], universe=universe, dimensions=dt.dimensions)
    ref = DatasetRef(dt, data_id, str(entry["run"]), id=uuid.UUID(str(entry["id"])))
    relative = PurePosixPath(str(entry["path"]))
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"dataset {ref.id} has path {str(relative)!r}, which leaves the export directory")
    return _ImportedDataset(
        ref=ref,
        source=root / relative,
        formatter=str(entry["formatter"]),
        storage_class=str(entry["storage_class"]),
        checksum=entry.get("checksum"),
        file_size=int(entry["file_size"]),
        inline=bool(entry.get("inline", False)),
    )


def _import_all(butler: Butler, manifest: _Manifest, transfer: str, written: list[StoredFileInfo]) -> None:
    """Every registry write and file transfer of an import (inside the caller's transaction).

    ``written`` receives the record of every file put into the datastore, for the caller to remove on
    failure.
    """
    registry = butler.registry
    for record in manifest.records:
        registry.sync_dimension_data(record.element.name, record)  # ConflictingDefinitionError if different
    for dt in manifest.dataset_types:
        butler.register_dataset_type(dt)
    for name, doc in manifest.runs:
        registry.register_run(name, doc)
    refs = registry.import_datasets([d.ref for d in manifest.datasets])
    expanded = _expand_refs(registry, refs)
    rows = []
    for dataset in manifest.datasets:
        if dataset.inline:  # back into the registry, as it was exported
            content = dataset.source.read_bytes()
            info = StoredFileInfo(
                dataset.ref.id, INLINE_PATH, dataset.formatter, dataset.storage_class,
                "sha256:" + hashlib.sha256(content).hexdigest(), len(content), inline=content,
            )
        else:
            info = butler.datastore.ingest(
                dataset.source, expanded[dataset.ref.id], transfer=transfer, formatter=dataset.formatter
            )
            written.append(info)
        rows.append(_checked(butler.datastore, info, dataset).to_record())
    registry.insert_datastore_records(rows)
    by_id = {r.id: r for r in refs}
    _import_tagged(registry, manifest, by_id)
    _import_calibrations(registry, manifest, by_id)
    _import_chains(registry, manifest)
    _import_provenance(registry, manifest, by_id)


def _import_provenance(registry: Registry, manifest: _Manifest, refs: Mapping[uuid.UUID, DatasetRef]) -> None:
    """Record the quanta and run-level provenance of the imported runs."""
    runs = {name for name, _ in manifest.runs}
    for quantum in manifest.quanta:
        unknown = [i for i in quantum.outputs if i not in refs]
        if quantum.run not in runs or unknown:
            raise ConfigError(
                f"the export manifest records quantum {quantum.id} of run {quantum.run!r} with outputs or a run it does "
                "not export; the manifest is damaged."
            )
    registry.insert_quanta(manifest.quanta)
    for run, content in manifest.run_provenance:
        registry.set_run_provenance(run, content)


def _expand_refs(registry: Registry, refs: Sequence[DatasetRef]) -> dict[uuid.UUID, DatasetRef]:
    """Refs with expanded data IDs (file templates need implied values such as ``band``), by ID."""
    by_group: dict[Any, list[DatasetRef]] = {}
    for ref in refs:
        by_group.setdefault(ref.dataset_type.dimensions, []).append(ref)
    out = {}
    for group in by_group.values():
        for ref, data_id in zip(group, registry.expand_data_ids([r.data_id for r in group])):
            out[ref.id] = ref.replace(data_id=data_id)
    return out


def _checked(datastore: FileDatastore, info: StoredFileInfo, dataset: _ImportedDataset) -> StoredFileInfo:
    """The record to store for an imported file, after checking it against the manifest.

    Raises
    ------
    CorruptDatasetError
        If the file's size or checksum differs from the manifest's.
    """
    expected = replace(info, checksum=dataset.checksum or info.checksum, file_size=dataset.file_size)
    if expected == info:  # the checksum computed while copying already matches the manifest
        return info
    try:
        datastore.check(expected)
    except CorruptDatasetError as err:
        ref = dataset.ref
        raise CorruptDatasetError(
            f"file {dataset.source} of dataset {ref.dataset_type.name} {ref.data_id} ({ref.id}) does not match the "
            f"export manifest: {err} The export is damaged; nothing was imported. Re-export the datasets."
        ) from None
    return expected


def _import_tagged(registry: Registry, manifest: _Manifest, refs: Mapping[uuid.UUID, DatasetRef]) -> None:
    """Register the TAGGED collections and associate their members."""
    for name, doc, ids in manifest.tagged:
        registry.register_collection(name, CollectionType.TAGGED, doc)
        unknown = [i for i in ids if i not in refs]
        if unknown:
            raise ConfigError(
                f"the export manifest lists dataset {unknown[0]} in TAGGED collection {name!r} but does not "
                "export it; the manifest is damaged."
            )
        if ids:
            registry.associate(name, [refs[i] for i in ids])


def _import_calibrations(registry: Registry, manifest: _Manifest, refs: Mapping[uuid.UUID, DatasetRef]) -> None:
    """Register the CALIBRATION collections and certify their members over their validity ranges.

    Raises
    ------
    ConflictingDefinitionError
        If a certification overlaps one already in the target collection.
    """
    for name, doc, certifications in manifest.calibrations:
        registry.register_collection(name, CollectionType.CALIBRATION, doc)
        by_span: dict[Timespan, list[DatasetRef]] = {}
        for dataset_id, timespan in certifications:
            if dataset_id not in refs:
                raise ConfigError(
                    f"the export manifest certifies dataset {dataset_id} in CALIBRATION collection {name!r} but does "
                    "not export it; the manifest is damaged."
                )
            by_span.setdefault(timespan, []).append(refs[dataset_id])
        for timespan, group in by_span.items():
            registry.certify(name, group, timespan)


def _import_chains(registry: Registry, manifest: _Manifest) -> None:
    """Register the CHAINED collections (children come first in the manifest) and set their children.

    An existing chain of the same name must already have the same children.
    """
    for name, doc, children in manifest.chains:
        if registry.register_collection(name, CollectionType.CHAINED, doc):
            registry.set_collection_chain(name, children)
            continue
        existing = list(registry.get_collection_chain(name))
        if existing != children:
            raise ConflictingDefinitionError(
                f"chained collection {name!r} already exists with children {existing}; the export defines it as "
                f"{children}. Rename or redefine one of them (butler collection-chain) and import again."
            )
