"""SQLAlchemy table definitions of the registry.

Static tables: ``butler_attributes``, one table per dimension element (plus a skypix-overlap index
table per spatial element), ``collection``, ``run``, ``collection_chain``, ``dataset_type``,
``dataset``, ``datastore_record`` and the provenance tables ``quantum``, ``quantum_input``,
``quantum_output`` and ``run_provenance`` (see `RegistryTables._define_provenance`).  Dynamic tables: ``dataset_tags_<dims>``, one per dimension
group of registered dataset types, holding each dataset's membership of RUN and TAGGED collections
with its data ID columns; its unique constraint enforces one dataset per (dataset type, data ID)
per collection.  ``dataset_calibs_<dims>``, one per dimension group of registered *calibration*
dataset types: each certification of a dataset into a CALIBRATION collection with its validity range
(``validity_begin``, ``validity_end``: TAI ns since 1970, see `butler.timespan`) and data ID columns;
rows go with their dataset or collection (ON DELETE CASCADE).  That the ranges of one dataset type
and data ID never overlap within a collection is checked by the registry when certifying.
"""

from __future__ import annotations

import enum

import sqlalchemy as sa

from ..dimensions import DimensionElement, DimensionGroup, DimensionUniverse, FieldSpec
from ..errors import CollectionError

__all__ = ["CollectionType", "RegistryTables"]

SCHEMA_VERSION = 1


class CollectionType(enum.IntEnum):
    """The kinds of collection.

    RUN holds datasets it owns (each dataset belongs to exactly one RUN); TAGGED holds references to
    datasets of any RUN; CHAINED is an ordered search path of other collections; CALIBRATION holds
    references to calibration datasets, each with a validity range (`butler.timespan.Timespan`).
    """

    RUN = 1
    TAGGED = 2
    CHAINED = 3
    CALIBRATION = 4

    @classmethod
    def from_name(cls, name: str) -> CollectionType:
        try:
            return cls[name.upper()]
        except KeyError:
            raise CollectionError(
                f"unknown collection type {name!r}; valid: {', '.join(t.name for t in cls)}."
            ) from None


def _sql_type(spec: FieldSpec) -> sa.types.TypeEngine:
    return {
        "int": sa.BigInteger(),
        "float": sa.Float(),
        "string": sa.String(spec.length),
        "time": sa.BigInteger(),
        "bool": sa.Boolean(),
    }[spec.type]


