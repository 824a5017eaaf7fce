"""A group rerun (6b7dd30: a later transition failed without savepoints, so the whole group is
rolled back and run again with savepoints) gives each document once and writes each audit
entry once: leases and acks before and after the failing one, two leases competing in it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from mssgate import audit
from mssgate.queue import DocumentQueue, LeaseLost, QueueState
from tests.queue.helpers import RIS_A, add_consumer, fill
from tests.queue.test_transition_group import _acks, _grouped


def test_rerun_writes_each_entry_once(engine: Any, tmp_path: Any) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    queue = DocumentQueue(engine, data_dir=tmp_path)
    ids = fill(queue, 8)
    leases = queue.lease(consumer, max_documents=4)
    acks = _acks(queue, consumer, leases)
    lease = lambda: queue._lease_tx(consumer, 2, 30, None)  # noqa: E731
    stale = lambda: queue._ack_tx(consumer, ids[7], "0" * 32)  # noqa: E731
    futures = _grouped(
        queue._transitions, acks[0], [acks[1], lease, stale, acks[2], lease, acks[3]]
    )
    assert isinstance(futures[2].exception(), LeaseLost)
    got = [r.id for f in (futures[1], futures[4]) for r in f.result()[0]]
    assert len(got) == len(set(got)) == 4
    counts = Counter((e.action, e.subject) for e in audit.entries(engine) if e.subject in ids)
    assert all(n == 1 for n in counts.values()), counts
    assert sum(a == "queue.ack" for a, _ in counts) == 4
    assert sum(a == "queue.lease" for a, _ in counts) == 8
    assert audit.verify(engine).ok
    assert all(queue.entry(i).state is QueueState.DONE for i in ids[:4])


def test_a_group_rolled_back_owes_its_expiry_scan(engine: Any, tmp_path: Any) -> None:
    """A lease whose group is rolled back and run again (a later transition failed) scans
    for lapsed leases in the run that commits: the first run's scan, rolled back, is not
    counted as done (the lapsed lease is given back and leased again, queue.expire written)."""
    from datetime import UTC, datetime, timedelta

    from tests.queue.test_transition_group import _actions

    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    now = [datetime.now(UTC)]
    queue = DocumentQueue(engine, data_dir=tmp_path, clock=lambda: now[0])
    ids = fill(queue, 4)
    [lapsing] = queue.lease(consumer, lease_seconds=1)
    [held] = queue.lease(consumer, lease_seconds=30)
    now[0] += timedelta(seconds=2)  # the first lease lapsed; a scan is due
    ack = lambda: queue._ack_tx(consumer, held.document.id, held.lease_id)  # noqa: E731
    lease = lambda: queue._lease_tx(consumer, 1, 30, None)  # noqa: E731
    stale = lambda: queue._ack_tx(consumer, ids[3], "0" * 32)  # noqa: E731
    futures = _grouped(queue._transitions, ack, [lease, stale])
    assert isinstance(futures[1].exception(), LeaseLost)
    rows, _, _ = futures[0].result()
    assert ("queue.expire", lapsing.document.id) in _actions(engine, ids)
    assert [r.id for r in rows] == [lapsing.document.id]
