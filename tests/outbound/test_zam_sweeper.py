"""The `outbound-acks` task of `serve` (zamqueue.sweep_forever): a pass that fails on the
database (here its table renamed away) is logged at level error and told to the task's
health, which /healthz shows after a few in a row; the task keeps running, and the first
pass that goes through clears it. A real SQLite database, a real asyncio loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from mssgate.db import open_engine, upgrade
from mssgate.outbound.zamqueue import ZamQueue, sweep_forever
from mssgate.supervisor import PassHealth


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


def test_a_failing_pass_is_logged_and_reported_and_the_sweeper_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    zams = ZamQueue(engine, facility="mx.test")
    health = PassHealth(failed_after=2)

    def rename(old: str, new: str) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")

    async def scenario() -> None:
        rename("outbound_recipients", "away")
        task = asyncio.create_task(sweep_forever(zams, 0.05, health))
        try:
            await _until(lambda: health.probe() is not None)
            assert "OperationalError" in str(health.probe())
            assert not task.done()
            rename("away", "outbound_recipients")
            await _until(lambda: health.probe() is None)
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    with caplog.at_level(logging.ERROR, logger="mssgate.outbound"):
        asyncio.run(scenario())
    failed = [r for r in caplog.records if r.name == "mssgate.outbound"]
    assert failed and all(r.levelno == logging.ERROR for r in failed)
    assert {r.getMessage() for r in failed} == {"outbound.zam_sweep.pass_failed"}
    engine.dispose()
