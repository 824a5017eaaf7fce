"""The original message is stored once, referenced by its documents (issue 12 item 12).

Before: every queued document's HL7 MDM carried the whole e-mail (base64, OBX-2) and every
quarantined document kept a copy of the whole message: 1.7 MiB of mail added 232 MiB to the
database. Now the message is one row; an MDM gets its e-mail back when it is read, and a
quarantined entry reads the message through its reference. Rows written before the change
(message inline) still read."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from mssgate.db.schema import quarantine, queue_contents
from mssgate.db.tx import write
from mssgate.queue import DocumentQueue
from mssgate.queue.hl7mdm import parse_mdm
from tests.documents.factory import CdaSpec, make_cda
from tests.queue.helpers import RIS_A, SENDER, add_consumer, cda, deliver, mail


def _blob_bytes(engine: Engine) -> int:
    with engine.connect() as conn:
        hl7 = conn.execute(select(func.sum(func.length(queue_contents.c.hl7)))).scalar_one()
        held = conn.execute(
            select(func.coalesce(func.sum(func.length(quarantine.c.message)), 0))
        ).scalar_one()
    return int(hl7) + int(held)


def test_many_documents_and_holds_keep_one_copy_of_the_message(
    engine: Engine, queue: DocumentQueue
) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    padding = secrets.token_hex(100_000).encode()  # a 200 kB attachment that is no document
    documents = [cda(n) for n in range(10)] + [
        make_cda(CdaSpec(doc_root=f"1.2.250.1.999.8.{n}", include_ins=False)) for n in range(5)
    ]
    raw = mail([*documents, padding])
    ids = deliver(queue, raw)
    assert len(ids) == 15
    held = queue.quarantine.entries()
    assert len(held) == 5
    # Fifteen references to the message, not fifteen copies of it.
    assert _blob_bytes(engine) < len(raw), _blob_bytes(engine)
    for entry in held:
        assert queue.quarantine.message(entry.id) == raw
        assert not entry.encrypted
    for doc_id in ids[:10]:
        hl7 = parse_mdm(queue.hl7(consumer, doc_id).data.decode())
        obx2 = next(s for s in hl7.segments("OBX") if str(s[1]) == "2")
        assert base64.b64decode(str(obx2[5]).split("^")[4]) == raw


def test_a_row_written_before_the_change_still_reads(engine: Engine, queue: DocumentQueue) -> None:
    raw = mail([make_cda(CdaSpec(include_ins=False))])
    now = datetime.now(UTC)
    with write(engine) as conn:
        conn.execute(
            quarantine.insert().values(
                id="0" * 32,
                dedup_key="1" * 64,
                received_at=now,
                mailbox=RIS_A,
                sender=SENDER,
                message_id=None,
                subject=None,
                code=903,
                reason="old",
                sha256="2" * 64,
                size=3,
                content_type="text/xml",
                origin="doc0.xml",
                document=None,
                state="held",
                content=b"old",
                message=raw,
                updated_at=now,
            )
        )
    [entry] = queue.quarantine.entries()
    assert queue.quarantine.message(entry.id) == raw
    assert queue.quarantine.content(entry.id) == b"old"
    assert not entry.encrypted


def test_a_message_held_whole_is_stored_once(engine: Engine, queue: DocumentQueue) -> None:
    from mssgate.documents import DocumentLimits
    from mssgate.queue import ingest_message

    raw = mail([cda(n) for n in range(3)])
    ingest_message(
        queue, raw, mailbox=RIS_A, sender=SENDER, message_id=None, subject=None,
        received_at=datetime.now(UTC), limits=DocumentLimits(max_message_documents=2),
        allow_test_oids=True,
    )  # fmt: skip
    [entry] = queue.quarantine.entries()
    assert entry.origin == "message" and "per message" in entry.reason
    assert queue.quarantine.content(entry.id) == raw == queue.quarantine.message(entry.id)
    with engine.connect() as conn:
        row = conn.execute(select(quarantine)).one()
    assert row.content is None and row.message is None
