"""Dataset types and datasets: registration, insertion, association, lookup and removal."""

from __future__ import annotations

import fnmatch
import operator
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from ..datasets import DatasetIdGenEnum, DatasetRef, DatasetType, uuid7_batch
from ..dimensions import DataCoordinate, DimensionUniverse
from ..errors import (
    CollectionTypeError,
    ConflictingDefinitionError,
    DataIdValueError,
    DatasetTypeError,
    DuplicateDatasetError,
    MissingDatasetTypeError,
    did_you_mean,
)
from ._collections import CollectionManager, CollectionRecord
from ._db import Database
from ._dimension_records import DimensionRecordStorage
from .schema import CollectionType, RegistryTables

__all__ = ["DatasetManager", "DatasetTypeRecord"]

_RECORD_COLUMNS = ("path", "formatter", "storage_class", "checksum", "file_size")
#: Key of the PostgreSQL advisory lock that serialises dataset type registrations (any fixed 64-bit integer).
_REGISTRATION_LOCK = 0x6275746C65722D64  # "butler-d"


class DatasetTypeRecord:
    """A registered dataset type with its registry ID and tags table."""

    __slots__ = ("dataset_type", "id", "tags")

    def __init__(self, dataset_type: DatasetType, id: int, tags: sa.Table):
        self.dataset_type = dataset_type
        self.id = id
        self.tags = tags


