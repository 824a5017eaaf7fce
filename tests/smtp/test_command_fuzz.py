"""Fuzz target: the SMTP command loop (`GatewaySMTP`), over a real socket, in-process.

Random conversations (commands, pipelined batches, DATA bodies, SASL exchanges, binary junk,
bare CR/LF, overlong lines) against the SMTPS listener's protocol class with a do-nothing
handler. Properties, checked after every reply:
- every line the client ends with LF gets exactly one reply, in order: nothing is swallowed or
  answered twice (the command-smuggling class of bugs shows up as a shift here);
- replies are RFC 5321 lines: three digits, printable US-ASCII; a 4xx/5xx carries an enhanced
  status code of its class (RFC 2034);
- the server hangs up only after a reply that says so (221, 421, the bare-newline 500/550);
- no exception escapes to the loop's catch-all (no `smtp.error` event, no 451 4.3.0).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.pki import create_dev_ca, issue_server_cert, write_certificate, write_private_key
from mssgate.smtp.limits import AuthPenalty, ConnectionLimiter
from mssgate.smtp.protocol import GatewaySMTP
from mssgate.tls import server_context

pytestmark = pytest.mark.fuzz

USER, PASSWORD = "alice@fuzz.test", "right password"
MAX_SIZE = 4096
_REPLY = re.compile(rb"^([2-5][0-9][0-9])([ -])([\x20-\x7e\t]*)$")
_ENHANCED = re.compile(rb"^([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")


class _Auth:
    async def password(self, login: str, password: str, peer_ip: str) -> str | None:
        return USER if (login, password) == (USER, PASSWORD) else None

    async def certificate(self, authzid: str | None, der: bytes, peer_ip: str) -> str | None:
        return None

    async def failed(self, login: str, mechanism: str, peer_ip: str) -> None:
        return None


class _Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Accepted"


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.getMessage()} {getattr(record, 'fields', '')}")


@dataclass
class SmtpTarget:
    port: int
    client: ssl.SSLContext
    errors: _Errors


@pytest.fixture(scope="module")
def smtp_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpTarget]:
    folder = tmp_path_factory.mktemp("smtp-fuzz")
    ca_key, ca_cert = create_dev_ca("fuzz CA")
    key, cert = issue_server_cert(ca_key, ca_cert, "localhost")
    write_certificate(folder / "ca.pem", ca_cert)
    write_certificate(folder / "cert.pem", cert)
    write_private_key(folder / "key.pem", key)
    tls = server_context(folder / "cert.pem", folder / "key.pem")
    loop = asyncio.new_event_loop()
    errors = _Errors()
    logging.getLogger("mssgate.smtp").addHandler(errors)
    penalty = AuthPenalty(free_failures=10**9, max_delay=0.0)  # no sleeping between examples
    limiter = ConnectionLimiter(10**6)
    sessions: set[GatewaySMTP] = set()

    def make() -> GatewaySMTP:
        return GatewaySMTP(
            _Handler(),
            listener="smtps",
            implicit_tls=True,
            limiter=limiter,
            penalty=penalty,
            authenticator=_Auth(),
            max_line=998,
            max_commands_before_auth=20,
            on_open=sessions.add,
            on_close=sessions.discard,
            hostname="fuzz.test",
            tls_context=tls,
            require_starttls=False,
            auth_required=True,
            auth_require_tls=True,
            data_size_limit=MAX_SIZE,
            timeout=10,
            loop=loop,
        )

    server = loop.run_until_complete(loop.create_server(make, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=folder / "ca.pem")

    async def shutdown() -> None:
        # Every session ended and awaited here: one left to the garbage collector warns
        # (unclosed transport, pending task) in whichever test runs next.
        server.close()
        for session in list(sessions):
            if session.transport is not None:
                session.transport.abort()
        await server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        yield SmtpTarget(server.sockets[0].getsockname()[1], client, errors)
    finally:
        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        logging.getLogger("mssgate.smtp").removeHandler(errors)


# -- what a client may send ---------------------------------------------------------------
_b64 = st.binary(max_size=60).map(base64.b64encode)
_address = st.sampled_from(
    [b"<alice@fuzz.test>", b"<>", b"<bob@other.test>", b"<@relay.test:bob@x.test>", b"bob",
     b"<\"quoted\"@fuzz.test>", b"<bob@[127.0.0.1]>", b"<" + b"a" * 300 + b"@fuzz.test>"]
)  # fmt: skip
_params = st.sampled_from(
    [b"", b" SIZE=100", b" SIZE=99999999", b" BODY=8BITMIME", b" SMTPUTF8", b" X=Y", b" SIZE="]
)
_junk = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
_argument = st.one_of(
    st.just(b""),
    st.tuples(st.sampled_from([b" FROM:", b" TO:", b" from: ", b" TO:"]), _address, _params).map(
        b"".join
    ),
    st.sampled_from([b" fuzz.test", b" [127.0.0.1]", b" ", b"  x  y "]),
    _junk.map(lambda b: b" " + b),
)
_verb = st.sampled_from(
    [b"EHLO", b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP", b"VRFY", b"EXPN", b"HELP",
     b"STARTTLS", b"BDAT", b"ehlo", b"MaIl", b"X\x00Y", b"\xc3\xa9HLO", b"", b"DATA x"]
)  # fmt: skip
_simple_line = st.tuples(_verb, _argument).map(b"".join)


@st.composite
def _auth_line(draw: st.DrawFn) -> bytes:
    mechanism = draw(st.sampled_from([b"PLAIN", b"LOGIN", b"EXTERNAL", b"CRAM-MD5", b"plain"]))
    initial = draw(
        st.one_of(
            st.just(b""),
            st.just(b" " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())),
            st.just(b" ="),
            _b64.map(lambda b: b" " + b),
            _junk.map(lambda b: b" " + b),
        )
    )
    return b"AUTH " + mechanism + initial


_sasl_response = st.one_of(
    st.just(b"*"),
    st.just(base64.b64encode(USER.encode())),
    st.just(base64.b64encode(PASSWORD.encode())),
    st.just(base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())),
    _b64,
    _junk,
)
_ending = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r\r\n", b"\r\n\r\n"])
_body_line = st.one_of(
    _junk,
    st.sampled_from([b".", b"..", b".x", b"From: a@b", b"", b"x" * 1200, b"x\rMAIL FROM:<a>"]),
)


@st.composite
def _data_block(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(_body_line, max_size=12))
    body = b"".join((b"." + ln if ln[:1] == b"." else ln) + draw(_ending) for ln in lines)
    if draw(st.integers(0, 9)) == 0:
        body += b"y" * (MAX_SIZE + 10) + b"\r\n"
    end = draw(st.sampled_from([b".\r\n"] * 8 + [b"\n.\r\n", b".\n\r\n.\r\n", b"\r.\r\n.\r\n"]))
    return body + end


def _closing(reply: bytes) -> bool:
    """A reply after which the server is entitled to hang up (and then must)."""
    return reply.startswith((b"221 ", b"421 ")) or reply.endswith(b", closing")


# -- the client ------------------------------------------------------------------------------
class _Client:
    def __init__(self, target: SmtpTarget) -> None:
        raw = socket.create_connection(("127.0.0.1", target.port), timeout=5)
        self.sock = target.client.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""

    def reply(self) -> list[bytes]:
        """One whole reply (its lines); ConnectionError if the server hung up first."""
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"hung up after {lines!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return lines

    def hung_up(self) -> bool:
        self.sock.settimeout(1)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False


def _check(lines: list[bytes], *, ehlo: bool) -> None:
    for line in lines:
        match = _REPLY.match(line)
        assert match is not None, f"not an RFC 5321 reply line: {line!r}"
    assert len({line[:3] for line in lines}) == 1, f"codes differ within a reply: {lines!r}"
    last = lines[-1]
    assert not last.startswith(b"451 4.3.0"), f"an exception reached the catch-all: {last!r}"
    if last[:1] in b"45" and not ehlo:
        status = _ENHANCED.match(last[4:])
        assert status is not None and status.group(1) == last[:1], f"no enhanced status: {last!r}"


@given(data=st.data())
def test_command_loop_answers_every_line_once(smtp_target: SmtpTarget, data: st.DataObject) -> None:
    errors_before = len(smtp_target.errors.seen)
    client = _Client(smtp_target)
    try:
        greeting = client.reply()
        assert greeting[-1].startswith(b"220 ")
        last = greeting[-1]
        for _ in range(data.draw(st.integers(1, 10), label="exchanges")):
            if last.startswith(b"354"):
                unit = data.draw(_data_block(), label="data")
            elif last.startswith(b"334"):
                unit = data.draw(_sasl_response, label="sasl") + b"\r\n"
            else:
                kind = data.draw(st.sampled_from(["one", "auth", "data", "pipeline", "long"]))
                if kind == "auth":
                    unit = data.draw(_auth_line()) + data.draw(_ending)
                elif kind == "data":
                    unit = b"DATA" + data.draw(_ending)
                elif kind == "pipeline":
                    batch = data.draw(st.lists(_simple_line, min_size=2, max_size=5))
                    unit = b"".join(line + data.draw(_ending) for line in batch)
                elif kind == "long":
                    size = data.draw(st.sampled_from([549, 2000, 65_000, 70_000, 200_000]))
                    unit = b"NOOP " + b"x" * size + b"\r\n"
                else:
                    unit = data.draw(_simple_line) + data.draw(_ending)
            # One reply per line; a DATA body is one unit with one reply.
            in_data = last.startswith(b"354")
            lines_sent = [unit] if in_data else unit.split(b"\n")[:-1]
            client.sock.sendall(unit)
            for sent in lines_sent:
                lines = client.reply()
                # RFC 2034: replies to EHLO and HELO carry no enhanced status code.
                _check(lines, ehlo=not in_data and sent[:4].upper() in (b"EHLO", b"HELO"))
                last = lines[-1]
                if _closing(last):
                    break
                if last.startswith((b"354", b"334")) and len(lines_sent) > 1:
                    break  # the rest of the batch is data now: a client error, not ours
            if _closing(last):
                assert client.hung_up(), f"said {last!r} but kept the connection"
                return
            if last.startswith((b"354", b"334")) and len(lines_sent) > 1:
                return
    except (ConnectionError, ssl.SSLError, TimeoutError) as exc:
        raise AssertionError(f"no reply, or a hang-up without one: {exc!r}") from exc
    finally:
        client.sock.close()
        new = smtp_target.errors.seen[errors_before:]
        assert new == [], f"errors logged: {new}"


def test_unknown_verb_is_echoed_printable(smtp_target: SmtpTarget) -> None:
    # Found by the fuzz target above: the verb came back raw, NUL and terminal escapes included.
    client = _Client(smtp_target)
    try:
        client.reply()
        client.sock.sendall(b"X\x00\x1b[2JY\r\n")
        reply = client.reply()
        assert all(_REPLY.match(line) for line in reply), reply
    finally:
        client.sock.close()


def test_starttls_inside_tls_is_refused(smtp_target: SmtpTarget) -> None:
    # Found by the fuzz target above. RFC 3207 §4: no STARTTLS once TLS is active (Postfix:
    # "554 5.5.1 Error: TLS already active"); accepted, it nested a handshake inside TLS, which
    # died without a reply.
    client = _Client(smtp_target)
    try:
        client.reply()
        client.sock.sendall(b"STARTTLS\r\n")
        assert client.reply()[-1].startswith(b"554 5.5.1")
        client.sock.sendall(b"NOOP\r\n")  # and the session goes on
        assert client.reply()[-1].startswith(b"250")
    finally:
        client.sock.close()
