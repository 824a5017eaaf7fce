"""Review of issue 12 D.12: the header block is kept once per document, bounded.

Each queued document keeps the message's header block for its receipt (RFC 8098's
text/rfc822-headers part). Header fields are the sender's to write and nothing bounds their
size but the message's: 2 MiB of them over 20 small documents put 40 MiB in the database,
and every receipt carried the 2 MiB back. The fields a receipt reads are kept whatever
their place in the block."""

from __future__ import annotations

import email
from email.policy import default

from sqlalchemy import Engine, func, select

from mssgate.db.schema import queue_documents
from mssgate.queue import DocumentQueue
from tests.queue.helpers import RIS_A, SENDER, add_consumer, cda, deliver, mail


def test_a_huge_header_block_is_kept_bounded(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    raw = mail([cda(n) for n in range(20)], receipt=True)
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"p" * 90) for n in range(20_000))
    raw = padding + raw  # 2 MiB before the fields a receipt needs
    ids = deliver(queue, raw)
    assert len(ids) == 20
    with engine.connect() as conn:
        kept = conn.execute(select(func.sum(func.length(queue_documents.c.headers)))).scalar_one()
    assert kept < 20 * 70 * 1024, kept
    [lease] = [x for x in queue.lease(consumer, max_documents=20) if x.document.id == ids[0]]
    queue.ack(consumer, ids[0], lease.lease_id)
    [receipt] = queue.pending_receipts()
    assert receipt.recipient == SENDER and len(receipt.mdn) < 80 * 1024
    mdn = email.message_from_bytes(receipt.mdn, policy=default)
    assert mdn["In-Reply-To"] == "<test-1@hopital.mssante.fr>"
    assert "PAT-TROIS" in str(mdn["Subject"])
