"""Message bodies spill to an anonymous file; the memory budget admits whole-message work."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.smtp.body import MemoryBudget, MessageBody


@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(0, 2000))
def test_a_body_reads_back_what_was_written_spilled_or_not(
    chunks: list[bytes], threshold: int
) -> None:
    body = MessageBody(spill_threshold=threshold)
    try:
        for chunk in chunks:
            body.write(chunk)
        whole = b"".join(chunks)
        assert body.read() == whole
        assert body.size == len(whole)
        assert body.spilled == (len(whole) > threshold)
    finally:
        body.close()


def test_a_spilled_body_leaves_no_file_behind(tmp_path: Path) -> None:
    body = MessageBody(spill_threshold=10, spill_dir=tmp_path)
    body.write(b"x" * 100)
    assert body.spilled
    # Anonymous: unlinked from the start, so even a crash leaves nothing in the folder.
    assert os.listdir(tmp_path) == []
    assert body.read() == b"x" * 100
    body.discard()
    assert body.read() == b"" and not body.spilled
    body.close()


async def _admission_order(budget: MemoryBudget, sizes: list[int]) -> list[tuple[str, int]]:
    log: list[tuple[str, int]] = []
    gate = asyncio.Event()

    async def work(i: int, size: int) -> None:
        async with budget.reserve(size):
            log.append(("in", i))
            await gate.wait()
            log.append(("out", i))

    tasks = [asyncio.create_task(work(i, s)) for i, s in enumerate(sizes)]
    await asyncio.sleep(0.01)
    admitted = [i for kind, i in log if kind == "in"]
    log.append(("admitted-first", len(admitted)))
    gate.set()
    await asyncio.gather(*tasks)
    assert budget.used == 0
    return log


@pytest.mark.parametrize(
    ("sizes", "first"),
    [
        ([10, 10, 10], 3),  # small messages pass side by side
        ([100, 100, 100], 1),  # each weighs the whole budget: one at a time
        ([500, 10], 1),  # larger than the budget: admitted, but alone
    ],
)
def test_the_budget_admits_by_estimated_memory(sizes: list[int], first: int) -> None:
    budget = MemoryBudget(600, expansion=6)
    log = asyncio.run(_admission_order(budget, sizes))
    assert ("admitted-first", first) in log
    assert sorted(i for kind, i in log if kind == "out") == list(range(len(sizes)))


def test_the_budget_never_exceeds_its_limit() -> None:
    budget = MemoryBudget(100, expansion=1)
    peak = 0

    async def work(size: int) -> None:
        nonlocal peak
        async with budget.reserve(size):
            peak = max(peak, budget.used)
            await asyncio.sleep(0.001)

    async def main() -> None:
        await asyncio.gather(*(work(s) for s in [30, 50, 70, 20, 90, 10] * 5))

    asyncio.run(main())
    assert 0 < peak <= 100
    assert budget.used == 0
