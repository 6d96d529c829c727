"""The registry: a SQL database of dimension records, collections, dataset types and datasets."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..datasets import DatasetIdGenEnum, DatasetRef, DatasetType
from ..dimensions import (
    DataCoordinate,
    DimensionGroup,
    DimensionRecord,
    DimensionUniverse,
)
from ..errors import (
    CalibrationLookupError,
    CollectionError,
    CollectionTypeError,
    ConfigError,
    EmptyQueryResultError,
    InvalidQueryError,
)
from ..timespan import Timespan
from ._calibrations import CalibrationManager, DatasetAssociation, is_calibration_search
from ._collections import CollectionArg, CollectionManager, CollectionRecord
from ._datasets import DatasetManager, DatasetTypeRecord
from ._db import Database
from ._dimension_records import DimensionRecordStorage
from ._provenance import ProvenanceManager, QuantumRecord
from .expressions import parse_where
from .queries import DatasetSearch, QueryRunner, QuerySpec, make_data_ids
from .schema import SCHEMA_VERSION, CollectionType, RegistryTables

__all__ = ["Registry"]

_LOG = logging.getLogger("butler.registry")


class Registry:
    """The SQL registry of a repository.

    Use `Registry.create` for a new database and `Registry.open` for an existing one; the `Butler`
    does both.  Every change that touches several rows happens in one transaction.

    Parameters
    ----------
    db : `Database`
    universe : `DimensionUniverse`
    """

    def __init__(self, db: Database, universe: DimensionUniverse):
        self._db = db
        self.universe = universe
        self.tables = RegistryTables(universe)
        self._collections = CollectionManager(db, self.tables)
        self._records = DimensionRecordStorage(db, self.tables, universe)
        self._datasets = DatasetManager(db, self.tables, universe, self._collections, self._records)
        self._calibrations = CalibrationManager(db, self.tables, self._collections, self._datasets)
        self._queries = QueryRunner(db, self.tables, lambda collection_id: self._collections.by_id(collection_id).name)
        self._provenance = ProvenanceManager(db, self.tables, self._collections)
        record = self.tables.datastore_record
        self._record_by_id = sa.select(record).where(record.c.dataset_id == sa.bindparam("id"))

    # Construction ------------------------------------------------------------------------------------

    @classmethod
    def create(cls, url: str, universe: DimensionUniverse, **kwargs: Any) -> Registry:
        """Create the tables of a new registry.

        Raises
        ------
        ConfigError
            If the database already holds a registry.
        """
        db = Database(url, **kwargs)
        registry = cls(db, universe)
        with db.transaction(write=True) as conn:
            if sa.inspect(conn).has_table("butler_attributes"):
                raise ConfigError(f"the database {url!r} already holds a butler registry.")
            registry.tables.metadata.create_all(conn)
            conn.execute(
                registry.tables.attributes.insert(),
                [
                    {"name": "schema_version", "value": str(SCHEMA_VERSION)},
                    {"name": "dimensions", "value": json.dumps(universe.config, sort_keys=True)},
                ],
            )
        return registry

    @classmethod
    def open(cls, url: str, universe: DimensionUniverse, **kwargs: Any) -> Registry:
        """Open an existing registry, checking its schema and dimension configuration.

        Raises
        ------
        ConfigError
            If the database holds no registry, or one made with another schema or dimension universe.
        """
        db = Database(url, **kwargs)
        registry = cls(db, universe)
        try:
            rows = dict(db.fetchall(sa.select(registry.tables.attributes.c.name, registry.tables.attributes.c.value)))
        except sa.exc.OperationalError:
            raise ConfigError(f"the database {url!r} holds no butler registry.") from None
        except sa.exc.ProgrammingError:
            raise ConfigError(f"the database {url!r} holds no butler registry.") from None
        if rows.get("schema_version") != str(SCHEMA_VERSION):
            raise ConfigError(
                f"registry schema version {rows.get('schema_version')} is not the supported {SCHEMA_VERSION}."
            )
        stored = json.loads(rows.get("dimensions", "{}"))
        if stored.get("version") != universe.version or stored.get("namespace") != universe.namespace:
            raise ConfigError(
                f"the registry was made with dimension universe {stored.get('namespace')} v{stored.get('version')}, "
                f"but the configuration is {universe.namespace} v{universe.version}."
            )
        registry._add_provenance_tables()
        return registry

    def _add_provenance_tables(self) -> None:
        """Create the provenance tables missing from a registry made before they existed (if writeable).

        A read-only registry without them reads no provenance.
        """
        with self._db.transaction() as conn:
            inspector = sa.inspect(conn)
            missing = [t for t in self.tables.provenance_tables if not inspector.has_table(t.name)]
        if not missing:
            return
        if not self._db.writeable:
            _LOG.info("this registry has no provenance tables; open it writeable once to add them.")
            self._provenance.enabled = False
            return
        with self._db.transaction(write=True) as conn:
            self.tables.metadata.create_all(conn, tables=missing)
        _LOG.info("added the provenance tables %s to the registry.", ", ".join(t.name for t in missing))

    def close(self) -> None:
        self._db.close()

    @property
    def db(self) -> Database:
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one transaction (nested calls join the outer one).

        On an exception everything done inside is rolled back and the in-memory caches are cleared.
        """
        try:
            with self._db.transaction(write=True, savepoint=True):
                yield
        except BaseException:
            self.clear_caches()
            raise

    def clear_caches(self) -> None:
        self._collections.clear_cache()
        self._datasets.clear_cache()
        self._calibrations.clear_cache()
        self._records.clear_cache()

    # Dimension records -----------------------------------------------------------------------------------

    def insert_dimension_data(
        self,
        element: str,
        *records: Mapping[str, Any] | DimensionRecord,
        replace: bool = False,
        skip_existing: bool = False,
    ) -> int:
        """Insert records of one dimension element; see `DimensionRecordStorage.insert`."""
        return self._records.insert(element, records, replace=replace, skip_existing=skip_existing)

    def sync_dimension_data(self, element: str, record: Mapping[str, Any] | DimensionRecord) -> bool:
        """Insert a record unless an identical one exists; return whether it was inserted."""
        return self._records.sync(element, record)

    def expand_data_id(
        self,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        *,
        dimensions: Iterable[str] | DimensionGroup | None = None,
        **kwargs: Any,
    ) -> DataCoordinate:
        """Return a data ID with its implied values and dimension records.

        Raises
        ------
        DataIdError
            If keys are missing, unknown or of the wrong type.
        DataIdValueError
            If a value has no dimension record.
        """
        std = DataCoordinate.standardize(data_id, universe=self.universe, dimensions=dimensions, **kwargs)
        return self._records.expand(std)

    def expand_data_ids(self, data_ids: Sequence[DataCoordinate], *, full_only: bool = False) -> list[DataCoordinate]:
        """Expand many data IDs of one dimension group (one query per element).

        With ``full_only``, fill in implied values without attaching records (no region reads).
        """
        return self._records.expand_many(list(data_ids), full_only=full_only)

    def get_dimension_record(self, element: str, key: Mapping[str, Any]) -> DimensionRecord | None:
        """Return the record of ``element`` identified by ``key`` (dimension -> value), or `None`."""
        el = self.universe[element]
        data_id = DataCoordinate.standardize(key, universe=self.universe, dimensions=el.required)
        return self._records.fetch(el, [tuple(data_id[d] for d in el.required)]).get(
            tuple(data_id[d] for d in el.required)
        )

    # Collections -----------------------------------------------------------------------------------------

    def register_collection(self, name: str, type: CollectionType = CollectionType.TAGGED, doc: str | None = None) -> bool:
        """Register a collection (a CALIBRATION one for `certify`); return whether it was new."""
        return self._collections.register(name, type, doc)[1]

    def register_run(self, name: str, doc: str | None = None) -> bool:
        """Register a RUN collection; return whether it was new."""
        return self._collections.register(name, CollectionType.RUN, doc)[1]

    def get_collection_type(self, name: str) -> CollectionType:
        return self._collections.get(name).type

    def get_collection(self, name: str) -> CollectionRecord:
        return self._collections.get(name)

    def get_collection_chain(self, parent: str) -> tuple[str, ...]:
        return self._collections.get_chain(parent)

    def set_collection_chain(self, parent: str, children: Sequence[str], *, flatten: bool = False) -> None:
        self._collections.set_chain(parent, children, flatten=flatten)

    def query_collections(
        self,
        pattern: str | Sequence[str] = "*",
        *,
        types: Iterable[CollectionType] | None = None,
        flatten_chains: bool = False,
    ) -> list[CollectionRecord]:
        """Collections matching glob patterns, sorted by name."""
        return self._collections.query(pattern, types=types, flatten_chains=flatten_chains)

    def resolve_collections(self, collections: CollectionArg, *, allow_patterns: bool = False) -> list[CollectionRecord]:
        """The RUN/TAGGED/CALIBRATION collections a search visits, in order."""
        return self._collections.resolve_search(collections, allow_patterns=allow_patterns)

    def remove_collection(self, name: str) -> None:
        """Remove a TAGGED, CALIBRATION or CHAINED collection, or a RUN collection that holds no datasets.

        The datasets of a TAGGED or CALIBRATION collection stay in their runs; only the collection's
        memberships (and certifications) go.
        """
        record = self._collections.get(name)
        if record.type is CollectionType.RUN and self._datasets.refs_in_runs([record]):
            raise CollectionError(f"RUN collection {name!r} still holds datasets; use Butler.remove_runs.")
        self._collections.remove(name)

    # Dataset types ----------------------------------------------------------------------------------------

    def register_dataset_type(self, dataset_type: DatasetType) -> bool:
        """Register a dataset type; return `False` if an identical one exists."""
        return self._datasets.register_type(dataset_type)

    def get_dataset_type(self, name: str) -> DatasetType:
        """Return a registered dataset type (or the parent of a component name)."""
        return self._datasets.get_type(name).dataset_type

    def query_dataset_types(self, pattern: str | Sequence[str] = "*") -> list[DatasetType]:
        return self._datasets.query_types(pattern)

    def remove_dataset_type(self, name: str) -> None:
        self._datasets.remove_type(name)

    # Datasets ---------------------------------------------------------------------------------------------

    def insert_datasets(
        self,
        dataset_type: str | DatasetType,
        data_ids: Iterable[Mapping[str, Any] | DataCoordinate],
        run: str,
        *,
        id_generation_mode: DatasetIdGenEnum = DatasetIdGenEnum.UNIQUE,
    ) -> list[DatasetRef]:
        """Insert datasets into a RUN collection in one transaction; return their refs.

        Parameters
        ----------
        dataset_type : `str` or `DatasetType`
            A registered dataset type.
        data_ids : iterable of data IDs
            One per dataset; mappings are standardized to the dataset type's dimensions.
        run : `str`
            A RUN collection.

        Raises
        ------
        DuplicateDatasetError, CollectionTypeError, DataIdError, DataIdValueError
        """
        name = dataset_type if isinstance(dataset_type, str) else dataset_type.name
        group = self._datasets.get_type(name).dataset_type.dimensions
        std = DataCoordinate.standardize_many(data_ids, group)
        return self._datasets.insert(name, std, run, id_generation_mode=id_generation_mode)

    def import_datasets(self, refs: Sequence[DatasetRef]) -> list[DatasetRef]:
        """Insert datasets with the IDs, runs and data IDs of the given refs (for import/transfer)."""
        out: list[DatasetRef] = []
        groups: dict[tuple[str, str], list[DatasetRef]] = {}
        for r in refs:
            groups.setdefault((r.dataset_type.name, r.run), []).append(r)
        with self.transaction():
            for (name, run), group in groups.items():
                out += self._datasets.insert(name, [r.data_id for r in group], run, ids=[r.id for r in group])
        return out

    def associate(self, collection: str, refs: Sequence[DatasetRef]) -> None:
        """Add datasets to a TAGGED collection."""
        self._datasets.associate(collection, refs)

    def disassociate(self, collection: str, refs: Sequence[DatasetRef]) -> None:
        """Remove datasets from a TAGGED collection."""
        self._datasets.disassociate(collection, refs)

    def find_dataset(
        self,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        *,
        collections: CollectionArg,
        timespan: Timespan | None = None,
        **kwargs: Any,
    ) -> DatasetRef | None:
        """Return the dataset of this type and data ID in the first collection that has one, or `None`.

        Parameters
        ----------
        dataset_type : `str` or `DatasetType`
        data_id : mapping or `DataCoordinate`, optional
            The data ID (keyword arguments are added).  For a calibration it may hold more dimensions
            than the dataset type's: an ``exposure`` or ``visit`` gives the lookup time (its record's
            ``[datetime_begin, datetime_end)``) and the values it implies (``physical_filter``).
        collections : `str` or sequence of `str`
            The search path; CHAINED collections are expanded.
        timespan : `Timespan`, optional
            For a calibration: the time the dataset must be valid at in CALIBRATION collections of the
            search path (default: the exposure's or visit's).  RUN and TAGGED collections match at any time.

        Raises
        ------
        CalibrationLookupError
            If a calibration is looked up through a CALIBRATION collection without a timespan or an
            exposure/visit in the data ID, or several datasets are valid at that time in one collection.
        """
        name = dataset_type if isinstance(dataset_type, str) else dataset_type.name
        record = self._datasets.get_type(name)
        colls = self._collections.resolve_search(collections)
        if is_calibration_search(record, colls):
            std, span = self._calibration_lookup(record, data_id, kwargs, timespan, colls)
            return self._calibrations.find(record, [std], [span], colls)[0]
        std = DataCoordinate.standardize(data_id, universe=self.universe, dimensions=record.dataset_type.dimensions, **kwargs)
        return self._datasets.find_many(record, [std], colls).get(std)

    def find_dataset_with_record(
        self,
        dataset_type: str,
        data_id: Mapping[str, Any] | DataCoordinate | None,
        *,
        collections: CollectionArg,
        timespan: Timespan | None = None,
        **kwargs: Any,
    ) -> tuple[DatasetRef, dict[str, Any] | None] | None:
        """`find_dataset` that also returns the dataset's datastore record (or `None`); one query for
        anything but a calibration lookup through CALIBRATION collections."""
        record = self._datasets.get_type(dataset_type)
        colls = self._collections.resolve_search(collections)
        if is_calibration_search(record, colls):
            std, span = self._calibration_lookup(record, data_id, kwargs, timespan, colls)
            ref = self._calibrations.find(record, [std], [span], colls)[0]
            return None if ref is None else (ref, self.get_datastore_records([ref.id]).get(ref.id))
        std = DataCoordinate.standardize(data_id, universe=self.universe, dimensions=record.dataset_type.dimensions, **kwargs)
        return self._datasets.find_one(record, std, colls)

    def find_datasets(
        self,
        dataset_type: str,
        data_ids: Sequence[DataCoordinate],
        *,
        collections: CollectionArg,
        timespans: Sequence[Timespan] | None = None,
    ) -> dict[DataCoordinate, DatasetRef]:
        """`find_dataset` for many distinct data IDs at once (one query).

        Parameters
        ----------
        timespans : sequence of `Timespan`, optional
            For a calibration searched through CALIBRATION collections: the lookup time of each data ID
            (same order).  Default: the times of the data IDs' exposures or visits, which then must be
            among their dimensions.

        Returns
        -------
        found : `dict` [`DataCoordinate`, `DatasetRef`]
            By data ID as given (a calibration's found through a visit's data ID is keyed by that data
            ID); data IDs with no dataset are left out.

        Raises
        ------
        CalibrationLookupError
            As `find_dataset`; also if ``timespans`` does not have one timespan per data ID.
        """
        record = self._datasets.get_type(dataset_type)
        colls = self._collections.resolve_search(collections)
        if not is_calibration_search(record, colls):
            return self._datasets.find_many(record, data_ids, colls)
        if timespans is None:
            timespans = self.data_id_timespans(data_ids)
        elif len(timespans) != len(data_ids):
            raise CalibrationLookupError(f"got {len(timespans)} timespans for {len(data_ids)} data IDs; give one per data ID.")
        by_group: dict[DimensionGroup, list[DataCoordinate]] = {}
        for d in data_ids:  # implied values (a visit's physical_filter) may be required by the calibration
            if not d.has_full():
                by_group.setdefault(d.dimensions, []).append(d)
        full = {d: e for group in by_group.values() for d, e in zip(group, self.expand_data_ids(group, full_only=True))}
        std = DataCoordinate.standardize_many([full.get(d, d) for d in data_ids], record.dataset_type.dimensions)
        found = self._calibrations.find(record, std, list(timespans), colls)
        return {data_id: ref for data_id, ref in zip(data_ids, found) if ref is not None}

    def _calibration_lookup(
        self,
        record: DatasetTypeRecord,
        data_id: Mapping[str, Any] | DataCoordinate | None,
        kwargs: Mapping[str, Any],
        timespan: Timespan | None,
        collections: Sequence[CollectionRecord],
    ) -> tuple[DataCoordinate, Timespan]:
        """The data ID (dataset type's dimensions) and lookup time of a calibration lookup."""
        dt = record.dataset_type
        given = DataCoordinate.standardize(data_id, universe=self.universe, **kwargs)
        temporal = next((e for e in ("exposure", "visit") if e in given.dimensions.names), None)
        lacking = any(d not in given for d in dt.dimensions.required)
        if temporal is not None and (timespan is None or lacking):
            given = self.expand_data_id(given)
            if timespan is None:
                timespan = Timespan.from_record(given.records[temporal])
        if timespan is None:
            raise self._no_time_error(dt.name, collections)
        return DataCoordinate.standardize(given, dimensions=dt.dimensions), timespan

    @staticmethod
    def _no_time_error(name: str, collections: Sequence[CollectionRecord]) -> CalibrationLookupError:
        calibs = [c.name for c in collections if c.type is CollectionType.CALIBRATION]
        return CalibrationLookupError(
            f"{name!r} is a calibration dataset type and the search goes through CALIBRATION collection(s) {calibs}, "
            "where datasets are valid over time ranges: give the time of the lookup with timespan=Timespan(begin, "
            "end), or a data ID with an exposure or visit (whose time is used)."
        )

    def data_id_timespans(self, data_ids: Sequence[DataCoordinate]) -> list[Timespan]:
        """The time each data ID was taken: its exposure's (else visit's) ``[datetime_begin, datetime_end)``.

        One registry query per 500 distinct exposures or visits (records are cached).

        Raises
        ------
        CalibrationLookupError
            If a data ID has neither an exposure nor a visit.
        TimespanError
            If a record has no ``datetime_begin``.
        """
        wanted: list[tuple[str, tuple]] = []
        by_element: dict[str, set[tuple]] = {}
        for data_id in data_ids:
            names = data_id.dimensions.names
            if "exposure" not in names and "visit" not in names:
                raise CalibrationLookupError(
                    f"data ID {data_id} has no exposure or visit, so its time is unknown; give the timespans explicitly."
                )
            element = self.universe["exposure" if "exposure" in names else "visit"]
            key = tuple(data_id[d] for d in element.required)
            wanted.append((element.name, key))
            by_element.setdefault(element.name, set()).add(key)
        records = {name: self._records.fetch(self.universe[name], keys) for name, keys in by_element.items()}
        out: list[Timespan] = []
        for (name, key), data_id in zip(wanted, data_ids):
            found = records[name].get(key)
            if found is None:
                raise CalibrationLookupError(f"no {name} record for data ID {data_id}; register it first.")
            out.append(Timespan.from_record(found))
        return out

    # Calibrations -------------------------------------------------------------------------------------------

    def certify(self, collection: str, refs: Iterable[DatasetRef], timespan: Timespan) -> int:
        """Certify calibration datasets into a CALIBRATION collection as valid over ``timespan``.

        All in one transaction: either every dataset is certified or none is.

        Parameters
        ----------
        collection : `str`
            A registered CALIBRATION collection.
        refs : iterable of `DatasetRef`
            Datasets of calibration dataset types, already in the repository (each certified once).
        timespan : `Timespan`
            The validity range, ``[begin, end)``; `None` bounds are unbounded.

        Returns
        -------
        n : `int`
            Number of datasets certified.

        Raises
        ------
        CollectionTypeError
            If ``collection`` is not a CALIBRATION collection.
        DatasetTypeError
            If a dataset type is not a calibration (``is_calibration``).
        ConflictingDefinitionError
            If a dataset type and data ID would have overlapping validity ranges in the collection (the
            message names both ranges).
        DatasetNotFoundError
            If a ref is not in the repository.
        TimespanError
            If ``timespan`` is empty.
        """
        with self.transaction():
            return self._calibrations.certify(collection, refs, timespan)

    def decertify(
        self,
        collection: str,
        dataset_type: str | DatasetType,
        timespan: Timespan,
        *,
        data_ids: Iterable[Mapping[str, Any] | DataCoordinate] | None = None,
    ) -> int:
        """Make datasets of one type invalid over ``timespan`` in a CALIBRATION collection.

        Validity ranges inside ``timespan`` are removed, ranges that overlap it are truncated, and a
        range that contains it is split in two (daf_butler's semantics).  One transaction.

        Parameters
        ----------
        collection : `str`
            A CALIBRATION collection.
        dataset_type : `str` or `DatasetType`
            A calibration dataset type.
        timespan : `Timespan`
            The time to remove; ``Timespan(None, None)`` removes everything.
        data_ids : iterable of data IDs, optional
            Only these data IDs (default: all).

        Returns
        -------
        n : `int`
            Number of validity ranges removed, truncated or split.

        Raises
        ------
        CollectionTypeError, DatasetTypeError
            If the collection is not CALIBRATION or the dataset type not a calibration.
        """
        name = dataset_type if isinstance(dataset_type, str) else dataset_type.name
        record = self._datasets.get_type(name)
        std = None if data_ids is None else DataCoordinate.standardize_many(data_ids, record.dataset_type.dimensions)
        with self.transaction():
            return self._calibrations.decertify(collection, name, timespan, data_ids=std)

    def get_dataset(self, id: uuid.UUID) -> DatasetRef | None:
        """Return the dataset with this ID, or `None`."""
        return self._datasets.get_refs([id]).get(id)

    def get_datasets(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, DatasetRef]:
        return self._datasets.get_refs(ids)

    def refs_in_runs(self, runs: Sequence[str]) -> list[DatasetRef]:
        """All datasets owned by these RUN collections."""
        return self._datasets.refs_in_runs([self._collections.get(r) for r in runs])

    def remove_datasets(self, refs: Sequence[DatasetRef]) -> None:
        """Delete datasets with their tags and datastore records, in one transaction."""
        self._datasets.delete([r.id for r in refs])

    # Provenance ------------------------------------------------------------------------------------------

    def insert_quanta(self, records: Sequence[QuantumRecord]) -> None:
        """Record executed quanta with their inputs and outputs (one transaction; batched inserts).

        A record replaces an earlier one of the same quantum ID (a failed quantum executed again).

        Raises
        ------
        MissingCollectionError
            If a record's run does not exist.
        ValueError
            If a record's status is not ``succeeded``, ``no_work`` or ``failed``.
        """
        with self.transaction():
            self._provenance.insert(records)

    def query_quanta(self, run: str | Sequence[str] | None = None, *, task_label: str | None = None) -> list[QuantumRecord]:
        """Recorded quanta of RUN collections (every run for `None`), optionally of one task label.

        Parameters
        ----------
        run : `str` or sequence of `str`, optional
            RUN collection names.
        task_label : `str`, optional
            Only the quanta of this task label.

        Returns
        -------
        records : `list` [`QuantumRecord`]
            With their inputs and outputs, sorted by run, task label and data ID.

        Raises
        ------
        MissingCollectionError, CollectionTypeError
            If a name is not an existing RUN collection.
        """
        runs = None
        if run is not None:
            runs = [self._collections.get(name) for name in ([run] if isinstance(run, str) else run)]
            wrong = [r.name for r in runs if r.type is not CollectionType.RUN]
            if wrong:
                raise CollectionTypeError(f"{', '.join(map(repr, wrong))} are not RUN collections; quanta belong to runs.")
        return self._provenance.query(runs, task_label)

    def get_quantum_provenance(self, dataset_id: uuid.UUID) -> QuantumRecord | None:
        """The quantum that wrote a dataset, or `None` (raws, ingested or put datasets; unknown IDs)."""
        return self._provenance.producers([dataset_id]).get(dataset_id)

    def get_quantum_provenances(self, dataset_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, QuantumRecord]:
        """The quanta that wrote datasets, by dataset ID (batched; datasets no quantum wrote are left out)."""
        return self._provenance.producers(dataset_ids)

    def set_run_provenance(self, run: str, content: Mapping[str, Any]) -> None:
        """Store (replace) the run-level provenance document of a RUN collection (JSON-safe mapping)."""
        record = self._collections.get(run)
        if record.type is not CollectionType.RUN:
            raise CollectionTypeError(f"{run!r} is a {record.type.name} collection; run provenance belongs to RUN collections.")
        with self.transaction():
            self._provenance.set_run(record, content)

    def get_run_provenance(self, run: str) -> dict[str, Any] | None:
        """The run-level provenance document of a RUN collection, or `None` if it has none."""
        return self._provenance.get_run(self._collections.get(run))

    # Datastore records -----------------------------------------------------------------------------------

    def insert_datastore_records(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Insert datastore records (dicts with the ``datastore_record`` columns).

        A record with an ``inline`` value (bytes) also stores those bytes in the registry.
        """
        if records:
            columns = tuple(self.tables.datastore_record.c.keys())
            inline = [(r["dataset_id"], r["inline"]) for r in records if r.get("inline") is not None]
            with self._db.transaction(write=True) as conn:
                self._db.insert_rows(conn, self.tables.datastore_record, columns, ([r[c] for c in columns] for r in records))
                if inline:
                    self._db.insert_rows(conn, self.tables.datastore_inline, ("dataset_id", "content"), inline)

    def get_inline_content(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        """The registry-stored bytes of inline datasets, by dataset ID."""
        t = self.tables.datastore_inline
        ids = list(ids)
        out: dict[uuid.UUID, bytes] = {}
        for start in range(0, len(ids), 500):
            for row in self._db.fetchall(sa.select(t.c.dataset_id, t.c.content).where(t.c.dataset_id.in_(ids[start : start + 500]))):
                out[row.dataset_id] = bytes(row.content)
        return out

    def get_datastore_records(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
        """Datastore records of datasets by ID (missing ones left out)."""
        t = self.tables.datastore_record
        ids = list(ids)
        if len(ids) == 1:  # the hot path of Butler.get(ref): one prepared statement
            rows = self._db.fetchall(self._record_by_id, {"id": ids[0]})
            return {ids[0]: dict(rows[0]._mapping)} if rows else {}
        out: dict[uuid.UUID, dict[str, Any]] = {}
        columns = list(t.c.keys())
        for start in range(0, len(ids), 500):
            for row in self._db.fetchall(sa.select(t).where(t.c.dataset_id.in_(ids[start : start + 500]))):
                out[row.dataset_id] = dict(zip(columns, row))
        return out

    def all_datastore_records(self) -> list[dict[str, Any]]:
        """Every datastore record (for `Butler.verify`)."""
        return [dict(r._mapping) for r in self._db.fetchall(sa.select(self.tables.datastore_record))]

    def datasets_without_records(self) -> list[uuid.UUID]:
        """IDs of datasets that have no datastore record."""
        d, r = self.tables.dataset, self.tables.datastore_record
        stmt = sa.select(d.c.id).where(~sa.exists().where(r.c.dataset_id == d.c.id))
        return [row[0] for row in self._db.fetchall(stmt)]

    # Queries --------------------------------------------------------------------------------------------

    def _spec(
        self,
        dimensions: Iterable[str] | DimensionGroup,
        *,
        data_id: Mapping[str, Any] | DataCoordinate | None,
        where: str,
        bind: Mapping[str, Any] | None,
        order_by: Iterable[str] | str | None,
        limit: int | None,
        **kwargs: Any,
    ) -> QuerySpec:
        if isinstance(order_by, str):
            order_by = [order_by]
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InvalidQueryError(f"limit must be a non-negative integer, got {limit!r}.")
        data_id_dict = dict(data_id.items()) if isinstance(data_id, DataCoordinate) else dict(data_id or {})
        if data_id_dict:
            data_id_dict = dict(DataCoordinate.standardize(data_id_dict, universe=self.universe).items())
        bind = dict(bind or {})
        clash = set(bind) & set(self.universe.elements)
        if clash:
            raise InvalidQueryError(f"bind names {sorted(clash)} shadow dimension element names; rename them.")
        return QuerySpec(
            self.universe.conform(dimensions),
            where=parse_where(where or ""),
            where_text=where or "",
            bind=bind,
            data_id=data_id_dict,
            order_by=list(order_by or []),
            limit=limit,
            **kwargs,
        )

    def _dataset_search(
        self, record: DatasetTypeRecord, collections: list[CollectionRecord], timespan: Timespan | None = None
    ) -> DatasetSearch:
        calibs = self._calibrations.table(record) if is_calibration_search(record, collections) else None
        return DatasetSearch(record, collections, calibs=calibs, timespan=timespan)

    def _searches(self, datasets: Iterable[str] | str | None, collections: CollectionArg) -> list[DatasetSearch]:
        if datasets is None:
            return []
        names = [datasets] if isinstance(datasets, str) else list(datasets)
        colls = self._collections.resolve_search(collections, allow_patterns=True)
        return [self._dataset_search(self._datasets.get_type(n), colls) for n in names]

    def _run(self, spec: QuerySpec, explain: bool) -> list[tuple]:
        rows = self._queries.rows(spec)
        if not rows and explain:
            raise EmptyQueryResultError(self._queries.explain_empty(spec, self._records.count))
        return rows

    def query_data_ids(
        self,
        dimensions: Iterable[str] | str | DimensionGroup,
        *,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        datasets: Iterable[str] | str | None = None,
        collections: CollectionArg = None,
        order_by: Iterable[str] | str | None = None,
        limit: int | None = None,
        explain: bool = False,
        expanded: bool = False,
    ) -> list[DataCoordinate]:
        """Data IDs over ``dimensions`` that satisfy every constraint; see `Butler.query_data_ids`."""
        if isinstance(dimensions, str):
            dimensions = [dimensions]
        spec = self._spec(
            dimensions, data_id=data_id, where=where, bind=bind, order_by=order_by, limit=limit,
            searches=self._searches(datasets, collections),
        )
        out = make_data_ids(spec.dimensions, self._run(spec, explain))
        return self.expand_data_ids(out) if expanded and out else out

    def query_datasets(
        self,
        dataset_type: str | DatasetType,
        collections: CollectionArg,
        *,
        find_first: bool = True,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        order_by: Iterable[str] | str | None = None,
        limit: int | None = None,
        explain: bool = False,
        timespan: Timespan | None = None,
    ) -> list[DatasetRef]:
        """Datasets of one type in the collections that satisfy the constraints; see `Butler.query_datasets`.

        For a calibration dataset type, a dataset of a CALIBRATION collection matches when its validity
        range overlaps ``timespan`` (every certified dataset matches without one).  A find-first search
        through CALIBRATION collections needs a time: ``timespan``, or an exposure or visit in
        ``data_id`` (its record's time is used).

        Raises
        ------
        CalibrationLookupError
            If a find-first calibration search has no time, or finds several datasets of one data ID
            valid at that time in one CALIBRATION collection.
        """
        name = dataset_type if isinstance(dataset_type, str) else dataset_type.name
        record = self._datasets.get_type(name)
        colls = self._collections.resolve_search(collections, allow_patterns=not find_first)
        dt = record.dataset_type
        if find_first and timespan is None and is_calibration_search(record, colls):
            timespan = self._data_id_timespan(record, data_id, colls)
        spec = self._spec(
            dt.dimensions, data_id=data_id, where=where, bind=bind, order_by=order_by, limit=limit,
            searches=[self._dataset_search(record, colls, timespan)], result_dataset=True, find_first=find_first,
        )
        runs = self._collections.by_id
        group = dt.dimensions
        n = len(group.required)
        return [
            DatasetRef(dt, DataCoordinate.from_required_values(group, tuple(r[3 : 3 + n])), runs(r[2]).name, id=r[0])
            for r in self._run(spec, explain)
        ]

    def _data_id_timespan(
        self, record: DatasetTypeRecord, data_id: Mapping[str, Any] | DataCoordinate | None, colls: list[CollectionRecord]
    ) -> Timespan:
        """The time of the exposure or visit of a query's data ID constraint."""
        given = DataCoordinate.standardize(data_id or {}, universe=self.universe)
        names = given.dimensions.names
        temporal = "exposure" if "exposure" in names else "visit" if "visit" in names else None
        if temporal is None:
            raise self._no_time_error(record.dataset_type.name, colls)
        return self.data_id_timespans([given])[0]

    def query_dataset_associations(
        self,
        dataset_type: str | DatasetType,
        collections: CollectionArg,
        *,
        collection_types: Iterable[CollectionType] | None = None,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        timespan: Timespan | None = None,
        explain: bool = False,
    ) -> list[DatasetAssociation]:
        """Every membership of datasets of one type in the collections, with validity ranges (one query).

        Parameters
        ----------
        dataset_type : `str` or `DatasetType`
        collections : `str` or sequence of `str`
            Collections or glob patterns; CHAINED ones are expanded into their members.
        collection_types : iterable of `CollectionType`, optional
            Only memberships of collections of these types (e.g. ``[CollectionType.CALIBRATION]``).
        data_id, where, bind
            Constraints on the datasets' data IDs, as in `query_datasets`.
        timespan : `Timespan`, optional
            Only certifications whose validity range overlaps it (RUN/TAGGED memberships always stay).

        Returns
        -------
        associations : `list` [`DatasetAssociation`]
            Sorted by the collections' search order, then data ID, then validity begin; a dataset certified
            over two ranges of one collection appears twice; ``timespan`` is `None` in RUN/TAGGED collections.
        """
        name = dataset_type if isinstance(dataset_type, str) else dataset_type.name
        record = self._datasets.get_type(name)
        colls = self._collections.resolve_search(collections, allow_patterns=True)
        if collection_types is not None:
            wanted = set(collection_types)
            colls = [c for c in colls if c.type in wanted]
        dt = record.dataset_type
        search = self._dataset_search(record, colls, timespan)
        spec = self._spec(
            dt.dimensions, data_id=data_id, where=where, bind=bind, order_by=None, limit=None,
            searches=[search], result_dataset=True, find_first=False, with_validity=True,
        )
        group = dt.dimensions
        n = len(group.required)
        rank = {c.id: i for i, c in enumerate(colls)}
        by_id = self._collections.by_id
        found = []
        for r in self._run(spec, explain):
            certified = search.has_calibrations and r[3 + n] is not None
            span = Timespan.from_nsec(r[3 + n], r[4 + n]) if certified else None
            ref = DatasetRef(dt, DataCoordinate.from_required_values(group, tuple(r[3 : 3 + n])), by_id(r[2]).name, id=r[0])
            found.append(((rank[r[1]], ref.data_id.required_values, span.nsec if span else ()), DatasetAssociation(ref, by_id(r[1]).name, span)))
        found.sort(key=lambda item: item[0])
        return [association for _, association in found]

    def query_dimension_records(
        self,
        element: str,
        *,
        data_id: Mapping[str, Any] | DataCoordinate | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        datasets: Iterable[str] | str | None = None,
        collections: CollectionArg = None,
        order_by: Iterable[str] | str | None = None,
        limit: int | None = None,
        explain: bool = False,
    ) -> list[DimensionRecord]:
        """Records of one dimension element that satisfy the constraints."""
        el = self.universe[element]
        spec = self._spec(
            el.required + el.implied, data_id=data_id, where=where, bind=bind, order_by=order_by, limit=limit,
            element=el, searches=self._searches(datasets, collections),
        )
        names = el.field_names
        return [self._records._from_row(el, dict(zip(names, row))) for row in self._run(spec, explain)]

    def count_datasets(self) -> int:
        return self._db.fetchall(sa.select(sa.func.count()).select_from(self.tables.dataset))[0][0]
