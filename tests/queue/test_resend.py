"""A document sent again in a new message is a new queue entry (issue 12 item 14).

Only a replay of one delivery (the same spool entry, the same place in the message) is
deduplicated: that is what the at-least-once delivery upstream repeats. The same bytes in a
new message make a new entry that names the earlier one (`duplicate_of`), whatever became of
it (acked, dead, still ready): nothing is swallowed.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from mssgate import audit
from mssgate.db.schema import queue_documents
from mssgate.queue import DocumentQueue, QueueState
from tests.queue.helpers import RIS_A, RIS_B, add_consumer, cda, deliver, mail


def _rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(queue_documents)).scalar_one())


def test_resend_after_ack_is_a_new_entry(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    [first] = deliver(queue, mail([cda(1)], n=1), delivery="Q1")
    [lease] = queue.lease(consumer)
    queue.ack(consumer, first, lease.lease_id)
    [again] = deliver(queue, mail([cda(1)], n=2), delivery="Q2")
    assert again != first
    entry = queue.entry(again)
    assert entry.state is QueueState.READY and entry.duplicate_of == first
    assert entry.record.duplicate_of == first
    [second] = queue.lease(consumer)
    assert second.document.id == again and second.document.duplicate_of == first
    assert queue.entry(first).duplicate_of is None
    [enqueued] = [
        e for e in audit.entries(engine) if e.subject == again and e.action == "queue.enqueue"
    ]
    assert enqueued.detail["duplicate_of"] == first


def test_resend_after_dead_is_a_new_entry(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    [first] = deliver(queue, mail([cda(1)], n=1), delivery="Q1")
    for _ in range(queue.settings.max_attempts):
        [lease] = queue.lease(consumer)
        queue.nack(consumer, first, lease.lease_id, code=902, reason="patient inconnu")
    assert queue.entry(first).state is QueueState.DEAD
    [again] = deliver(queue, mail([cda(1)], n=2), delivery="Q2")
    assert again != first and queue.entry(again).duplicate_of == first
    [lease] = queue.lease(consumer)
    assert lease.document.id == again


def test_a_replay_of_one_delivery_is_still_one_entry(engine: Engine, queue: DocumentQueue) -> None:
    raw = mail([cda(1), cda(2)], n=1)
    first = deliver(queue, raw, delivery="Q1")
    assert deliver(queue, raw, delivery="Q1") == first
    assert _rows(engine) == 2
    # The same delivery to another mailbox is that mailbox's own.
    other = deliver(queue, raw, mailbox=RIS_B, delivery="Q1")
    assert set(other).isdisjoint(first) and _rows(engine) == 4
    assert all(queue.entry(x).duplicate_of is None for x in other)
    # The same bytes spooled again (a client that resent after losing our 250) are a new
    # delivery: new entries, each naming its earlier copy.
    resent = deliver(queue, raw, delivery="Q2")
    assert [queue.entry(x).duplicate_of for x in resent] == first
    assert _rows(engine) == 6


def test_one_document_twice_in_one_message(engine: Engine, queue: DocumentQueue) -> None:
    first, second = deliver(queue, mail([cda(1), cda(1)], n=1), delivery="Q1")
    assert first != second and queue.entry(second).duplicate_of == first
