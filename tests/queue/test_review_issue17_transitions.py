"""Review of issue 17's grouped queue transitions: what a caller of a group is told, and when.

- a lease that finds fewer documents than asked offers a lease lapsed since the last expiry
  scan (the MLLP push sees such a document waiting and asks again at once, opening a
  connection to the RIS each time, for as long as the lease keeps answering nothing);
- a group that cannot open its transaction (no connection, no write slot) fails every caller
  at once, instead of trying each again alone, one timeout after another;
- a transition that raises what is not an Exception leaves no other caller waiting for ever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, insert
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from mssgate import audit
from mssgate.db.schema import outbound_acks, outbound_messages
from mssgate.db.tx import write
from mssgate.outbound.zamqueue import ZamQueue
from mssgate.queue import DocumentQueue, QueueState
from mssgate.queue.scans import ScanTimes
from mssgate.queue.transitions import TransitionGroup, _Job
from tests.queue.helpers import DOMAIN, RIS_A, RIS_B, add_consumer, add_mailboxes, fill
from tests.queue.test_transition_group import (
    _acks,
    _group_write_fails_once,
    _grouped,
    _leased,
)


def test_a_lease_short_of_documents_offers_one_lapsed_since_the_last_scan(
    engine: Engine, tmp_path: Path
) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    now = [datetime.now(UTC)]
    queue = DocumentQueue(engine, data_dir=tmp_path, clock=lambda: now[0])
    first_id, second_id = fill(queue, 2)
    [first] = queue.lease(consumer, lease_seconds=5)
    now[0] += timedelta(seconds=4.5)
    [second] = queue.lease(consumer, lease_seconds=30)  # this one scans: nothing lapsed yet
    now[0] += timedelta(seconds=0.7)  # the first lease lapsed, 0.7 s after that scan
    again = queue.lease(consumer)
    assert [lease.document.id for lease in again] == [first_id]
    assert first.document.id == first_id and second.document.id == second_id
    assert queue.entry(first_id).attempts == 2


def _small_pool(tmp_path: Path) -> Engine:
    # One connection, given up after a second: a pool every other request has taken.
    return create_engine(
        f"sqlite:///{tmp_path / 'small.sqlite'}",
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=1,
        connect_args={"check_same_thread": False},
    )


def test_a_group_that_cannot_open_its_transaction_fails_every_caller_at_once(
    tmp_path: Path,
) -> None:
    small = _small_pool(tmp_path)
    group = TransitionGroup(small)
    ran: list[int] = []

    def transition() -> int:
        with write(small) as conn:
            conn.exec_driver_sql("SELECT 1")
        ran.append(1)
        return 1

    jobs: list[_Job[int]] = [_Job(transition) for _ in range(4)]
    taken = small.connect()
    try:
        started = time.monotonic()
        group._commit(jobs)  # as a leader with these four queued does
        elapsed = time.monotonic() - started
    finally:
        taken.close()
        small.dispose()
    assert ran == []
    assert all(job.done and isinstance(job.error, PoolTimeout) for job in jobs)
    # The group's one wait for a connection (1 s), not then one more for each of them alone.
    assert elapsed < 2.5, elapsed


RIS_C = f"ris-c@{DOMAIN}"


class _Stop(BaseException):
    """Not an Exception (as KeyboardInterrupt or SystemExit are not)."""


def test_a_transition_raising_a_base_exception_leaves_no_caller_waiting(
    engine: Engine, queue: DocumentQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, ids, leases = _leased(engine, queue, 3)
    # The group's write fails: its transitions then run again one by one.
    _group_write_fails_once(monkeypatch)
    runs: list[int] = []

    def stopping() -> None:
        # In the group it succeeds; run again alone, it is interrupted.
        runs.append(1)
        if len(runs) > 1:
            raise _Stop

    acks = _acks(queue, consumer, leases)
    rest: list[Callable[[], Any]] = [acks[1], stopping, acks[2]]
    outcome: list[list[Future[Any]]] = []
    runner = threading.Thread(
        target=lambda: outcome.append(_grouped(queue._transitions, acks[0], rest)), daemon=True
    )
    runner.start()
    runner.join(20)
    assert not runner.is_alive(), "a caller is still waiting for its transition"
    [futures] = outcome
    for future, doc_id in ((futures[0], ids[1]), (futures[2], ids[2])):
        state = queue.entry(doc_id).state
        # Told done only if done; told otherwise only if not done (or, for the one whose
        # thread ran the group, the interruption itself).
        if future.exception() is None:
            assert state is QueueState.DONE
        elif not isinstance(future.exception(), _Stop):
            assert state is QueueState.LEASED
    assert audit.verify(engine).ok


def test_the_expiry_scan_times_kept_are_those_of_the_last_second(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One consumer per mailbox: a gateway hosting many would keep one time per mailbox ever
    # leased from, for as long as it runs.
    add_mailboxes(engine, RIS_C)
    now = [datetime.now(UTC)]
    queue = DocumentQueue(engine, data_dir=tmp_path, clock=lambda: now[0])
    queue._expiry_scans = ScanTimes(memory=2)
    for n, mailbox in enumerate((RIS_A, RIS_B, RIS_C)):
        consumer, _ = add_consumer(engine, f"ris-{n}", mailbox)
        fill(queue, 1, mailbox=mailbox, start=n)
        assert len(queue.lease(consumer)) == 1
        now[0] += timedelta(seconds=2)
    assert queue._expiry_scans.keys() == [RIS_C]


def _zams(engine: Engine, consumer_id: int, count: int, at: datetime) -> list[str]:
    """`count` ZAMs ready for the consumer (as `materialise` records them)."""
    ids = [f"{'A' * 32}-{n}-Z02" for n in range(count)]
    with write(engine) as conn:
        conn.execute(
            insert(outbound_messages).values(
                id="b" * 32, consumer_id=consumer_id, control_id="C1", event="T02",
                sender=RIS_A, submitted_at=at, ack="MSH|^~\\&|RIS|HOP|GW|HOP",
            )
        )  # fmt: skip
        for n, zam_id in enumerate(ids):
            conn.execute(
                insert(outbound_acks).values(
                    id=zam_id, outbound_id="b" * 32, consumer_id=consumer_id, position=n,
                    trigger="Z02", recipient=f"dr{n}@{DOMAIN}", accepted=True, er7="MSH|",
                    created_at=at, state="ready", attempts=0, updated_at=at,
                )
            )  # fmt: skip
    return ids


def test_a_zam_lease_scans_for_lapsed_leases_at_most_once_a_second_unless_short(
    engine: Engine,
) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    now = [datetime.now(UTC)]
    zams = ZamQueue(engine, facility=DOMAIN, clock=lambda: now[0])
    first_id, *others = _zams(engine, consumer.id, 3, now[0])
    scans: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "outbound_acks.lease_expires_at <=" in statement:
            scans.append(statement)

    def leased(**options: int) -> list[str]:
        return [lease.ack.id for lease in zams.lease(consumer, **options)]

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert leased(lease_seconds=1) == [first_id]
        now[0] += timedelta(seconds=0.5)
        assert leased(lease_seconds=30) == others[:1]
        assert leased(lease_seconds=30) == others[1:]
        assert len(scans) == 1  # the first lease only
        now[0] += timedelta(seconds=0.7)  # the first lapsed, 0.2 s ago; the scan was 1.2 s ago
        assert leased(lease_seconds=30) == [first_id]
        assert len(scans) == 2
        now[0] += timedelta(seconds=0.5)
        # Short: nothing ready, so it scans though it did 0.5 s ago (nothing lapsed).
        assert leased() == []
        assert len(scans) == 3
    finally:
        event.remove(engine, "before_cursor_execute", count)
