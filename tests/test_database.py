"""Schema migrations and the directory on both backends (SQLite here, PostgreSQL when given)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from mssgate import audit
from mssgate.db import open_engine, upgrade
from mssgate.db.migrate import current_revision, head_revision
from mssgate.db.schema import metadata
from mssgate.db.tx import write
from mssgate.directory import Directory
from mssgate.directory.models import NewProfessional
from mssgate.errors import Conflict, StorageError

PG_URL = os.environ.get("MSSGATE_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def test_migrations_produce_exactly_the_declared_schema(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    upgrade(engine)  # a second run is a no-op


def test_directory_round_trip(engine: Engine) -> None:
    d = Directory(engine, actor="test")
    d.domains.add_local("hopital-a.test")
    new = NewProfessional(address="Dr.A@hopital-a.test", display_name="A", idnat="99700367909")
    prof = d.professionals.add(new, password="a long enough password")
    assert prof.address == "dr.a@hopital-a.test" and prof.idnat == "899700367909"
    assert prof.created_at.tzinfo is not None
    with pytest.raises(Conflict):
        d.professionals.add(new)
    assert d.professionals.authenticate("dr.a@hopital-a.test", "a long enough password")
    d.professionals.suspend("dr.a@hopital-a.test")
    assert d.professionals.get("dr.a@hopital-a.test").state == "suspended"
    report = audit.verify(engine)
    assert report.ok and report.entries == 3


def test_concurrent_appenders_never_fork_the_chain(engine: Engine) -> None:
    def append(i: int) -> None:
        with engine.begin() as conn:
            audit.append(conn, actor="t", action="test.concurrent", subject=str(i))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(append, range(80)))
    report = audit.verify(engine)
    assert report.ok, report.problems
    assert report.entries == report.head_seq == 80


def test_a_rolled_back_change_leaves_no_audit_row(engine: Engine) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), engine.begin() as conn:
        audit.append(conn, actor="t", action="x", subject="y")
        raise Boom
    assert audit.verify(engine).entries == 0


def test_bad_database_urls(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="invalid database URL"):
        open_engine("not a url")
    with pytest.raises(StorageError, match="unsupported database"):
        open_engine("mysql://x@y/z")
    with pytest.raises(StorageError, match="does not exist"):
        open_engine(f"sqlite:///{tmp_path}/missing/db.sqlite")


def test_sqlite_readers_pass_a_held_write_lock_and_writers_queue(tmp_path: Path) -> None:
    import threading

    from sqlalchemy import text

    engine = open_engine(f"sqlite:///{tmp_path}/lock.db")
    with write(engine) as conn:
        conn.execute(text("create table t (x integer)"))
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first_writer() -> None:
        with write(engine) as conn:
            conn.execute(text("insert into t values (1)"))
            holding.set()
            release.wait(10)
            order.append("first commits")

    def second_writer() -> None:
        with write(engine) as conn:
            conn.execute(text("insert into t values (2)"))
            order.append("second writes")

    one = threading.Thread(target=first_writer)
    one.start()
    assert holding.wait(10)
    # A read does not wait for the writer (WAL): it would block here if it did.
    reader_done = threading.Event()

    def reader() -> None:
        with engine.connect() as conn:
            conn.execute(text("select count(*) from t")).scalar_one()
        reader_done.set()

    threading.Thread(target=reader).start()
    assert reader_done.wait(5)
    two = threading.Thread(target=second_writer)
    two.start()
    two.join(0.3)
    assert two.is_alive(), "the second writer went in while the first held the lock"
    release.set()
    one.join(10)
    two.join(10)
    assert order == ["first commits", "second writes"]


def test_sqlite_many_concurrent_writers_never_hit_busy(tmp_path: Path) -> None:
    from sqlalchemy import event, text

    engine = open_engine(f"sqlite:///{tmp_path}/busy.db")

    def no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=0")  # contention would now raise

    event.listen(engine, "connect", no_busy_wait)
    with write(engine) as conn:
        conn.execute(text("create table t (x integer)"))

    def one_writer(i: int) -> None:
        with write(engine) as conn:
            conn.execute(text("select count(*) from t")).scalar_one()
            conn.execute(text("insert into t values (:i)"), {"i": i})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one_writer, range(400)))
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from t")).scalar_one() == 400


def test_sqlite_transactions_that_read_first_never_deadlock_with_writers(tmp_path: Path) -> None:
    """The lock-order inversion of issue 12 A.1: queue transitions took SQLite's lock first
    (BEGIN IMMEDIATE) and the process lock at their first write, while spool writes took the
    process lock first; each side waited for the other until `database is locked`. With one
    order for every writer, no writer ever reaches SQLite's busy handler inside one process."""
    import threading

    from sqlalchemy import event, text

    engine = open_engine(f"sqlite:///{tmp_path}/order.db")

    def no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    event.listen(engine, "connect", no_busy_wait)
    with write(engine) as conn:
        conn.execute(text("create table t (x integer)"))
    errors: list[BaseException] = []

    def queue_like(i: int) -> None:  # reads, then writes what it read
        with write(engine) as conn:
            n = conn.execute(text("select count(*) from t")).scalar_one()
            threading.Event().wait(0.0005)
            conn.execute(text("insert into t values (:n)"), {"n": n + i})

    def spool_like(i: int) -> None:  # writes at once
        with write(engine) as conn:
            conn.execute(text("insert into t values (:i)"), {"i": -i})

    def run(fn: Any, i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # collected: a thread's exception would be lost
            errors.append(exc)

    with ThreadPoolExecutor(8) as pool:
        for i in range(300):
            pool.submit(run, queue_like if i % 2 else spool_like, i)
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from t")).scalar_one() == 300


def test_nested_write_joins_the_outer_transaction(tmp_path: Path) -> None:
    from sqlalchemy import text

    engine = open_engine(f"sqlite:///{tmp_path}/nested.db")
    with write(engine) as conn:
        conn.execute(text("create table t (x integer)"))
    with pytest.raises(RuntimeError), write(engine) as outer:
        outer.execute(text("insert into t values (1)"))
        with write(engine) as inner:
            assert inner is outer
            inner.execute(text("insert into t values (2)"))
        raise RuntimeError("the outer transaction fails: both rows go")
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from t")).scalar_one() == 0


def test_every_writer_goes_through_the_write_api() -> None:
    """No module opens a write transaction of its own: one place, one lock order."""
    import re

    root = Path(__file__).resolve().parent.parent / "mssgate"
    offenders = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).as_posix() == "db/tx.py":
            continue
        text = path.read_text()
        if re.search(r"\.begin\(\)|BEGIN IMMEDIATE|\.commit\(\)", text):
            offenders.append(path.relative_to(root).as_posix())
    assert offenders == []


