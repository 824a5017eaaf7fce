"""SQLite writers of several processes queue on the database's lock file (mssgate.db.tx).

`serve --workers N` commits acceptances from N processes into one SQLite file. Without a
lock spanning processes, their BEGIN IMMEDIATEs collide and SQLite's busy handler sleeps and
retries until its timeout, then fails with `database is locked`. The processes here run with
busy_timeout = 0: any collision fails at once, so the test passes only if every writer
waited on the lock file instead.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy import Engine, func, select

from mssgate.db import open_engine, upgrade
from mssgate.db.schema import spool_messages
from mssgate.db.tx import write

_WRITER = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from sqlalchemy import event
    from mssgate.db import open_engine
    from mssgate.spool import Spool

    url, spool_dir, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    engine = open_engine(url)

    @event.listens_for(engine, "connect")
    def no_busy_wait(connection, _record):
        connection.execute("PRAGMA busy_timeout=0")

    spool = Spool(engine, Path(spool_dir))
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start together

    errors = []

    def sessions(thread):
        try:
            accept_all(thread)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    def accept_all(thread):
        for i in range(count):
            spool.accept(
                queue_id=f"{name}{thread:02d}{i:06d}".upper(),
                content=b"Subject: x\\r\\n\\r\\nx\\r\\n", listener="mta",
                sender="dr.x@hopital-a.test", identity=None, peer=None,
                recipients=[("dr.y@clinique-b.test", "relay")],
            )

    threads = [threading.Thread(target=sessions, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\\n".join(errors) or "done", flush=True)
    """
)


def test_two_processes_accepting_at_once_all_commit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = open_engine(url)
    upgrade(engine)
    per_thread = 40
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, str(tmp_path / "spool"), name, str(per_thread)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("AAAA", "BBBB")
    ]
    try:
        for w in writers:
            assert w.stdout is not None and w.stdout.readline() == b"ready\n"
        for w in writers:
            assert w.stdin is not None
            w.stdin.write(b"go\n")
            w.stdin.flush()
        results = [w.communicate(timeout=300) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, (out, err) in zip(writers, results, strict=True):
        assert w.returncode == 0 and out == b"done\n", err.decode()[-2000:]
    with engine.connect() as conn:
        committed = conn.execute(select(func.count()).select_from(spool_messages)).scalar_one()
    assert committed == 2 * 6 * per_thread
    engine.dispose()


def test_a_write_transaction_holds_the_lock_file(sqlite_engine: Engine) -> None:
    database = sqlite_engine.url.database
    assert database is not None
    lock_file = os.path.realpath(database) + "-writer"
    fd = os.open(lock_file, os.O_RDWR)
    try:
        with write(sqlite_engine):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
            else:
                held = False
                fcntl.flock(fd, fcntl.LOCK_UN)
        assert held, "another process could have written beside this transaction"
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again once committed
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def test_an_unusable_lock_file_leaves_writes_to_sqlite_s_own_lock(tmp_path: Path) -> None:
    """A lock file made by another user (the CLI run as root beside serve) cannot be opened:
    writing goes on, arbitrated by SQLite's busy handler between processes, as before."""
    database = tmp_path / "db.sqlite"
    (tmp_path / "db.sqlite-writer").mkdir()  # os.open fails on it, as on another's 0600 file
    engine = open_engine(f"sqlite:///{database}")
    upgrade(engine)
    with write(engine) as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT x FROM t").scalar_one() == 1
    engine.dispose()


def test_a_writer_stopped_in_another_process_is_waited_for_within_the_bound(
    sqlite_engine: Engine,
) -> None:
    """Another process holding the write lock and never committing (a CLI suspended with
    Ctrl-Z inside its transaction) costs a writer here its bound, then a clear error: not a
    thread blocked for ever with every writer queued behind it."""
    import pytest

    from mssgate.errors import StorageError

    database = sqlite_engine.url.database
    assert database is not None
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import fcntl, os, sys, time
            fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            print("held", flush=True)
            time.sleep(600)
            """
        ), os.path.realpath(database) + "-writer"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with (
            pytest.raises(StorageError, match="another process held the write lock"),
            write(sqlite_engine, wait_seconds=1),
        ):
            pass
    finally:
        holder.kill()
        holder.communicate()
    with write(sqlite_engine):  # the holder gone, its lock went with it
        pass
