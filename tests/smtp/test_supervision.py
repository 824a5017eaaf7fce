"""Issue 12 A.2: delivery never stops silently. One bad spool entry is held, the others go on;
every long-running task of serve is supervised (logged, counted, restarted, seen by /healthz)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mssgate.supervisor import Supervisor
from tests.conftest import Cli
from tests.smtp.conftest import ALICE, BOB, Gateway, message

# Sorts before every queue id the gateway makes (they start with the time in milliseconds),
# so the worker meets it first in its batch.
LOST_ID = "000000000000LOST"


def _plant_entry_without_file(data: Path) -> None:
    """A spool row whose file is gone (a disk fault, a hand that cleaned the spool): before
    the fix, the NotFound it raised ended the delivery task for good."""
    stamp = datetime.now(UTC).isoformat(sep=" ")
    with sqlite3.connect(data / "mssgate.db") as db:
        db.execute(
            "INSERT INTO spool_messages (id, received_at, listener, sender, identity, peer,"
            " size, state) VALUES (?, ?, 'submission', ?, ?, NULL, 10, 'queued')",
            (LOST_ID, stamp, ALICE, ALICE),
        )
        db.execute(
            "INSERT INTO spool_recipients (spool_id, recipient, route, state, attempts,"
            " next_attempt_at, updated_at) VALUES (?, ?, 'local', 'pending', 0, ?, ?)",
            (LOST_ID, BOB, stamp, stamp),
        )


def test_an_entry_without_its_file_is_held_and_the_others_are_delivered(
    gateway_setup: Gateway, cli: Cli
) -> None:
    gw = gateway_setup
    _plant_entry_without_file(gw.data)
    gw.start()
    try:
        with gw.login(ALICE) as client:
            for i in range(10):
                client.sendmail(ALICE, [BOB], message(body=f"n{i}"))
        gw.wait_delivered(BOB, 10)
        held = gw.wait_event("delivery.held", queue_id=LOST_ID)
        assert "NotFound" in str(held["reason"])
        assert "Traceback" in str(held["traceback"])
    finally:
        gw.stop()
    listed = cli.ok("spool", "list", "--json").json()
    lost = next(e for e in listed if e["id"] == LOST_ID)
    assert lost["recipients"][0]["state"] == "held"
    assert "spool file" in lost["recipients"][0]["last_error"]
    table = cli.ok("spool", "list").out
    assert "held:" in table
    # The operator puts it back once the cause is fixed: here the file never comes back, so
    # the next pass holds it again, and nothing else waits on it.
    assert "1 held deliveries" in cli.ok("spool", "release", LOST_ID).out
    assert cli("spool", "release", LOST_ID).code == 1  # nothing held any more
    assert cli("spool", "release", "not-an-id").code == 1


def test_supervisor_restarts_logs_counts_and_reports_a_task_that_keeps_crashing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mssgate import metrics

    runs: list[int] = []
    before = metrics.default().task_crashes.labels("flaky")._value.get()

    async def scenario() -> dict[str, str]:
        sup = Supervisor(backoff_first=0.01, backoff_max=0.02, unhealthy_after=3, window=60)

        async def flaky() -> None:
            runs.append(1)
            await asyncio.sleep(0)
            raise RuntimeError("boom")

        async def steady() -> None:
            await asyncio.Event().wait()

        sup.spawn("flaky", flaky)
        sup.spawn("steady", steady)
        assert sup.failing() == {}
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(runs) >= 4:
                break
        failing = sup.failing()
        await sup.stop()
        return failing

    with caplog.at_level(logging.ERROR, logger="mssgate.supervisor"):
        failing = asyncio.run(scenario())
    assert len(runs) >= 4, "the crashed task was not restarted"
    assert list(failing) == ["flaky"]
    assert "RuntimeError" in failing["flaky"] and "boom" not in failing["flaky"]
    crashed = [r for r in caplog.records if r.getMessage() == "task.crashed"]
    assert len(crashed) >= 3
    fields = crashed[0].fields  # type: ignore[attr-defined]
    assert fields["task"] == "flaky"
    assert "Traceback" in fields["traceback"] and "boom" in fields["traceback"]
    after = metrics.default().task_crashes.labels("flaky")._value.get()
    assert after - before >= 3


def test_a_task_that_returns_counts_as_crashed() -> None:
    async def scenario() -> dict[str, int]:
        sup = Supervisor(backoff_first=0.01, backoff_max=0.01)

        async def quits() -> None:
            return None

        sup.spawn("quits", quits)
        await asyncio.sleep(0.1)
        counts = sup.crash_counts()
        await sup.stop()
        return counts

    assert asyncio.run(scenario())["quits"] >= 2


def test_healthz_of_a_live_gateway_is_ok(gateway: Gateway) -> None:
    code, body = gateway.healthz()
    assert code == 200
    assert body == {"status": "ok", "failing": {}, "nodes_down": {}}


def test_healthz_answers_503_naming_a_task_that_keeps_crashing(datadir: Path) -> None:
    """The API as serve runs it, over HTTPS, with a supervisor holding a crashing task."""
    import httpx

    from mssgate.api.server import start_api
    from mssgate.config import load_config
    from mssgate.db import open_engine, upgrade

    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)

    async def scenario() -> list[tuple[int, dict[str, object]]]:
        sup = Supervisor(backoff_first=0.01, backoff_max=0.01, unhealthy_after=3, window=60)

        async def delivery() -> None:
            raise RuntimeError("database is locked")

        api = await start_api(config, engine, port=0, health=sup.failing)
        answers = []
        ctx = ssl.create_default_context(cafile=datadir / "certs" / "ca.crt.pem")
        async with httpx.AsyncClient(verify=ctx, timeout=10) as client:
            url = f"https://localhost:{api.port}/healthz"
            resp = await client.get(url)
            answers.append((resp.status_code, resp.json()))
            sup.spawn("delivery", delivery)
            await asyncio.sleep(0.3)
            resp = await client.get(url)
            answers.append((resp.status_code, resp.json()))
        await sup.stop()
        await api.stop()
        return answers

    try:
        (code1, body1), (code2, body2) = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert (code1, body1["status"]) == (200, "ok")
    assert code2 == 503
    assert body2["status"] == "failing"
    failing = body2["failing"]
    assert isinstance(failing, dict)
    assert list(failing) == ["delivery"]
    assert "RuntimeError" in failing["delivery"]


@pytest.mark.parametrize(
    ("variable", "listener", "setting"),
    [
        ("MSSGATE_SMTP__SUBMISSION_PORT", "SMTP submission", "smtp.submission_port"),
        ("MSSGATE_API__PORT", "the RIS API", "api.port"),
    ],
)
def test_serve_on_a_busy_port_names_the_listener_and_the_port(
    gateway_setup: Gateway, variable: str, listener: str, setting: str
) -> None:
    """Issue 12 item 16: one line naming the listener, its address and the setting; exit 1."""
    import socket
    import subprocess

    from tests.smtp.conftest import MSSGATE

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**gateway_setup.env, variable: str(port)}
        done = subprocess.run(
            [MSSGATE, "serve"], env=env, capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"mssgate: error: cannot listen for {listener} on 127.0.0.1:{port}: the port is in use"
        f" (another program, or another mssgate serve); choose another port with {setting}"
        f" (or {variable})"
    )
