"""Queue semantics on both backends: order, leases, expiry, nack, dead, isolation, receipts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from mssgate import audit
from mssgate.db.schema import quarantine, queue_contents, queue_documents
from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.queue import DocumentQueue, LeaseLost, QueueSettings, QueueState
from tests.queue.helpers import (
    RIS_A,
    RIS_B,
    SENDER,
    add_consumer,
    cda,
    deliver,
    fill,
    mail,
)


def test_lease_then_ack_in_arrival_order(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    ids = fill(queue, 3)
    leases = queue.lease(consumer, max_documents=2, lease_seconds=30)
    assert [x.document.id for x in leases] == ids[:2]
    assert all(x.document.state == "leased" for x in leases)
    queue.ack(consumer, ids[0], leases[0].lease_id)
    queue.ack(consumer, ids[0], leases[0].lease_id)  # a retried ack is harmless
    assert queue.entry(ids[0]).state is QueueState.DONE
    [third] = queue.lease(consumer, max_documents=10)
    assert third.document.id == ids[2]
    assert queue.lease(consumer, max_documents=10) == []
    actions = [e.action for e in audit.entries(engine) if e.subject in ids]
    assert actions.count("queue.enqueue") == 3 and actions.count("queue.lease") == 3
    assert actions.count("queue.ack") == 1
    assert audit.verify(engine).ok


def test_a_replayed_delivery_is_one_record(engine: Engine, queue: DocumentQueue) -> None:
    raw = mail([cda(1)])
    first = deliver(queue, raw)
    assert deliver(queue, raw) == first
    # The same bytes in another message are a resend: a record of its own, which names the
    # first (tests/queue/test_resend.py).
    [resent] = deliver(queue, mail([cda(1)], n=99))
    assert [resent] != first and queue.entry(resent).duplicate_of == first[0]
    # ... and another mailbox gets its own.
    other = deliver(queue, raw, mailbox=RIS_B)
    assert other != first and queue.entry(other[0]).duplicate_of is None
    with engine.connect() as conn:
        assert len(conn.execute(select(queue_documents.c.id)).all()) == 3
        assert len(conn.execute(select(queue_contents.c.document_id)).all()) == 3


def test_expired_lease_returns_the_document(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    [doc_id] = fill(queue, 1)
    [first] = queue.lease(consumer, lease_seconds=1)
    assert queue.lease(consumer) == []  # held while the lease holds
    time.sleep(1.2)
    [again] = queue.lease(consumer, lease_seconds=30)
    assert again.document.id == doc_id and again.lease_id != first.lease_id
    with pytest.raises(LeaseLost):
        queue.ack(consumer, doc_id, first.lease_id)
    assert queue.entry(doc_id).attempts == 2
    queue.ack(consumer, doc_id, again.lease_id)


def test_ack_after_expiry_is_a_conflict(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    [doc_id] = fill(queue, 1)
    [lease] = queue.lease(consumer, lease_seconds=1)
    time.sleep(1.1)
    with pytest.raises(LeaseLost, match="expired"):
        queue.ack(consumer, doc_id, lease.lease_id)


def test_nack_counts_attempts_and_ends_dead(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    bad, good = fill(queue, 2)
    for attempt in (1, 2, 3):
        leases = queue.lease(consumer, max_documents=1)
        assert [x.document.id for x in leases] == [bad]
        state = queue.nack(consumer, bad, leases[0].lease_id, code=902, reason="patient inconnu")
        assert state is (QueueState.DEAD if attempt == 3 else QueueState.READY)
        assert queue.entry(bad).attempts == attempt
    dead = queue.entry(bad)
    assert (dead.state, dead.last_code, dead.last_reason) == (
        QueueState.DEAD,
        902,
        "patient inconnu",
    )
    # The dead document blocks nothing.
    assert [x.document.id for x in queue.lease(consumer, max_documents=5)] == [good]
    # An operator sends it back with a fresh count.
    assert queue.requeue(bad, actor="test").state is QueueState.READY
    assert queue.entry(bad).attempts == 0
    with pytest.raises(Conflict):
        queue.requeue(bad, actor="test")


def test_expiry_counts_towards_dead(engine: Engine, tmp_path) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    queue = DocumentQueue(engine, settings=QueueSettings(max_attempts=2), data_dir=tmp_path)
    [doc_id] = fill(queue, 1)
    for _ in range(2):
        assert queue.lease(consumer, lease_seconds=1)
        time.sleep(1.1)
    assert queue.lease(consumer) == []
    assert queue.entry(doc_id).state is QueueState.DEAD


def test_final_nack_codes_end_at_once(engine: Engine, tmp_path) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    settings = QueueSettings(max_attempts=5, final_nack_codes=(904,))
    queue = DocumentQueue(engine, settings=settings, data_dir=tmp_path)
    [doc_id] = fill(queue, 1)
    [lease] = queue.lease(consumer)
    assert queue.nack(consumer, doc_id, lease.lease_id, code=904, reason="") is QueueState.DEAD


def test_mailboxes_never_see_each_other(engine: Engine, queue: DocumentQueue) -> None:
    a, _ = add_consumer(engine, "ris-a", RIS_A)
    b, _ = add_consumer(engine, "ris-b", RIS_B)
    ids_a = fill(queue, 2, mailbox=RIS_A)
    ids_b = fill(queue, 2, mailbox=RIS_B, start=10)
    got_a = [x.document.id for x in queue.lease(a, max_documents=10)]
    got_b = queue.lease(b, max_documents=10)
    assert got_a == ids_a and [x.document.id for x in got_b] == ids_b
    for call in (
        lambda: queue.document(a, ids_b[0]),
        lambda: queue.content(a, ids_b[0]),
        lambda: queue.hl7(a, ids_b[0]),
        lambda: queue.ack(a, ids_b[0], got_b[0].lease_id),
        lambda: queue.nack(a, ids_b[0], got_b[0].lease_id, code=906, reason=""),
    ):
        with pytest.raises(NotFound) as caught:
            call()
        assert str(caught.value) == "no such document"  # same answer as a missing id
    with pytest.raises(NotFound):
        queue.document(a, "0" * 32)


def test_concurrent_leasers_never_share_a_document(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    ids = fill(queue, 30)

    def take(_: int) -> list[str]:
        got: list[str] = []
        while True:
            leases = queue.lease(consumer, max_documents=3, lease_seconds=60)
            if not leases:
                return got
            got += [x.document.id for x in leases]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(take, range(6)))
    taken = [doc for batch in results for doc in batch]
    assert sorted(taken) == sorted(ids)
    assert len(set(taken)) == len(taken)


def test_lease_bounds(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    with pytest.raises(ValidationFailed):
        queue.lease(consumer, max_documents=0)
    with pytest.raises(ValidationFailed):
        queue.lease(consumer, lease_seconds=queue.settings.max_lease_seconds + 1)


def test_content_and_hl7_are_stored(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    document = cda(7)
    [doc_id] = deliver(queue, mail([document]))
    blob, original = queue.content(consumer, doc_id)
    assert blob.data == document and not blob.encrypted and original == blob.media_type
    hl7 = queue.hl7(consumer, doc_id)
    assert hl7.data.startswith(b"MSH|^~\\&|") and b"MDM^T02^MDM_T02" in hl7.data


def test_receipts_on_ack_and_on_dead(engine: Engine, tmp_path) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    sent: list[tuple[bytes, str]] = []
    queue = DocumentQueue(
        engine,
        settings=QueueSettings(max_attempts=1),
        data_dir=tmp_path,
        on_receipt=lambda mdn, to: sent.append((mdn, to)),
    )
    [ok_id] = deliver(queue, mail([cda(1)], n=1, receipt=True))
    [ko_id] = deliver(queue, mail([cda(2)], n=2, receipt=True))
    [silent] = deliver(queue, mail([cda(3)], n=3, receipt=False))
    leases = {x.document.id: x.lease_id for x in queue.lease(consumer, max_documents=3)}
    queue.ack(consumer, ok_id, leases[ok_id])
    queue.nack(consumer, ko_id, leases[ko_id], code=904, reason="traits")
    queue.ack(consumer, silent, leases[silent])
    assert [to for _, to in sent] == [SENDER, SENDER]
    assert b"Disposition: automatic-action/MDN-sent-automatically; processed\r\n" in sent[0][0]
    assert b"processed/Error: 904^" in sent[1][0]
    assert b"=5BKO_Int=C3=A9gration_syst=C3=A8me_!=5D=5B904=5D" in sent[1][0]
    assert queue.pending_receipts() == []


def test_receipt_callback_failure_keeps_it_in_the_outbox(engine: Engine, tmp_path) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)

    def broken(mdn: bytes, to: str) -> None:
        raise OSError("spool full")

    queue = DocumentQueue(engine, data_dir=tmp_path, on_receipt=broken)
    [doc_id] = deliver(queue, mail([cda(1)], receipt=True))
    [lease] = queue.lease(consumer)
    queue.ack(consumer, doc_id, lease.lease_id)
    [pending] = queue.pending_receipts()
    assert (pending.document_id, pending.recipient, pending.outcome) == (
        doc_id,
        SENDER,
        "processed",
    )
    queue.mark_handed(pending.id)
    assert queue.pending_receipts() == []


def test_drain_hands_over_stranded_receipts_once(engine: Engine, tmp_path) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    now = [datetime.now(UTC)]
    failures = [1]
    sent: list[str] = []

    def flaky(mdn: bytes, to: str) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError("spool full")
        sent.append(to)

    queue = DocumentQueue(engine, data_dir=tmp_path, on_receipt=flaky, clock=lambda: now[0])
    [doc_id] = deliver(queue, mail([cda(1)], receipt=True))
    [lease] = queue.lease(consumer)
    queue.ack(consumer, doc_id, lease.lease_id)  # the in-line hand-over fails
    # Still young: the request that made it could be handing it over right now.
    assert queue.drain_receipts() == 0 and sent == []
    now[0] += timedelta(seconds=61)
    failures[0] = 1
    assert queue.drain_receipts() == 0  # claimed, and failed again: still pending
    assert queue.drain_receipts() == 0  # its claim holds: another drain leaves it alone
    now[0] += timedelta(seconds=61)
    assert queue.drain_receipts() == 1 and sent == [SENDER]
    assert queue.pending_receipts() == [] and queue.drain_receipts() == 0


def test_quarantine_keeps_bytes_and_is_idempotent(engine: Engine, queue: DocumentQueue) -> None:
    from tests.documents.factory import CdaSpec, make_cda

    no_ins = make_cda(CdaSpec(include_ins=False))
    raw = mail([no_ins, cda(5)])
    first = deliver(queue, raw)
    assert deliver(queue, raw) == first
    queued, held_id = first
    [held] = queue.quarantine.entries()
    assert (held.id, held.code, held.mailbox) == (held_id, 903, RIS_A)
    assert queue.quarantine.content(held_id) == no_ins
    assert queue.quarantine.message(held_id) == raw
    assert queue.entry(queued).state is QueueState.READY
    with engine.connect() as conn:
        assert len(conn.execute(select(quarantine.c.id)).all()) == 1
