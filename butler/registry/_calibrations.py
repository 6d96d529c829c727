"""CALIBRATION collections: certification of calibration datasets with validity ranges, and lookups by time.

A certification is a row of ``dataset_calibs_<dims>`` (see `RegistryTables.calib_table`): a dataset
of a calibration dataset type, a CALIBRATION collection, and a validity range ``[begin, end)`` in TAI
nanoseconds.  Within one collection the ranges of one dataset type and data ID never overlap, so a
lookup at a time finds at most one dataset per collection.  `certify` and `decertify` lock the
collection's row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises writers anyway), so two
concurrent certifications into one collection cannot both pass the overlap check.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence

import sqlalchemy as sa

from ..datasets import DatasetRef
from ..dimensions import DataCoordinate
from ..errors import (
    CalibrationLookupError,
    CollectionTypeError,
    ConflictingDefinitionError,
    DatasetNotFoundError,
    DatasetTypeError,
    TimespanError,
)
from ..timespan import Timespan
from ._collections import CollectionManager, CollectionRecord
from ._datasets import DatasetManager, DatasetTypeRecord
from ._db import Database
from .schema import CollectionType, RegistryTables

__all__ = ["CalibrationManager", "DatasetAssociation"]

_CHUNK = 500  # data ID tuples per IN (...) clause


@dataclasses.dataclass(frozen=True)
class DatasetAssociation:
    """A dataset's membership of one collection, with its validity range there.

    Attributes
    ----------
    ref : `DatasetRef`
    collection : `str`
        The RUN, TAGGED or CALIBRATION collection.
    timespan : `Timespan` or `None`
        The validity range in a CALIBRATION collection; `None` in RUN and TAGGED collections (valid
        at any time).
    """

    ref: DatasetRef
    collection: str
    timespan: Timespan | None


@dataclasses.dataclass(frozen=True)
class _Candidate:
    dataset_id: uuid.UUID
    collection_id: int
    run_id: int
    key: tuple
    timespan: Timespan | None


def is_calibration_search(record: DatasetTypeRecord, collections: Sequence[CollectionRecord]) -> bool:
    """Whether a lookup of this dataset type through these collections needs a time.

    That is when the dataset type is a calibration and a CALIBRATION collection is searched; other
    dataset types are never certified, so CALIBRATION collections hold none of them.
    """
    return record.dataset_type.is_calibration and any(c.type is CollectionType.CALIBRATION for c in collections)


def overlap_clause(table: sa.FromClause, timespan: Timespan) -> sa.ColumnElement[bool]:
    """SQL: the row's validity range overlaps ``timespan`` (bound parameters; unbounded = sentinels)."""
    begin, end = timespan.nsec
    return sa.and_(table.c.validity_begin < sa.bindparam(None, end, sa.BigInteger),
                   table.c.validity_end > sa.bindparam(None, begin, sa.BigInteger))


def _key_filter(columns: list[sa.ColumnElement], keys: Sequence[tuple]) -> sa.ColumnElement[bool]:
    if len(columns) == 1:
        return columns[0].in_([k[0] for k in keys])
    return sa.tuple_(*columns).in_(list(keys))