def test_a_writer_waits_for_a_transaction_paused_between_its_read_and_its_write(
    tmp_path: Path,
) -> None:
    """The shape of issue 12 A.1, made deterministic: a queue-like transaction reads, pauses,
    then writes; a spool-like one writes meanwhile. SQLite's busy handler is off, so before
    the write API (the queue's BEGIN IMMEDIATE held SQLite's lock, the spool's commit held the
    process's) the second failed at once with `database is locked`; now it waits its turn."""
    import threading

    from sqlalchemy import event, text

    engine = open_engine(f"sqlite:///{tmp_path}/pause.db")
    with write(engine) as conn:
        conn.execute(text("create table t (x integer)"))
    engine.dispose()
    event.listen(engine, "connect", lambda dbapi, _r: dbapi.execute("PRAGMA busy_timeout=0"))
    read_done, order, errors = threading.Event(), [], []

    def queue_like() -> None:
        with write(engine) as conn:
            conn.execute(text("select count(*) from t")).scalar_one()
            read_done.set()
            threading.Event().wait(0.3)
            conn.execute(text("insert into t values (1)"))
            order.append("queue")

    def spool_like() -> None:
        assert read_done.wait(10)
        try:
            with write(engine) as conn:
                conn.execute(text("insert into t values (2)"))
                order.append("spool")
        except Exception as exc:  # collected: the thread's exception would be lost
            errors.append(exc)

    threads = [threading.Thread(target=queue_like), threading.Thread(target=spool_like)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert order == ["queue", "spool"]
