"""Transitions of concurrent consumers share one transaction (mssgate.queue.transitions): each
still commits or fails on its own, and the audit chain they write in one batch is the chain
`audit verify` checks, so an edit, an insertion or a deletion among them is still found."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, insert, select, update

from mssgate import audit
from mssgate.db.schema import audit as audit_table
from mssgate.db.schema import audit_head
from mssgate.db.tx import write
from mssgate.queue import DocumentQueue, LeaseLost, QueueState
from mssgate.queue.transitions import TransitionGroup
from tests.queue.helpers import RIS_A, add_consumer, fill


def _grouped(
    group: TransitionGroup, first: Callable[[], Any], rest: list[Callable[[], Any]]
) -> list[Future[Any]]:
    """Runs `first`, holding it until every one of `rest` waits behind it: its transaction then
    takes them in. Returns the futures of `rest`, in order (`first`'s outcome is not raised:
    the thread that leads may be the one an interruption reaches)."""
    release = threading.Event()

    def held() -> Any:
        release.wait(30)
        return first()

    with ThreadPoolExecutor(max_workers=len(rest) + 1) as pool:
        lead = pool.submit(group.run, held)
        while not group._leading:
            time.sleep(0.01)
        futures: list[Future[Any]] = []
        for transition in rest:
            futures.append(pool.submit(group.run, transition))
            # In this order in the queue: the chain's order is the queue's.
            while len(group._queue) < len(futures):
                time.sleep(0.01)
        release.set()
        lead.exception(30)
        for future in futures:
            future.exception(30)
    return futures


def _leased(engine: Engine, queue: DocumentQueue, count: int) -> tuple[Any, list[str], list[Any]]:
    """A consumer holding leases on `count` new documents."""
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    ids = fill(queue, count)
    return consumer, ids, queue.lease(consumer, max_documents=count)


def _acks(queue: DocumentQueue, consumer: Any, leases: list[Any]) -> list[Callable[[], Any]]:
    """One ack transition per lease, to run through the queue's group."""

    def ack(lease: Any) -> Callable[[], Any]:
        return lambda: queue._ack_tx(consumer, lease.document.id, lease.lease_id)

    return [ack(lease) for lease in leases]


def _actions(engine: Engine, ids: list[str]) -> list[tuple[str, str]]:
    return [(e.action, e.subject) for e in audit.entries(engine) if e.subject in ids]


def _record_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    real = audit.chain.append_many
    sizes: list[int] = []

    def recorded(conn: Any, new: list[audit.NewEntry]) -> None:
        sizes.append(len(new))
        real(conn, new)

    monkeypatch.setattr(audit.chain, "append_many", recorded)
    return sizes


