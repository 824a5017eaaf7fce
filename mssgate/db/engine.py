"""Engine creation for the embedded default (SQLite) and PostgreSQL."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError

from mssgate.errors import StorageError


def sqlalchemy_url(url: str) -> str:
    """Maps the operator's URL to a driver: `postgresql://` means psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    # WAL lets readers (the API, the CLI) run beside the writer; FULL sync because an audit row
    # or a queue transition acknowledged to a client must survive a power cut.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


# A pooled PostgreSQL connection is tried before use only when it sat idle this long: a
# dropped connection (a server restart, a network cut) is found then and replaced, and the
# caller never sees it. SQLAlchemy's pool_pre_ping tried every checkout: one round trip more
# per transaction (a lease, an ack), for connections that answered a moment before (issue 17).
# One that drops while busy fails its transaction, which SQLAlchemy reports as a disconnect
# (every older pooled connection is then replaced), as the pre-ping could not prevent either.
IDLE_PING_SECONDS = 5.0
RECYCLE_SECONDS = 1800
_IDLE_SINCE = "mssgate.idle_since"


def _idle_since(_dbapi_connection: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    since = record.info.get(_IDLE_SINCE)
    if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
        return  # new, or used a moment ago
    try:
        # Outside any transaction (autocommit), as SQLAlchemy's own pre-ping does.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            dbapi_connection.execute("SELECT 1")
        finally:
            dbapi_connection.autocommit = autocommit
    except Exception as exc:
        # The pool discards this connection and checks out another (a new one if need be).
        raise DisconnectionError(f"pooled connection dropped: {exc}") from exc


def open_engine(url: str) -> Engine:
    """Creates the engine. For SQLite, the folder must exist (the data folder)."""
    try:
        parsed = make_url(sqlalchemy_url(url))
    except ArgumentError:
        raise StorageError(f"invalid database URL {url!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            path = Path(db)
            if not path.parent.is_dir():
                raise StorageError(f"database folder does not exist: {path.parent}")
            # Password hashes and token digests live here: readable by us only. SQLite gives
            # its -wal and -shm files the database file's mode.
            path.touch(mode=0o600, exist_ok=True)
            path.chmod(0o600)
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        # Recycled before an idle-connection timeout (a firewall's, PgBouncer's) cuts them.
        engine = create_engine(parsed, pool_recycle=RECYCLE_SECONDS)
        event.listen(engine.pool, "checkin", _idle_since)
        event.listen(engine.pool, "checkout", _ping_if_idle)
        return engine
    raise StorageError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
