"""What a DSN may change in the outbound store (SQLite and PostgreSQL): the copy it names
(ENVID, else Message-ID) to the recipient it names, sent from the mailbox it reached; the
first DSN decides; a copy's status then reads `delivered` or `failed` with the DSN's code."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssgate.db import open_engine, upgrade
from mssgate.outbound.store import NewRecipient, OutboundStore
from tests.conftest import pg_engine_for

RIS = "ris@clinique-b.test"
BOB = "bob@hopital-a.test"
AT = datetime(2026, 1, 2, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OutboundStore]:
    engine: Engine
    if request.param == "sqlite":
        engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    else:
        engine = pg_engine_for(request.getfixturevalue("pg_schema"))
    upgrade(engine)
    found = OutboundStore(engine)
    found.record(
        outbound_id="0A", consumer_id=1, consumer_name="ris", control_id="C1",
        event="MDM^T02", sender=RIS, unique_id=None, submitted_at=AT, ack="MSH|",
        recipients=[NewRecipient(BOB, "SPOOL1", "<copy-1@clinique-b.test>")],
    )  # fmt: skip
    yield found
    engine.dispose()


def mark(store: OutboundStore, **changes: object) -> str | None:
    fields: dict[str, object] = {
        "mailbox": RIS, "recipient": BOB, "action": "delivered", "status": "2.0.0",
        "detail": None, "at": AT, "envid": "SPOOL1", "message_id": None,
    }  # fmt: skip
    return store.mark_delivery(**{**fields, **changes})  # type: ignore[arg-type]


def test_only_the_named_copy_from_its_mailbox_to_its_recipient(store: OutboundStore) -> None:
    assert mark(store, mailbox="other@clinique-b.test") is None
    assert mark(store, recipient="alice@hopital-a.test") is None
    assert mark(store, envid="SPOOL2") is None
    assert mark(store, envid=None) is None  # nothing names a copy
    assert mark(store, envid=None, message_id="<copy-2@clinique-b.test>") is None
    status = store.status(1, "0A")
    assert status is not None and status.recipients[0].status == "queued"


def test_the_first_dsn_decides(store: OutboundStore) -> None:
    detail = "550 5.2.2 mailbox full"
    assert mark(store, envid=None, message_id="<copy-1@clinique-b.test>", action="failed",
                status="5.2.2", detail=detail) == "0A"  # fmt: skip
    assert mark(store) is None  # a later success changes nothing
    status = store.status(1, "0A")
    assert status is not None
    [r] = status.recipients
    assert (r.status, r.code, r.detail, r.reply_code) == ("failed", "5.2.2", detail, 550)


def test_the_first_dsn_decides_when_two_arrive_at_once(store: OutboundStore) -> None:
    """Two DSNs for one copy at once (a success and a failure, or one delivered twice): the
    second read the copy undecided before the first's lock, waited for it, then overwrote its
    decision (PostgreSQL, read committed). Here the first holds the message's lock while the
    second looks for the copy."""
    import threading
    import time

    from sqlalchemy import update

    from mssgate.db.schema import outbound_recipients
    from mssgate.db.tx import write

    second: list[str | None] = []
    worker = threading.Thread(
        target=lambda: second.append(
            mark(store, action="failed", status="5.2.2", detail="552 5.2.2 mailbox full")
        )
    )
    with write(store._engine) as conn:
        store._lock_message(conn, "0A")
        worker.start()
        time.sleep(0.5)  # the second finds the copy undecided, then waits for this lock
        conn.execute(
            update(outbound_recipients)
            .where(outbound_recipients.c.outbound_id == "0A")
            .values(dsn_action="delivered", dsn_status="2.0.0", dsn_at=AT)
        )
    worker.join(10)
    assert second == [None]
    status = store.status(1, "0A")
    assert status is not None and status.recipients[0].status == "delivered"
