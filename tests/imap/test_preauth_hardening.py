"""Before login every buffer is bounded and every client is on a clock; checked against
the runner's own memory (VmRSS)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

import pytest

from tests.imap.conftest import ALICE, PASSWORD, ImapGateway

pytestmark = pytest.mark.slow

MIB = 1024


class Raw:
    def __init__(self, gateway: ImapGateway, *, tls: bool = True) -> None:
        port = gateway.ports["imaps" if tls else "imap"]
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        ctx = gateway.client_context()
        self.sock: socket.socket = (
            ctx.wrap_socket(sock, server_hostname="localhost") if tls else sock
        )
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; got {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed(self, timeout: float = 5) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLError, OSError):
            return True

    def close(self) -> None:
        self.sock.close()


def test_a_50mb_literal_before_login_is_refused_unread(imap_gateway: ImapGateway) -> None:
    before = imap_gateway.rss_kib()
    raw = Raw(imap_gateway)
    assert raw.line().startswith(b"* OK")
    raw.send(b"a LOGIN {52428800}\r\n")
    reply = raw.line()
    assert reply.startswith(b"a BAD"), reply
    assert raw.closed()
    assert b"+ " not in raw.buf
    raw.close()
    # A non-synchronizing literal arrives without asking: the bytes die with the connection.
    raw = Raw(imap_gateway)
    raw.line()
    raw.send(b"b LOGIN {52428800+}\r\n")
    sent = 0
    chunk = b"x" * 65536
    deadline = time.monotonic() + 20
    with pytest.raises(OSError):  # the server must hang up mid-stream
        while sent < 52428800 and time.monotonic() < deadline:
            raw.send(chunk)
            sent += len(chunk)
        raise AssertionError(f"server read {sent} bytes of the literal")
    raw.close()
    assert imap_gateway.rss_kib() - before < 20 * MIB
    assert any(e["reason"] == "literal_too_big" for e in imap_gateway.events("imap.reject"))


def test_a_line_without_end_before_login(imap_gateway: ImapGateway) -> None:
    before = imap_gateway.rss_kib()
    raw = Raw(imap_gateway)
    raw.line()
    with pytest.raises(OSError):
        for _ in range(200):
            raw.send(b"a" * 65536)
        raise AssertionError("13 MB line accepted")
    raw.close()
    assert imap_gateway.rss_kib() - before < 20 * MIB


def test_slowloris_before_login_is_cut_by_the_idle_timeout(imap_setup: ImapGateway) -> None:
    imap_setup.start(MSSGATE_IMAP__IDLE_TIMEOUT_SECONDS="1")
    try:
        before = imap_setup.rss_kib()
        clients = [Raw(imap_setup, tls=False) for _ in range(10)]
        handshake_only = socket.create_connection(("127.0.0.1", imap_setup.ports["imaps"]))
        for c in clients:
            c.line()
        started = time.monotonic()
        # One byte every 0.3 s never completes a command: the clock is per command.
        for byte in b"a NOOP":
            for c in clients:
                with contextlib.suppress(OSError):
                    c.send(bytes([byte]))
            time.sleep(0.3)
        assert all(c.closed(timeout=5) for c in clients)
        assert time.monotonic() - started < 5
        assert all(b"BYE" in c.buf for c in clients)
        handshake_only.settimeout(5)
        assert handshake_only.recv(10) == b""  # TLS handshake timeout, same clock
        handshake_only.close()
        for c in clients:
            c.close()
        assert imap_setup.rss_kib() - before < 20 * MIB
        reasons = [e["reason"] for e in imap_setup.events("imap.reject")]
        assert reasons.count("idle_timeout") == 10
    finally:
        imap_setup.stop()


def test_ten_failed_logins_are_slowed_audited_and_bounded(imap_setup: ImapGateway, cli) -> None:
    imap_setup.start(MSSGATE_SMTP__AUTH_FAILURE_DELAY_MAX_SECONDS="1.2")
    try:
        before = imap_setup.rss_kib()
        raw = Raw(imap_setup)
        raw.line()
        times = []
        for n in range(10):
            started = time.monotonic()
            raw.send(f'f{n} LOGIN "{ALICE}" "wrong {n}"\r\n'.encode())
            reply = raw.line()
            times.append(time.monotonic() - started)
            assert reply == f"f{n} NO [AUTHENTICATIONFAILED] Authentication failed.".encode()
        # Three free failures, then SMTP's penalty: 1 s, then 2 s capped at 1.2 s. The
        # delay is a floor; the Argon2 check's own time varies with the machine's load.
        assert min(times[3:]) >= 1.0
        assert max(times[:3]) < min(times[3:]) - 0.5
        raw.send(f'ok LOGIN "{ALICE}" "{PASSWORD}"\r\n'.encode())
        assert raw.line().startswith(b"ok OK [CAPABILITY IMAP4rev1")
        raw.close()
        rows = [r for r in cli.ok("audit", "--json").json() if r["actor"] == "imap:imaps"]
        assert sum(r["action"] == "auth.failed" for r in rows) == 10
        assert sum(r["action"] == "auth.succeeded" for r in rows) == 1
        assert imap_setup.rss_kib() - before < 20 * MIB
    finally:
        imap_setup.stop()


def test_commands_before_login_are_counted(imap_gateway: ImapGateway) -> None:
    raw = Raw(imap_gateway)
    raw.line()
    for n in range(20):
        raw.send(f"n{n} NOOP\r\n".encode())
        assert raw.line().startswith(f"n{n} OK".encode())
    raw.send(b"n20 NOOP\r\n")
    assert raw.line().startswith(b"* BYE")
    assert raw.closed()
    raw.close()


def test_commands_needing_login_are_refused_before_it(imap_gateway: ImapGateway) -> None:
    raw = Raw(imap_gateway)
    raw.line()
    raw.send(b"s SELECT INBOX\r\n")
    assert raw.line().startswith(b"s BAD")
    raw.send(b"l LOGIN {5}\r\n")
    assert raw.line().startswith(b"+")
    raw.send(ALICE[:5].encode() + b" x\r\n")
    assert raw.line().startswith(b"l NO [AUTHENTICATIONFAILED]")
    raw.send(b"z LOGOUT\r\n")
    assert raw.line().startswith(b"* BYE")
    raw.close()
