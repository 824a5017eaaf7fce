"""The front door on either event loop (`server.event_loop`): asyncio's own by default,
uvloop when asked. After login the session is relayed bytes: IDLE, literals both ways
and logout must come through whole on both, and the close is logged with its byte counts."""

from __future__ import annotations

import asyncio
import re
import sys
import threading

import pytest

from mssgate import eventloop
from mssgate.childpipes import spawn
from mssgate.config import Config
from mssgate.errors import ConfigError
from tests.imap.conftest import ImapGateway, message


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_session_is_relayed_whole_on_either_loop(imap_setup: ImapGateway, loop: str) -> None:
    imap_setup.start(MSSGATE_SERVER__EVENT_LOOP=loop)
    try:
        assert [e["loop"] for e in imap_setup.events("imap.started")] == [loop]
        # Large enough to cross many relay chunks and TLS records, odd-sized on purpose.
        big = message(1, body="x" * 700_001)
        imap_setup.deliver(big)
        client = imap_setup.login()
        client.select("INBOX")
        typ, data = client.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        fetched = data[0][1]
        assert isinstance(fetched, bytes) and fetched.endswith(big)
        # A literal from the client (APPEND), relayed up to Dovecot.
        upload = message(2, body="y" * 300_003)
        typ, _ = client.append("INBOX", None, None, upload)
        assert typ == "OK"
        typ, data = client.fetch("2", "(BODY.PEEK[TEXT])")
        assert typ == "OK" and data[0][1] == b"y" * 300_003 + b"\r\n"
        # IDLE: only the engine can end this read, through the relay.
        tag = client._new_tag()
        client.send(tag + b" IDLE\r\n")
        assert client.readline().startswith(b"+")
        timer = threading.Timer(0.3, imap_setup.deliver, (message(3),))
        timer.start()
        line = client.readline()
        timer.join()
        assert re.match(rb"\* 3 EXISTS", line), line
        client.send(b"DONE\r\n")
        while not (line := client.readline()).startswith(tag):
            pass
        assert b" OK " in line
        client.logout()
        closed = _wait_for(imap_setup, "imap.closed")
        assert closed["bytes_in"] > 300_003 and closed["bytes_out"] > 700_001
    finally:
        imap_setup.stop()


def _wait_for(gateway: ImapGateway, name: str) -> dict[str, object]:
    import time

    deadline = time.monotonic() + 10
    while not (found := gateway.events(name)):
        assert time.monotonic() < deadline, gateway.logs()[-2000:]
        time.sleep(0.05)
    return found[0]


CHILD = [sys.executable, "-c", "import os, stat; print(*(stat.S_ISFIFO(os.fstat(fd).st_mode) "
         "for fd in (0, 1, 2)))"]  # fmt: skip


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_children_get_real_pipes_on_either_loop(loop: eventloop.EventLoop) -> None:
    """Dovecot's imap refuses a socket on its stdin (it takes it for inetd): uvloop's own
    PIPE is a socketpair, ours are pipes."""

    async def main() -> tuple[bytes, bytes]:
        child = await spawn(CHILD, env={}, limit=1024)
        out = await child.stdout.read()
        await child.proc.wait()
        child.close()
        proc = await asyncio.create_subprocess_exec(
            *CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        plain, _ = await proc.communicate()
        return out, plain

    ours, plain = eventloop.run(main(), loop)
    assert ours.split() == [b"True", b"True", b"True"]
    if loop == "uvloop":
        assert plain.split()[:2] == [b"False", b"False"]  # why spawn exists


def test_the_loop_setting_is_checked() -> None:
    assert Config().server.event_loop == "asyncio"
    with pytest.raises(ValueError, match="event_loop"):
        Config.model_validate({"server": {"event_loop": "libuv"}})


def test_uvloop_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what an install without it looks like

    async def main() -> str:
        return eventloop.running()

    with pytest.raises(ConfigError, match=re.escape('server.event_loop = "asyncio"')):
        eventloop.run(main(), "uvloop")
    assert eventloop.run(main(), "asyncio") == "asyncio"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_refused_clients_read_the_answer_and_cannot_go_on_sending(
    imap_setup: ImapGateway, loop: str
) -> None:
    """A TLS close reads, to discard, what the client sends before its own close (uvloop's
    for up to 30 s): refusals must not turn into an endless sink on either loop."""
    from tests.imap.test_preauth_hardening import Raw

    imap_setup.start(MSSGATE_SERVER__EVENT_LOOP=loop)
    try:
        # A long line sent whole: the client then reads the BYE, and the connection ends.
        raw = Raw(imap_setup)
        raw.line()
        raw.send(b"a LOGIN " + b"x" * 40_000 + b" y\r\n")
        assert raw.line() == b"* BYE Command line too long"
        assert raw.closed()
        raw.close()
        # A line without end: cut once it is past one command's worth.
        raw = Raw(imap_setup)
        raw.line()
        with pytest.raises(OSError):
            for _ in range(200):
                raw.send(b"a" * 65536)
            raise AssertionError("13 MB line read")
        raw.close()
        # A non-synchronizing literal refused: cut at once.
        raw = Raw(imap_setup)
        raw.line()
        with pytest.raises(OSError):
            raw.send(b"b LOGIN {52428800+}\r\n")
            for _ in range(800):
                raw.send(b"x" * 65536)
            raise AssertionError("50 MB literal read")
        raw.close()
    finally:
        imap_setup.stop()