class RegistryTables:
    """All tables of a registry for one dimension universe.

    Parameters
    ----------
    universe : `DimensionUniverse`
    """

    def __init__(self, universe: DimensionUniverse):
        self.universe = universe
        self.metadata = sa.MetaData()
        md = self.metadata
        self.attributes = sa.Table(
            "butler_attributes",
            md,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        self.dimensions: dict[str, sa.Table] = {}
        self.overlaps: dict[str, sa.Table] = {}
        for element in universe.elements.values():
            self.dimensions[element.name] = self._dimension_table(element)
            if element.spatial:
                self.overlaps[element.name] = self._overlap_table(element)
        self.collection = sa.Table(
            "collection",
            md,
            sa.Column("collection_id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(256), nullable=False, unique=True),
            sa.Column("type", sa.SmallInteger, nullable=False),
            sa.Column("doc", sa.Text, nullable=True),
        )
        self.run = sa.Table(
            "run",
            md,
            sa.Column(
                "collection_id",
                sa.Integer,
                sa.ForeignKey("collection.collection_id", ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("host", sa.String(256), nullable=True),
            sa.Column("created", sa.BigInteger, nullable=True),
        )
        self.collection_chain = sa.Table(
            "collection_chain",
            md,
            sa.Column(
                "parent", sa.Integer, sa.ForeignKey("collection.collection_id", ondelete="CASCADE"), primary_key=True
            ),
            sa.Column("position", sa.Integer, primary_key=True),
            sa.Column("child", sa.Integer, sa.ForeignKey("collection.collection_id"), nullable=False, index=True),
        )
        self.dataset_type = sa.Table(
            "dataset_type",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(128), nullable=False, unique=True),
            sa.Column("dimensions", sa.Text, nullable=False),
            sa.Column("storage_class", sa.String(64), nullable=False),
            sa.Column("is_calibration", sa.Boolean, nullable=False),
            sa.Column("tag_table", sa.String(256), nullable=False),
        )
        self.dataset = sa.Table(
            "dataset",
            md,
            sa.Column("id", sa.Uuid, primary_key=True),
            sa.Column("dataset_type_id", sa.Integer, sa.ForeignKey("dataset_type.id"), nullable=False),
            sa.Column("run_id", sa.Integer, sa.ForeignKey("collection.collection_id"), nullable=False),
            sa.Column("ingest_date", sa.BigInteger, nullable=False),
            sa.Index("dataset_run_type", "run_id", "dataset_type_id"),
        )
        self.datastore_record = sa.Table(
            "datastore_record",
            md,
            sa.Column("dataset_id", sa.Uuid, sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("path", sa.Text, nullable=False, index=True),
            sa.Column("formatter", sa.String(256), nullable=False),
            sa.Column("storage_class", sa.String(64), nullable=False),
            sa.Column("checksum", sa.String(80), nullable=True),
            sa.Column("file_size", sa.BigInteger, nullable=False),
        )
        # Bytes of small datasets (task metadata, logs, configs) kept in the registry instead of files.
        self.datastore_inline = sa.Table(
            "datastore_inline",
            md,
            sa.Column("dataset_id", sa.Uuid, sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("content", sa.LargeBinary, nullable=False),
        )
        self.tags: dict[str, sa.Table] = {}
        self.calibs: dict[str, sa.Table] = {}
        self._define_provenance(md)

    def _define_provenance(self, md: sa.MetaData) -> None:
        """Provenance tables: executed quanta, what they read and wrote, and run-level facts.

        ``quantum``: one row per executed quantum (its RUN, task label and class, config / code / package
        hashes, data ID as canonical JSON, host, ISO UTC start and end, status and error).
        ``quantum_input``: the datasets a quantum read, with the connection name (no foreign key to
        ``dataset``: provenance outlives a removed input).  ``quantum_output``: the datasets it wrote (rows
        go with their dataset).  ``run_provenance``: one JSON document per RUN (the pipeline, input
        collections and data query it was built from).  All go with their run (ON DELETE CASCADE).
        """
        def run_fk() -> sa.ForeignKey:
            return sa.ForeignKey("collection.collection_id", ondelete="CASCADE")

        def quantum_fk() -> sa.ForeignKey:
            return sa.ForeignKey("quantum.quantum_id", ondelete="CASCADE")

        self.quantum = sa.Table(
            "quantum",
            md,
            sa.Column("quantum_id", sa.Uuid, primary_key=True),
            sa.Column("run_id", sa.Integer, run_fk(), nullable=False),
            sa.Column("task_label", sa.String(128), nullable=False),
            sa.Column("task_class", sa.String(256), nullable=False),
            sa.Column("config_hash", sa.String(64), nullable=True),
            sa.Column("code_hash", sa.String(64), nullable=True),
            sa.Column("packages_hash", sa.String(64), nullable=True),
            sa.Column("data_id", sa.Text, nullable=False),
            sa.Column("host", sa.String(256), nullable=True),
            sa.Column("start_time", sa.String(40), nullable=True),
            sa.Column("end_time", sa.String(40), nullable=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("error", sa.Text, nullable=True),
            sa.Index("quantum_run_label", "run_id", "task_label"),
        )
        self.quantum_input = sa.Table(
            "quantum_input",
            md,
            sa.Column("quantum_id", sa.Uuid, quantum_fk(), primary_key=True),
            sa.Column("connection", sa.String(128), primary_key=True),
            sa.Column("dataset_id", sa.Uuid, primary_key=True),
        )
        self.quantum_output = sa.Table(
            "quantum_output",
            md,
            sa.Column("quantum_id", sa.Uuid, quantum_fk(), primary_key=True),
            sa.Column("dataset_id", sa.Uuid, sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True),
            sa.Index("quantum_output_dataset", "dataset_id"),
        )
        self.run_provenance = sa.Table(
            "run_provenance",
            md,
            sa.Column("run_id", sa.Integer, run_fk(), primary_key=True),
            sa.Column("content", sa.Text, nullable=False),
        )

    @property
    def provenance_tables(self) -> list[sa.Table]:
        """The provenance tables, parents first (created on open in registries made before they existed)."""
        return [self.quantum, self.quantum_input, self.quantum_output, self.run_provenance]

    def _dimension_table(self, element: DimensionElement) -> sa.Table:
        columns: list[sa.SchemaItem] = []
        n_keys = len(element.required)
        for i, spec in enumerate(element.fields):
            columns.append(sa.Column(spec.name, _sql_type(spec), primary_key=i < n_keys, nullable=i >= n_keys))
        if element.spatial:
            columns.append(sa.Column("region", sa.LargeBinary, nullable=True))
        # Foreign keys to every dimension this element requires or implies.
        for dim in element.required + element.implied:
            if dim == element.name:
                continue
            target = self.universe[dim]
            local = [element.column_name(d) if d != dim else dim for d in target.required]
            remote = [f"{dim}.{target.column_name(d)}" for d in target.required]
            columns.append(sa.ForeignKeyConstraint(local, remote))
        return sa.Table(element.name, self.metadata, *columns)

    def _overlap_table(self, element: DimensionElement) -> sa.Table:
        keys = [element.column_name(d) for d in element.required]
        columns: list[sa.SchemaItem] = [
            sa.Column(k, _sql_type(element.column_spec(d)), primary_key=True)
            for k, d in zip(keys, element.required)
        ]
        columns.append(sa.Column("skypix_index", sa.BigInteger, primary_key=True))
        columns.append(
            sa.ForeignKeyConstraint(keys, [f"{element.name}.{k}" for k in keys], ondelete="CASCADE")
        )
        columns.append(sa.Index(f"{element.name}_skypix_overlap_index", "skypix_index"))
        return sa.Table(f"{element.name}_skypix_overlap", self.metadata, *columns)

    @staticmethod
    def tag_table_name(group: DimensionGroup) -> str:
        """Name of the tags table of dataset types with these dimensions."""
        return f"dataset_tags_{group.table_suffix()}"

    @staticmethod
    def calib_table_name(group: DimensionGroup) -> str:
        """Name of the certification table of calibration dataset types with these dimensions."""
        return f"dataset_calibs_{group.table_suffix()}"

    def _data_id_columns(self, group: DimensionGroup) -> list[sa.SchemaItem]:
        columns: list[sa.SchemaItem] = []
        for dim in group.required:
            columns.append(sa.Column(dim, _sql_type(self.universe[dim].key_as(dim)), nullable=False))
            target = self.universe[dim]
            columns.append(
                sa.ForeignKeyConstraint(list(target.required), [f"{dim}.{target.column_name(d)}" for d in target.required])
            )
        return columns

    def calib_table(self, group: DimensionGroup) -> sa.Table:
        """The certification table for a dimension group (defined, not necessarily created, on first use).

        Primary key (collection, dataset, validity_begin): one dataset may hold several disjoint
        ranges in a collection (after a `Registry.decertify` splits one).
        """
        name = self.calib_table_name(group)
        table = self.calibs.get(name)
        if table is None:
            columns: list[sa.SchemaItem] = [
                sa.Column("dataset_type_id", sa.Integer, sa.ForeignKey("dataset_type.id"), nullable=False),
                sa.Column(
                    "dataset_id", sa.Uuid, sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True
                ),
                sa.Column(
                    "collection_id",
                    sa.Integer,
                    sa.ForeignKey("collection.collection_id", ondelete="CASCADE"),
                    primary_key=True,
                ),
                sa.Column("validity_begin", sa.BigInteger, primary_key=True),
                sa.Column("validity_end", sa.BigInteger, nullable=False),
                *self._data_id_columns(group),
                sa.Index(f"{name}_lookup", "dataset_type_id", "collection_id", *group.required),
                sa.Index(f"{name}_dataset", "dataset_id"),
            ]
            table = sa.Table(name, self.metadata, *columns)
            self.calibs[name] = table
        return table

    def tag_table(self, group: DimensionGroup) -> sa.Table:
        """The tags table for a dimension group (defined, not necessarily created, on first use)."""
        name = self.tag_table_name(group)
        table = self.tags.get(name)
        if table is None:
            columns: list[sa.SchemaItem] = [
                sa.Column("dataset_type_id", sa.Integer, sa.ForeignKey("dataset_type.id"), nullable=False),
                sa.Column("dataset_id", sa.Uuid, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False),
                sa.Column(
                    "collection_id",
                    sa.Integer,
                    sa.ForeignKey("collection.collection_id", ondelete="CASCADE"),
                    nullable=False,
                ),
            ]
            columns += self._data_id_columns(group)
            columns.append(
                sa.UniqueConstraint("dataset_type_id", "collection_id", *group.required, name=f"{name}_unique")
            )
            columns.append(sa.Index(f"{name}_dataset", "dataset_id", "collection_id", unique=True))
            table = sa.Table(name, self.metadata, *columns)
            self.tags[name] = table
        return table
