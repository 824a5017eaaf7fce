"""What differs between SQLite and PostgreSQL for the queue, behind one small interface.

SQLite has one writer at a time: a transition runs in `mssgate.db.tx.write`, which holds the
write lock before it reads, so two leasers can never read the same ready rows. PostgreSQL
has row locks: candidates are read with FOR UPDATE SKIP LOCKED, so concurrent leasers (other
processes, other hosts) each take different rows without waiting on one another.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Select, Table
from sqlalchemy.dialects import postgresql, sqlite

from mssgate.errors import StorageError


class Backend(Protocol):
    name: str

    def claim(self, query: Select[Any]) -> Select[Any]:
        """Locks the candidate rows a leaser is about to take, skipping others' rows."""

    def lock(self, query: Select[Any]) -> Select[Any]:
        """Locks the row a transition is about to change, waiting for it if needed."""

    def insert_ignore(self, conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        """Inserts unless a unique key already holds the row; True when inserted."""


def _inserted(conn: Connection, statement: Any) -> bool:
    # RETURNING, not rowcount: drivers disagree on rowcount once SQLAlchemy adds its own
    # RETURNING for the generated key.
    return conn.execute(statement).first() is not None


class SqliteBackend:
    name = "sqlite"

    def claim(self, query: Select[Any]) -> Select[Any]:
        return query

    def lock(self, query: Select[Any]) -> Select[Any]:
        return query

    def insert_ignore(self, conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        statement = sqlite.insert(table).values(values).on_conflict_do_nothing()
        return _inserted(conn, statement.returning(*table.primary_key.columns))


class PostgresBackend:
    name = "postgresql"

    def claim(self, query: Select[Any]) -> Select[Any]:
        return query.with_for_update(skip_locked=True)

    def lock(self, query: Select[Any]) -> Select[Any]:
        return query.with_for_update()

    def insert_ignore(self, conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        statement = postgresql.insert(table).values(values).on_conflict_do_nothing()
        return _inserted(conn, statement.returning(*table.primary_key.columns))


def storable(value: str | None, limit: int | None = None) -> str | None:
    """A text value from a message (Subject, filename, Content-Type...) as both databases
    store it: PostgreSQL refuses NUL in text and more than its length in a VARCHAR(n), and a
    refused INSERT is retried as the database's trouble, forever. NUL becomes U+FFFD."""
    if value is None:
        return None
    value = value.replace("\x00", "\ufffd")
    return value if limit is None else value[:limit]


def backend_for(engine: Engine) -> Backend:
    name = engine.dialect.name
    if name == "sqlite":
        return SqliteBackend()
    if name == "postgresql":
        return PostgresBackend()
    raise StorageError(f"the queue does not support the {name!r} database")
