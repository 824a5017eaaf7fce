"""One client connection: greeting, the pre-authentication phase, then the hand-off.

Before login every byte is bounded: a command (its lines and literals together) may not
exceed `max_preauth_line`, a literal announced beyond that is answered with BAD and the
connection closed *before* the client is invited to send it, each command must arrive
within `idle_timeout_seconds`, and a connection gets `max_preauth_commands` commands. A
connection's first `ID` may be as long as RFC 2971 allows (`mssgate.imap.idcmd`), no
longer. After login the session belongs to the mailbox engine and the front door only
relays bytes.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import ssl
from base64 import b64decode, b64encode
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, Protocol

from mssgate import metrics, sasl
from mssgate.bearer import BearerAuthenticator, BearerUnavailable
from mssgate.imap import idcmd
from mssgate.imap.backend import Backend, BackendUnavailable
from mssgate.imap.parse import Command, ParseError, literal_at_end, start_command, tokens
from mssgate.imap.relay import relay
from mssgate.logs import event
from mssgate.smtp.limits import AuthPenalty

log = logging.getLogger("mssgate.imap")


class Authenticator(Protocol):
    actor: str

    async def password(self, login: str, password: str, peer_ip: str) -> str | None: ...
    async def certificate(self, authzid: str | None, der: bytes, peer_ip: str) -> str | None: ...
    async def failed(self, login: str, mechanism: str, peer_ip: str) -> None: ...
    async def succeeded(self, identity: str, mechanism: str, peer_ip: str) -> None: ...


@dataclass(frozen=True)
class Limits:
    max_command: int
    idle_timeout: float
    max_commands: int


# How a closed conversation ends (`PreauthSession.run`): "close" quietly; "linger" after a
# `BYE`, then cut if the client goes on; "cut" at once (a refused literal).
Ending = Literal["close", "linger", "cut"]


class Closed(Exception):
    """The conversation is over (client gone, limit hit, logout): unwind quietly."""

    def __init__(self, reason: str, *, then: Ending = "close") -> None:
        super().__init__(reason)
        self.then = then


LINGER_SECONDS = 1.0


class PreauthSession:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        listener: str,
        tls_context: ssl.SSLContext,
        limits: Limits,
        authenticator: Authenticator,
        penalty: AuthPenalty,
        backend: Backend,
        bearer: BearerAuthenticator | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._listener = listener
        self._tls_context = tls_context
        self._limits = limits
        self._auth = authenticator
        self._penalty = penalty
        self._backend = backend
        self._bearer = bearer
        # ID's room beyond `max_command`, for the connection's first ID only: clients
        # identify themselves once, and a connection repeating 60 KB IDs would cost ten
        # times the parsing of any other.
        self._id_room = idcmd.MAX_WIRE
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("?", 0)
        self.peer_ip: str = str(peer[0])
        self._local_ip = str(local[0])

    # ------------------------------------------------------------------ state
    @property
    def _tls(self) -> ssl.SSLObject | None:
        obj = self._writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    def _client_cert(self) -> bytes | None:
        # With CERT_OPTIONAL a certificate is only there if it verified against our CA.
        obj = self._tls
        return obj.getpeercert(binary_form=True) if obj is not None else None

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID"]
        if self._tls is None:
            return " ".join([*caps, "STARTTLS", "LOGINDISABLED"])
        caps.append("AUTH=PLAIN")
        if self._client_cert():
            caps.append("AUTH=EXTERNAL")
        if self._bearer is not None:
            caps += [f"AUTH={name}" for name in sasl.MECHANISMS]
        return " ".join(caps)

    def _tls_up(self) -> None:
        obj = self._tls
        if obj is not None:
            metrics.tls_session(self._listener, obj.version())
            event(log, "imap.tls", listener=self._listener, peer=self.peer_ip,
                  version=obj.version(), cipher=(obj.cipher() or ("?",))[0])  # fmt: skip

    # ------------------------------------------------------------------ I/O
    async def _send(self, text: str) -> None:
        self._writer.write(text.encode("utf-8") + b"\r\n")
        await self._writer.drain()

    async def _bye(self, text: str, reason: str) -> Closed:
        event(log, "imap.reject", listener=self._listener, peer=self.peer_ip, reason=reason)
        with contextlib.suppress(OSError, ConnectionError):
            await self._send(f"* BYE {text}")
        return Closed(reason, then="linger")

    async def _line(self, budget: int, *, id_budget: int = 0) -> bytes:
        """One line of at most `budget` bytes, or `id_budget` when it opens an ID command.

        The stream holds one `max_preauth_line` at a time: a longer line is taken from it
        piece by piece, and cut as soon as it is longer than its command may be.
        """
        raw = bytearray()

        def over() -> bool:
            # The tag and the command name lie within the first `budget` bytes or nowhere.
            head = bytes(raw[:budget])
            if id_budget > 0 and idcmd.opens_id(head):
                return len(raw) > id_budget
            if id_budget > 0 and _opens_authenticate(head):  # SASL-IR: a token on the line
                return len(raw) > max(budget, sasl.MAX_LINE)
            return len(raw) > budget

        while True:
            try:
                raw += await self._reader.readuntil(b"\n")
                break
            except asyncio.IncompleteReadError:
                raise Closed("client closed") from None
            except asyncio.LimitOverrunError as exc:
                raw += await self._reader.readexactly(exc.consumed)
            if over():
                raise await self._bye("Command line too long", "line_too_long")
        if over():
            raise await self._bye("Command too long", "line_too_long")
        return bytes(raw).rstrip(b"\r\n")

    async def _read_command(self) -> tuple[str, str, list[bytes | None]]:
        budget = self._limits.max_command
        id_budget = budget + self._id_room
        line = await self._line(budget, id_budget=id_budget)
        text, literal = literal_at_end(line)
        try:
            tag, name, rest = start_command(text)
        except ParseError:
            if literal is not None:
                raise await self._bye("Malformed command", "malformed") from None
            return "*", "", []
        if name == "ID":
            budget = id_budget
            self._id_room = 0  # spent by the first ID, whatever comes of it
        budget -= len(line)
        args: list[bytes | None] = []
        while True:
            try:
                args += tokens(rest)
            except ParseError:
                if literal is not None:
                    raise await self._bye("Malformed command", "malformed") from None
                return tag, "", []
            if literal is None:
                return tag, name, args
            if name == "ID" and literal.size > idcmd.MAX_VALUE:
                with contextlib.suppress(OSError, ConnectionError):
                    await self._send(f"{tag} BAD {idcmd.LITERAL_TOO_BIG}")
                event(log, "imap.reject", listener=self._listener, peer=self.peer_ip,
                      reason="literal_too_big", size=literal.size)  # fmt: skip
                raise Closed("ID literal too big", then="cut")
            if literal.size > budget:
                # Refused before '+': a synchronizing client never sends it, and whatever a
                # non-synchronizing one sends dies with the connection, unread.
                with contextlib.suppress(OSError, ConnectionError):
                    await self._send(f"{tag} BAD Literal too big before login")
                event(log, "imap.reject", listener=self._listener, peer=self.peer_ip,
                      reason="literal_too_big", size=literal.size)  # fmt: skip
                raise Closed("literal too big", then="cut")
            if literal.synchronizing:
                await self._send("+ Ready for literal data")
            try:
                args.append(await self._reader.readexactly(literal.size))
            except asyncio.IncompleteReadError:
                raise Closed("client closed") from None
            budget -= literal.size
            line = await self._line(budget)
            budget -= len(line)
            rest, literal = literal_at_end(line)

    # ------------------------------------------------------------------ main
    async def run(self) -> None:
        try:
            self._tls_up()  # implicit TLS: the handshake is done before the first byte
            await self._send(f"* OK [CAPABILITY {self.capabilities()}] mssgate IMAP ready.")
            identity = await self._preauth()
            if identity is not None:
                await self._hand_off(*identity)
        except Closed as closed:
            if closed.then == "cut":
                # The client may be sending a literal it did not wait for: those bytes die
                # with the connection, unread. A TLS close would wait for the client's
                # close_notify, reading (to discard) all that comes first: uvloop's does.
                self._writer.transport.abort()
            elif closed.then == "linger":
                await self._linger()
        except (OSError, ConnectionError, ssl.SSLError):
            pass

    async def _linger(self) -> None:
        """After a `BYE`: drops what the client is still sending, at most one command's worth
        within LINGER_SECONDS, so that a client writing its command whole reads our answer;
        one still sending past that is cut rather than read on by the TLS close."""
        left = self._limits.max_command + idcmd.MAX_WIRE
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                while left > 0 and (data := await self._reader.read(min(left, 65536))):
                    left -= len(data)
        except (TimeoutError, OSError, ConnectionError, ssl.SSLError):
            return
        if left <= 0:
            self._writer.transport.abort()

    async def _preauth(self) -> tuple[str, Command] | None:
        for _ in range(self._limits.max_commands):
            try:
                tag, name, args = await asyncio.wait_for(
                    self._read_command(), self._limits.idle_timeout
                )
            except TimeoutError:
                raise await self._bye("Disconnected for inactivity", "idle_timeout") from None
            command = Command(tag, name, args)
            identity = await self._dispatch(command)
            if identity is not None:
                return identity, command
        raise await self._bye("Too many commands before login", "too_many_commands")

    async def _dispatch(self, cmd: Command) -> str | None:
        tag = cmd.tag
        if cmd.name == "CAPABILITY":
            await self._send(f"* CAPABILITY {self.capabilities()}")
            await self._send(f"{tag} OK Capability completed.")
        elif cmd.name == "NOOP":
            await self._send(f"{tag} OK NOOP completed.")
        elif cmd.name == "ID":
            problem = idcmd.id_problem(cmd.args)
            if problem is not None:
                await self._send(f"{tag} BAD {problem}")
                return None
            await self._send('* ID ("name" "mssgate")')
            await self._send(f"{tag} OK ID completed.")
        elif cmd.name == "LOGOUT":
            await self._send("* BYE Logging out")
            await self._send(f"{tag} OK Logout completed.")
            raise Closed("logout")
        elif cmd.name == "STARTTLS":
            await self._starttls(tag)
        elif cmd.name == "LOGIN":
            return await self._login(cmd)
        elif cmd.name == "AUTHENTICATE":
            return await self._authenticate(cmd)
        elif cmd.name == "":
            await self._send(f"{tag} BAD Error in IMAP command.")
        else:
            await self._send(f"{tag} BAD Command not valid before login.")
        return None

    async def _starttls(self, tag: str) -> None:
        if self._tls is not None:
            await self._send(f"{tag} BAD TLS is already active.")
            return
        if _buffered(self._reader):
            # Anything sent after STARTTLS but before the handshake would be read as if it
            # came over TLS (the STARTTLS injection class of bugs): refuse the connection.
            raise await self._bye("Pipelined data after STARTTLS", "starttls_injection")
        await self._send(f"{tag} OK Begin TLS negotiation now.")
        try:
            await asyncio.wait_for(
                self._writer.start_tls(self._tls_context), self._limits.idle_timeout
            )
        except (TimeoutError, ssl.SSLError, OSError, ConnectionError):
            raise Closed("TLS handshake failed") from None
        self._tls_up()

    # ------------------------------------------------------------------ auth
    async def _login(self, cmd: Command) -> str | None:
        if self._tls is None:
            await self._send("* BAD [ALERT] Plaintext authentication not allowed without TLS.")
            await self._send(f"{cmd.tag} NO [PRIVACYREQUIRED] Use STARTTLS first.")
            return None
        if len(cmd.args) != 2 or cmd.args[0] is None or cmd.args[1] is None:
            await self._send(f"{cmd.tag} BAD Expected: LOGIN user password.")
            return None
        login = _text(cmd.args[0])
        password = _text(cmd.args[1])
        return await self._check(
            cmd.tag, "LOGIN", login, self._auth.password(login, password, self.peer_ip)
        )

    async def _authenticate(self, cmd: Command) -> str | None:
        if not cmd.args or cmd.args[0] is None:
            await self._send(f"{cmd.tag} BAD Expected: AUTHENTICATE mechanism.")
            return None
        mechanism = cmd.args[0].decode("ascii", "replace").upper()
        if self._tls is None:
            await self._send(f"{cmd.tag} NO [PRIVACYREQUIRED] Use STARTTLS first.")
            return None
        bearer = mechanism in sasl.MECHANISMS and self._bearer is not None
        if mechanism not in ("PLAIN", "EXTERNAL") and not bearer:
            await self._send(f"{cmd.tag} NO Unsupported authentication mechanism.")
            return None
        blob = await self._sasl_response(cmd.args[1] if len(cmd.args) > 1 else None)
        if blob is None:
            await self._send(f"{cmd.tag} BAD Invalid or cancelled authentication.")
            return None
        if bearer:
            return await self._bearer_auth(cmd.tag, mechanism, blob)
        if mechanism == "PLAIN":
            parts = blob.split(b"\x00")
            if len(parts) != 3:
                await self._send(f"{cmd.tag} BAD Invalid PLAIN response.")
                return None
            authzid, login, password = (_text(p) for p in parts)
            if authzid and authzid != login:
                # No proxy authorization: one may only log in as oneself.
                return await self._check(cmd.tag, "PLAIN", login, _none())
            return await self._check(
                cmd.tag, "PLAIN", login, self._auth.password(login, password, self.peer_ip)
            )
        der = self._client_cert()
        authzid_text = _text(blob) or None
        if der is None:
            return await self._check(cmd.tag, "EXTERNAL", authzid_text or "", _none())
        return await self._check(
            cmd.tag,
            "EXTERNAL",
            authzid_text or "",
            self._auth.certificate(authzid_text, der, self.peer_ip),
        )

    async def _sasl_response(self, initial: bytes | None) -> bytes | None:
        if initial is None:
            await self._send("+ ")
            try:
                initial = await asyncio.wait_for(
                    self._line(max(self._limits.max_command, sasl.MAX_LINE)),
                    self._limits.idle_timeout,
                )
            except TimeoutError:
                raise await self._bye("Disconnected for inactivity", "idle_timeout") from None
        if initial == b"*":
            return None
        if initial == b"=":
            return b""
        try:
            return b64decode(initial, validate=True)
        except (binascii.Error, ValueError):
            return None

    async def _bearer_auth(self, tag: str, mechanism: str, blob: bytes) -> str | None:
        bearer = self._bearer
        assert bearer is not None
        response = sasl.parse(mechanism, blob)
        attempt = bearer.identity(response, self.peer_ip) if response is not None else _none()
        login = (response.authzid if response is not None else None) or ""
        # RFC 7628 3.2.2: a failed OAUTHBEARER gets the error document, the client answers
        # with a lone \x01, then comes the NO.
        challenge = bearer.challenge if mechanism == sasl.OAUTHBEARER else None
        try:
            return await self._check(tag, mechanism, login, attempt, challenge=challenge)
        except BearerUnavailable:
            # The provider is down: no penalty, and the client may try again later.
            await self._send(f"{tag} NO [UNAVAILABLE] Authentication temporarily unavailable.")
            return None

    async def _check(
        self,
        tag: str,
        mechanism: str,
        login: str,
        attempt: Awaitable[str | None],
        *,
        challenge: bytes | None = None,
    ) -> str | None:
        delay = self._penalty.delay_for(self.peer_ip)
        if delay:
            await asyncio.sleep(delay)
        identity = await attempt
        if identity is None:
            failures = self._penalty.failed(self.peer_ip)
            event(log, "imap.auth_failed", listener=self._listener, peer=self.peer_ip,
                  mechanism=mechanism, failures=failures, delay=delay)  # fmt: skip
            await self._auth.failed(login, mechanism, self.peer_ip)
            if challenge is not None:
                await self._send("+ " + b64encode(challenge).decode("ascii"))
                with contextlib.suppress(TimeoutError):  # silent or not, the answer is NO
                    await asyncio.wait_for(
                        self._line(self._limits.max_command), self._limits.idle_timeout
                    )
            await self._send(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.")
            return None
        self._penalty.succeeded(self.peer_ip)
        await self._auth.succeeded(identity, mechanism, self.peer_ip)
        event(log, "imap.auth", listener=self._listener, peer=self.peer_ip, mechanism=mechanism)
        return identity

    # ------------------------------------------------------------------ after login
    async def _hand_off(self, identity: str, command: Command) -> None:
        try:
            session = await self._backend.open(
                identity, peer_ip=self.peer_ip, local_ip=self._local_ip
            )
        except BackendUnavailable:
            event(log, "imap.backend_unavailable", level=logging.WARNING,
                  listener=self._listener, peer=self.peer_ip)  # fmt: skip
            await self._send(f"{command.tag} NO [UNAVAILABLE] Mailbox temporarily unavailable.")
            raise Closed("backend unavailable") from None
        try:
            # The engine's capabilities, so that the client sees one coherent server.
            await self._send(f"{command.tag} OK [CAPABILITY {session.capabilities}] Logged in")
            up, down = await relay(self._reader, self._writer, session)
        finally:
            await session.close()
        event(log, "imap.closed", listener=self._listener, peer=self.peer_ip,
              bytes_in=up, bytes_out=down)  # fmt: skip


async def _none() -> str | None:
    return None


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


def _opens_authenticate(line: bytes) -> bool:
    parts = line.split(b" ", 2)
    return len(parts) == 3 and parts[1].upper() == b"AUTHENTICATE"


def _buffered(reader: asyncio.StreamReader) -> bool:
    # StreamReader has no public way to ask; its buffer is a stable CPython attribute.
    buffer = getattr(reader, "_buffer", b"")
    return bool(buffer)
