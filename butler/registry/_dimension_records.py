"""Storage of dimension records: insertion (with the spatial index), lookup with a cache, expansion."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..dimensions import (
    DataCoordinate,
    DataIdValue,
    DimensionElement,
    DimensionRecord,
    DimensionUniverse,
    nsec_to_time,
    time_to_nsec,
)
from ..errors import ConflictingDefinitionError, DataIdError, DataIdValueError
from ..regions import decode_region, encode_region
from ._db import Database
from .schema import RegistryTables

__all__ = ["DimensionRecordStorage"]

KeyTuple = tuple[DataIdValue, ...]


class DimensionRecordStorage:
    """Reads and writes the records of every dimension element.

    Records are immutable once inserted (except with ``replace=True``), so they are cached in memory
    by key.
    """

    def __init__(self, db: Database, tables: RegistryTables, universe: DimensionUniverse):
        self._db = db
        self._tables = tables
        self.universe = universe
        self._cache: dict[str, dict[KeyTuple, DimensionRecord | None]] = {n: {} for n in universe.elements}

    def clear_cache(self) -> None:
        for c in self._cache.values():
            c.clear()

    # Conversion ----------------------------------------------------------------------------------------

    @staticmethod
    def _to_row(record: DimensionRecord) -> dict[str, Any]:
        row = {}
        for spec in record.element.fields:
            v = record.get(spec.name)
            row[spec.name] = time_to_nsec(v) if (spec.type == "time" and v is not None) else v
        if record.element.spatial:
            region = record.get("region")
            row["region"] = encode_region(region) if region is not None else None
        return row

    @staticmethod
    def _from_row(element: DimensionElement, row: Mapping[str, Any]) -> DimensionRecord:
        values = dict(row)
        for spec in element.fields:
            if spec.type == "time" and values.get(spec.name) is not None:
                values[spec.name] = nsec_to_time(values[spec.name])
        if element.spatial and values.get("region") is not None:
            values["region"] = decode_region(values["region"])
        return DimensionRecord(element, values)

    def make_record(self, element: DimensionElement, values: Mapping[str, Any] | DimensionRecord) -> DimensionRecord:
        if isinstance(values, DimensionRecord):
            if values.element is not element:
                raise DataIdError(f"a {values.element.name} record was given where a {element.name} record is needed.")
            return values
        return DimensionRecord(element, values)

    # Writing ---------------------------------------------------------------------------------------------

    def insert(
        self,
        element_name: str,
        records: Iterable[Mapping[str, Any] | DimensionRecord],
        *,
        replace: bool = False,
        skip_existing: bool = False,
    ) -> int:
        """Insert records of one element in one transaction; return how many were inserted.

        Raises
        ------
        ConflictingDefinitionError
            If a record with the same key exists (unless ``skip_existing`` or ``replace``).
        DataIdValueError
            If a record refers to a dimension value that is not registered.
        """
        element = self.universe[element_name]
        recs = [self.make_record(element, r) for r in records]
        if not recs:
            return 0
        table = self._tables.dimensions[element.name]
        key_cols = [element.column_name(d) for d in element.required]
        rows = [self._to_row(r) for r in recs]
        existing = self._existing_keys(element, [r.key_tuple() for r in recs])
        if existing and not (replace or skip_existing):
            first = next(r for r in recs if r.key_tuple() in existing)
            raise ConflictingDefinitionError(
                f"{element.name} record {dict(zip(key_cols, first.key_tuple()))} already exists; "
                "pass skip_existing=True to keep it or replace=True to overwrite it."
            )
        if skip_existing and not replace:
            keep = [i for i, r in enumerate(recs) if r.key_tuple() not in existing]
            recs = [recs[i] for i in keep]
            rows = [rows[i] for i in keep]
            if not rows:
                return 0
        self._check_references(element, recs)
        with self._db.transaction(write=True) as conn:
            new_rows = rows
            if replace and existing:
                # Update in place: other tables (datasets, visits...) refer to these keys.
                replaced = [r.key_tuple() in existing for r in recs]
                new_rows = [row for row, old in zip(rows, replaced) if not old]
                self._update_rows(conn, element, [row for row, old in zip(rows, replaced) if old])
                if element.spatial:
                    self._delete_overlaps(conn, element, [r.key_tuple() for r in recs if r.key_tuple() in existing])
            try:
                if new_rows:
                    conn.execute(table.insert(), new_rows)
            except sa.exc.IntegrityError as err:
                raise ConflictingDefinitionError(
                    f"cannot insert {element.name} records (two of them share a key?): {err.orig}"
                ) from None
            if element.spatial:
                self._insert_overlaps(conn, element, recs)
        cache = self._cache[element.name]
        for r in recs:
            cache[r.key_tuple()] = r
        return len(recs)

    def sync(self, element_name: str, values: Mapping[str, Any] | DimensionRecord) -> bool:
        """Insert a record unless an identical one exists; return whether it was inserted.

        Raises
        ------
        ConflictingDefinitionError
            If a record with the same key but different values exists.
        """
        element = self.universe[element_name]
        record = self.make_record(element, values)
        existing = self.fetch(element, [record.key_tuple()]).get(record.key_tuple())
        if existing is None:
            self.insert(element.name, [record])
            return True
        if existing.to_simple() != record.to_simple():
            diff = {
                k: (existing.to_simple()[k], v)
                for k, v in record.to_simple().items()
                if existing.to_simple().get(k) != v
            }
            raise ConflictingDefinitionError(
                f"{element.name} record {record.key_tuple()} exists with different values "
                f"(field: (existing, new)): {diff}."
            )
        return False

    def _insert_overlaps(self, conn: sa.Connection, element: DimensionElement, recs: Sequence[DimensionRecord]) -> None:
        table = self._tables.overlaps[element.name]
        key_cols = [element.column_name(d) for d in element.required]
        rows = []
        skypix = self.universe.skypix
        for r in recs:
            region = r.get("region")
            if region is None:
                continue
            key = dict(zip(key_cols, r.key_tuple()))
            rows += [{**key, "skypix_index": p} for p in skypix.pixels(region)]
        if rows:
            conn.execute(table.insert(), rows)

    def _update_rows(self, conn: sa.Connection, element: DimensionElement, rows: Sequence[dict[str, Any]]) -> None:
        """Overwrite the non-key columns of existing records (one executemany with bound parameters)."""
        table = self._tables.dimensions[element.name]
        key_cols = [element.column_name(d) for d in element.required]
        if not rows or all(c in key_cols for c in rows[0]):  # nothing but the key: nothing to update
            return
        # Bind names must differ from column names in an UPDATE ... WHERE.
        stmt = (
            table.update()
            .where(*[table.c[c] == sa.bindparam(f"key_{c}") for c in key_cols])
            .values({c: sa.bindparam(c) for c in rows[0] if c not in key_cols})
        )
        conn.execute(stmt, [{**row, **{f"key_{c}": row[c] for c in key_cols}} for row in rows])

    def _delete_overlaps(self, conn: sa.Connection, element: DimensionElement, keys: Sequence[KeyTuple]) -> None:
        table = self._tables.overlaps[element.name]
        cols = [table.c[element.column_name(d)] for d in element.required]
        conn.execute(table.delete().where(sa.tuple_(*cols).in_(keys)))

    def _check_references(self, element: DimensionElement, recs: Sequence[DimensionRecord]) -> None:
        """Raise `DataIdValueError` if records refer to unregistered dimension values."""
        for dim in element.required + element.implied:
            if dim == element.name:
                continue
            target = self.universe[dim]
            keys = {
                tuple(r.get(element.column_name(d) if d != dim else dim) for d in target.required)
                for r in recs
            }
            keys = {k for k in keys if None not in k}
            found = self.fetch(target, keys)
            missing = sorted((k for k in keys if found.get(k) is None), key=str)
            if missing:
                raise DataIdValueError(
                    f"{element.name} record(s) refer to {dim} {dict(zip(target.required, missing[0]))}, which is not "
                    f"registered ({len(missing)} missing value(s)); insert the {dim} record(s) first."
                )

    def _existing_keys(self, element: DimensionElement, keys: Sequence[KeyTuple]) -> set[KeyTuple]:
        found = self.fetch(element, set(keys))
        return {k for k, v in found.items() if v is not None}

    # Reading ---------------------------------------------------------------------------------------------

    def fetch(self, element: DimensionElement, keys: Iterable[KeyTuple]) -> dict[KeyTuple, DimensionRecord | None]:
        """Return the records with the given key tuples (`None` where there is none), using the cache."""
        cache = self._cache[element.name]
        out: dict[KeyTuple, DimensionRecord | None] = {}
        todo = []
        for k in keys:
            if k in cache and cache[k] is not None:
                out[k] = cache[k]
            else:
                todo.append(k)
        if todo:
            table = self._tables.dimensions[element.name]
            cols = [table.c[element.column_name(d)] for d in element.required]
            for start in range(0, len(todo), 500):
                chunk = todo[start : start + 500]
                stmt = sa.select(table).where(sa.tuple_(*cols).in_(chunk) if len(cols) > 1 else cols[0].in_([k[0] for k in chunk]))
                for row in self._db.fetchall(stmt):
                    record = self._from_row(element, row._mapping)
                    cache[record.key_tuple()] = record
                    out[record.key_tuple()] = record
            for k in todo:
                out.setdefault(k, None)
        return out

    def expand(self, data_id: DataCoordinate) -> DataCoordinate:
        """Return ``data_id`` with implied values and the records of every element of its group.

        Raises
        ------
        DataIdValueError
            If a dimension value in the data ID has no record.
        """
        if data_id.has_records():
            return data_id
        return self.expand_many([data_id])[0]

    def expand_many(self, data_ids: Sequence[DataCoordinate], *, full_only: bool = False) -> list[DataCoordinate]:
        """`expand` many data IDs of one group with one query per element.

        With ``full_only`` only the dimensions' records are read and the data IDs returned carry
        their implied values but no records (enough for file templates; regions are not read).
        """
        if not data_ids:
            return []
        group = data_ids[0].dimensions
        known = [dict(d.items()) for d in data_ids]
        records: list[dict[str, DimensionRecord | None]] = [{} for _ in data_ids]
        pending = [e for e in group.elements if not full_only or self.universe[e].is_dimension]
        while pending:
            # Implied values (physical_filter from visit) become known as records are read, so take first
            # the elements whose keys are all known.
            ready = [n for n in pending if all(d in known[0] for d in self.universe[n].required)]
            if not ready:
                raise DataIdError(f"cannot expand {data_ids[0]}: no record gives {', '.join(pending)}.")
            name = ready[0]
            pending.remove(name)
            element = self.universe[name]
            keys = [tuple(k.get(d) for d in element.required) for k in known]
            found = self.fetch(element, {k for k in keys if None not in k})
            for i, key in enumerate(keys):
                record = found.get(key)
                if record is None and element.is_dimension:
                    raise DataIdValueError(
                        f"no {name} record with {', '.join(f'{d}={v!r}' for d, v in zip(element.required, key))} "
                        f"is registered (data ID {data_ids[i]}); check the value or register it first."
                    )
                records[i][name] = record
                if record is not None:
                    for d in element.implied:
                        known[i].setdefault(d, record.get(d))
        if full_only:
            keys = group.data_coordinate_keys
            return [DataCoordinate.from_full_values(group, tuple(k[d] for d in keys)) for k in known]
        return [d.expanded(r) for d, r in zip(data_ids, records)]

    def count(self, element_name: str) -> int:
        table = self._tables.dimensions[element_name]
        return self._db.fetchall(sa.select(sa.func.count()).select_from(table))[0][0]