def test_a_group_commits_each_transition_and_chains_its_entries(
    engine: Engine, queue: DocumentQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, ids, leases = _leased(engine, queue, 4)
    group = queue._transitions
    batches = _record_batches(monkeypatch)
    acks = _acks(queue, consumer, leases)
    stale = lambda: queue._ack_tx(consumer, ids[0], "0" * 32)  # noqa: E731
    futures = _grouped(group, acks[0], [acks[1], stale, acks[2], acks[3]])
    # The stale ack failed alone; the three beside it in its transaction committed.
    assert isinstance(futures[1].exception(), LeaseLost)
    assert [f.exception() for f in (futures[0], futures[2], futures[3])] == [None] * 3
    assert all(queue.entry(i).state is QueueState.DONE for i in ids)
    # One transaction, one audit write, for the four: the held first took in those queued
    # while it ran.
    assert batches == [4]
    assert _actions(engine, ids)[-4:] == [("queue.ack", i) for i in ids]
    report = audit.verify(engine)
    assert report.ok, report.problems
    seqs = [e.seq for e in audit.entries(engine)]
    assert seqs == list(range(1, len(seqs) + 1))


def _group_write_fails_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The group's audit write fails once (as a dropped connection would); alone, each
    transition writes its entry with `append` and never comes here. Returns the batch sizes
    seen."""
    real = audit.chain.append_many
    calls: list[int] = []

    def failing_once(conn: Any, new: list[audit.NewEntry]) -> None:
        calls.append(len(new))
        if len(calls) == 1:
            raise RuntimeError("the group's write failed")
        real(conn, new)

    monkeypatch.setattr(audit.chain, "append_many", failing_once)
    return calls


def test_a_failing_group_runs_each_transition_again_alone(
    engine: Engine, queue: DocumentQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, ids, leases = _leased(engine, queue, 3)
    group = queue._transitions
    calls = _group_write_fails_once(monkeypatch)
    acks = _acks(queue, consumer, leases)
    futures = _grouped(group, acks[0], acks[1:])
    assert calls == [3]
    assert [f.exception() for f in futures] == [None, None]
    assert all(queue.entry(i).state is QueueState.DONE for i in ids)
    assert [a for a, _ in _actions(engine, ids)].count("queue.ack") == 3
    assert audit.verify(engine).ok


def _savepoints(engine: Engine) -> tuple[list[str], Callable[[], None]]:
    seen: list[str] = []

    def one(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith(("SAVEPOINT", "ROLLBACK TO")):
            seen.append(statement.split()[0])

    event.listen(engine, "before_cursor_execute", one)
    return seen, lambda: event.remove(engine, "before_cursor_execute", one)


def test_savepoints_are_taken_only_when_a_transition_fails(
    engine: Engine, queue: DocumentQueue
) -> None:
    consumer, ids, leases = _leased(engine, queue, 6)
    acks = _acks(queue, consumer, leases)
    seen, stop = _savepoints(engine)
    try:
        futures = _grouped(queue._transitions, acks[0], acks[1:3])
        assert [f.exception() for f in futures] == [None, None]
        assert seen == []  # three transitions, one transaction, no savepoint
        stale = lambda: queue._ack_tx(consumer, ids[3], "0" * 32)  # noqa: E731
        futures = _grouped(queue._transitions, acks[3], [acks[4], stale, acks[5]])
    finally:
        stop()
    assert isinstance(futures[1].exception(), LeaseLost)
    assert [f.exception() for f in (futures[0], futures[2])] == [None, None]
    # Run again carefully: a savepoint for each after the first, the stale ack's rolled back.
    assert seen == ["SAVEPOINT", "SAVEPOINT", "ROLLBACK", "SAVEPOINT"]
    assert all(queue.entry(i).state is QueueState.DONE for i in ids)
    assert audit.verify(engine).ok


def test_the_first_transition_failing_alone_fails_none_queued_behind_it(
    engine: Engine, queue: DocumentQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first of a transaction runs without a savepoint (nothing else ran yet): its failure
    rolls the transaction back, and those queued meanwhile run in the next one."""
    consumer, ids, leases = _leased(engine, queue, 2)
    batches = _record_batches(monkeypatch)

    def broken_first() -> None:
        queue._ack_tx(consumer, ids[0], leases[0].lease_id)
        raise RuntimeError("failed after writing")

    lead: list[BaseException | None] = []
    release = threading.Event()

    def held() -> None:
        release.wait(30)
        broken_first()

    def run_held() -> None:
        try:
            queue._transitions.run(held)
        except RuntimeError as exc:
            lead.append(exc)

    acks = _acks(queue, consumer, leases)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(run_held)
        while not queue._transitions._leading:
            time.sleep(0.01)
        second = pool.submit(queue._transitions.run, acks[1])
        while not queue._transitions._queue:
            time.sleep(0.01)
        release.set()
        first.result(30)
        assert second.exception(30) is None
    assert len(lead) == 1 and isinstance(lead[0], RuntimeError)
    assert batches == [1]  # the second's entry; the first's went with its transaction
    assert [queue.entry(i).state for i in ids] == [QueueState.LEASED, QueueState.DONE]
    assert ("queue.ack", ids[0]) not in _actions(engine, ids)
    assert audit.verify(engine).ok


def test_concurrent_consumers_lease_each_document_once(
    engine: Engine, queue: DocumentQueue
) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    ids = fill(queue, 24)

    def drain() -> list[str]:
        done: list[str] = []
        while leases := queue.lease(consumer, max_documents=1):
            for lease in leases:
                queue.ack(consumer, lease.document.id or "", lease.lease_id)
                done.append(lease.document.id or "")
        return done

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = [d for part in pool.map(lambda _: drain(), range(4)) for d in part]
    assert sorted(done) == sorted(ids)
    actions = [a for a, _ in _actions(engine, ids)]
    assert actions.count("queue.lease") == 24 and actions.count("queue.ack") == 24
    report = audit.verify(engine)
    assert report.ok, report.problems


def _tamper(engine: Engine, change: Callable[[Any], None]) -> list[str]:
    with write(engine) as conn:
        change(conn)
    return audit.verify(engine).problems


@pytest.mark.parametrize("how", ["edit", "delete", "insert", "truncate"])
def test_verify_finds_tampering_inside_a_batch(
    engine: Engine, queue: DocumentQueue, how: str
) -> None:
    consumer, ids, leases = _leased(engine, queue, 4)
    acks = _acks(queue, consumer, leases)
    _grouped(queue._transitions, acks[0], acks[1:])
    # The last three acks were written by one append_many: tamper with the middle one.
    batch = [e for e in audit.entries(engine) if e.action == "queue.ack"][-3:]
    middle = batch[1]
    assert audit.verify(engine).ok
    if how == "edit":
        problems = _tamper(engine, lambda c: c.execute(
            update(audit_table).where(audit_table.c.seq == middle.seq)
            .values(actor="consumer:someone-else")))  # fmt: skip
        assert f"entry {middle.seq} was modified" in " ".join(problems)
    elif how == "delete":
        problems = _tamper(engine, lambda c: c.execute(
            delete(audit_table).where(audit_table.c.seq == middle.seq)))  # fmt: skip
        assert f"entries {middle.seq}..{middle.seq} are missing" in " ".join(problems)
    elif how == "insert":
        # A forged entry slipped in after the middle one, the later ones renumbered.
        def forge(conn: Any) -> None:
            later = conn.execute(
                select(audit_table.c.seq).where(audit_table.c.seq > middle.seq)
                .order_by(audit_table.c.seq.desc())
            ).scalars().all()  # fmt: skip
            for seq in later:
                conn.execute(update(audit_table).where(audit_table.c.seq == seq)
                             .values(seq=seq + 1))  # fmt: skip
            conn.execute(insert(audit_table).values(
                seq=middle.seq + 1, at=middle.at, actor="queue", action="queue.ack",
                subject=ids[0], detail="{}", prev_hash=middle.hash, hash=middle.hash))  # fmt: skip
            conn.execute(update(audit_head).values(seq=audit_head.c.seq + 1))

        problems = _tamper(engine, forge)
        assert f"entry {middle.seq + 1} was modified" in " ".join(problems)
    else:
        problems = _tamper(engine, lambda c: c.execute(
            delete(audit_table).where(audit_table.c.seq == batch[-1].seq)))  # fmt: skip
        assert "the head records entry" in " ".join(problems)


def test_a_transition_failing_after_its_writes_leaves_nothing(
    engine: Engine, queue: DocumentQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, ids, leases = _leased(engine, queue, 3)
    batches = _record_batches(monkeypatch)

    def broken() -> None:
        # Writes a row change and an audit entry, then fails: both must go.
        queue._ack_tx(consumer, ids[1], leases[1].lease_id)
        raise RuntimeError("failed after writing")

    acks = _acks(queue, consumer, leases)
    futures = _grouped(queue._transitions, acks[0], [broken, acks[2]])
    assert isinstance(futures[0].exception(), RuntimeError) and futures[1].exception() is None
    assert batches == [2]  # the first's and the third's entries, in one transaction
    states = [queue.entry(i).state for i in ids]
    assert states == [QueueState.DONE, QueueState.LEASED, QueueState.DONE]
    assert ("queue.ack", ids[1]) not in _actions(engine, ids)
    assert audit.verify(engine).ok


def test_a_lease_scans_for_lapsed_leases_at_most_once_a_second(
    engine: Engine, tmp_path: Any
) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    now = [datetime.now(UTC)]
    queue = DocumentQueue(engine, data_dir=tmp_path, clock=lambda: now[0])
    doc_id, *others = fill(queue, 3)
    scans: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The expiry scan is the only statement that compares lease_expires_at with <=.
        if "lease_expires_at <=" in statement:
            scans.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        [first] = queue.lease(consumer, lease_seconds=1)
        now[0] += timedelta(seconds=0.5)
        # Each given what it asked for (a lease short of documents scans: it may be owed
        # one that lapsed since).
        assert [x.document.id for x in queue.lease(consumer, lease_seconds=30)] == others[:1]
        assert [x.document.id for x in queue.lease(consumer, lease_seconds=30)] == others[1:]
        assert len(scans) == 1  # the first lease only
        now[0] += timedelta(seconds=1)  # the lease lapsed, and a second went by
        [again] = queue.lease(consumer, lease_seconds=30)
        assert len(scans) == 2
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert again.document.id == doc_id and again.lease_id != first.lease_id
    assert ("queue.expire", doc_id) in _actions(engine, [doc_id])
