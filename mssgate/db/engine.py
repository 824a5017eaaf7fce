"""Engine creation for the embedded default (SQLite) and PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

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
        return create_engine(parsed, pool_pre_ping=True)
    raise StorageError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
