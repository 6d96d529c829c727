"""The `Butler`: one object to put, get, ingest, query and remove datasets of a repository."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import CONFIG_FILES, ButlerConfig
from .datasets import DatasetIdGenEnum, DatasetRef, DatasetType
from .datastore import FileDatastore, StoredFileInfo
from .dimensions import DataCoordinate, DimensionGroup, DimensionRecord, DimensionUniverse
from .errors import (
    ButlerError,
    CollectionTypeError,
    ConfigError,
    CorruptDatasetError,
    DatasetNotFoundError,
    DatasetTypeError,
    ReadOnlyRepositoryError,
    RunLockedError,
)
from .locks import busy_runs, run_lock
from .registry import CollectionType, Registry
from .registry._collections import CollectionArg
from .timespan import Timespan

__all__ = ["Butler", "DeferredDatasetHandle", "FileDataset"]

_LOG = logging.getLogger("butler")

DatasetTypeArg = str | DatasetType | DatasetRef


@dataclass
class FileDataset:
    """A file to ingest as a dataset.

    Attributes
    ----------
    path : `str` or `pathlib.Path`
        The file.
    dataset_type : `str`
        A registered dataset type.
    data_id : `dict`
        The dataset's data ID.
    formatter : `str` or `None`
        Dotted path of the formatter that reads the file (default: the storage class's).
    """

    path: str | Path
    dataset_type: str
    data_id: Mapping[str, Any] | DataCoordinate
    formatter: str | None = None


class DeferredDatasetHandle:
    """A dataset found now and read later (`Butler.get_deferred`)."""

    def __init__(self, butler: Butler, ref: DatasetRef, parameters: Mapping[str, Any] | None, component: str | None):
        self.butler = butler
        self.ref = ref
        self.parameters = parameters
        self.component = component

    @property
    def data_id(self) -> DataCoordinate:
        return self.ref.data_id

    dataId = data_id  # the LSST stack's spelling

    def get(self, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        """Read the dataset (or one component of it)."""
        merged = {**(self.parameters or {}), **(parameters or {})}
        return self.butler._read(self.ref, component=component or self.component, parameters=merged or None)


@dataclass
class VerifyReport:
    """What `Butler.verify` found.

    Attributes
    ----------
    missing_files : `list` [`tuple` [`str`, `str`]]
        (dataset ID, path) of datasets whose file is gone.
    corrupt_files : `list` [`tuple` [`str`, `str`, `str`]]
        (dataset ID, path, reason) of files whose size or checksum differs from the record.
    orphan_files : `list` [`str`]
        Files under the root that no dataset refers to (the service directories ``.quarantine/``,
        ``.parsl/`` and ``.locks/`` are not searched: `FileDatastore.walk_files`).
    temp_files : `list` [`str`]
        Temporary files left by interrupted writes.
    datasets_without_records : `list` [`str`]
        Datasets with no datastore record.
    fixed : `bool`
        Whether problems were repaired (`Butler.verify` with ``fix=True``).
    """

    missing_files: list[tuple[str, str]] = field(default_factory=list)
    corrupt_files: list[tuple[str, str, str]] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    datasets_without_records: list[str] = field(default_factory=list)
    fixed: bool = False

    @property
    def ok(self) -> bool:
        """Whether the registry and the files agree."""
        return not (
            self.missing_files or self.corrupt_files or self.orphan_files or self.temp_files
            or self.datasets_without_records
        )


class Butler:
    """Access to a data repository: its registry of datasets and its file datastore.

    Parameters
    ----------
    root : `str` or `pathlib.Path`
        The repository root (holding ``butler.yaml``).
    collections : `str` or sequence of `str`, optional
        Default collections to search in `get`, `find_dataset` and the queries.
    run : `str`, optional
        Default RUN collection for `put` and `ingest`; registered if new.  Also the default search
        collection when ``collections`` is not given.
    writeable : `bool`, optional
        With `False`, every write raises `ReadOnlyRepositoryError` (a `ButlerError`) and nothing
        changes: not the database, not the files.

    Raises
    ------
    RepositoryNotFoundError
        If ``root`` is not a repository.
    ConfigError
        If its configuration or database cannot be used.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        collections: CollectionArg = None,
        run: str | None = None,
        writeable: bool = True,
    ):
        self.config = ButlerConfig(root)
        self.registry = Registry.open(
            self.config.db_url, self.config.universe, busy_timeout=self.config.busy_timeout, writeable=writeable
        )
        self.datastore = FileDatastore(
            self.config.root, self.config.datastore, self.config.storage_classes, self.config.formatters
        )
        self.run = run
        if collections is None:
            collections = [run] if run else []
        self.collections: tuple[str, ...] = (collections,) if isinstance(collections, str) else tuple(collections)
        if run is not None and writeable:
            self.registry.register_run(run)

    @classmethod
    def create(cls, root: str | Path, *, db: str | None = None, **kwargs: Any) -> Butler:
        """Create a new, empty repository from ``repo_template`` and return a Butler for it.

        Parameters
        ----------
        root : `str` or `pathlib.Path`
            Directory to create (it may exist if empty).
        db : `str`, optional
            SQLAlchemy URL of the registry database (default: a SQLite file in ``root``).
        **kwargs
            Passed to the `Butler` constructor.

        Raises
        ------
        ConfigError
            If ``root`` already holds a repository or other files, or the database cannot be created.
        """
        root = Path(root).expanduser()
        if root.exists() and any(root.iterdir()):
            what = "a repository" if (root / "butler.yaml").exists() else "files"
            raise ConfigError(f"{root} already holds {what}; choose an empty or new directory.")
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        try:
            ButlerConfig.write_new(root, db=db)
            config = ButlerConfig(root)
            Registry.create(config.db_url, config.universe, busy_timeout=config.busy_timeout).close()
        except BaseException:
            for name in CONFIG_FILES + ("gen3.sqlite3", "gen3.sqlite3-wal", "gen3.sqlite3-shm"):
                (root / name).unlink(missing_ok=True)
            if created:
                shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(root, **kwargs)

    def close(self) -> None:
        """Close the registry's database connection."""
        self.registry.close()

    def __enter__(self) -> Butler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Butler({str(self.config.root)!r}, collections={list(self.collections)}, run={self.run!r})"

    @property
    def dimensions(self) -> DimensionUniverse:
        """The dimension universe of the repository."""
        return self.registry.universe

    # Dataset types ---------------------------------------------------------------------------------

    def register_dataset_type(
        self,
        dataset_type: str | DatasetType,
        dimensions: Iterable[str] | DimensionGroup | None = None,
        storage_class: str | None = None,
        *,
        is_calibration: bool = False,
    ) -> bool:
        """Register a dataset type; return `False` if an identical one is already registered.

        Parameters
        ----------
        dataset_type : `str` or `DatasetType`
            A name (then give ``dimensions`` and ``storage_class``) or a `DatasetType`.

        Raises
        ------
        ConflictingDefinitionError
            If a different definition with this name exists.
        StorageClassError, FileTemplateError
            If the storage class is unknown or has no formatter, or the file template cannot tell
            this type's data IDs apart.
        """
        if not isinstance(dataset_type, DatasetType):
            if dimensions is None or storage_class is None:
                raise DatasetTypeError(
                    f"registering {dataset_type!r} needs its dimensions and storage class "
                    f"(e.g. dimensions=['visit', 'detector'], storage_class='ArrowAstropy')."
                )
            dataset_type = DatasetType(
                dataset_type, dimensions, storage_class, universe=self.dimensions, is_calibration=is_calibration
            )
        self.config.storage_classes[dataset_type.storage_class]  # raises StorageClassError if unknown
        self.datastore.validate_dataset_type(dataset_type)
        return self.registry.register_dataset_type(dataset_type)

    def get_dataset_type(self, name: str) -> DatasetType:
        """Return a registered dataset type."""
        return self.registry.get_dataset_type(name)

    # Writing ---------------------------------------------------------------------------------------

    def require_writeable(self, action: str) -> None:
        """Refuse an action that would change the repository if this Butler was opened read-only.

        For actions that change files before the registry (which refuses every write itself).

        Parameters
        ----------
        action : `str`
            What is refused, for the message (``"remove_runs"``).

        Raises
        ------
        ReadOnlyRepositoryError
            If the Butler was opened with ``writeable=False``.
        """
        if not self.registry.db.writeable:
            raise ReadOnlyRepositoryError(
                f"{action} changes the repository, which was opened read-only (writeable=False); nothing was "
                "changed. Open it with Butler(..., writeable=True)."
            )

    def _require_run(self, run: str | None) -> str:
        run = run or self.run
        if run is None:
            raise CollectionTypeError("no output run: pass run=... or construct the Butler with run=...")
        record = self.registry.get_collection(run) if self.registry._collections.find(run) else None
        if record is None:
            self.registry.register_run(run)
        elif record.type is not CollectionType.RUN:
            raise CollectionTypeError(
                f"datasets can only be written to a RUN collection; {run!r} is {record.type.name}."
            )
        return run

    def put(
        self,
        obj: Any,
        dataset_ref_or_type: DatasetTypeArg,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        *,
        run: str | None = None,
        **kwargs: Any,
    ) -> DatasetRef:
        """Write an object as a new dataset and register it.

        Parameters
        ----------
        obj : `object`
            An instance of the dataset type's storage class's Python type.
        dataset_ref_or_type : `str`, `DatasetType` or `DatasetRef`
            The dataset type (name), or a ref whose ID, run and data ID are used.
        data_id : mapping, optional
            The data ID; keyword arguments are added to it.
        run : `str`, optional
            The RUN collection (default: the Butler's ``run``).

        Returns
        -------
        ref : `DatasetRef`

        Raises
        ------
        DuplicateDatasetError
            If the run already has a dataset of this type and data ID (nothing is written).
        MissingDatasetTypeError, DataIdError, DataIdValueError, CollectionTypeError, StorageClassError,
        FileTemplateError
            On bad input; the repository is unchanged.
        """
        if isinstance(dataset_ref_or_type, DatasetRef):
            given = dataset_ref_or_type
            run = given.run
            dt = self.registry.get_dataset_type(given.dataset_type.name)
            data_id, ids = given.data_id, [given.id]
        else:
            name = dataset_ref_or_type if isinstance(dataset_ref_or_type, str) else dataset_ref_or_type.name
            if "." in name:
                raise DatasetTypeError(f"cannot put component {name!r}; put the whole {name.partition('.')[0]!r}.")
            dt = self.registry.get_dataset_type(name)
            data_id = DataCoordinate.standardize(data_id, universe=self.dimensions, dimensions=dt.dimensions, **kwargs)
            ids = None
        self.config.storage_classes[dt.storage_class].validate(obj)
        info: StoredFileInfo | None = None
        try:
            with self.registry.transaction():
                run = self._require_run(run)
                (ref,) = self.registry._datasets.insert(dt.name, [data_id], run, ids=ids)
                ref = ref.replace(data_id=self._expand_for_template(dt, [ref.data_id])[0])
                info = self.datastore.put(obj, ref)
                self.registry.insert_datastore_records([info.to_record()])
        except BaseException:
            if info is not None:
                self.datastore.remove([info])
            raise
        return ref

    def _expand_for_template(self, dt: DatasetType, data_ids: Sequence[DataCoordinate]) -> list[DataCoordinate]:
        """Data IDs with what the dataset type's file template needs: implied values, and records
        only when the template names record fields (``{visit.name}``)."""
        fields = self.datastore.templates.get(dt).fields
        return self.registry.expand_data_ids(data_ids, full_only=not any("." in f for f in fields))

    def ingest(
        self,
        *datasets: FileDataset,
        transfer: str | None = "auto",
        run: str | None = None,
        id_generation_mode: DatasetIdGenEnum = DatasetIdGenEnum.UNIQUE,
        skip_existing: bool = False,
    ) -> list[DatasetRef]:
        """Register existing files as datasets, all in one transaction.

        Parameters
        ----------
        *datasets : `FileDataset`
        transfer : `str`, optional
            ``copy``, ``move``, ``hardlink``, ``symlink``, ``direct`` or ``auto`` (``direct`` for files
            already inside the repository, else ``copy``).  ``move`` deletes the sources only after the
            registry commit.
        run : `str`, optional
        id_generation_mode : `DatasetIdGenEnum`, optional
            ``DATAID_TYPE`` makes the same file ingested twice get the same ID.
        skip_existing : `bool`, optional
            Leave out datasets whose type and data ID are already in the run, instead of failing.

        Returns
        -------
        refs : `list` [`DatasetRef`]
            The datasets ingested (skipped ones are left out).

        Raises
        ------
        DuplicateDatasetError, DatastoreError, DataIdError, ...
            Nothing is registered and no file is left behind.
        """
        by_type: dict[str, list[FileDataset]] = {}
        for d in datasets:
            by_type.setdefault(d.dataset_type, []).append(d)
        written: list[StoredFileInfo] = []
        moved: list[Path] = []
        refs_out: list[DatasetRef] = []
        try:
            with self.registry.transaction():
                run = self._require_run(run)
                for name, group in by_type.items():
                    dt = self.registry.get_dataset_type(name)
                    data_ids = [
                        DataCoordinate.standardize(d.data_id, universe=self.dimensions, dimensions=dt.dimensions)
                        for d in group
                    ]
                    if skip_existing:
                        found = self.registry.find_datasets(name, data_ids, collections=[run])
                        keep = [i for i, di in enumerate(data_ids) if di not in found]
                        group, data_ids = [group[i] for i in keep], [data_ids[i] for i in keep]
                    refs = self.registry._datasets.insert(name, data_ids, run, id_generation_mode=id_generation_mode)
                    expanded = self._expand_for_template(dt, [r.data_id for r in refs])
                    rows = []
                    for d, ref, full in zip(group, refs, expanded):
                        mode = "copy" if transfer == "move" else transfer
                        info = self.datastore.ingest(d.path, ref.replace(data_id=full), transfer=mode, formatter=d.formatter)
                        if not Path(info.path).is_absolute():
                            written.append(info)
                        if transfer == "move":
                            moved.append(Path(d.path))
                        rows.append(info.to_record())
                    self.registry.insert_datastore_records(rows)
                    refs_out += refs
        except BaseException:
            self.datastore.remove(written)
            raise
        for path in moved:
            path.unlink(missing_ok=True)
        return refs_out

    # Reading ---------------------------------------------------------------------------------------

    def _search(self, collections: CollectionArg) -> CollectionArg:
        if collections is None:
            if not self.collections:
                raise DatasetNotFoundError(
                    "no collections to search: pass collections=... or construct the Butler with collections=[...]."
                )
            return self.collections
        return collections

    def find_dataset(
        self,
        dataset_type: DatasetTypeArg,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        *,
        collections: CollectionArg = None,
        timespan: Timespan | None = None,
        **kwargs: Any,
    ) -> DatasetRef | None:
        """Return the dataset of this type and data ID in the first collection that has one, or `None`.

        A calibration found through a CALIBRATION collection must be valid at ``timespan``, or at the
        time of the data ID's exposure or visit (see `Registry.find_dataset`).
        """
        if isinstance(dataset_type, DatasetRef):
            return self.registry.get_dataset(dataset_type.id)
        name = dataset_type if isinstance(dataset_type, str) else dataset_type.name
        return self.registry.find_dataset(
            name.partition(".")[0], data_id, collections=self._search(collections), timespan=timespan, **kwargs
        )

    def _resolve(
        self,
        dataset_ref_or_type: DatasetTypeArg,
        data_id: Any,
        collections: CollectionArg,
        kwargs: dict[str, Any],
        timespan: Timespan | None = None,
    ) -> tuple[DatasetRef, str | None]:
        if isinstance(dataset_ref_or_type, DatasetRef):
            return dataset_ref_or_type, dataset_ref_or_type.dataset_type.component
        name = dataset_ref_or_type if isinstance(dataset_ref_or_type, str) else dataset_ref_or_type.name
        component = name.partition(".")[2] or None
        search = self._search(collections)
        ref = self.find_dataset(name, data_id, collections=search, timespan=timespan, **kwargs)
        if ref is None:
            raise self._not_found(name.partition(".")[0], data_id, kwargs, search, timespan)
        return ref, component

    def _not_found(
        self, name: str, data_id: Any, kwargs: Mapping[str, Any], search: CollectionArg, timespan: Timespan | None
    ) -> DatasetNotFoundError:
        given = DataCoordinate.standardize(data_id, universe=self.dimensions, **kwargs)
        searched = [search] if isinstance(search, str) else list(search or [])
        when = f" valid during {timespan}" if timespan is not None else ""
        return DatasetNotFoundError(
            f"no {name!r} dataset{when} with data ID {dict(given.items())} in collection(s) {searched}; "
            "check the collections (`butler query-datasets`) and the data ID."
        )

    @staticmethod
    def _no_file(ref: DatasetRef) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"dataset {ref.id} ({ref.dataset_type.name} {ref.data_id}) is registered but has no file in the "
            "datastore; `butler verify` lists such datasets."
        )

    def get(
        self,
        dataset_ref_or_type: DatasetTypeArg,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        *,
        collections: CollectionArg = None,
        parameters: Mapping[str, Any] | None = None,
        timespan: Timespan | None = None,
        **kwargs: Any,
    ) -> Any:
        """Read a dataset, or a component of it (``"calexp.wcs"``).

        Parameters
        ----------
        dataset_ref_or_type : `str`, `DatasetType` or `DatasetRef`
            A ref, or a dataset type name (``parent.component`` for a component).
        data_id : mapping, optional
            The data ID (with keyword arguments); not needed with a ref.  For a calibration it may name
            an exposure or visit instead of a time: ``get("bias", instrument="Cam", exposure=12, detector=3)``.
        collections : `str` or sequence, optional
            Collections to search, first match wins (default: the Butler's).
        parameters : `dict`, optional
            Formatter parameters, e.g. ``{"columns": ["ra", "dec"]}`` for a table.
        timespan : `Timespan`, optional
            For a calibration in CALIBRATION collections: the time it must be valid at (default: the
            data ID's exposure's or visit's time).

        Raises
        ------
        DatasetNotFoundError
            If no collection has the dataset.
        CalibrationLookupError
            If a calibration lookup has no time, or several datasets are valid at that time in one collection.
        CorruptDatasetError
            If its file is missing, truncated or fails its checksum.
        """
        if isinstance(dataset_ref_or_type, DatasetRef):
            ref, component = dataset_ref_or_type, dataset_ref_or_type.dataset_type.component
            info = self._stored_info(ref)
        else:
            name = dataset_ref_or_type if isinstance(dataset_ref_or_type, str) else dataset_ref_or_type.name
            parent, _, component = name.partition(".")
            search = self._search(collections)
            found = self.registry.find_dataset_with_record(
                parent, data_id, collections=search, timespan=timespan, **kwargs
            )
            if found is None:
                raise self._not_found(parent, data_id, kwargs, search, timespan)
            ref, record = found
            if record is None:
                raise self._no_file(ref)
            info = self._with_content(StoredFileInfo(**record))
        return self.datastore.get(info, component=component or None, parameters=parameters)

    def get_deferred(
        self,
        dataset_ref_or_type: DatasetTypeArg,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        *,
        collections: CollectionArg = None,
        parameters: Mapping[str, Any] | None = None,
        timespan: Timespan | None = None,
        **kwargs: Any,
    ) -> DeferredDatasetHandle:
        """Find a dataset now and return a handle that reads it later (`DeferredDatasetHandle.get`)."""
        ref, component = self._resolve(dataset_ref_or_type, data_id, collections, kwargs, timespan)
        return DeferredDatasetHandle(self, ref, parameters, component)

    def _stored_info(self, ref: DatasetRef) -> StoredFileInfo:
        record = self.registry.get_datastore_records([ref.id]).get(ref.id)
        if record is None:
            raise self._no_file(ref)
        return self._with_content(StoredFileInfo(**record))

    def _with_content(self, info: StoredFileInfo) -> StoredFileInfo:
        """Attach the registry-stored bytes to the record of an inline dataset."""
        if info.is_inline and info.inline is None:
            content = self.registry.get_inline_content([info.dataset_id]).get(info.dataset_id)
            info = dataclasses.replace(info, inline=content)
        return info

    def _read(self, ref: DatasetRef, *, component: str | None, parameters: Mapping[str, Any] | None) -> Any:
        return self.datastore.get(self._stored_info(ref), component=component, parameters=parameters)

    def get_uri(
        self,
        dataset_ref_or_type: DatasetTypeArg,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        *,
        collections: CollectionArg = None,
        timespan: Timespan | None = None,
        **kwargs: Any,
    ) -> Path:
        """The absolute path of a dataset's file (the LSST Butler's ``getURI``), e.g. to open it with astropy.

        Arguments as in `get`; the file is not read.

        Raises
        ------
        DatasetNotFoundError
            If no collection has the dataset, or it has no file: metadata, logs and configs are stored in the
            registry (read them with `get`).
        """
        ref = self.find_dataset(dataset_ref_or_type, data_id, collections=collections, timespan=timespan, **kwargs)
        if ref is None and isinstance(dataset_ref_or_type, DatasetRef):
            raise DatasetNotFoundError(f"dataset {dataset_ref_or_type.id} is not in this repository's registry.")
        if ref is None:
            name = dataset_ref_or_type if isinstance(dataset_ref_or_type, str) else dataset_ref_or_type.name
            raise self._not_found(name.partition(".")[0], data_id, kwargs, self._search(collections), timespan)
        info = self._stored_info(ref)
        if info.is_inline:
            raise DatasetNotFoundError(
                f"dataset {ref.id} ({ref.dataset_type.name} {ref.data_id}) is stored in the registry, not as a file; "
                "read it with Butler.get."
            )
        return self.datastore.abspath(info)

    def exists(
        self,
        dataset_ref_or_type: DatasetTypeArg,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        *,
        collections: CollectionArg = None,
        timespan: Timespan | None = None,
        **kwargs: Any,
    ) -> bool:
        """Whether the dataset is registered and its file is present (calibrations: valid at ``timespan``
        or at the data ID's exposure/visit time, as in `get`)."""
        ref = self.find_dataset(dataset_ref_or_type, data_id, collections=collections, timespan=timespan, **kwargs)
        if ref is None:
            return False
        record = self.registry.get_datastore_records([ref.id]).get(ref.id)
        if record is None:
            return False
        info = StoredFileInfo(**record)
        return info.is_inline or self.datastore.abspath(info).is_file()

    # Collections ---------------------------------------------------------------------------------

    def collection_chain(self, parent: str, children: Sequence[str] | str, *, mode: str = "redefine", flatten: bool = False) -> tuple[str, ...]:
        """Create or modify a CHAINED collection; return its new children.

        Parameters
        ----------
        parent : `str`
            The chain (registered as CHAINED if new).
        children : sequence of `str`
            Collections to set, add or remove.
        mode : `str`
            ``redefine`` (replace), ``prepend``, ``extend`` (append), ``remove``, or ``pop`` (children are
            0-based positions to remove).
        flatten : `bool`
            Store the children's flattened search path instead of the chains themselves.

        Raises
        ------
        CollectionCycleError, CollectionTypeError, MissingCollectionError
        """
        children = [children] if isinstance(children, str) else list(children)
        self.registry.register_collection(parent, CollectionType.CHAINED)
        current = list(self.registry.get_collection_chain(parent))
        if mode == "redefine":
            new = children
        elif mode == "prepend":
            new = children + [c for c in current if c not in children]
        elif mode == "extend":
            new = [c for c in current if c not in children] + children
        elif mode == "remove":
            new = [c for c in current if c not in children]
        elif mode == "pop":
            drop = {int(i) for i in children} if children else {0}
            new = [c for i, c in enumerate(current) if i not in drop]
        else:
            raise ButlerError(f"unknown chain mode {mode!r}; valid: redefine, prepend, extend, remove, pop.")
        self.registry.set_collection_chain(parent, new, flatten=flatten)
        return self.registry.get_collection_chain(parent)

    def remove_runs(self, names: Iterable[str], *, unstore: bool = True) -> int:
        """Remove RUN collections, their datasets' registry rows and (with ``unstore``) their files.

        The runs are taken out of any chains that list them.  Returns the number of datasets removed.

        Raises
        ------
        CollectionTypeError
            If a name is not a RUN collection (nothing is removed).
        ReadOnlyRepositoryError
            If the Butler was opened with ``writeable=False``.
        RunLockedError
            If another process is writing one of the runs (nothing is removed).
        """
        self.require_writeable("remove_runs")
        names = list(names)
        for name in names:
            if self.registry.get_collection_type(name) is not CollectionType.RUN:
                raise CollectionTypeError(f"{name!r} is a {self.registry.get_collection_type(name).name} collection, not a RUN; nothing was removed.")
        with contextlib.ExitStack() as locks:
            for name in names:  # a run being written is not removed under its writer
                locks.enter_context(run_lock(self.datastore.root, name))
            return self._remove_runs(names, unstore=unstore)

    def _remove_runs(self, names: list[str], *, unstore: bool) -> int:
        refs = self.registry.refs_in_runs(names)
        infos = [StoredFileInfo(**r) for r in self.registry.get_datastore_records([r.id for r in refs]).values()]
        with self.registry.transaction():
            for name in names:
                record = self.registry.get_collection(name)
                for parent in self.registry._collections.parents(record):
                    chain = [c for c in self.registry.get_collection_chain(parent.name) if c != name]
                    self.registry.set_collection_chain(parent.name, chain)
            self.registry.remove_datasets(refs)
            for name in names:
                self.registry._collections.remove(name)
        if unstore:
            self.datastore.remove(infos)
        return len(refs)

    # Queries --------------------------------------------------------------------------------------

    def query_data_ids(
        self,
        dimensions: Iterable[str] | str,
        *,
        data_id: Mapping[str, Any] | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        datasets: Iterable[str] | str | None = None,
        collections: CollectionArg = None,
        order_by: Iterable[str] | str | None = None,
        limit: int | None = None,
        with_dimension_records: bool = False,
        explain: bool = True,
        **kwargs: Any,
    ) -> list[DataCoordinate]:
        """Data IDs over ``dimensions`` that satisfy the constraints.

        Parameters
        ----------
        dimensions : `str` or iterable of `str`
            The dimensions of the result (their required and implied dimensions are added).
        data_id : mapping, optional
            Equality constraints (keyword arguments are added).
        where : `str`, optional
            A where-expression (``"visit IN (100..120) AND band = 'r'"``).
        bind : `dict`, optional
            Values for bind names in ``where``.
        datasets : `str` or iterable, optional
            Dataset types that must exist (in ``collections``) for each data ID.
        order_by : `str` or iterable, optional
            ``"visit"``, ``"-detector"`` (descending), ``"visit.exposure_time"``.
        limit : `int`, optional
        with_dimension_records : `bool`, optional
            Attach the dimension records to every data ID.
        explain : `bool`, optional
            Raise `EmptyQueryResultError` with the reasons when nothing matches.

        Raises
        ------
        ExpressionSyntaxError, InvalidQueryError, EmptyQueryResultError
        """
        return self.registry.query_data_ids(
            dimensions, data_id={**(data_id or {}), **kwargs}, where=where, bind=bind, datasets=datasets,
            collections=self._search(collections) if datasets is not None else None,
            order_by=order_by, limit=limit, explain=explain, expanded=with_dimension_records,
        )

    def query_datasets(
        self,
        dataset_type: str | DatasetType,
        collections: CollectionArg = None,
        *,
        find_first: bool = True,
        data_id: Mapping[str, Any] | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        order_by: Iterable[str] | str | None = None,
        limit: int | None = None,
        explain: bool = True,
        timespan: Timespan | None = None,
        **kwargs: Any,
    ) -> list[DatasetRef]:
        """Datasets of one type in ``collections`` that satisfy the constraints.

        With ``find_first`` (default) each data ID yields the dataset of the first collection (in
        search order) that has one; without it, every matching dataset, and glob patterns
        (``"u/someone/*"``) may be used as collections.  See `query_data_ids` for the rest.

        Calibrations in CALIBRATION collections match when valid during ``timespan``; a find-first
        search through them needs ``timespan`` or an exposure/visit in the data ID
        (`CalibrationLookupError` otherwise).  Without ``find_first`` every certified dataset is listed.
        """
        return self.registry.query_datasets(
            dataset_type, self._search(collections), find_first=find_first, data_id={**(data_id or {}), **kwargs},
            where=where, bind=bind, order_by=order_by, limit=limit, explain=explain, timespan=timespan,
        )

    def query_dimension_records(
        self,
        element: str,
        *,
        data_id: Mapping[str, Any] | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        order_by: Iterable[str] | str | None = None,
        limit: int | None = None,
        explain: bool = True,
        **kwargs: Any,
    ) -> list[DimensionRecord]:
        """Records of a dimension element (``"visit"``, ``"patch"``) that satisfy the constraints."""
        return self.registry.query_dimension_records(
            element, data_id={**(data_id or {}), **kwargs}, where=where, bind=bind, order_by=order_by,
            limit=limit, explain=explain,
        )

    # Transfers ------------------------------------------------------------------------------------

    def export(
        self,
        directory: str | Path,
        *,
        collections: CollectionArg = None,
        dataset_types: Iterable[str] | str | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
    ) -> int:
        """Export datasets with their files, dimension records and collections to a directory.

        Writes ``export.yaml`` (a manifest) and the files; `import_` reads it into another repository.
        Returns the number of datasets exported.  See `butler.transfers.export_datasets`.
        """
        from .transfers import export_datasets

        return export_datasets(self, directory, collections=collections, dataset_types=dataset_types, where=where, bind=bind)

    def import_(self, directory: str | Path, *, transfer: str = "copy") -> int:
        """Import an `export` directory; returns the number of datasets imported.

        See `butler.transfers.import_datasets`.
        """
        from .transfers import import_datasets

        return import_datasets(self, directory, transfer=transfer)

    # Consistency ------------------------------------------------------------------------------------

    def verify(self, *, checksums: bool = False, fix: bool = False) -> VerifyReport:
        """Compare registry rows with files: find missing, corrupt, orphan and temporary files.

        Parameters
        ----------
        checksums : `bool`, optional
            Also re-hash every file and compare with its recorded checksum (reads all data).
        fix : `bool`, optional
            Delete temporary files, move orphan files to ``<root>/.quarantine/``, and remove the
            registry rows of datasets whose file is missing.

        Returns
        -------
        report : `VerifyReport`

        Raises
        ------
        ReadOnlyRepositoryError
            With ``fix`` on a Butler opened with ``writeable=False`` (before anything is changed).
        RunLockedError
            With ``fix`` while a process writes a run (its files in progress would look like orphans).
        """
        if fix:
            self.require_writeable("verify(fix=True)")
            busy = busy_runs(self.datastore.root)
            if busy:
                raise RunLockedError(
                    f"cannot fix the repository while runs are being written ({'; '.join(busy)}): their files in "
                    "progress would be taken for orphans. Run it again when they have finished; nothing was changed."
                )
        report = VerifyReport()
        records = self.registry.all_datastore_records()
        known_paths = set()
        lost = []
        for row in records:
            info = StoredFileInfo(**row)
            if info.is_inline:
                if checksums:
                    try:
                        self.datastore.check(self._with_content(info))
                    except CorruptDatasetError as err:
                        report.corrupt_files.append((str(info.dataset_id), info.path, str(err)))
                continue
            known_paths.add(info.path)
            path = self.datastore.abspath(info)
            if not path.is_file():
                report.missing_files.append((str(info.dataset_id), info.path))
                lost.append(info.dataset_id)
            elif path.stat().st_size != info.file_size:
                report.corrupt_files.append((str(info.dataset_id), info.path, f"size {path.stat().st_size} != recorded {info.file_size}"))
            elif checksums and info.checksum:
                try:
                    self.datastore.check(info)
                except CorruptDatasetError as err:
                    report.corrupt_files.append((str(info.dataset_id), info.path, str(err)))
        report.orphan_files = sorted(p for p in self.datastore.walk_files() if p not in known_paths)
        report.temp_files = sorted(self.datastore.temp_files())
        report.datasets_without_records = [str(i) for i in self.registry.datasets_without_records()]
        if fix:
            for rel in report.temp_files:
                (self.datastore.root / rel).unlink(missing_ok=True)
            quarantine = self.datastore.root / ".quarantine"
            for rel in report.orphan_files:
                dest = quarantine / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                (self.datastore.root / rel).replace(dest)
            gone = lost + [uuid.UUID(i) for i in report.datasets_without_records]
            refs = list(self.registry.get_datasets(gone).values())
            if refs:
                with self.registry.transaction():
                    self.registry.remove_datasets(refs)
            report.fixed = True
        return report
