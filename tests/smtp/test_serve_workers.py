"""`serve --workers 2`: SMTP acceptance in two processes on the same ports (mssgate.workers).

Real processes, real sockets: the kernel (SO_REUSEPORT) picks the process of each
connection, so the tests open enough connections that both processes get some (2 x 2^-n
for n connections to all land on one), and check in the logs, by their `worker` field,
that both did.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import smtplib
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.smtp.conftest import ALICE, BOB, MSSGATE, PASSWORD, Gateway, Raw, message

pytestmark = pytest.mark.xdist_group("serve_workers")


def _workers_env(**extra: str) -> dict[str, str]:
    return {"MSSGATE_SERVER__WORKERS": "2", **extra}


@pytest.fixture
def two(gateway_setup: Gateway) -> Iterator[Gateway]:
    # The option wins over the fixtures' MSSGATE_SERVER__WORKERS=1.
    gateway_setup.start(args=("--workers", "2"))
    yield gateway_setup
    if gateway_setup.proc is not None and gateway_setup.proc.poll() is None:
        gateway_setup.stop()


def _worker_of(event: dict[str, object]) -> int:
    value = event.get("worker", 0)
    return int(value) if isinstance(value, int) else 0


def _status(gateway: Gateway) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((gateway.data / "run" / "serve.json").read_text())
    return loaded


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (its parent, the test's dead serve, cannot reap it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait(condition: object, what: str, timeout: float = 30) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _send(gateway: Gateway, n: int, body: str = "Bonjour") -> None:
    for i in range(n):
        with gateway.login() as client:
            client.sendmail(ALICE, [BOB], message(body=f"{body} {i}", Subject=f"m{i}"))


def test_serve_json_lists_the_child_and_both_processes_accept(two: Gateway) -> None:
    status = _status(two)
    children = status["workers"]
    assert isinstance(children, list) and len(children) == 1
    [child] = children
    assert isinstance(child, int) and _alive(child) and child != status["pid"]
    _send(two, 16)
    two.wait_delivered(BOB, 16)
    accepted = [e for e in two.events() if e.get("event") == "smtp.accept"]
    assert len(accepted) == 16
    assert {_worker_of(e) for e in accepted} == {0, 1}, "both processes should accept"


def test_a_message_a_child_accepts_wakes_the_parent_s_delivery(gateway_setup: Gateway) -> None:
    """Delivery polls every hour here: a message accepted by the child is delivered only if
    the child's `accepted` woke the parent's delivery worker."""
    gateway_setup.start(
        extra_env=_workers_env(
            MSSGATE_DELIVERY__POLL_SECONDS="3600", MSSGATE_RELAY__POLL_SECONDS="3600"
        )
    )
    try:
        for i in range(24):
            with gateway_setup.login() as client:
                client.sendmail(ALICE, [BOB], message(body=f"wake {i}", Subject=f"w{i}"))
            by_child = [
                e for e in gateway_setup.events()
                if e.get("event") == "smtp.accept" and _worker_of(e) == 1
            ]  # fmt: skip
            if by_child:
                break
        assert by_child, "no connection reached the child in 24"
        gateway_setup.wait_delivered(BOB, i + 1)
    finally:
        gateway_setup.stop()


def test_an_address_over_its_limit_is_refused_whichever_process_it_reaches(
    gateway_setup: Gateway,
) -> None:
    gateway_setup.start(extra_env=_workers_env(MSSGATE_SMTP__MAX_CONNECTIONS_PER_IP="3"))
    try:
        port = gateway_setup.ports["submission"]
        opened: list[Raw] = []
        banners = []
        for _ in range(16):
            raw = Raw(port)
            opened.append(raw)
            banners.append(raw.reply())
        admitted = [b for b in banners if b.startswith(b"220")]
        refused = [b for b in banners if b.startswith(b"421")]
        assert len(admitted) == 3 and len(refused) == 13, banners
        events = gateway_setup.events()
        refusals = [e for e in events if e.get("event") == "smtp.refused"]
        assert {_worker_of(e) for e in refusals} == {0, 1}, "both processes should refuse"
        # A slot given back by either process is free for the next connection.
        for raw in opened:
            raw.close()

        def admitted_again() -> bool:
            raw = Raw(port)
            try:
                return raw.reply().startswith(b"220")
            finally:
                raw.close()

        _wait(admitted_again, "a connection admitted once the others closed")
    finally:
        gateway_setup.stop()


def test_auth_failures_on_both_processes_add_up_to_one_penalty(gateway_setup: Gateway) -> None:
    gateway_setup.start(
        extra_env=_workers_env(
            MSSGATE_SMTP__AUTH_FAILURES_BEFORE_DELAY="2",
            MSSGATE_SMTP__AUTH_FAILURE_DELAY_MAX_SECONDS="0.05",
        )
    )
    try:
        for _ in range(12):
            with (
                gateway_setup.submission() as client,
                pytest.raises(smtplib.SMTPAuthenticationError),
            ):
                client.login(ALICE, "not the password")  # tries two mechanisms
        failures = [e for e in gateway_setup.events() if e.get("event") == "smtp.auth_failed"]
        assert {_worker_of(e) for e in failures} == {0, 1}, "both processes should see some"
        # One count for the address, whichever process took each attempt: 1, 2, 3... with
        # no number twice (two counts would give two 1s).
        counts = sorted(int(str(e["failures"])) for e in failures)
        assert counts == list(range(1, len(failures) + 1)) and len(counts) >= 12
        delayed = [e for e in failures if float(str(e["delay"])) > 0]
        assert len(delayed) == len(failures) - 2, failures
        with gateway_setup.submission() as client:
            client.login(ALICE, PASSWORD)
    finally:
        gateway_setup.stop()


def test_counters_of_the_child_appear_in_the_parent_s_metrics(two: Gateway) -> None:
    _send(two, 12)
    connects = [e for e in two.events() if e.get("event") == "smtp.connect"]
    assert 1 in {_worker_of(e) for e in connects}, "no session reached the child"
    url = f"https://127.0.0.1:{two.ports['api']}/metrics"
    context = ssl.create_default_context(cafile=str(two.ca))
    context.check_hostname = False
    wanted = 'mssgate_smtp_messages_total{listener="submission",outcome="accepted"} 12.0'

    def scraped() -> bool:
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:
            return wanted in answer.read().decode()

    _wait(scraped, wanted)


def test_a_child_that_dies_is_logged_and_replaced(two: Gateway) -> None:
    [child] = _status(two)["workers"]  # type: ignore[misc]
    os.kill(child, signal.SIGKILL)
    exited = two.wait_event("serve.worker_exited", timeout=30)
    assert exited["pid"] == child
    _wait(
        lambda: (
            [e["pid"] for e in two.events() if e.get("event") == "serve.worker_started"][-1]
            != child
        ),
        "a new child",
    )
    # serve.json names the child that runs now, not the dead one (scripts read it).
    _wait(lambda: _status(two)["workers"] != [child], "serve.json rewritten")
    [new] = _status(two)["workers"]  # type: ignore[misc]
    assert _alive(new)
    _send(two, 6)
    two.wait_delivered(BOB, 6)


def test_a_malformed_line_from_a_child_is_logged_and_the_channel_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A child's bug (a question without its id, a line that is no object) is logged by the
    parent, which goes on answering that child's next questions."""
    import asyncio
    import socket

    from mssgate.config import SmtpConfig
    from mssgate.smtp.limits import AuthPenalty, ConnectionLimiter
    from mssgate.workers import AcceptanceWorkers, _Slot

    async def scenario() -> list[dict[str, object]]:
        workers = AcceptanceWorkers(
            None,  # type: ignore[arg-type]  # no child is started here
            0,
            ports={},
            limiter=ConnectionLimiter(5),
            penalty=AuthPenalty.from_config(SmtpConfig()),
            on_accepted=lambda: None,
        )
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        child_reader, child_writer = await asyncio.open_unix_connection(sock=theirs)
        serving = asyncio.create_task(workers._serve(_Slot(1), reader, writer))
        child_writer.write(
            b'{"op": "admit"}\n[1, 2]\nnot json\n{"op": "admit", "id": 7, "ip": "192.0.2.1"}\n'
        )
        await child_writer.drain()
        answer = json.loads(await asyncio.wait_for(child_reader.readline(), 10))
        child_writer.close()
        await asyncio.wait_for(serving, 10)
        return [answer]

    caplog.set_level("ERROR", logger="mssgate")
    [answer] = asyncio.run(scenario())
    assert answer == {"id": 7, "ok": True}
    invalid = [r for r in caplog.records if "serve.worker_message_invalid" in r.getMessage()]
    assert len(invalid) == 3, [r.getMessage() for r in caplog.records]


