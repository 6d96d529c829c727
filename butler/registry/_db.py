"""Database connection and transactions of the registry (SQLite or PostgreSQL via SQLAlchemy Core)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy
from sqlalchemy import event

from ..errors import ConfigError, ReadOnlyRepositoryError

__all__ = ["Database"]

_LOG = logging.getLogger("butler.registry")
_CHUNK = 20_000  # rows per executemany call in bulk inserts


class Database:
    """One connection to the registry database and nesting-aware transactions.

    Parameters
    ----------
    url : `str`
        A SQLAlchemy URL (``sqlite:///path`` or ``postgresql://...``).
    busy_timeout : `float`, optional
        Seconds a SQLite connection waits for another writer's lock.
    writeable : `bool`, optional
        Whether write transactions are allowed.

    Notes
    -----
    SQLite runs in WAL mode (readers never block the writer) with foreign keys enforced.  Write
    transactions start with ``BEGIN IMMEDIATE`` so that two writers queue on the lock instead of
    failing on a lock upgrade.
    """

    def __init__(self, url: str, *, busy_timeout: float = 30.0, writeable: bool = True):
        try:
            self.engine = sqlalchemy.create_engine(
                url,
                connect_args={"timeout": busy_timeout} if url.startswith("sqlite") else {},
                poolclass=sqlalchemy.pool.NullPool if url.startswith("sqlite") else None,
            )
        except (sqlalchemy.exc.ArgumentError, ImportError) as err:
            raise ConfigError(f"cannot use registry database URL {url!r}: {err}") from None
        self.url = url
        self.writeable = writeable
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            event.listen(self.engine, "connect", _configure_sqlite)
        try:
            self._conn = self.engine.connect()
        except sqlalchemy.exc.OperationalError as err:
            raise ConfigError(f"cannot connect to the registry database {url!r}: {err.orig}") from None
        self._insert_plans: dict[tuple[str, tuple[str, ...]], tuple] = {}

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
        self.engine.dispose()

    @property
    def connection(self) -> sqlalchemy.Connection:
        return self._conn

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False, savepoint: bool = False) -> Iterator[sqlalchemy.Connection]:
        """Run a block in a transaction, nested in the current one if there is one.

        Parameters
        ----------
        write : `bool`
            Whether the block writes (takes the write lock at once on SQLite).
        savepoint : `bool`
            When nested, whether to wrap the block in a savepoint so its failure can be caught
            without aborting the outer transaction.
        """
        conn = self._conn
        if write and not self.writeable:
            raise ReadOnlyRepositoryError(
                "this repository was opened read-only (writeable=False); nothing was written. Open it with "
                "Butler(..., writeable=True) to change it."
            )
        if conn.in_transaction():
            # SQLite keeps a transaction usable after a failed statement; PostgreSQL needs a savepoint
            # to go on (e.g. to query what a duplicate insert collided with).
            if savepoint and not self.is_sqlite:
                with conn.begin_nested():
                    yield conn
            else:
                yield conn
            return
        with conn.begin():
            if self.is_sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
            yield conn

    def insert_rows(
        self, conn: sqlalchemy.Connection, table: sqlalchemy.Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """Insert many rows (tuples in ``columns`` order) with one compiled statement per chunk.

        The statement is compiled once with bound parameters and executed with the driver's
        ``executemany``, bypassing SQLAlchemy's per-row parameter construction (10^6-row inserts);
        column types' bind processors (e.g. UUID -> text on SQLite) are still applied.
        """
        key = (table.name, tuple(columns))
        plan = self._insert_plans.get(key)
        if plan is None:
            compiled = table.insert().compile(dialect=self.engine.dialect, column_keys=list(columns))
            names = list(compiled.positiontup) if compiled.positional else list(compiled.params)
            order = [list(columns).index(n) for n in names]
            processors = [table.c[n].type.bind_processor(self.engine.dialect) for n in names]
            processed = [(i, p) for i, p in enumerate(processors) if p is not None]
            plan = (compiled.string, compiled.positional, names, order, processed, order == list(range(len(order))))
            self._insert_plans[key] = plan
        sql, positional, names, order, processed, identity = plan

        def convert(row: Sequence[Any]) -> Any:
            values = list(row) if identity else [row[i] for i in order]
            for i, p in processed:
                values[i] = p(values[i])
            return tuple(values) if positional else dict(zip(names, values))

        chunk: list[Any] = []
        for row in rows:
            chunk.append(convert(row))
            if len(chunk) == _CHUNK:
                conn.exec_driver_sql(sql, chunk)
                chunk = []
        if chunk:
            conn.exec_driver_sql(sql, chunk)

    def fetchall(self, statement: Any, parameters: Any = None) -> list[sqlalchemy.Row]:
        """Execute a query inside the current (or a new read) transaction and return all rows."""
        with self.transaction() as conn:
            return conn.execute(statement, parameters).fetchall()


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from the sqlite3 module, so BEGIN / SAVEPOINT are ours.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except Exception:  # e.g. a read-only file system: stay in the default journal mode
        _LOG.debug("could not switch SQLite to WAL mode", exc_info=True)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()
