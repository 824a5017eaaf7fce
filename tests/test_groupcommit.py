"""Group commit: each caller returns once its own item is written; one bad item fails alone."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from mssgate.spool.groupcommit import GroupCommitter


def test_every_item_is_written_before_its_caller_returns() -> None:
    written: set[int] = set()
    groups: list[int] = []
    lock = threading.Lock()

    def write(items: Sequence[int]) -> None:
        with lock:
            groups.append(len(items))
            written.update(items)

    committer: GroupCommitter[int] = GroupCommitter(write)

    def commit(i: int) -> bool:
        committer.commit(i)
        with lock:
            return i in written

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(commit, range(200)))
    assert written == set(range(200))
    assert sum(groups) == 200


def test_a_failing_item_fails_alone_and_its_group_is_retried_one_by_one() -> None:
    gate = threading.Event()
    calls: list[tuple[int, ...]] = []

    def write(items: Sequence[int]) -> None:
        calls.append(tuple(items))
        if items == [0]:
            gate.wait(5)  # holds the committer so that the next items queue up as one group
        if 13 in items:
            raise ValueError("bad row")

    committer: GroupCommitter[int] = GroupCommitter(write)
    results: dict[int, str] = {}

    def commit(i: int) -> None:
        try:
            committer.commit(i)
            results[i] = "ok"
        except ValueError:
            results[i] = "failed"

    first = threading.Thread(target=commit, args=(0,))
    first.start()
    while not calls:
        threading.Event().wait(0.01)
    others = [threading.Thread(target=commit, args=(i,)) for i in (12, 13, 14)]
    for t in others:
        t.start()
    threading.Event().wait(0.5)  # the three are queued behind item 0 by now
    gate.set()
    for t in [first, *others]:
        t.join(10)
    assert results == {0: "ok", 12: "ok", 13: "failed", 14: "ok"}
    grouped = [c for c in calls if len(c) > 1]
    assert grouped and set(grouped[0]) == {12, 13, 14}, calls


def test_a_single_failure_reaches_its_caller() -> None:
    def write(_items: Sequence[int]) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        GroupCommitter(write).commit(1)
