"""mssgate.db.prepared: statements run on the driver's cursor must store, read and fail exactly
as SQLAlchemy's own execution of the same statement does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.exc import IntegrityError

from mssgate.db.prepared import Prepared
from mssgate.db.schema import audit
from mssgate.db.tx import write

_ENTRY = {
    "actor": "test",
    "action": "test.prepared",
    "subject": "s",
    "detail": "{}",
    "prev_hash": "0" * 64,
    "hash": "1" * 64,
}


def test_values_are_stored_and_read_as_sqlalchemy_stores_and_reads_them(engine: Engine) -> None:
    at = datetime(2026, 12, 5, 3, 4, 5, 678901, tzinfo=UTC)
    with write(engine) as conn:
        Prepared(audit.insert()).many(conn, [{**_ENTRY, "seq": 900001, "at": at}])
        conn.execute(audit.insert(), [{**_ENTRY, "seq": 900002, "at": at}])
    with engine.connect() as conn:
        # The same text (SQLite) or value, whichever way it was written.
        by_sqlalchemy = conn.execute(
            select(audit.c.seq, audit.c.at).where(audit.c.seq >= 900001).order_by(audit.c.seq)
        ).all()
        raw = conn.exec_driver_sql("SELECT at FROM audit WHERE seq >= 900001 ORDER BY seq").all()
        read = Prepared(
            select(audit.c.seq, audit.c.at).where(audit.c.seq >= 900001).order_by(audit.c.seq),
            (audit.c.seq, audit.c.at),
        ).rows(conn, {})
    assert raw[0] == raw[1]
    assert [tuple(row) for row in read] == [tuple(row) for row in by_sqlalchemy]
    assert read[0].seq == 900001 and read[0].at.replace(tzinfo=UTC) == at
    # A datetime bound in a comparison is compared as SQLAlchemy would (SQLite: as text).
    later = Prepared(
        select(audit.c.seq).where(audit.c.seq >= 900001, audit.c.at > bindparam("when")),
        (audit.c.seq,),
    )
    with engine.connect() as conn:
        assert later.rows(conn, {"when": at - timedelta(microseconds=1)}) != []
        assert later.rows(conn, {"when": at}) == []


def test_a_driver_error_is_sqlalchemys_and_the_transaction_rolls_back(engine: Engine) -> None:
    insert = Prepared(audit.insert())
    at = datetime.now(UTC)
    with pytest.raises(IntegrityError), write(engine) as conn:
        insert.many(conn, [{**_ENTRY, "seq": 900010, "at": at}])
        insert.many(conn, [{**_ENTRY, "seq": 900010, "at": at}])
    with engine.connect() as conn:
        assert conn.execute(select(audit.c.seq).where(audit.c.seq == 900010)).all() == []


def test_statement_listeners_see_prepared_statements(engine: Engine) -> None:
    from sqlalchemy import event

    seen: list[str] = []

    def one(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(statement)

    statement = Prepared(update(audit).where(audit.c.seq == -1).values(actor="x"))
    event.listen(engine, "before_cursor_execute", one)
    try:
        with write(engine) as conn:
            statement.rows(conn, {})
    finally:
        event.remove(engine, "before_cursor_execute", one)
    assert any(s.startswith("UPDATE audit SET actor") for s in seen)


@pytest.mark.postgres
def test_a_dropped_connection_is_reported_as_a_disconnect_and_replaced(
    pg_engine: Engine,
) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    read = Prepared(select(audit.c.seq).limit(1), (audit.c.seq,))
    with pg_engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with pg_engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        with pytest.raises(OperationalError) as failed:
            read.rows(conn, {})
        # As SQLAlchemy's own execution reports it: the pool drops that connection.
        assert failed.value.connection_invalidated
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        read.rows(conn, {})


@pytest.mark.parametrize("how", ["sqlalchemy", "prepared"])
def test_one_disconnect_replaces_every_older_pooled_connection(pg_engine: Engine, how: str) -> None:
    """After a PostgreSQL restart every pooled connection is dead: the first statement to see
    it invalidates the pool (as SQLAlchemy's own execution does), so the next checkout gets a
    new connection instead of failing one more transaction per pooled connection."""
    import os

    import psycopg
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    read = Prepared(select(audit.c.seq).limit(1), (audit.c.seq,))
    first, second = pg_engine.connect(), pg_engine.connect()
    pids = [c.execute(text("SELECT pg_backend_pid()")).scalar_one() for c in (first, second)]
    first.close()
    second.close()  # both back in the pool, used a moment ago (no ping at checkout)
    with psycopg.connect(os.environ["MSSGATE_TEST_POSTGRES_URL"], autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pg_engine.connect() as conn, pytest.raises(OperationalError):
        if how == "prepared":
            read.rows(conn, {})
        else:
            conn.execute(select(audit.c.seq).limit(1)).all()
    with pg_engine.connect() as conn:  # the other pooled connection died too: replaced
        read.rows(conn, {})
