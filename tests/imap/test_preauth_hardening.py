"""Before login every buffer is bounded and every client is on a clock; checked against
the runner's own memory (VmRSS)."""

from __future__ import annotations

import select
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


def dribble_until_closed(clients: list[Raw], data: bytes, *, interval: float) -> list[int]:
    """Sends `data` to every client together, one byte each every `interval` seconds, until
    the server closes each connection; returns how many bytes each got out before its close
    (len(data): it never came). What the server said before closing is kept in raw.buf."""
    sent = dict.fromkeys(range(len(clients)), 0)
    open_ = set(sent)
    for at in range(len(data)):
        for n in sorted(open_):
            try:
                clients[n].send(data[at : at + 1])
                sent[n] += 1
            except OSError:  # reset: the server closed while bytes were in flight
                open_.discard(n)
        deadline = time.monotonic() + interval  # pacing only: nothing is asserted on it
        while open_ and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([clients[n].sock for n in open_], [], [], left)
            for n in [n for n in open_ if clients[n].sock in readable]:
                try:
                    chunk = clients[n].sock.recv(65536)
                except OSError:
                    chunk = b""
                clients[n].buf += chunk
                if not chunk:
                    open_.discard(n)
        if not open_:
            break
    return [len(data) if n in open_ else sent[n] for n in range(len(clients))]


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
        # One byte every 0.3 s never completes a command: the clock is per command. A clock
        # reset by each byte would never run out, so the dribble goes on for far longer than
        # the 1 s timeout (up to 100 bytes) and every connection must be closed while it is
        # still going; how soon after the timeout depends on the machine, not on the server.
        dribble = b"a NOOP " + b"x" * 93
        cut_after = dribble_until_closed(clients, dribble, interval=0.3)
        assert all(n < len(dribble) for n in cut_after), cut_after
        assert all(b"BYE" in c.buf for c in clients)
        # TLS handshake timeout, same clock; the socket's own timeout only tells a hang.
        handshake_only.settimeout(60)
        assert handshake_only.recv(10) == b""
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
        # Three free failures, then SMTP's penalty: 1 s, then 2 s capped at 1.2 s. The runner's
        # own line says which delay each attempt was given; the client's clock checks the
        # floor (the wait happened before the answer). The Argon2 check's own time varies with
        # the machine's load, so nothing here bounds an answer from above.
        failed = imap_setup.events("imap.auth_failed")
        assert [(e["failures"], e["delay"]) for e in failed] == list(
            zip(range(1, 11), [0.0] * 3 + [1.0] + [1.2] * 6, strict=True)
        )
        assert min(times[3:]) >= 1.0
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