class DatasetManager:
    """Registers dataset types and inserts, finds, tags and removes datasets."""

    def __init__(
        self,
        db: Database,
        tables: RegistryTables,
        universe: DimensionUniverse,
        collections: CollectionManager,
        records: DimensionRecordStorage,
    ):
        self._db = db
        self._tables = tables
        self.universe = universe
        self._collections = collections
        self._records = records
        self._types: dict[str, DatasetTypeRecord] = {}
        self._by_id: dict[int, DatasetTypeRecord] = {}
        self._find_statements: dict[tuple[int, int], sa.Select] = {}

    def clear_cache(self) -> None:
        self._types.clear()
        self._by_id.clear()

    # Dataset types ------------------------------------------------------------------------------------

    def _load(self) -> None:
        t = self._tables.dataset_type
        self._types.clear()
        self._by_id.clear()
        for row in self._db.fetchall(sa.select(t)):
            group = self.universe.conform(row.dimensions.split() if row.dimensions else ())
            dt = DatasetType(row.name, group, row.storage_class, is_calibration=row.is_calibration)
            record = DatasetTypeRecord(dt, row.id, self._tables.tag_table(group))
            self._types[row.name] = record
            self._by_id[row.id] = record

    def find_type(self, name: str) -> DatasetTypeRecord | None:
        if name not in self._types:
            self._load()
        return self._types.get(name)

    def get_type(self, name: str) -> DatasetTypeRecord:
        """Return a registered dataset type (a component's parent for ``parent.component``).

        Raises
        ------
        MissingDatasetTypeError
            If it is not registered; the message suggests the closest registered names.
        """
        if not isinstance(name, str):
            raise DatasetTypeError(f"a dataset type name must be a string, got {name!r}.")
        record = self.find_type(name.partition(".")[0])
        if record is None:
            raise MissingDatasetTypeError(
                f"dataset type {name!r} is not registered in this repository. "
                f"{did_you_mean(name, self._types)} Register it with register_dataset_type "
                "(or `butler register-dataset-type`)."
            )
        return record

    def register_type(self, dataset_type: DatasetType) -> bool:
        """Register a dataset type; return `False` if an identical one exists.

        Safe against other processes registering the same type (or another type of the same dimensions, which
        shares its tags table) at the same time: the existence check is repeated inside the write transaction,
        which SQLite serialises (``BEGIN IMMEDIATE``) and PostgreSQL serialises with a transaction-level
        advisory lock (concurrent ``CREATE TABLE``s of one name fail there).

        Raises
        ------
        ConflictingDefinitionError
            If one with the same name but other dimensions or storage class exists.
        """
        if dataset_type.component:
            raise DatasetTypeError(f"component dataset type {dataset_type.name!r} cannot be registered; register its parent.")
        existing = self.find_type(dataset_type.name)
        if existing is not None:
            self._check_compatible(existing.dataset_type, dataset_type)
            return False
        tags = self._tables.tag_table(dataset_type.dimensions)
        t = self._tables.dataset_type
        with self._db.transaction(write=True) as conn:
            if not self._db.is_sqlite:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_REGISTRATION_LOCK)))
            registered_meanwhile = conn.execute(sa.select(t.c.id).where(t.c.name == dataset_type.name)).first()
            if registered_meanwhile is None:
                tags.create(conn, checkfirst=True)
                if dataset_type.is_calibration:
                    self._tables.calib_table(dataset_type.dimensions).create(conn, checkfirst=True)
                new_id = conn.execute(
                    t.insert()
                    .values(
                        name=dataset_type.name,
                        dimensions=" ".join(dataset_type.dimensions.names),
                        storage_class=dataset_type.storage_class,
                        is_calibration=dataset_type.is_calibration,
                        tag_table=tags.name,
                    )
                    .returning(t.c.id)
                ).scalar_one()
        if registered_meanwhile is not None:
            self._load()
            self._check_compatible(self._types[dataset_type.name].dataset_type, dataset_type)
            return False
        record = DatasetTypeRecord(dataset_type, new_id, tags)
        self._types[dataset_type.name] = record
        self._by_id[new_id] = record
        return True

    @staticmethod
    def _check_compatible(old: DatasetType, new: DatasetType) -> None:
        """Raise `ConflictingDefinitionError` unless ``new`` may be registered again as ``old``."""
        if not old.is_compatible_with(new) or old.is_calibration != new.is_calibration:
            raise ConflictingDefinitionError(
                f"dataset type {new.name!r} is already registered with dimensions {old.dimensions} and "
                f"storage class {old.storage_class}; the new definition has {new.dimensions} and "
                f"{new.storage_class}. Use another name or remove the old type."
            )

    def query_types(self, pattern: str | Sequence[str] = "*") -> list[DatasetType]:
        """Registered dataset types whose names match glob patterns, sorted by name."""
        self._load()
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        return [
            r.dataset_type
            for n, r in sorted(self._types.items())
            if any(fnmatch.fnmatchcase(n, p) for p in patterns)
        ]

    def remove_type(self, name: str) -> None:
        """Remove a dataset type that has no datasets."""
        record = self.get_type(name)
        d = self._tables.dataset
        n = self._db.fetchall(sa.select(sa.func.count()).where(d.c.dataset_type_id == record.id))[0][0]
        if n:
            raise ConflictingDefinitionError(
                f"dataset type {name!r} still has {n} dataset(s); remove their runs first."
            )
        with self._db.transaction(write=True) as conn:
            conn.execute(self._tables.dataset_type.delete().where(self._tables.dataset_type.c.id == record.id))
        self._types.pop(name, None)
        self._by_id.pop(record.id, None)

    # Datasets -----------------------------------------------------------------------------------------

    def insert(
        self,
        dataset_type: str,
        data_ids: Sequence[DataCoordinate],
        run: str,
        *,
        id_generation_mode: DatasetIdGenEnum = DatasetIdGenEnum.UNIQUE,
        ids: Sequence[uuid.UUID] | None = None,
        check_data_ids: bool = True,
    ) -> list[DatasetRef]:
        """Insert new datasets into a RUN collection, all in one transaction.

        Parameters
        ----------
        dataset_type : `str`
        data_ids : sequence of `DataCoordinate`
            Already standardized to the dataset type's dimensions.
        run : `str`
        id_generation_mode : `DatasetIdGenEnum`, optional
        ids : sequence of `uuid.UUID`, optional
            Use these IDs (import) instead of making new ones.
        check_data_ids : `bool`, optional
            Check that every dimension value is registered (one query per dimension).

        Raises
        ------
        CollectionTypeError
            If ``run`` is not a RUN collection.
        DuplicateDatasetError
            If a dataset with the same type and data ID is already in the run (nothing is inserted).
        DataIdValueError
            If a data ID refers to an unregistered dimension value.
        """
        record = self.get_type(dataset_type)
        dt = record.dataset_type
        run_record = self._run(run)
        if check_data_ids:
            self._check_values(dt, data_ids)
        if ids is None and id_generation_mode is DatasetIdGenEnum.UNIQUE:
            ids = uuid7_batch(len(data_ids))
        if ids is None:
            refs = [DatasetRef(dt, d, run, id_generation_mode=id_generation_mode) for d in data_ids]
        else:
            refs = [DatasetRef(dt, d, run, id=i) for d, i in zip(data_ids, ids, strict=True)]
        now = time.time_ns()
        try:
            with self._db.transaction(write=True, savepoint=True) as conn:
                self._db.insert_rows(
                    conn, self._tables.dataset, ("id", "dataset_type_id", "run_id", "ingest_date"),
                    ((r.id, record.id, run_record.id, now) for r in refs),
                )
                self._db.insert_rows(
                    conn, record.tags, ("dataset_type_id", "dataset_id", "collection_id", *dt.dimensions.required),
                    ((record.id, r.id, run_record.id, *r.data_id.required_values) for r in refs),
                )
        except sa.exc.IntegrityError:
            raise self._duplicate_error(record, run_record, refs) from None
        return refs

    def _run(self, run: str) -> CollectionRecord:
        run_record = self._collections.get(run)
        if run_record.type is not CollectionType.RUN:
            raise CollectionTypeError(
                f"datasets can only be written to a RUN collection; {run!r} is {run_record.type.name}."
            )
        return run_record

    def _check_values(self, dt: DatasetType, data_ids: Sequence[DataCoordinate]) -> None:
        if not data_ids:
            return
        dims = dt.dimensions.required
        for dim in dims:
            element = self.universe[dim]
            idx = [dims.index(d) for d in element.required]
            getter = operator.itemgetter(*idx)
            keys = {getter(d.required_values) for d in data_ids}
            if len(idx) == 1:
                keys = {(k,) for k in keys}
            found = self._records.fetch(element, keys)
            missing = [k for k in keys if found.get(k) is None]
            if missing:
                raise DataIdValueError(
                    f"no {dim} record with {dict(zip(element.required, missing[0]))} is registered "
                    f"({len(missing)} unknown value(s) among the data IDs for {dt.name!r}); "
                    "check the data ID or register the dimension records first."
                )

    def _duplicate_error(
        self, record: DatasetTypeRecord, collection: CollectionRecord, refs: Sequence[DatasetRef]
    ) -> DuplicateDatasetError:
        found = self.find_many(record, [r.data_id for r in refs[:1000]], [collection])
        clash = next((r for r in refs if r.data_id in found), None)
        if clash is not None:
            return DuplicateDatasetError(
                f"a {record.dataset_type.name!r} dataset with data ID {clash.data_id} already exists in collection "
                f"{collection.name!r}; nothing was written. Write to a new run, or remove the old run first."
            )
        return DuplicateDatasetError(
            f"{record.dataset_type.name!r} datasets with these IDs already exist (or two data IDs repeat); "
            "nothing was written."
        )

    def associate(self, tagged: str, refs: Sequence[DatasetRef]) -> None:
        """Add existing datasets to a TAGGED collection (replacing none)."""
        target = self._collections.get(tagged)
        if target.type is not CollectionType.TAGGED:
            raise CollectionTypeError(f"can only associate datasets with a TAGGED collection; {tagged!r} is {target.type.name}.")
        by_type: dict[str, list[DatasetRef]] = {}
        for r in refs:
            by_type.setdefault(r.dataset_type.name, []).append(r)
        records = {name: self.get_type(name) for name in by_type}
        name = ""
        try:
            with self._db.transaction(write=True, savepoint=True) as conn:
                for name, group in by_type.items():
                    record = records[name]
                    dims = record.dataset_type.dimensions.required
                    rows = [
                        {"dataset_type_id": record.id, "dataset_id": r.id, "collection_id": target.id, **dict(zip(dims, r.data_id.required_values))}
                        for r in group
                    ]
                    conn.execute(record.tags.insert(), rows)
        except sa.exc.IntegrityError:  # the savepoint is rolled back: the database can be asked why
            raise self._duplicate_error(records[name], target, by_type[name]) from None

    def disassociate(self, tagged: str, refs: Sequence[DatasetRef]) -> None:
        """Remove datasets from a TAGGED collection."""
        target = self._collections.get(tagged)
        if target.type is not CollectionType.TAGGED:
            raise CollectionTypeError(f"can only disassociate from a TAGGED collection; {tagged!r} is {target.type.name}.")
        with self._db.transaction(write=True) as conn:
            for name in {r.dataset_type.name for r in refs}:
                record = self.get_type(name)
                ids = [r.id for r in refs if r.dataset_type.name == name]
                conn.execute(
                    record.tags.delete().where(record.tags.c.collection_id == target.id, record.tags.c.dataset_id.in_(ids))
                )

    def find_one(
        self, record: DatasetTypeRecord, data_id: DataCoordinate, collections: Sequence[CollectionRecord]
    ) -> tuple[DatasetRef, dict[str, Any] | None] | None:
        """Find one dataset (first collection wins) with its datastore record, in one query.

        The statement is built once per dataset type and number of collections and then only
        re-executed with new bound values (this is the hot path of every ``Butler.get``).
        """
        if not collections:
            return None
        key = (record.id, len(collections))
        stmt = self._find_statements.get(key)
        if stmt is None:
            tags, d, r = record.tags, self._tables.dataset, self._tables.datastore_record
            stmt = (
                sa.select(tags.c.dataset_id, tags.c.collection_id, d.c.run_id, *[r.c[c] for c in _RECORD_COLUMNS])
                .select_from(tags.join(d, d.c.id == tags.c.dataset_id).outerjoin(r, r.c.dataset_id == tags.c.dataset_id))
                .where(
                    tags.c.dataset_type_id == record.id,
                    tags.c.collection_id.in_([sa.bindparam(f"c{i}") for i in range(len(collections))]),
                    *[tags.c[dim] == sa.bindparam(f"d_{dim}") for dim in record.dataset_type.dimensions.required],
                )
            )
            self._find_statements[key] = stmt
        params = {f"c{i}": c.id for i, c in enumerate(collections)}
        params.update({f"d_{dim}": v for dim, v in zip(record.dataset_type.dimensions.required, data_id.required_values)})
        rows = self._db.fetchall(stmt, params)
        if not rows:
            return None
        rank = {c.id: i for i, c in enumerate(collections)}
        row = min(rows, key=lambda r: rank[r.collection_id])
        ref = DatasetRef(record.dataset_type, data_id, self._collections.by_id(row.run_id).name, id=row.dataset_id)
        stored = None if row.path is None else {"dataset_id": row.dataset_id, **{c: row._mapping[c] for c in _RECORD_COLUMNS}}
        return ref, stored

    def find_many(
        self, record: DatasetTypeRecord, data_ids: Sequence[DataCoordinate], collections: Sequence[CollectionRecord]
    ) -> dict[DataCoordinate, DatasetRef]:
        """Find, for each data ID, the dataset in the first collection (in order) that has one."""
        if not data_ids or not collections:
            return {}
        if len(data_ids) == 1:
            found = self.find_one(record, data_ids[0], collections)
            return {data_ids[0]: found[0]} if found else {}
        tags = record.tags
        d = self._tables.dataset
        dims = record.dataset_type.dimensions.required
        rank = {c.id: i for i, c in enumerate(collections)}
        stmt = (
            sa.select(tags.c.dataset_id, tags.c.collection_id, d.c.run_id, *[tags.c[x] for x in dims])
            .join(d, d.c.id == tags.c.dataset_id)
            .where(tags.c.dataset_type_id == record.id, tags.c.collection_id.in_(list(rank)))
        )
        wanted = {tuple(di.required_values): di for di in data_ids}
        cols = [tags.c[x] for x in dims]
        if dims and len(wanted) <= 500:
            stmt = stmt.where(sa.tuple_(*cols).in_(list(wanted)) if len(cols) > 1 else cols[0].in_([k[0] for k in wanted]))
        best: dict[tuple, tuple[int, sa.Row]] = {}
        for row in self._db.fetchall(stmt):
            key = tuple(row[3:])
            if key not in wanted:
                continue
            r = rank[row.collection_id]
            if key not in best or r < best[key][0]:
                best[key] = (r, row)
        out = {}
        for key, (_, row) in best.items():
            run = self._collections.by_id(row.run_id).name
            out[wanted[key]] = DatasetRef(record.dataset_type, wanted[key], run, id=row.dataset_id)
        return out

    def get_refs(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, DatasetRef]:
        """Return the refs of datasets by ID (missing IDs are left out)."""
        ids = list(ids)
        d = self._tables.dataset
        out: dict[uuid.UUID, DatasetRef] = {}
        rows = []
        for start in range(0, len(ids), 500):
            rows += self._db.fetchall(
                sa.select(d.c.id, d.c.dataset_type_id, d.c.run_id).where(d.c.id.in_(ids[start : start + 500]))
            )
        by_type: dict[int, list[sa.Row]] = {}
        for row in rows:
            by_type.setdefault(row.dataset_type_id, []).append(row)
        for type_id, type_rows in by_type.items():
            if type_id not in self._by_id:
                self._load()
            record = self._by_id[type_id]
            dims = record.dataset_type.dimensions.required
            tags = record.tags
            run_ids = {r.id: r.run_id for r in type_rows}
            tag_rows = self._db.fetchall(
                sa.select(tags.c.dataset_id, *[tags.c[x] for x in dims]).where(tags.c.dataset_id.in_(list(run_ids)))
            )
            for tr in tag_rows:
                if tr.dataset_id in out:
                    continue
                data_id = DataCoordinate.from_required_values(record.dataset_type.dimensions, tuple(tr[1:]))
                run = self._collections.by_id(run_ids[tr.dataset_id]).name
                out[tr.dataset_id] = DatasetRef(record.dataset_type, data_id, run, id=tr.dataset_id)
        return out

    def refs_in_runs(self, runs: Sequence[CollectionRecord]) -> list[DatasetRef]:
        """All datasets owned by the given RUN collections."""
        d = self._tables.dataset
        ids = [row.id for row in self._db.fetchall(sa.select(d.c.id).where(d.c.run_id.in_([r.id for r in runs])))]
        return list(self.get_refs(ids).values())

    def delete(self, ids: Sequence[uuid.UUID]) -> None:
        """Delete datasets (and, by cascade, their tags and datastore records)."""
        d = self._tables.dataset
        with self._db.transaction(write=True) as conn:
            for start in range(0, len(ids), 500):
                conn.execute(d.delete().where(d.c.id.in_(list(ids[start : start + 500]))))
