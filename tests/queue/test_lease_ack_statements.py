"""A lease and an ack in as few statements as each database allows (issue 17: on PostgreSQL
each statement is a round trip), with every check and the audit chain kept: PostgreSQL claims
and leases in one statement, both databases ack a lease still held in one, and PostgreSQL
writes the audit entries and the head's hash in one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from mssgate import audit
from mssgate.errors import NotFound
from mssgate.queue import DocumentQueue, LeaseLost, QueueState, scans
from tests.queue.helpers import RIS_A, RIS_B, add_consumer, fill
from tests.queue.test_transition_group import _acks, _grouped, _leased


def _statements(engine: Engine) -> tuple[list[str], Any]:
    seen: list[str] = []

    def one(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split())[:40])

    event.listen(engine, "before_cursor_execute", one)
    return seen, lambda: event.remove(engine, "before_cursor_execute", one)


def test_a_lease_and_an_ack_take_one_statement_each_besides_the_audit(
    engine: Engine, queue: DocumentQueue
) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    fill(queue, 3)
    [first] = queue.lease(consumer)  # the first lease of a mailbox scans for lapsed ones
    seen, stop = _statements(engine)
    try:
        [lease] = queue.lease(consumer)
        lease_statements = list(seen)
        seen.clear()
        queue.ack(consumer, lease.document.id or "", lease.lease_id)
        ack_statements = list(seen)
    finally:
        stop()
    # The audit: take the head (one UPDATE ... RETURNING), then the entry and the head's hash
    # (one statement on PostgreSQL, two on SQLite).
    # SQLite's BEGIN IMMEDIATE is a statement; psycopg's BEGIN is not seen here.
    postgres = engine.dialect.name == "postgresql"
    audit_count = 2 if postgres else 4
    lease_count = 1 if postgres else 2
    assert len(lease_statements) == lease_count + audit_count, lease_statements
    assert len(ack_statements) == 1 + audit_count, ack_statements
    assert queue.entry(lease.document.id or "").state == QueueState.DONE
    assert queue.entry(first.document.id or "").state == QueueState.LEASED
    assert audit.verify(engine).ok


def test_a_batch_is_leased_in_arrival_order_with_a_lease_each(
    engine: Engine, queue: DocumentQueue
) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    ids = fill(queue, 4)
    leases = queue.lease(consumer, max_documents=3)
    assert [x.document.id for x in leases] == ids[:3]
    assert len({x.lease_id for x in leases}) == 3
    assert all(len(x.lease_id) == 32 for x in leases)
    queue.nack(consumer, ids[0], leases[0].lease_id, code=500, reason="busy")
    again = queue.lease(consumer, max_documents=3)
    assert [x.document.id for x in again] == [ids[0], ids[3]]
    attempts = [
        (e.subject, e.detail["attempt"]) for e in audit.entries(engine, action="queue.lease")
    ]
    assert attempts == [(i, 1) for i in ids[:3]] + [(ids[0], 2), (ids[3], 1)]
    assert [queue.entry(i).attempts for i in ids] == [2, 1, 1, 1]
    assert audit.verify(engine).ok


def test_an_ack_not_held_is_refused_as_before(engine: Engine, queue: DocumentQueue) -> None:
    # The one-statement ack finds no row in each of these cases; the row read after it says
    # which answer the consumer gets.
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    other, _ = add_consumer(engine, "ris-b", RIS_B)
    fill(queue, 1)
    [lease] = queue.lease(consumer, lease_seconds=30)
    doc = lease.document.id or ""
    with pytest.raises(LeaseLost):
        queue.ack(consumer, doc, "0" * 32)
    with pytest.raises(NotFound):
        queue.ack(other, doc, lease.lease_id)
    with pytest.raises(NotFound):
        queue.ack(consumer, "f" * 32, lease.lease_id)
    queue.ack(consumer, doc, lease.lease_id)
    queue.ack(consumer, doc, lease.lease_id)  # retried: answered again, changes nothing
    acks = [e for e in audit.entries(engine, action="queue.ack") if e.subject == doc]
    assert len(acks) == 1
    assert queue.entry(doc).state == QueueState.DONE


def test_a_failing_transition_between_two_others_of_a_group_undoes_only_itself(
    engine: Engine, queue: DocumentQueue
) -> None:
    # PostgreSQL's savepoints are not released one by one (COMMIT does it): rolling back the
    # middle one must keep the work of the one before it and of the one after.
    consumer, ids, leases = _leased(engine, queue, 4)
    acks = _acks(queue, consumer, leases)

    def broken() -> None:
        queue._ack_tx(consumer, ids[2], leases[2].lease_id)
        raise RuntimeError("failed after writing")

    futures = _grouped(queue._transitions, acks[0], [acks[1], broken, acks[3]])
    assert futures[0].exception() is None and futures[2].exception() is None
    assert isinstance(futures[1].exception(), RuntimeError)
    states = [queue.entry(i).state for i in ids]
    assert states == [QueueState.DONE, QueueState.DONE, QueueState.LEASED, QueueState.DONE]
    acked = [e.subject for e in audit.entries(engine, action="queue.ack")]
    assert acked == [ids[0], ids[1], ids[3]]
    assert audit.verify(engine).ok


def test_a_lease_short_of_documents_takes_a_lapsed_one_in_arrival_order(
    engine: Engine, tmp_path: Path
) -> None:
    # The lease finds two of the three it asks for, scans, and takes the lapsed one too: the
    # answer is still oldest first, whichever pass took each.
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    now = [datetime.now(UTC)]
    queue = DocumentQueue(engine, data_dir=tmp_path, clock=lambda: now[0])
    queue._expiry_scans = scans.ScanTimes(interval=timedelta(minutes=1))  # no scan is due
    ids = fill(queue, 3)
    [first] = queue.lease(consumer, lease_seconds=1)
    now[0] += timedelta(seconds=2)
    leases = queue.lease(consumer, max_documents=3, lease_seconds=30)
    assert [x.document.id for x in leases] == ids
    assert leases[0].lease_id != first.lease_id
    leased = [e.subject for e in audit.entries(engine, action="queue.lease")]
    assert leased == [ids[0], *ids]
    assert audit.verify(engine).ok
