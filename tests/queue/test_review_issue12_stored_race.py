"""Review of issue 12 D.12: a stored message is never deleted under a row that references it.

`quarantine delete` (the CLI, its own process) forgets the stored message once nothing
references it; serve, meanwhile, may be writing a new reference to the same message (the
same bytes for the same mailbox). On PostgreSQL the delete's check could not see the other
transaction's uncommitted reference, and the message went: a queued document or held entry
pointing at nothing, its e-mail gone."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from mssgate.db.schema import quarantine, stored_messages
from mssgate.documents.errors import QuarantineCode
from mssgate.documents.pipeline import hold_message
from mssgate.queue import DocumentQueue
from mssgate.queue.backend import backend_for
from mssgate.queue.messages import keep_message
from tests.conftest import pg_engine_for
from tests.queue.helpers import RIS_A, SENDER, add_mailboxes, mail


@pytest.mark.postgres
def test_a_reference_written_meanwhile_keeps_the_message(pg_schema: str) -> None:
    from mssgate.db import upgrade

    engine: Engine = pg_engine_for(pg_schema)
    other: Engine = pg_engine_for(pg_schema)  # serve, in another process
    try:
        upgrade(engine)
        add_mailboxes(engine, RIS_A)
        queue = DocumentQueue(engine)
        raw = mail([b"<x/>"])
        now = datetime.now(UTC)
        [held] = hold_message(raw, QuarantineCode.OTHER, "first").outcomes
        held_id, _ = queue.quarantine.hold(
            held, message=raw, mailbox=RIS_A, sender=SENDER, message_id=None, subject=None,
            received_at=now,
        )  # fmt: skip
        deleted = threading.Event()
        with other.connect() as conn, conn.begin():
            ref = keep_message(conn, backend_for(other), mailbox=RIS_A, message=raw, at=now)
            worker = threading.Thread(
                target=lambda: (queue.quarantine.delete(held_id, actor="t"), deleted.set())
            )
            worker.start()
            time.sleep(1.0)  # the delete runs now, or waits for this transaction
            conn.execute(
                quarantine.insert().values(
                    id="f" * 32, dedup_key="e" * 64, received_at=now, mailbox=RIS_A,
                    sender=SENDER, code=906, reason="second", sha256="0" * 64, size=0,
                    content_type="message/rfc822", origin="message", state="held",
                    content=None, message=None, message_ref=ref, updated_at=now,
                )
            )  # fmt: skip
        worker.join(timeout=30)
        assert deleted.is_set()
        with engine.connect() as check:
            kept = check.execute(
                select(stored_messages.c.id).where(stored_messages.c.id == ref)
            ).all()
        assert kept, "the stored message was deleted under a reference"
        assert queue.quarantine.message("f" * 32) == raw
    finally:
        engine.dispose()
        other.dispose()
