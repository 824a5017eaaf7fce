"""Engine creation for the embedded default (SQLite) and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
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


_WRITES = ("insert", "update", "delete", "replace", "create", "drop", "alter")


class _SqliteWriteLock:
    """One write transaction at a time per process on a SQLite database.

    SQLite admits one writer; a second one waits in SQLite's busy handler, which sleeps
    1, 2, 5, 10... 100 ms between tries. Under load (twenty SMTP sessions committing while the
    delivery worker records deliveries) those sleeps were most of a message's latency. A lock
    of our own wakes the next writer as soon as the previous one has committed. It is taken
    where SQLite takes its write lock (pysqlite begins the transaction at the first write
    statement), so reads never wait: WAL lets them run beside the writer. It is released
    after the DBAPI commit or rollback (SQLAlchemy's commit event comes before it). Reentrant,
    because a thread may open a second connection inside a transaction; the busy handler
    still arbitrates between processes (the CLI beside `serve`).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._holders: dict[int, int] = {}  # id(DBAPI connection) -> thread holding for it

    def before_execute(self, _conn: Connection, cursor: Any, statement: str, *_: Any) -> None:
        key = id(cursor.connection)
        if key in self._holders:
            return
        if statement.lstrip()[:7].lower().startswith(_WRITES):
            self._lock.acquire()
            self._holders[key] = threading.get_ident()

    def release(self, dbapi_connection: Any) -> None:
        raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
        owner = self._holders.pop(id(raw), None)
        if owner is not None and owner == threading.get_ident():
            self._lock.release()

    def checkin(self, dbapi_connection: Any, _record: Any) -> None:
        # Last resort: a connection going back to the pool never keeps the lock.
        self.release(dbapi_connection)

    def install(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self.before_execute)
        event.listen(engine.pool, "checkin", self.checkin)
        dialect = engine.dialect
        for name in ("do_commit", "do_rollback"):
            setattr(dialect, name, self._releasing(getattr(dialect, name)))

    def _releasing(self, finish: Callable[[Any], None]) -> Callable[[Any], None]:
        def wrapper(dbapi_connection: Any) -> None:
            try:
                finish(dbapi_connection)
            finally:
                self.release(dbapi_connection)

        return wrapper


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
        _SqliteWriteLock().install(engine)
        return engine
    if backend == "postgresql":
        return create_engine(parsed, pool_pre_ping=True)
    raise StorageError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
