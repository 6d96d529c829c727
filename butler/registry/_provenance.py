"""Provenance in the registry: executed quanta, the datasets they read and wrote, and run-level facts.

The registry knows nothing of tasks: a quantum is a `QuantumRecord` (strings, hashes, dataset IDs)
written by whoever executed it (``graph.execute.registration``) in the transaction that registers its
outputs.  Reads are batched: one query per table for any number of quanta.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ._collections import CollectionManager, CollectionRecord
from ._db import Database
from .schema import RegistryTables

__all__ = ["QUANTUM_STATUSES", "ProvenanceManager", "QuantumRecord", "canonical_data_id"]

#: The statuses a recorded quantum can have.
QUANTUM_STATUSES = ("succeeded", "no_work", "failed")
_CHUNK = 500  # IDs per IN (...) clause


@dataclass(frozen=True)
class QuantumRecord:
    """The provenance of one executed quantum.

    Attributes
    ----------
    id : `uuid.UUID`
        The quantum's ID (stable: UUID5 of its run, task label and data ID).
    run : `str`
        The RUN collection it wrote to.
    task_label : `str`
    task_class : `str`
        Dotted path of the task class.
    data_id : `dict` [`str`, `int` or `str`]
        The quantum's data ID (required dimensions only).
    status : `str`
        ``"succeeded"``, ``"no_work"`` or ``"failed"``.
    config_hash : `str` or `None`
        SHA-256 (hex) of the task's canonical config JSON.
    code_hash : `str` or `None`
        SHA-256 (hex) of the source of the task's modules (see ``graph.fingerprint``).
    packages_hash : `str` or `None`
        SHA-256 (hex) of the canonical JSON of the package versions (the run's ``packages`` dataset).
    host : `str` or `None`
        Host name of the process that ran it.
    start_time, end_time : `str` or `None`
        ISO-8601 UTC times of its start and end.
    error : `str` or `None`
        ``"ExceptionType: message"`` of a failure (or of `NoWorkFound`).
    inputs : `tuple` [`tuple` [`uuid.UUID`, `str`], ...]
        ``(dataset_id, connection name)`` of every dataset it read (prerequisites included).
    outputs : `tuple` [`uuid.UUID`, ...]
        IDs of every dataset it wrote (metadata and log included).
    """

    id: uuid.UUID
    run: str
    task_label: str
    task_class: str
    data_id: dict[str, Any]
    status: str
    config_hash: str | None = None
    code_hash: str | None = None
    packages_hash: str | None = None
    host: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    error: str | None = None
    inputs: tuple[tuple[uuid.UUID, str], ...] = ()
    outputs: tuple[uuid.UUID, ...] = field(default=())

    @property
    def data_id_key(self) -> str:
        """The data ID as canonical JSON (sorted keys): how it is stored and matched."""
        return canonical_data_id(self.data_id)

    def to_simple(self) -> dict[str, Any]:
        """A JSON- and YAML-safe dictionary (the inverse of `from_simple`)."""
        return {
            "id": str(self.id),
            "run": self.run,
            "task_label": self.task_label,
            "task_class": self.task_class,
            "data_id": dict(self.data_id),
            "status": self.status,
            "config_hash": self.config_hash,
            "code_hash": self.code_hash,
            "packages_hash": self.packages_hash,
            "host": self.host,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "error": self.error,
            "inputs": [[str(i), name] for i, name in self.inputs],
            "outputs": [str(i) for i in self.outputs],
        }

    @classmethod
    def from_simple(cls, simple: Mapping[str, Any]) -> QuantumRecord:
        """Make a record from the output of `to_simple`."""
        return cls(
            id=uuid.UUID(str(simple["id"])),
            run=str(simple["run"]),
            task_label=str(simple["task_label"]),
            task_class=str(simple["task_class"]),
            data_id=dict(simple["data_id"]),
            status=str(simple["status"]),
            config_hash=simple.get("config_hash"),
            code_hash=simple.get("code_hash"),
            packages_hash=simple.get("packages_hash"),
            host=simple.get("host"),
            start_time=simple.get("start_time"),
            end_time=simple.get("end_time"),
            error=simple.get("error"),
            inputs=tuple((uuid.UUID(str(i)), str(name)) for i, name in simple.get("inputs") or []),
            outputs=tuple(uuid.UUID(str(i)) for i in simple.get("outputs") or []),
        )


def canonical_data_id(data_id: Mapping[str, Any]) -> str:
    """A data ID (dimension -> value) as JSON with sorted keys."""
    return json.dumps({str(k): v for k, v in data_id.items()}, sort_keys=True, separators=(",", ":"))


def _chunks(ids: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


class ProvenanceManager:
    """Writes and reads the ``quantum``, ``quantum_input``, ``quantum_output`` and ``run_provenance`` tables.

    Parameters
    ----------
    db : `Database`
    tables : `RegistryTables`
    collections : `CollectionManager`
    enabled : `bool`, optional
        False for a read-only registry made before the provenance tables existed: reads find nothing.
    """

    _COLUMNS = (
        "quantum_id", "run_id", "task_label", "task_class", "config_hash", "code_hash", "packages_hash",
        "data_id", "host", "start_time", "end_time", "status", "error",
    )

    def __init__(self, db: Database, tables: RegistryTables, collections: CollectionManager, *, enabled: bool = True):
        self._db = db
        self._tables = tables
        self._collections = collections
        self.enabled = enabled

    # Quanta -----------------------------------------------------------------------------------------

    def insert(self, records: Sequence[QuantumRecord]) -> None:
        """Insert quanta with their inputs and outputs (replacing earlier records of the same quantum IDs).

        A quantum ID recurs when a failed quantum is executed again in the same run; its new record
        replaces the old one.  Call inside the transaction that registers the quanta's outputs.

        Raises
        ------
        ValueError
            If a status is not one of `QUANTUM_STATUSES`.
        MissingCollectionError
            If a run does not exist.
        """
        if not records:
            return
        for record in records:
            if record.status not in QUANTUM_STATUSES:
                raise ValueError(f"quantum {record.id} has status {record.status!r}; expected one of {QUANTUM_STATUSES}.")
        t = self._tables
        run_ids = {name: self._collections.get(name).id for name in {r.run for r in records}}
        rows = [
            (r.id, run_ids[r.run], r.task_label, r.task_class, r.config_hash, r.code_hash, r.packages_hash,
             r.data_id_key, r.host, r.start_time, r.end_time, r.status, r.error)
            for r in records
        ]
        with self._db.transaction(write=True) as conn:
            try:
                with self._db.transaction(write=True, savepoint=True) as inner:
                    self._db.insert_rows(inner, t.quantum, self._COLUMNS, rows)
            except sa.exc.IntegrityError:  # recorded before: replace (inputs and outputs go by ON DELETE CASCADE)
                for chunk in _chunks([r.id for r in records]):
                    conn.execute(t.quantum.delete().where(t.quantum.c.quantum_id.in_(chunk)))
                self._db.insert_rows(conn, t.quantum, self._COLUMNS, rows)
            self._db.insert_rows(
                conn, t.quantum_input, ("quantum_id", "connection", "dataset_id"),
                dict.fromkeys((r.id, name, i) for r in records for i, name in r.inputs),
            )
            self._db.insert_rows(
                conn, t.quantum_output, ("quantum_id", "dataset_id"), dict.fromkeys((r.id, i) for r in records for i in r.outputs)
            )

    def query(self, runs: Sequence[CollectionRecord] | None = None, task_label: str | None = None) -> list[QuantumRecord]:
        """Quanta of some RUN collections (all runs for `None`) and optionally one task label.

        Returns
        -------
        records : `list` [`QuantumRecord`]
            Sorted by run, task label, then data ID.
        """
        if not self.enabled or (runs is not None and not runs):
            return []
        q = self._tables.quantum
        clauses = []
        if runs is not None:
            clauses.append(q.c.run_id.in_([r.id for r in runs]))
        if task_label is not None:
            clauses.append(q.c.task_label == task_label)
        return self._fetch(sa.and_(sa.true(), *clauses))

    def producers(self, dataset_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, QuantumRecord]:
        """The quantum that wrote each dataset, by dataset ID (datasets no quantum wrote are left out)."""
        ids = list(dict.fromkeys(dataset_ids))
        if not self.enabled or not ids:
            return {}
        qo = self._tables.quantum_output
        out: dict[uuid.UUID, QuantumRecord] = {}
        for chunk in _chunks(ids):
            rows = self._db.fetchall(sa.select(qo.c.dataset_id, qo.c.quantum_id).where(qo.c.dataset_id.in_(chunk)))
            if not rows:
                continue
            by_quantum = {r.id: r for r in self._fetch(self._tables.quantum.c.quantum_id.in_({row.quantum_id for row in rows}))}
            out.update((row.dataset_id, by_quantum[row.quantum_id]) for row in rows if row.quantum_id in by_quantum)
        return out

    def _fetch(self, clause: sa.ColumnElement[bool]) -> list[QuantumRecord]:
        """Quanta matching a clause on the ``quantum`` table, with their inputs and outputs (three queries)."""
        t = self._tables
        q, qi, qo = t.quantum, t.quantum_input, t.quantum_output
        rows = self._db.fetchall(sa.select(q).where(clause))
        if not rows:
            return []
        inputs: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = defaultdict(list)
        outputs: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        joined = sa.select(qi.c.quantum_id, qi.c.dataset_id, qi.c.connection).join(q, q.c.quantum_id == qi.c.quantum_id)
        for row in self._db.fetchall(joined.where(clause)):
            inputs[row.quantum_id].append((row.dataset_id, row.connection))
        joined = sa.select(qo.c.quantum_id, qo.c.dataset_id).join(q, q.c.quantum_id == qo.c.quantum_id)
        for row in self._db.fetchall(joined.where(clause)):
            outputs[row.quantum_id].append(row.dataset_id)
        by_id = self._collections.by_id
        records = [
            QuantumRecord(
                id=row.quantum_id,
                run=by_id(row.run_id).name,
                task_label=row.task_label,
                task_class=row.task_class,
                data_id=json.loads(row.data_id),
                status=row.status,
                config_hash=row.config_hash,
                code_hash=row.code_hash,
                packages_hash=row.packages_hash,
                host=row.host,
                start_time=row.start_time,
                end_time=row.end_time,
                error=row.error,
                inputs=tuple(sorted(inputs.get(row.quantum_id, ()), key=lambda x: (x[1], str(x[0])))),
                outputs=tuple(sorted(outputs.get(row.quantum_id, ()), key=str)),
            )
            for row in rows
        ]
        records.sort(key=lambda r: (r.run, r.task_label, r.data_id_key))
        return records

    # Run-level provenance ----------------------------------------------------------------------------

    def set_run(self, run: CollectionRecord, content: Mapping[str, Any]) -> None:
        """Store (replace) the JSON document of a RUN collection."""
        t = self._tables.run_provenance
        text = json.dumps(content, sort_keys=True)
        with self._db.transaction(write=True) as conn:
            conn.execute(t.delete().where(t.c.run_id == run.id))
            conn.execute(t.insert().values(run_id=run.id, content=text))

    def get_run(self, run: CollectionRecord) -> dict[str, Any] | None:
        """The JSON document of a RUN collection, or `None`."""
        if not self.enabled:
            return None
        t = self._tables.run_provenance
        rows = self._db.fetchall(sa.select(t.c.content).where(t.c.run_id == run.id))
        return json.loads(rows[0].content) if rows else None