class CalibrationManager:
    """Certifies and decertifies calibrations and finds them by validity time.

    Parameters
    ----------
    db : `Database`
    tables : `RegistryTables`
    collections : `CollectionManager`
    datasets : `DatasetManager`
    """

    def __init__(self, db: Database, tables: RegistryTables, collections: CollectionManager, datasets: DatasetManager):
        self._db = db
        self._tables = tables
        self._collections = collections
        self._datasets = datasets
        self._existing: set[str] = set()  # names of certification tables known to exist in the database

    def clear_cache(self) -> None:
        self._existing.clear()

    # Tables -------------------------------------------------------------------------------------------

    def table(self, record: DatasetTypeRecord) -> sa.Table | None:
        """The certification table of a calibration dataset type, or `None` if it was never created.

        (Repositories made before CALIBRATION collections existed have no such table until the first
        certification.)
        """
        table = self._tables.calib_table(record.dataset_type.dimensions)
        if table.name not in self._existing:
            with self._db.transaction() as conn:
                if not sa.inspect(conn).has_table(table.name):
                    return None
            self._existing.add(table.name)
        return table

    def create_table(self, record: DatasetTypeRecord, conn: sa.Connection) -> sa.Table:
        """Create the certification table of a calibration dataset type if needed (inside ``conn``'s transaction)."""
        table = self._tables.calib_table(record.dataset_type.dimensions)
        if table.name not in self._existing:
            table.create(conn, checkfirst=True)
            self._existing.add(table.name)
        return table

    # Writing ------------------------------------------------------------------------------------------

    def _calibration_collection(self, name: str, action: str) -> CollectionRecord:
        record = self._collections.get(name)
        if record.type is not CollectionType.CALIBRATION:
            raise CollectionTypeError(
                f"can only {action} a CALIBRATION collection; {name!r} is a {record.type.name} collection. Use "
                "another name, or register one with register_collection(name, CollectionType.CALIBRATION) "
                "(`butler certify-calibrations` does)."
            )
        return record

    def _calibration_type(self, name: str) -> DatasetTypeRecord:
        record = self._datasets.get_type(name)
        if not record.dataset_type.is_calibration:
            raise DatasetTypeError(
                f"dataset type {name!r} is not a calibration dataset type, so its datasets cannot be certified; "
                f"register calibrations with is_calibration=True (`butler register-dataset-type --is-calibration`, "
                "or isCalibration=True on the task connection that writes them)."
            )
        return record

    def _lock(self, conn: sa.Connection, collection: CollectionRecord) -> None:
        c = self._tables.collection
        conn.execute(sa.select(c.c.collection_id).where(c.c.collection_id == collection.id).with_for_update())

    def certify(self, collection: str, refs: Iterable[DatasetRef], timespan: Timespan) -> int:
        """Certify datasets into a CALIBRATION collection as valid over ``timespan``, in one transaction.

        Returns the number of datasets certified.  See `Registry.certify` for the errors.
        """
        target = self._calibration_collection(collection, "certify datasets into")
        if timespan.is_empty():
            raise TimespanError(f"cannot certify datasets over the empty timespan {timespan}; give an end after the begin.")
        unique = list({r.id: r for r in refs}.values())
        by_type: dict[str, list[DatasetRef]] = {}
        for ref in unique:
            by_type.setdefault(ref.dataset_type.name, []).append(ref)
        records = {name: self._calibration_type(name) for name in by_type}
        registered = self._datasets.get_refs([r.id for r in unique])
        missing = [r for r in unique if r.id not in registered]
        if missing:
            raise DatasetNotFoundError(
                f"{len(missing)} dataset(s) to certify are not in this repository, e.g. {missing[0]}; nothing was certified."
            )
        with self._db.transaction(write=True, savepoint=True) as conn:
            self._lock(conn, target)
            for name, group in by_type.items():
                record = records[name]
                table = self.create_table(record, conn)
                dims = record.dataset_type.dimensions.required
                keyed: dict[tuple, DatasetRef] = {}
                for ref in group:
                    ref = registered[ref.id]
                    key = ref.data_id.required_values
                    if key in keyed:
                        raise ConflictingDefinitionError(
                            f"cannot certify two {name!r} datasets with data ID {ref.data_id} ({keyed[key].id} and "
                            f"{ref.id}) over the same timespan {timespan} in {collection!r}; certify them separately "
                            "over disjoint timespans."
                        )
                    keyed[key] = ref
                clash = self._first_overlap(conn, table, record, target, list(keyed), timespan)
                if clash is not None:
                    old_id, key, old_span = clash
                    data_id = DataCoordinate.from_required_values(record.dataset_type.dimensions, key)
                    raise ConflictingDefinitionError(
                        f"cannot certify {name!r} {keyed[key].id} with data ID {data_id} into {collection!r} "
                        f"over {timespan}: dataset {old_id} is already certified there over {old_span}, "
                        "and the validity ranges of one data ID may not overlap. Decertify the old range first "
                        "(Registry.decertify) or choose a timespan that does not overlap; nothing was certified."
                    )
                begin, end = timespan.nsec
                self._db.insert_rows(
                    conn, table,
                    ("dataset_type_id", "dataset_id", "collection_id", "validity_begin", "validity_end", *dims),
                    ((record.id, ref.id, target.id, begin, end, *key) for key, ref in keyed.items()),
                )
        return len(unique)

    def _first_overlap(
        self, conn: sa.Connection, table: sa.Table, record: DatasetTypeRecord, collection: CollectionRecord,
        keys: Sequence[tuple], timespan: Timespan,
    ) -> tuple[uuid.UUID, tuple, Timespan] | None:
        """(dataset ID, data ID values, range) of an existing certification of one of ``keys`` in
        ``collection`` that overlaps ``timespan``."""
        dims = record.dataset_type.dimensions.required
        cols = [table.c[d] for d in dims]
        for start in range(0, len(keys), _CHUNK):
            stmt = sa.select(table.c.dataset_id, table.c.validity_begin, table.c.validity_end, *cols).where(
                table.c.dataset_type_id == record.id,
                table.c.collection_id == collection.id,
                overlap_clause(table, timespan),
            )
            if dims:
                stmt = stmt.where(_key_filter(cols, keys[start : start + _CHUNK]))
            row = conn.execute(stmt.limit(1)).first()
            if row is not None:
                return row[0], tuple(row[3:]), Timespan.from_nsec(row[1], row[2])
            if not dims:
                break
        return None

    def decertify(
        self,
        collection: str,
        dataset_type: str,
        timespan: Timespan,
        *,
        data_ids: Sequence[DataCoordinate] | None = None,
    ) -> int:
        """Remove validity over ``timespan``: ranges inside it go, ranges overlapping it are cut or split.

        Returns the number of certifications removed or changed.  See `Registry.decertify`.
        """
        target = self._calibration_collection(collection, "decertify datasets from")
        record = self._calibration_type(dataset_type)
        table = self.table(record)
        if table is None or (data_ids is not None and not data_ids):
            return 0
        dims = record.dataset_type.dimensions.required
        cols = [table.c[d] for d in dims]
        keys = None if data_ids is None else list({d.required_values: None for d in data_ids})
        changed = 0
        with self._db.transaction(write=True, savepoint=True) as conn:
            self._lock(conn, target)
            base = sa.select(table).where(
                table.c.dataset_type_id == record.id, table.c.collection_id == target.id, overlap_clause(table, timespan)
            )
            if keys is None or not dims:
                rows = conn.execute(base).fetchall()
            else:
                rows = []
                for start in range(0, len(keys), _CHUNK):
                    rows += conn.execute(base.where(_key_filter(cols, keys[start : start + _CHUNK]))).fetchall()
            for row in rows:
                m = row._mapping
                conn.execute(
                    table.delete().where(
                        table.c.dataset_id == m["dataset_id"],
                        table.c.collection_id == target.id,
                        table.c.validity_begin == m["validity_begin"],
                    )
                )
                kept = Timespan.from_nsec(m["validity_begin"], m["validity_end"]).difference(timespan)
                if kept:
                    conn.execute(
                        table.insert(),
                        [{**dict(m), "validity_begin": t.nsec[0], "validity_end": t.nsec[1]} for t in kept],
                    )
                changed += 1
        return changed

    # Lookups ------------------------------------------------------------------------------------------

    def _candidates(
        self, record: DatasetTypeRecord, collections: Sequence[CollectionRecord], keys: Sequence[tuple]
    ) -> list[_Candidate]:
        """Every dataset of ``keys`` in the collections, with its validity range in CALIBRATION ones (one query)."""
        dims = record.dataset_type.dimensions.required
        d = self._tables.dataset
        plain = [c.id for c in collections if c.type is not CollectionType.CALIBRATION]
        calib = [c.id for c in collections if c.type is CollectionType.CALIBRATION]
        table = self.table(record) if calib else None
        parts = []
        filter_keys = bool(dims) and len(keys) <= _CHUNK
        if plain:
            tags = record.tags
            null = sa.cast(sa.null(), sa.BigInteger)
            stmt = (
                sa.select(tags.c.dataset_id, tags.c.collection_id, d.c.run_id, *[tags.c[x] for x in dims],
                          null.label("validity_begin"), null.label("validity_end"))
                .join(d, d.c.id == tags.c.dataset_id)
                .where(tags.c.dataset_type_id == record.id, tags.c.collection_id.in_(plain))
            )
            if filter_keys:
                stmt = stmt.where(_key_filter([tags.c[x] for x in dims], keys))
            parts.append(stmt)
        if table is not None:
            stmt = (
                sa.select(table.c.dataset_id, table.c.collection_id, d.c.run_id, *[table.c[x] for x in dims],
                          table.c.validity_begin, table.c.validity_end)
                .join(d, d.c.id == table.c.dataset_id)
                .where(table.c.dataset_type_id == record.id, table.c.collection_id.in_(calib))
            )
            if filter_keys:
                stmt = stmt.where(_key_filter([table.c[x] for x in dims], keys))
            parts.append(stmt)
        if not parts:
            return []
        wanted = set(keys)
        n = len(dims)
        out = []
        for row in self._db.fetchall(sa.union_all(*parts) if len(parts) > 1 else parts[0]):
            key = tuple(row[3 : 3 + n])
            if key in wanted:
                begin, end = row[3 + n], row[4 + n]
                span = None if begin is None else Timespan.from_nsec(begin, end)
                out.append(_Candidate(row[0], row[1], row[2], key, span))
        return out

    def find(
        self,
        record: DatasetTypeRecord,
        data_ids: Sequence[DataCoordinate],
        timespans: Sequence[Timespan],
        collections: Sequence[CollectionRecord],
    ) -> list[DatasetRef | None]:
        """For each data ID, the dataset of the first collection that has one valid at its timespan
        (`None` where there is none), in the order of ``data_ids``.

        In a RUN or TAGGED collection a dataset is valid at any time; in a CALIBRATION collection
        when its validity range overlaps the timespan.

        Raises
        ------
        CalibrationLookupError
            If several datasets of one data ID are valid at its timespan in one collection.
        """
        keys = [d.required_values for d in data_ids]
        by_key: dict[tuple, dict[int, list[_Candidate]]] = {}
        for cand in self._candidates(record, collections, list(dict.fromkeys(keys))):
            by_key.setdefault(cand.key, {}).setdefault(cand.collection_id, []).append(cand)
        return [
            self.resolve(record, data_id, by_key.get(key, {}), collections, timespan)
            for data_id, key, timespan in zip(data_ids, keys, timespans, strict=True)
        ]

    def resolve(
        self,
        record: DatasetTypeRecord,
        data_id: DataCoordinate,
        candidates: Mapping[int, Sequence[_Candidate]],
        collections: Sequence[CollectionRecord],
        timespan: Timespan,
    ) -> DatasetRef | None:
        """Pick, among one data ID's candidates by collection ID, the first valid at ``timespan``."""
        for collection in collections:
            cands = candidates.get(collection.id)
            if not cands:
                continue
            if collection.type is not CollectionType.CALIBRATION:
                chosen = cands[0]
            else:
                matches = {c.dataset_id: c for c in cands if c.timespan is not None and c.timespan.overlaps(timespan)}
                if not matches:
                    continue
                if len(matches) > 1:
                    raise CalibrationLookupError(
                        f"{len(matches)} {record.dataset_type.name!r} datasets with data ID {data_id} are valid during "
                        f"{timespan} in CALIBRATION collection {collection.name!r}: "
                        + "; ".join(
                            f"{c.dataset_id} (run {self._collections.by_id(c.run_id).name!r}, valid {c.timespan})"
                            for c in matches.values()
                        )
                        + ". Look up with a shorter timespan (one exposure's), or decertify the overlapping ranges."
                    )
                chosen = next(iter(matches.values()))
            return DatasetRef(record.dataset_type, data_id, self._collections.by_id(chosen.run_id).name, id=chosen.dataset_id)
        return None
