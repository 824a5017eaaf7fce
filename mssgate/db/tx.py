"""The one way to write to the database: `with write(engine) as conn:`.

Every writer (spool, delivery, queue, quarantine, audit, directory, CLI) goes through here, so
every write transaction takes its locks in one order:

1. the process's write lock (SQLite only): one writer thread at a time in this process;
2. SQLite's own write lock, by `BEGIN IMMEDIATE`, before the transaction reads anything;
3. (PostgreSQL) row locks, taken by the statements themselves.

Why the order matters: SQLite admits one writer. When some transactions took SQLite's lock
first (BEGIN IMMEDIATE) and the process lock later, while others took the process lock first
and then waited for SQLite's, each side held what the other wanted; the second waited in
SQLite's busy handler until `database is locked`. With one order there is no cycle, and a
writer waits on a plain lock that wakes it as soon as the previous writer has committed,
instead of sleeping in the busy handler. The busy handler still arbitrates between processes
(the CLI beside `serve`), which is the only contention left for it.

A `write()` inside another `write()` on the same thread and engine joins the outer
transaction (same connection, committed with it): opening a second SQLite connection there
would wait on the lock its own thread holds.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from mssgate.errors import StorageError

# How long a writer waits for the process lock before it gives up. Long on purpose: a writer
# that gives up turns into a 451 or a 503, and the longest transactions (an annuaire batch, a
# group commit of accepted messages) take well under a second.
LOCK_WAIT_SECONDS = 60.0


class _EngineWriteState:
    def __init__(self, sqlite: bool) -> None:
        self.lock: threading.Lock | None = threading.Lock() if sqlite else None
        self.local = threading.local()


_states: weakref.WeakKeyDictionary[Engine, _EngineWriteState] = weakref.WeakKeyDictionary()
_states_guard = threading.Lock()


def _state(engine: Engine) -> _EngineWriteState:
    with _states_guard:
        state = _states.get(engine)
        if state is None:
            state = _EngineWriteState(engine.dialect.name == "sqlite")
            _states[engine] = state
        return state


def in_write(engine: Engine) -> bool:
    """True while this thread holds a write transaction on the engine."""
    return getattr(_state(engine).local, "conn", None) is not None


@contextmanager
def write(engine: Engine, *, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[Connection]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    outer: Connection | None = getattr(_state(engine).local, "conn", None)
    if outer is not None:
        yield outer
        return
    with engine.connect() as conn, write_on(conn, wait_seconds=wait_seconds):
        yield conn


@contextmanager
def write_on(conn: Connection, *, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """A write transaction on a connection the caller keeps across several transactions (one
    that holds a temporary table, say). The connection must have no transaction open."""
    engine = conn.engine
    state = _state(engine)
    if getattr(state.local, "conn", None) is not None:
        raise StorageError("a write transaction is already open on this thread")
    lock = state.lock
    if lock is not None and not lock.acquire(timeout=wait_seconds):
        raise StorageError(f"database busy: no write slot within {wait_seconds:.0f} s")
    try:
        with conn.begin():
            if lock is not None:
                # pysqlite would begin a deferred transaction at the first write, so a read
                # before it could act on a snapshot that a writer of another process changes.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            state.local.conn = conn
            try:
                yield
            finally:
                state.local.conn = None
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """A part of the current write transaction that may fail alone (one queue transition of a
    group, mssgate.queue.transitions): rolled back to its start if the block raises, and the
    exception goes on; kept, to commit with the transaction, otherwise."""
    if conn.dialect.name == "postgresql":
        # Never released: COMMIT releases every savepoint anyway, and a RELEASE is one round
        # trip per transition of a group (issue 17). Savepoints of one name nest; ROLLBACK TO
        # goes back to the newest, undoing this block's work only.
        conn.exec_driver_sql("SAVEPOINT mssgate_part")
        try:
            yield
        except BaseException:
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT mssgate_part")
            raise
        return
    nested = conn.begin_nested()
    try:
        yield
    except BaseException:
        nested.rollback()
        raise
    nested.commit()
