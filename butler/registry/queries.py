"""Registry queries: data IDs, datasets and dimension records, with where-expressions and spatial joins.

A query is described by a `QuerySpec` and turned into one SQL statement by `_QueryBuilder`: the
tables of the dimensions involved (and the tags tables of dataset-type constraints) are joined on
their common dimension columns; when the dimensions span two spatial families (``visit, detector`` and
``tract, patch``) their skypix-overlap index tables are joined on the pixel ID and the candidate pairs
are refined in Python by an exact region-overlap test.  When a query finds nothing, `explain_empty`
re-runs it with each constraint alone to say which one removed everything.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..dimensions import (
    DataCoordinate,
    DimensionElement,
    DimensionGroup,
    DimensionUniverse,
)
from ..errors import CalibrationLookupError, InvalidQueryError, did_you_mean
from ..regions import decode_region, regions_overlap
from ..timespan import Timespan
from ._calibrations import overlap_clause
from ._collections import CollectionRecord
from ._datasets import DatasetTypeRecord
from .expressions import (
    ColumnInfo,
    LogicalOp,
    Node,
    compile_where,
    format_node,
    referenced_identifiers,
)
from .schema import CollectionType, RegistryTables

__all__ = ["QuerySpec", "QueryRunner"]

# Messages of SQLite and PostgreSQL when a statement exceeds their limits (expression depth, number of
# bound parameters or of compound terms, parser stack).
_DATABASE_LIMIT_RE = re.compile(
    r"too large|too many|too big|parser stack overflow|stack depth limit exceeded|number of parameters", re.I
)


@dataclasses.dataclass
class DatasetSearch:
    """A dataset-type constraint: datasets of this type in these collections (in search order).

    Attributes
    ----------
    record : `DatasetTypeRecord`
    collections : `list` [`CollectionRecord`]
    calibs : `sqlalchemy.Table` or `None`
        The certification table of a calibration dataset type, when CALIBRATION collections are
        searched (their members come from it; `None`: they hold nothing of this type).
    timespan : `Timespan` or `None`
        Only certifications whose validity range overlaps it (RUN and TAGGED members always match).
    """

    record: DatasetTypeRecord
    collections: list[CollectionRecord]
    calibs: sa.Table | None = None
    timespan: Timespan | None = None

    @property
    def has_calibrations(self) -> bool:
        """Whether CALIBRATION collections with certifications of this dataset type are searched."""
        return self.calibs is not None and any(c.type is CollectionType.CALIBRATION for c in self.collections)


@dataclasses.dataclass
class QuerySpec:
    """Everything a query needs.

    Attributes
    ----------
    dimensions : `DimensionGroup`
        The dimensions of the result rows.
    searches : `list` [`DatasetSearch`]
        Dataset constraints; with ``result_dataset`` the first is the dataset type returned.
    where : `Node` or `None`
    bind : `dict`
    data_id : `dict`
        Equality constraints on dimensions.
    order_by : `list` [`str`]
        ``"visit"``, ``"-detector"``, ``"visit.exposure_time"``.
    limit : `int` or `None`
    element : `DimensionElement` or `None`
        For a dimension-record query: the element whose records are returned.
    result_dataset : `bool`
        Whether the rows are datasets of ``searches[0]``.
    find_first : `bool`
        With ``result_dataset``: keep, per data ID, only the dataset in the first collection that has one.
    with_validity : `bool`
        With ``result_dataset``: add each row's validity range (``validity_begin``, ``validity_end``, TAI
        ns; NULL for RUN/TAGGED members) after the data ID values, and keep one row per certification.
    """

    dimensions: DimensionGroup
    searches: list[DatasetSearch] = dataclasses.field(default_factory=list)
    where: Node | None = None
    bind: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_id: dict[str, Any] = dataclasses.field(default_factory=dict)
    order_by: list[str] = dataclasses.field(default_factory=list)
    limit: int | None = None
    element: DimensionElement | None = None
    result_dataset: bool = False
    find_first: bool = True
    with_validity: bool = False
    where_text: str = ""

    def relation_dimensions(self) -> DimensionGroup:
        """All dimensions the query involves: the result's, the datasets', and those the constraints name."""
        universe = self.dimensions.universe
        names = set(self.dimensions.names)
        for s in self.searches:
            names.update(s.record.dataset_type.dimensions.names)
        names.update(self.data_id)
        for element, _field in referenced_identifiers(self.where, self.bind):
            names.update(_dimensions_of_identifier(universe, element, self.bind))
        for term in self.order_by:
            names.update(_dimensions_of_identifier(universe, term.lstrip("-").partition(".")[0], self.bind))
        return universe.conform(names)


def _dimensions_of_identifier(universe: DimensionUniverse, name: str, bind: Mapping[str, Any]) -> tuple[str, ...]:
    if name in universe.dimensions:
        return (name,)
    if name in universe.elements:
        return universe[name].required
    valid = list(universe.elements) + list(bind)
    raise InvalidQueryError(
        f"{name!r} in the query is neither a dimension nor a bind name. {did_you_mean(name, valid)}"
    )


class _QueryBuilder:
    """Accumulates joins and constraints for one SQL statement."""

    def __init__(self, tables: RegistryTables, group: DimensionGroup):
        self.tables = tables
        self.universe = group.universe
        self.group = group
        self.columns: dict[str, sa.ColumnElement] = {}
        self.joined: dict[str, sa.FromClause] = {}
        self.from_: sa.FromClause | None = None
        self.conditions: list[sa.ColumnElement[bool]] = []
        self.region_columns: list[sa.ColumnElement] = []

    def _join(self, table: sa.FromClause, columns: Mapping[str, sa.ColumnElement]) -> None:
        on = [col == self.columns[dim] for dim, col in columns.items() if dim in self.columns]
        for dim, col in columns.items():
            self.columns.setdefault(dim, col)
        if self.from_ is None:
            self.from_ = table
            self.conditions += on
        else:
            self.from_ = self.from_.join(table, sa.and_(*on) if on else sa.true())

    def join_element(self, name: str) -> sa.FromClause:
        """Join the table of a dimension element (once) on the dimension columns already present."""
        table = self.joined.get(name)
        if table is None:
            element = self.universe[name]
            table = self.tables.dimensions[name]
            columns = {d: table.c[element.column_name(d)] for d in element.required + element.implied}
            self._join(table, columns)
            self.joined[name] = table
        return table

    def join_dataset(self, search: DatasetSearch, *, alias: str) -> sa.FromClause:
        """Join the tags table of a dataset search, restricted to its collections.

        With CALIBRATION collections (`DatasetSearch.has_calibrations`) the joined relation is the union
        of the tags rows of the other collections and the certification rows of the CALIBRATION ones
        (overlapping the search's timespan), with their validity columns (NULL for tags rows).
        """
        record = search.record
        dims = record.dataset_type.dimensions.required
        if search.has_calibrations:
            relation = self._dataset_union(search).subquery(alias)
            self._join(relation, {d: relation.c[d] for d in dims})
            return relation
        tags = record.tags.alias(alias)
        self._join(tags, {d: tags.c[d] for d in dims})
        self.conditions.append(tags.c.dataset_type_id == record.id)
        ids = [c.id for c in search.collections]
        self.conditions.append(tags.c.collection_id.in_(ids) if len(ids) != 1 else tags.c.collection_id == ids[0])
        return tags

    @staticmethod
    def _dataset_union(search: DatasetSearch) -> sa.Select | sa.CompoundSelect:
        record = search.record
        dims = record.dataset_type.dimensions.required
        plain = [c.id for c in search.collections if c.type is not CollectionType.CALIBRATION]
        calib = [c.id for c in search.collections if c.type is CollectionType.CALIBRATION]
        c = search.calibs
        assert c is not None
        conditions = [c.c.dataset_type_id == record.id, c.c.collection_id.in_(calib)]
        if search.timespan is not None:
            conditions.append(overlap_clause(c, search.timespan))
        certified = sa.select(
            c.c.dataset_id, c.c.collection_id, *[c.c[d] for d in dims], c.c.validity_begin, c.c.validity_end
        ).where(*conditions)
        if not plain:
            return certified
        tags = record.tags
        null = sa.cast(sa.null(), sa.BigInteger)
        tagged = sa.select(
            tags.c.dataset_id, tags.c.collection_id, *[tags.c[d] for d in dims],
            null.label("validity_begin"), null.label("validity_end"),
        ).where(tags.c.dataset_type_id == record.id, tags.c.collection_id.in_(plain))
        return sa.union_all(tagged, certified)

    def ensure_column(self, dim: str) -> sa.ColumnElement:
        """Return the column of a dimension's value, joining a table that has it if needed."""
        if dim not in self.columns:
            implier = next(
                (n for n in self.group.names if dim in self.universe[n].implied and n in self.joined),
                None,
            ) or next((n for n in self.group.names if dim in self.universe[n].implied), None)
            if implier is not None and dim in self.group.implied:
                self.ensure_column(implier)
                self.join_element(implier)
            if dim not in self.columns:
                self.join_element(dim)
        return self.columns[dim]

    def resolve(self, element: str, field: str | None) -> ColumnInfo:
        """The where-expression resolver: identifier -> column and value kind."""
        if element not in self.universe.elements:
            raise InvalidQueryError(
                f"{element!r} is neither a dimension nor a bind name. {did_you_mean(element, self.universe.elements)}"
            )
        el = self.universe[element]
        if el.is_dimension and (field is None or field == el.key.name):  # type: ignore[union-attr]
            return ColumnInfo(self.ensure_column(element), el.key.type)  # type: ignore[union-attr]
        if field is None:
            raise InvalidQueryError(f"{element!r} is not a dimension; name one of its fields ({', '.join(el.field_names)}).")
        if field == "region":
            raise InvalidQueryError("regions cannot be compared in a where-expression; query spatially by dimensions instead.")
        spec = next((f for f in el.fields if f.name == field), None)
        if spec is None:
            raise InvalidQueryError(
                f"{element} has no field {field!r}. {did_you_mean(field, [f for f in el.field_names if f != 'region'])}"
            )
        for d in el.required:
            self.ensure_column(d)
        table = self.join_element(element)
        return ColumnInfo(table.c[field], spec.type)

    def join_spatial(self) -> bool:
        """Join the overlap index of two spatial families; return whether refinement is needed."""
        families = self.group.spatial_elements()
        if len(families) < 2:
            return False
        if len(families) > 2:
            raise InvalidQueryError(f"a query can relate at most two spatial families; got {', '.join(families)}.")
        overlap_aliases = []
        for i, name in enumerate(families.values()):
            element = self.universe[name]
            for d in element.required:
                self.ensure_column(d)
            table = self.join_element(name)
            self.region_columns.append(table.c.region)
            ov = self.tables.overlaps[name].alias(f"overlap_{i}")
            on = [ov.c[element.column_name(d)] == self.columns[d] for d in element.required]
            if overlap_aliases:
                on.append(ov.c.skypix_index == overlap_aliases[0].c.skypix_index)
            assert self.from_ is not None
            self.from_ = self.from_.join(ov, sa.and_(*on))
            overlap_aliases.append(ov)
        return True

    def order_by_clauses(self, terms: Sequence[str]) -> list[sa.ColumnElement]:
        out = []
        for term in terms:
            desc = term.startswith("-")
            element, _, field = term.lstrip("-").partition(".")
            col = self.resolve(element, field or None).column
            out.append(col.desc() if desc else col.asc())
        return out


class QueryRunner:
    """Runs `QuerySpec`s against a registry database."""

    def __init__(self, db: Any, tables: RegistryTables, collection_name: Callable[[int], str]):
        self._db = db
        self._tables = tables
        self._collection_name = collection_name  # collection ID -> name, for error messages

    def _fetch(self, stmt: sa.Select) -> list[sa.Row]:
        """Run a query; a statement beyond the database's limits is the user's `InvalidQueryError`."""
        try:
            return self._db.fetchall(stmt)
        except sa.exc.DBAPIError as err:
            if not _DATABASE_LIMIT_RE.search(str(err.orig)):
                raise
            raise InvalidQueryError(
                f"the query is too large for the database ({str(err.orig).splitlines()[0]}). Write long OR "
                "chains as IN (...) lists or ranges (visit IN (1..100)), or split the query."
            ) from None

    def _build(
        self, spec: QuerySpec, *, use_where: bool = True, use_spatial: bool = True, use_data_id: bool = True,
        use_datasets: bool = True, where: Node | None = None,
    ) -> tuple[sa.Select, bool, _QueryBuilder]:
        group = spec.relation_dimensions()
        qb = _QueryBuilder(self._tables, group)
        if spec.element is not None:
            qb.join_element(spec.element.name)
        dataset_aliases = []
        if use_datasets:
            for i, search in enumerate(spec.searches):
                dataset_aliases.append(qb.join_dataset(search, alias=f"tags_{i}"))
        for d in group.required:
            qb.ensure_column(d)
        for name in group.elements:
            if qb.universe[name].always_join:
                qb.join_element(name)
        # Every result key, including required ones the where-expression's dimensions imply (band of a visit).
        for d in spec.dimensions.data_coordinate_keys:
            qb.ensure_column(d)
        refine = qb.join_spatial() if use_spatial else False
        if use_data_id:
            for k, v in spec.data_id.items():
                qb.conditions.append(qb.ensure_column(k) == v)
        node = where if where is not None else (spec.where if use_where else None)
        if node is not None:
            clause = compile_where(node, qb.resolve, spec.bind)
            if clause is not None:
                qb.conditions.append(clause)
        order = qb.order_by_clauses(spec.order_by)
        columns: list[sa.ColumnElement] = []
        if spec.result_dataset:
            tags = dataset_aliases[0]
            d = self._tables.dataset
            qb.from_ = qb.from_.join(d, d.c.id == tags.c.dataset_id)  # type: ignore[union-attr]
            columns += [tags.c.dataset_id, tags.c.collection_id, d.c.run_id]
            columns += [qb.columns[x] for x in spec.searches[0].record.dataset_type.dimensions.required]
            if self._validity_columns(spec):
                columns += [tags.c.validity_begin, tags.c.validity_end]
        elif spec.element is not None:
            table = qb.joined[spec.element.name]
            columns += [table.c[n] for n in spec.element.field_names]
        else:
            columns += [qb.columns[x] for x in spec.dimensions.data_coordinate_keys]
        columns += qb.region_columns
        stmt = sa.select(*columns).select_from(qb.from_).where(*qb.conditions)
        # A dataset constraint over several collections (or validity ranges) matches a data ID once per dataset.
        repeated = use_datasets and any(len(s.collections) > 1 or s.has_calibrations for s in spec.searches)
        if refine or repeated or spec.result_dataset or spec.element is not None or len(group.names) > len(spec.dimensions.names):
            stmt = stmt.distinct()
        if order:
            stmt = stmt.order_by(*order)
        return stmt, refine, qb

    @staticmethod
    def _validity_columns(spec: QuerySpec) -> bool:
        """Whether the result rows carry validity columns: asked for, or needed to explain an ambiguous
        find-first calibration lookup."""
        return spec.result_dataset and spec.searches[0].has_calibrations and (spec.with_validity or spec.find_first)

    def rows(self, spec: QuerySpec) -> list[tuple]:
        """Run the query and return result rows (region columns removed after spatial refinement).

        Dataset rows are ``(dataset_id, collection_id, run_id, *data ID values)``, followed by
        ``(validity_begin, validity_end)`` when the search goes through CALIBRATION collections and
        ``with_validity`` or ``find_first`` is set.

        Raises
        ------
        CalibrationLookupError
            For a find-first search in which several datasets of one data ID are valid in one
            CALIBRATION collection at the search's timespan.
        """
        stmt, refine, _ = self._build(spec)
        python_limit = refine or (
            spec.result_dataset and spec.find_first
            and (len(spec.searches[0].collections) > 1 or spec.searches[0].has_calibrations)
        )
        if spec.limit is not None and not python_limit:
            stmt = stmt.limit(spec.limit)
        rows = [tuple(r) for r in self._fetch(stmt)]
        if refine:
            rows = [r[:-2] for r in rows if regions_overlap_or_missing(r[-2], r[-1])]
            rows = list(dict.fromkeys(rows))
        if spec.result_dataset:
            if spec.find_first:
                rows = self._find_first(spec, rows)
            elif not spec.with_validity:
                rows = list({r[0]: r for r in rows}.values())
        if spec.limit is not None:
            rows = rows[: spec.limit]
        return rows

    def _find_first(self, spec: QuerySpec, rows: list[tuple]) -> list[tuple]:
        search = spec.searches[0]
        n = len(search.record.dataset_type.dimensions.required)
        rank = {c.id: i for i, c in enumerate(search.collections)}
        best: dict[tuple, tuple] = {}
        rivals: dict[tuple, dict[Any, tuple]] = {}  # key -> other datasets of the best collection
        for r in rows:
            key = r[3 : 3 + n]
            if key not in best or rank[r[1]] < rank[best[key][1]]:
                best[key] = r
                rivals.pop(key, None)
            elif r[1] == best[key][1] and r[0] != best[key][0]:  # only CALIBRATION collections allow this
                rivals.setdefault(key, {})[r[0]] = r
        for key, others in rivals.items():
            self._ambiguous(search, key, [best[key], *others.values()])
        return list(best.values())

    def _ambiguous(self, search: DatasetSearch, key: tuple, rows: list[tuple]) -> None:
        dims = search.record.dataset_type.dimensions.required
        n = len(dims)
        listed = "; ".join(
            f"{r[0]} (run {self._collection_name(r[2])!r}, valid {Timespan.from_nsec(r[3 + n], r[4 + n])})"
            for r in rows
        )
        raise CalibrationLookupError(
            f"{len(rows)} {search.record.dataset_type.name!r} datasets with data ID {dict(zip(dims, key))} are valid "
            f"during {search.timespan} in CALIBRATION collection {self._collection_name(rows[0][1])!r}: {listed}. "
            "Look up with a shorter timespan (one exposure's), or decertify the overlapping ranges."
        )

    def count(self, spec: QuerySpec, **kwargs: Any) -> int:
        stmt, refine, _ = self._build(spec, **kwargs)
        if refine:
            return sum(1 for r in self._fetch(stmt) if regions_overlap_or_missing(r[-2], r[-1]))
        return self._fetch(sa.select(sa.func.count()).select_from(stmt.subquery()))[0][0]

    def explain_empty(self, spec: QuerySpec, records_count: Any) -> list[str]:
        """Say which constraints of an empty query removed everything (each checked alone)."""
        reasons = []
        for search in spec.searches:
            name = search.record.dataset_type.name
            colls = [c.name for c in search.collections]
            if not colls:
                reasons.append(f"no collections to search for {name!r} datasets.")
                continue
            only = QuerySpec(search.record.dataset_type.dimensions, searches=[search], result_dataset=True, find_first=False)
            if self.count(only) == 0:
                reasons.append(f"there are no {name!r} datasets in collection(s) {colls}.")
        group = spec.relation_dimensions()
        provided = {d for s in spec.searches for d in s.record.dataset_type.dimensions.required}
        for d in group.required:
            if d not in provided and records_count(d) == 0:
                reasons.append(f"no {d!r} dimension records are registered.")
        if reasons:
            return reasons
        base = dict(use_where=False, use_spatial=False, use_data_id=False)
        if self.count(spec, **base) == 0:
            return ["the dimensions and datasets involved have no rows in common (before any where, data ID or spatial constraint)."]
        if spec.data_id and self.count(spec, use_where=False, use_spatial=False) == 0:
            reasons.append(f"no rows match the data ID {spec.data_id}.")
        if spec.where is not None:
            terms = spec.where.operands if isinstance(spec.where, LogicalOp) and spec.where.op == "AND" else (spec.where,)
            for term in terms:
                if self.count(spec, use_spatial=False, use_data_id=False, where=term) == 0:
                    reasons.append(f"the where-term {format_node(term)!r} matches nothing on its own.")
            if not reasons and self.count(spec, use_spatial=False) == 0:
                reasons.append(f"the where-expression {spec.where_text!r} matches no rows (its terms together exclude each other).")
        if not reasons and len(group.spatial_elements()) > 1:
            families = list(group.spatial_elements().values())
            reasons.append(f"no {families[0]} region overlaps a {families[1]} region among the rows that match.")
        return reasons or ["no rows match the combination of constraints."]


def regions_overlap_or_missing(a: bytes | None, b: bytes | None) -> bool:
    """Exact overlap test of two encoded regions; a missing region never overlaps."""
    if a is None or b is None:
        return False
    return regions_overlap(decode_region(a), decode_region(b))


def make_data_ids(group: DimensionGroup, rows: Iterable[tuple]) -> list[DataCoordinate]:
    """Turn result rows (required + implied values, in order) into data IDs."""
    n = len(group.data_coordinate_keys)
    return [DataCoordinate.from_full_values(group, tuple(r[:n])) for r in rows]
