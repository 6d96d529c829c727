"""Collections: RUN, TAGGED, CHAINED (and CALIBRATION), their chains and search paths."""

from __future__ import annotations

import fnmatch
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ..dimensions import unstorable_text
from ..errors import (
    CollectionCycleError,
    CollectionError,
    CollectionTypeError,
    ConflictingDefinitionError,
    MissingCollectionError,
    did_you_mean,
)
from ._db import Database
from .schema import CollectionType, RegistryTables

__all__ = ["CollectionRecord", "CollectionManager", "CollectionArg"]

CollectionArg = str | Sequence[str] | None


@dataclass(frozen=True)
class CollectionRecord:
    """A registered collection."""

    id: int
    name: str
    type: CollectionType
    doc: str | None = None


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


class CollectionManager:
    """Registers collections and resolves collection search paths (with an in-memory cache).

    Parameters
    ----------
    db : `Database`
    tables : `RegistryTables`
    """

    def __init__(self, db: Database, tables: RegistryTables):
        self._db = db
        self._tables = tables
        self._by_name: dict[str, CollectionRecord] = {}
        self._by_id: dict[int, CollectionRecord] = {}
        self._chains: dict[int, tuple[int, ...]] = {}
        self._loaded = False

    def clear_cache(self) -> None:
        self._by_name.clear()
        self._by_id.clear()
        self._chains.clear()
        self._loaded = False

    def _load(self) -> None:
        t = self._tables
        rows = self._db.fetchall(sa.select(t.collection.c.collection_id, t.collection.c.name, t.collection.c.type, t.collection.c.doc))
        chain_rows = self._db.fetchall(
            sa.select(t.collection_chain.c.parent, t.collection_chain.c.child).order_by(
                t.collection_chain.c.parent, t.collection_chain.c.position
            )
        )
        self._by_name.clear()
        self._by_id.clear()
        for cid, name, ctype, doc in rows:
            record = CollectionRecord(cid, name, CollectionType(ctype), doc)
            self._by_name[name] = record
            self._by_id[cid] = record
        chains: dict[int, list[int]] = {}
        for parent, child in chain_rows:
            chains.setdefault(parent, []).append(child)
        self._chains = {p: tuple(c) for p, c in chains.items()}
        self._loaded = True

    def find(self, name: str) -> CollectionRecord | None:
        """Return the record of a collection, or `None` if there is none."""
        if not self._loaded or name not in self._by_name:
            self._load()  # another process may have registered it
        return self._by_name.get(name)

    def get(self, name: str) -> CollectionRecord:
        """Return the record of a collection.

        Raises
        ------
        MissingCollectionError
            If it is not registered.
        """
        if not isinstance(name, str):
            raise CollectionError(f"a collection name must be a string, got {name!r}.")
        record = self.find(name)
        if record is None:
            raise MissingCollectionError(
                f"collection {name!r} does not exist in this repository. {did_you_mean(name, self._by_name)}"
            )
        return record

    def by_id(self, collection_id: int) -> CollectionRecord:
        if collection_id not in self._by_id:
            self._load()
        return self._by_id[collection_id]

    def register(self, name: str, ctype: CollectionType, doc: str | None = None) -> tuple[CollectionRecord, bool]:
        """Register a collection if it does not exist.

        Returns
        -------
        record : `CollectionRecord`
        registered : `bool`
            Whether it was newly registered.

        Raises
        ------
        ConflictingDefinitionError
            If a collection with this name exists with another type.
        """
        if not isinstance(name, str) or not name or _is_pattern(name) or len(name) > 256 or unstorable_text(name):
            raise CollectionError(
                f"invalid collection name {name!r}: use a non-empty string of at most 256 characters without *, ? "
                "or [, NUL characters or invalid Unicode."
            )
        existing = self.find(name)
        if existing is not None:
            if existing.type != ctype:
                raise ConflictingDefinitionError(
                    f"collection {name!r} already exists as a {existing.type.name} collection, not {ctype.name}."
                )
            return existing, False
        t = self._tables
        with self._db.transaction(write=True) as conn:
            cid = conn.execute(
                t.collection.insert().values(name=name, type=int(ctype), doc=doc).returning(t.collection.c.collection_id)
            ).scalar_one()
            if ctype is CollectionType.RUN:
                conn.execute(t.run.insert().values(collection_id=cid, host=socket.gethostname(), created=time.time_ns()))
        record = CollectionRecord(cid, name, ctype, doc)
        self._by_name[name] = record
        self._by_id[cid] = record
        return record, True

    def get_chain(self, parent: str) -> tuple[str, ...]:
        """Return the names of a CHAINED collection's children, in search order."""
        record = self.get(parent)
        if record.type is not CollectionType.CHAINED:
            raise CollectionTypeError(f"collection {parent!r} is a {record.type.name} collection, not CHAINED.")
        return tuple(self.by_id(c).name for c in self._chains.get(record.id, ()))

    def set_chain(self, parent: str, children: Sequence[str], *, flatten: bool = False) -> None:
        """Define the children of a CHAINED collection, replacing any previous definition.

        Raises
        ------
        CollectionCycleError
            If the chain would contain ``parent`` itself, directly or through other chains.
        CollectionTypeError
            If ``parent`` is not CHAINED.
        """
        record = self.get(parent)
        if record.type is not CollectionType.CHAINED:
            raise CollectionTypeError(
                f"collection {parent!r} is a {record.type.name} collection; only CHAINED collections have children."
            )
        child_records = [self.get(c) for c in children]
        if flatten:
            child_records = self.flatten([c.name for c in child_records])
        for child in child_records:
            if child.id == record.id or record.id in {r.id for r in self._descendants(child)}:
                raise CollectionCycleError(
                    f"cannot put {child.name!r} in chain {parent!r}: {parent!r} would then contain itself."
                )
        seen: set[int] = set()
        unique = [c for c in child_records if not (c.id in seen or seen.add(c.id))]
        t = self._tables
        with self._db.transaction(write=True) as conn:
            conn.execute(t.collection_chain.delete().where(t.collection_chain.c.parent == record.id))
            if unique:
                conn.execute(
                    t.collection_chain.insert(),
                    [{"parent": record.id, "position": i, "child": c.id} for i, c in enumerate(unique)],
                )
        self._chains[record.id] = tuple(c.id for c in unique)

    def _descendants(self, record: CollectionRecord) -> list[CollectionRecord]:
        out: list[CollectionRecord] = []
        todo = [record]
        while todo:
            r = todo.pop()
            for cid in self._chains.get(r.id, ()):
                child = self.by_id(cid)
                out.append(child)
                todo.append(child)
        return out

    def flatten(self, names: Iterable[str]) -> list[CollectionRecord]:
        """Expand CHAINED collections into the ordered, de-duplicated list of the collections they search.

        Raises
        ------
        MissingCollectionError
            If a name is not registered.
        """
        out: list[CollectionRecord] = []
        seen: set[int] = set()

        def visit(record: CollectionRecord) -> None:
            if record.type is CollectionType.CHAINED:
                for cid in self._chains.get(record.id, ()):
                    visit(self.by_id(cid))
            elif record.id not in seen:
                seen.add(record.id)
                out.append(record)

        for name in names:
            visit(self.get(name))
        return out

    def resolve_search(self, collections: CollectionArg, *, allow_patterns: bool = False) -> list[CollectionRecord]:
        """Return the RUN/TAGGED/CALIBRATION collections to search, in order, for a collection argument.

        Parameters
        ----------
        collections : `str` or sequence of `str`
            Collection names (CHAINED ones are expanded); glob patterns (``run*``) when
            ``allow_patterns``.

        Raises
        ------
        CollectionError
            If no collections are given, or a pattern is given where a search order is needed.
        """
        if collections is None:
            raise CollectionError(
                "no collections to search: pass collections=... or construct the Butler with collections=[...]."
            )
        names = [collections] if isinstance(collections, str) else list(collections)
        expanded: list[str] = []
        for name in names:
            if isinstance(name, str) and _is_pattern(name):
                if not allow_patterns:
                    raise CollectionError(
                        f"collection pattern {name!r} cannot be used where a search order is needed "
                        "(find_first=True); list the collections explicitly."
                    )
                self._load()
                expanded += sorted(n for n in self._by_name if fnmatch.fnmatchcase(n, name))
            else:
                expanded.append(name)
        return self.flatten(expanded)

    def query(
        self, pattern: str | Sequence[str] = "*", *, types: Iterable[CollectionType] | None = None, flatten_chains: bool = False
    ) -> list[CollectionRecord]:
        """Return collections whose names match glob patterns, sorted by name."""
        self._load()
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        wanted = set(types) if types is not None else set(CollectionType)
        names = sorted(n for n in self._by_name if any(fnmatch.fnmatchcase(n, p) for p in patterns))
        records = [self._by_name[n] for n in names]
        if flatten_chains:
            records = self.flatten(names)
        return [r for r in records if r.type in wanted]

    def parents(self, record: CollectionRecord) -> list[CollectionRecord]:
        """CHAINED collections that list ``record`` directly."""
        return [self.by_id(p) for p, children in self._chains.items() if record.id in children]

    def remove(self, name: str) -> None:
        """Remove a (non-RUN or already emptied) collection and its chain memberships."""
        record = self.get(name)
        parents = self.parents(record)
        if parents:
            raise CollectionError(
                f"collection {name!r} is a child of chained collection(s) {', '.join(p.name for p in parents)}; "
                "remove it from those chains first (butler collection-chain --mode remove)."
            )
        t = self._tables
        with self._db.transaction(write=True) as conn:
            conn.execute(t.collection.delete().where(t.collection.c.collection_id == record.id))
        self._by_name.pop(name, None)
        self._by_id.pop(record.id, None)
        self._chains.pop(record.id, None)
