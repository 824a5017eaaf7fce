"""Review of issue 12 A.2: /healthz must see a delivery that no longer gets anything done.

The delivery worker catches the failures of the gateway's footing (the database, the disk)
itself and tries again at its next pass: right for the entries, which stay due, but the task
never crashes, so the supervisor never counted it and /healthz answered 200 for as long as
the database refused every delivery's commit (the very stall of issue 12 A.2, now silent).
"""

from __future__ import annotations

import smtplib
import sqlite3
import time

from tests.smtp.conftest import ALICE, BOB, Gateway, message


def _wait_health(gw: Gateway, code: int, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    seen: tuple[int, dict[str, object]] = (0, {})
    while time.monotonic() < deadline:
        seen = gw.healthz()
        if seen[0] == code:
            return seen[1]
        time.sleep(0.2)
    raise AssertionError(f"/healthz never answered {code}; last {seen}")


def test_healthz_names_the_delivery_while_every_pass_fails_and_recovers_after(
    gateway_setup: Gateway,
) -> None:
    gw = gateway_setup
    gw.start(extra_env={"MSSGATE_DELIVERY__POLL_SECONDS": "0.2"})
    db = sqlite3.connect(gw.data / "mssgate.db", timeout=30)
    try:
        assert gw.healthz()[0] == 200
        # The database refuses every change of a delivery's state from now on (a full
        # disk, say): acceptance still commits (inserts), every delivery pass fails.
        db.execute(
            "CREATE TRIGGER refuse_delivery_state BEFORE UPDATE ON spool_recipients"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
        db.commit()
        client: smtplib.SMTP
        with gw.login(ALICE) as client:
            client.sendmail(ALICE, [BOB], message(body="stuck"))
        gw.wait_event("delivery.pass_failed", timeout=20)
        body = _wait_health(gw, 503)
        assert body["status"] == "failing"
        failing = body["failing"]
        assert isinstance(failing, dict) and "delivery" in failing
        assert "passes in a row failed" in failing["delivery"]
        # /healthz answers anyone: the error's class, never its text (SQL, parameters).
        assert "spool_recipients" not in failing["delivery"]
        db.execute("DROP TRIGGER refuse_delivery_state")
        db.commit()
        assert _wait_health(gw, 200) == {"status": "ok", "failing": {}, "nodes_down": {}}
        gw.wait_delivered(BOB, 1)
    finally:
        db.close()
        gw.stop()


def test_a_crash_reason_on_healthz_names_the_error_class_not_its_text() -> None:
    """/healthz answers anyone who reaches the API port; an exception's text may quote SQL
    parameters, a mailbox address or a subject. The class names the trouble, the log has
    the text (task.crashed, with the traceback)."""
    import asyncio

    from mssgate.supervisor import Supervisor

    async def scenario() -> dict[str, str]:
        sup = Supervisor(backoff_first=0.01, backoff_max=0.01, unhealthy_after=3, window=60)

        async def delivery() -> None:
            raise KeyError("dr.martin@hopital.test: Subject: résultats de M. Dupont")

        sup.spawn("delivery", delivery)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if sup.failing():
                break
        failing = sup.failing()
        await sup.stop()
        return failing

    failing = asyncio.run(scenario())
    assert list(failing) == ["delivery"]
    assert "KeyError" in failing["delivery"]
    assert "hopital.test" not in failing["delivery"]
    assert "Dupont" not in failing["delivery"]


def test_a_task_ended_by_a_cancellation_it_was_not_sent_is_restarted() -> None:
    """Only the supervisor's own stop is a normal end. A CancelledError that reaches a task
    from something it awaited (a future another component cancelled) used to end the task
    for good, with no log line and no crash counted: the silent stop of issue 12 A.2."""
    import asyncio

    from mssgate.supervisor import Supervisor

    runs: list[int] = []

    async def scenario() -> dict[str, int]:
        sup = Supervisor(backoff_first=0.01, backoff_max=0.01)
        loop = asyncio.get_running_loop()

        async def waits_on_a_shared_future() -> None:
            runs.append(1)
            shared: asyncio.Future[None] = loop.create_future()
            loop.call_later(0.01, shared.cancel)
            await shared

        sup.spawn("relay", waits_on_a_shared_future)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(runs) >= 3:
                break
        counts = sup.crash_counts()
        await sup.stop()
        return counts

    counts = asyncio.run(scenario())
    assert len(runs) >= 3, "the task was not restarted"
    assert counts["relay"] >= 2


def test_running_out_of_file_descriptors_holds_no_delivery(gateway_setup: Gateway) -> None:
    """A gateway out of file descriptors (a flood of connections) cannot open spool files.
    That is the footing failing, like the database: the deliveries must stay due and go out
    once descriptors are free again. Before, the OSError counted as the entry's own trouble
    and every due delivery was held, each waiting for an operator's `spool release`."""
    import os
    import resource
    from datetime import UTC, datetime

    from mssgate.spool import new_queue_id

    gw = gateway_setup
    gw.start(extra_env={"MSSGATE_DELIVERY__POLL_SECONDS": "0.2"})
    assert gw.proc is not None
    pid = gw.proc.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:
        with gw.login(ALICE) as client:
            client.sendmail(ALICE, [BOB], message(body="warm-up"))
        gw.wait_delivered(BOB, 1)
        queue_id = new_queue_id()
        (gw.data / "spool" / "msg" / f"{queue_id}.eml").write_bytes(message(body="fd"))
        # From here on the gateway cannot open a new descriptor: the lowest free one is
        # beyond its limit.
        used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        lowest_free = next(n for n in range(len(used) + 1) if n not in used)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
        stamp = datetime.now(UTC).isoformat(sep=" ")
        with sqlite3.connect(gw.data / "mssgate.db", timeout=30) as db:
            db.execute(
                "INSERT INTO spool_messages (id, received_at, listener, sender, identity,"
                " peer, size, state) VALUES (?, ?, 'submission', ?, ?, NULL, 10, 'queued')",
                (queue_id, stamp, ALICE, ALICE),
            )
            db.execute(
                "INSERT INTO spool_recipients (spool_id, recipient, route, state, attempts,"
                " next_attempt_at, updated_at) VALUES (?, ?, 'local', 'pending', 0, ?, ?)",
                (queue_id, BOB, stamp, stamp),
            )
        db.close()
        gw.wait_event("delivery.pass_failed", timeout=20)
        time.sleep(1)  # a few passes more
        held = [e for e in gw.events() if e.get("event") == "delivery.held"]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        assert held == []
        gw.wait_queue_ids(BOB, {queue_id})
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        gw.stop()


def test_serve_on_an_address_this_machine_lacks_names_the_bind_setting(
    gateway_setup: Gateway,
) -> None:
    """Issue 12 item 16's sibling: the port is not the trouble when the address is not this
    machine's; the line must send the operator to the bind setting, not to the port."""
    import subprocess

    from tests.smtp.conftest import MSSGATE

    env = {**gateway_setup.env, "MSSGATE_SMTP__BIND": "192.0.2.1"}  # TEST-NET-1
    done = subprocess.run(
        [MSSGATE, "serve"], env=env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mssgate: error: cannot listen for SMTP submission on 192.0.2.1:")
    assert last.endswith(": this machine has no such address; set another address with smtp.bind")
