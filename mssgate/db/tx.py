"""The one way to write to the database: `with write(engine) as conn:`.

Every writer (spool, delivery, queue, quarantine, audit, directory, CLI) goes through here, so
every write transaction takes its locks in one order:

1. the process's write lock (SQLite only): one writer thread at a time in this process;
2. (SQLite in a file) the database's writer lock file, `<database>-writer`: one writer
   process at a time (`serve --workers`: several acceptance processes, the CLI beside them);
3. SQLite's own write lock, by `BEGIN IMMEDIATE`, before the transaction reads anything;
4. (PostgreSQL) row locks, taken by the statements themselves.

Why the order matters: SQLite admits one writer. When some transactions took SQLite's lock
first (BEGIN IMMEDIATE) and the process lock later, while others took the process lock first
and then waited for SQLite's, each side held what the other wanted; the second waited in
SQLite's busy handler until `database is locked`. With one order there is no cycle, and a
writer waits on a plain lock that wakes it as soon as the previous writer has committed,
instead of sleeping in the busy handler. Between processes the lock file plays that part:
a writer of another process tries flock(2) again every 0.5 to 5 ms until the holder commits
(within the same 60-s bound as the process lock), where SQLite's busy handler would sleep and
retry up to 100 ms a try, and fail with `database is locked` past its timeout. The busy
handler is left for writers that do not come through here (a migration), and for the
readers' WAL checkpoints.

A `write()` inside another `write()` on the same thread and engine joins the outer
transaction (same connection, committed with it): opening a second SQLite connection there
would wait on the lock its own thread holds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

from mssgate.db.prepared import Prepared
from mssgate.errors import StorageError

log = logging.getLogger(__name__)

# How long a writer waits for the process lock before it gives up. Long on purpose: a writer
# that gives up turns into a 451 or a 503, and the longest transactions (an annuaire batch, a
# group commit of accepted messages) take well under a second.
LOCK_WAIT_SECONDS = 60.0


class _WriterFile:
    """The lock file of one SQLite database, shared by every engine of this process on it.

    flock(2) locks belong to an open file: two engines of one process holding their own
    descriptors would exclude each other, and a thread writing through one engine inside
    another engine's transaction would then wait on itself for ever. One descriptor per
    database, held by one thread at a time (re-entered by that thread), avoids both.
    """

    def __init__(self, path: str) -> None:
        self.fd = -1  # __del__ runs even when the open below raises
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.mutex = threading.Lock()
        self.owner: int | None = None
        self.depth = 0

    def acquire(self, wait_seconds: float) -> None:
        me = threading.get_ident()
        if self.owner == me:
            self.depth += 1
            return
        deadline = time.monotonic() + wait_seconds
        if not self.mutex.acquire(timeout=wait_seconds):
            raise StorageError(f"database busy: no write slot within {wait_seconds:.0f} s")
        try:
            self._lock_file(deadline, wait_seconds)
        except BaseException:
            self.mutex.release()
            raise
        self.owner, self.depth = me, 1

    def _lock_file(self, deadline: float, wait_seconds: float) -> None:
        # Not a blocking flock: it has no timeout, and a writer of another process that
        # stopped inside its transaction (a CLI suspended with Ctrl-Z) would hold this thread,
        # and every writer queued behind it, for ever. Tried again at short intervals (0.5 ms,
        # doubling to 5 ms: the other writer's commit takes about a millisecond), until the
        # same bound as the process lock.
        pause = 0.0005
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"database busy: another process held the write lock {wait_seconds:.0f} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.005)

    def __del__(self) -> None:
        # Gone with the last engine on the database: a test run opens thousands of them.
        if self.fd >= 0:
            os.close(self.fd)

    def release(self) -> None:
        self.depth -= 1
        if self.depth:
            return
        self.owner = None
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.mutex.release()


_writer_files: weakref.WeakValueDictionary[str, _WriterFile] = weakref.WeakValueDictionary()
_writer_files_guard = threading.Lock()


def _writer_file(engine: Engine) -> _WriterFile | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    path = os.path.realpath(database) + "-writer"
    with _writer_files_guard:
        found = _writer_files.get(path)
        if found is None:
            try:
                found = _WriterFile(path)
            except OSError as exc:
                # Made by another user (a CLI run as root, say) or a read-only folder: the
                # writers of this process go without it, SQLite's busy handler between
                # processes as before the lock file existed.
                log.warning("SQLite writer lock file %s unusable: %s", path, exc.strerror)
                return None
            _writer_files[path] = found
        return found


class _EngineWriteState:
    def __init__(self, engine: Engine) -> None:
        sqlite = engine.dialect.name == "sqlite"
        self.lock: threading.Lock | None = threading.Lock() if sqlite else None
        self.file = _writer_file(engine)
        self.local = threading.local()


_states: weakref.WeakKeyDictionary[Engine, _EngineWriteState] = weakref.WeakKeyDictionary()
_states_guard = threading.Lock()


def _state(engine: Engine) -> _EngineWriteState:
    with _states_guard:
        state = _states.get(engine)
        if state is None:
            state = _EngineWriteState(engine)
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
        if state.file is not None:
            state.file.acquire(wait_seconds)
        try:
            with _transaction(conn, state, immediate=lock is not None):
                yield
        finally:
            if state.file is not None:
                state.file.release()
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def _transaction(conn: Connection, state: _EngineWriteState, *, immediate: bool) -> Iterator[None]:
    with conn.begin():
        if immediate:
            # pysqlite would begin a deferred transaction at the first write, so a read
            # before it could act on a snapshot that a writer of another process changes.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        state.local.conn = conn
        try:
            yield
        finally:
            state.local.conn = None


@contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """A part of the current write transaction that may fail alone (one queue transition of a
    group, mssgate.queue.transitions): rolled back to its start if the block raises, and the
    exception goes on; kept, to commit with the transaction, otherwise."""
    # Never released: COMMIT releases every savepoint anyway, and a RELEASE is one round trip
    # per transition of a group on PostgreSQL (issue 17). Savepoints of one name nest (both
    # databases); ROLLBACK TO goes back to the newest, undoing this block's work only. Run on
    # the driver's cursor: SQLAlchemy's begin_nested compiled the SAVEPOINT anew each time, a
    # sixth of a lease+ack's CPU on SQLite.
    _SAVEPOINT.rows(conn, {})
    try:
        yield
    except BaseException:
        _ROLLBACK_TO.rows(conn, {})
        raise


_SAVEPOINT = Prepared(text("SAVEPOINT mssgate_part"))
_ROLLBACK_TO = Prepared(text("ROLLBACK TO SAVEPOINT mssgate_part"))