def test_sigterm_stops_every_child_before_serve_stopped(two: Gateway) -> None:
    [child] = _status(two)["workers"]  # type: ignore[misc]
    assert two.stop() == 0
    assert not _alive(child)
    events = [e.get("event") for e in two.events()]
    assert "worker.stopped" in events and "serve.stopped" in events
    assert events.index("worker.stopped") < events.index("serve.stopped")
    # The watch of the children ends with the stop, not as a crashed task.
    assert "task.crashed" not in events and "serve.worker_exited" not in events


def test_no_child_outlives_a_killed_parent(two: Gateway) -> None:
    [child] = _status(two)["workers"]  # type: ignore[misc]
    assert two.proc is not None
    two.proc.kill()
    two.proc.wait()
    _wait(lambda: not _alive(child), "the child gone after its parent's SIGKILL")
    two.proc = None


@pytest.mark.parametrize("bad", ["-1", "many", "257"])
def test_a_bad_workers_option_is_a_usage_error(gateway_setup: Gateway, bad: str) -> None:
    done = subprocess.run(
        [MSSGATE, "serve", "--workers", bad], env=gateway_setup.env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--workers must be auto or a number from 0 to 256" in done.stderr


def test_a_hung_child_is_killed_and_replaced(two: Gateway) -> None:
    """A stopped child keeps its SO_REUSEPORT socket, and the kernel its share of the
    connections: the parent's pings find it silent, kill it and start another."""
    [child] = _status(two)["workers"]  # type: ignore[misc]
    os.kill(child, signal.SIGSTOP)
    try:
        two.wait_event("serve.worker_unresponsive", timeout=60, pid=child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)
    _wait(
        lambda: (
            [e["pid"] for e in two.events() if e.get("event") == "serve.worker_started"][-1]
            != child
        ),
        "a new child",
    )
    port = two.ports["submission"]
    for _ in range(16):  # every connection answered, whichever process the kernel picks
        raw = Raw(port)
        try:
            assert raw.reply().startswith(b"220")
        finally:
            raw.close()


def test_no_new_serve_on_the_folder_while_a_child_of_a_killed_serve_drains(
    gateway_setup: Gateway,
) -> None:
    """Killed -9, serve leaves its child draining (committing acceptances) for up to
    drain_seconds. A new serve would recover the spool under it (remove a message file whose
    row the child is about to commit): the child holds the folder's lock until it exits."""
    gateway_setup.start(extra_env=_workers_env(MSSGATE_SMTP__DRAIN_SECONDS="60"))
    [child] = _status(gateway_setup)["workers"]  # type: ignore[misc]
    port = gateway_setup.ports["smtps"]
    busy: list[Raw] = []
    token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
    try:
        for _ in range(12):  # sessions in a transaction, some on the child
            raw = Raw(port, tls=gateway_setup.client_context())
            busy.append(raw)
            assert raw.reply().startswith(b"220")
            raw.cmd(b"EHLO client.test")
            assert raw.cmd(b"AUTH PLAIN " + token).startswith(b"235")
            assert raw.cmd(f"MAIL FROM:<{ALICE}>".encode()).startswith(b"250")
        on_child = [
            e for e in gateway_setup.events()
            if e.get("event") == "smtp.connect" and _worker_of(e) == 1
        ]  # fmt: skip
        assert on_child, "no session reached the child in 12"
        assert gateway_setup.proc is not None
        gateway_setup.proc.kill()
        gateway_setup.proc.wait()
        gateway_setup.proc = None
        assert _alive(child)  # draining its busy sessions
        with pytest.raises(RuntimeError, match="another 'mssgate serve'"):
            gateway_setup.start(extra_env=_workers_env())
    finally:
        for raw in busy:
            raw.close()
    _wait(lambda: not _alive(child), "the child gone once its sessions closed", timeout=90)
    gateway_setup.start(extra_env=_workers_env())
    gateway_setup.stop()


def test_the_child_runs_on_uvloop_too(gateway_setup: Gateway) -> None:
    """uvloop's transports take the admission's pause and hand-over (set_protocol) too."""
    pytest.importorskip("uvloop")
    gateway_setup.start(extra_env=_workers_env(MSSGATE_SERVER__EVENT_LOOP="uvloop"))
    try:
        for i in range(24):
            with gateway_setup.login() as client:
                client.sendmail(ALICE, [BOB], message(body=f"uv {i}", Subject=f"u{i}"))
            accepted = [e for e in gateway_setup.events() if e.get("event") == "smtp.accept"]
            if 1 in {_worker_of(e) for e in accepted}:
                break
        assert 1 in {_worker_of(e) for e in accepted}, "no message reached the child in 24"
        gateway_setup.wait_delivered(BOB, i + 1)
    finally:
        gateway_setup.stop()


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(")")[-1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_sigterm_while_the_children_start_is_an_orderly_stop(
    gateway_setup: Gateway, tmp_path: Path
) -> None:
    """make run's SIGTERM goes to the whole group: serve and a child still starting. The
    child's start fails because of it; serve stops the orderly way (exit 0, serve.stopped,
    no serve.json), not with an error that skips the clean-up of Dovecot and the rest."""
    hook = tmp_path / "hook"
    hook.mkdir()
    # The acceptance child (`python -c ... <n> <fd> <parent>`) is held at its start.
    (hook / "sitecustomize.py").write_text(
        "import sys, time\nif sys.argv[:1] == ['-c'] and len(sys.argv) == 4:\n    time.sleep(30)\n"
    )
    env = {
        **gateway_setup.env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [MSSGATE, "serve", "--workers", "2"], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        children: list[int] = []

        def child_started() -> bool:
            # A Python child of serve other than the pipeline's workers: the acceptance one.
            for pid in _children_of(proc.pid):
                with contextlib.suppress(FileNotFoundError):
                    if "mssgate.workers" in Path(f"/proc/{pid}/cmdline").read_text():
                        children.append(pid)
                        return True
            return False

        _wait(child_started, "the acceptance child started", timeout=60)
        os.kill(children[0], signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    assert proc.returncode == 0, stderr[-2000:]
    assert "serve.start_interrupted" in names and "serve.stopped" in names
    assert "serve.started" not in names
    assert not (gateway_setup.data / "run" / "serve.json").exists()
