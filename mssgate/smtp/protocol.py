"""Our aiosmtpd subclass: the SMTP wire protocol with the product's rules.

aiosmtpd keeps the parts it does well (STARTTLS machinery, EHLO, MAIL/RCPT argument parsing,
the AUTH exchange). We replace:
- the command loop: CRLF-only lines, bounded length, a budget of commands before AUTH, one
  log event per failure instead of tracebacks, implicit TLS done here so that a failed
  handshake is logged like any other;
- DATA: read in chunks through the sans-I/O `DataParser` (strict line ends, limits while
  reading) instead of one await per line;
- the AUTH checks: password hashing runs off the event loop, with a penalty per address;
  SASL EXTERNAL accepts a client certificate registered for the address;
- every final reply carries an enhanced status code (RFC 2034/3463).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import ssl
from asyncio import sslproto
from base64 import b64decode
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, cast

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    TLSSetupException,
    auth_mechanism,
)

from mssgate import metrics, sasl
from mssgate.bearer import BearerAuthenticator, BearerUnavailable
from mssgate.logs import event
from mssgate.smtp import replies
from mssgate.smtp.body import MessageBody
from mssgate.smtp.data import DataError, DataParser
from mssgate.smtp.dsnparams import (
    MAIL_KEYS,
    RCPT_KEYS,
    DsnSyntaxError,
    MessageDsn,
    RecipientDsn,
    parse_mail,
    parse_rcpt,
    split_params,
)
from mssgate.smtp.limits import AuthPenalty, ConnectionLimiter

log = logging.getLogger("mssgate.smtp")

COMMAND_LINE_LIMIT = 512 + 26 + 10  # RFC 5321 4.5.3.1.4, plus SIZE= and SMTPUTF8 (RFC 1870)
ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "EHLO", "HELO", "STARTTLS", "QUIT", "RSET"})
ALLOWED_BEFORE_AUTH = frozenset({"NOOP", "EHLO", "HELO", "STARTTLS", "QUIT", "RSET", "AUTH"})
# Protocol errors logged per session: enough to diagnose a client, too few for one session to
# flood the log (after AUTH nothing else bounds how many bad commands it may send).
PROTOCOL_ERRORS_LOGGED = 20
EXCERPT_BYTES = 32


def excerpt(raw: bytes) -> str:
    """The first bytes a client sent, for a log line: printable ASCII kept, the rest (and the
    backslash) as \\xNN, so that no control byte or terminal escape reaches the log.

    Arguments are kept only after an SMTP verb that carries no secret: AUTH's is a credential,
    and an unknown verb may be another protocol's login (a POP3 client's "PASS ...")."""
    verb, space, _ = raw.partition(b" ")
    if verb.strip().upper() not in _VERBS_WITH_PUBLIC_ARGUMENTS:
        raw = verb + space + (b"..." if space else b"")
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in raw[:EXCERPT_BYTES]
    )


_VERBS_WITH_PUBLIC_ARGUMENTS = frozenset(
    {b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY", b"EXPN"}
    | {b"HELP", b"STARTTLS", b"BDAT"}
)


class Authenticator(Protocol):
    async def password(self, login: str, password: str, peer_ip: str) -> str | None:
        """The identity (address) if the credentials are right, else None."""
        ...

    async def certificate(self, authzid: str | None, der: bytes, peer_ip: str) -> str | None:
        """The identity if the client certificate is registered for it, else None."""
        ...

    async def failed(self, login: str, mechanism: str, peer_ip: str) -> None: ...


class GatewayEnvelope(Envelope):
    """aiosmtpd's envelope, plus the queue id its transaction got when MAIL was accepted.

    aiosmtpd makes a new envelope after RSET, HELO/EHLO and DATA: the id goes with it, so
    that each transaction has its own and nothing carries over to the next.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queue_id: str | None = None
        # RFC 3461: MAIL FROM's RET/ENVID and each accepted recipient's NOTIFY/ORCPT.
        self.dsn = MessageDsn()
        self.rcpt_dsn: dict[str, RecipientDsn] = {}


class _PartLimit:
    def __init__(self, local_part_limit: int) -> None:
        self.local_part_limit = local_part_limit


@functools.lru_cache(maxsize=1024)
def _address(arg: str, local_part_limit: int) -> tuple[str | None, str | None]:
    # aiosmtpd's parse reads only the local-part limit from its server.
    return SMTP._getaddr(cast(SMTP, _PartLimit(local_part_limit)), arg)


class GatewaySMTP(SMTP):
    # Sized for DATA chunks; command lines are bounded separately (COMMAND_LINE_LIMIT).
    line_length_limit = 65536

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parse, its answers kept: a MAIL or RCPT argument is parsed
        twice (DSN parameters, then aiosmtpd) with the stdlib's header-value parser, 6.5 %
        of the GIL-held samples of a 20-session 64 KB run, and clients send the same ones."""
        return _address(arg, self.local_part_limit)

    def __init__(
        self,
        handler: Any,
        *,
        listener: str,
        implicit_tls: bool,
        limiter: ConnectionLimiter,
        penalty: AuthPenalty,
        authenticator: Authenticator | None,
        max_line: int,
        max_commands_before_auth: int,
        on_open: Callable[[GatewaySMTP], None],
        on_close: Callable[[GatewaySMTP], None],
        bearer: BearerAuthenticator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, ident="mssgate ESMTP", **kwargs)
        self.listener = listener
        self._implicit_tls = implicit_tls
        self._limiter = limiter
        self._penalty = penalty
        self._auth = authenticator
        self._max_line = max_line
        self._max_before_auth = max_commands_before_auth
        self._on_open = on_open
        self._on_close = on_close
        self._peer_ip = "?"
        # Names the session in every log line and in the audit row of a refused message.
        self.session_id = secrets.token_hex(6)
        self._admitted = False
        self._opened = False
        self._in_ehlo = False
        self._protocol_errors = 0
        # The command line being answered, and whether anything logged about it yet: a
        # refusal no other line explains (aiosmtpd's own 501/503/552...) gets one of its own.
        self._command_line: bytes | None = None
        self._command_logged = False
        self.busy = False  # in the middle of a transaction (between MAIL and its reply)
        # DATA: the message being handled, and where a large one is kept while it arrives.
        self.body: MessageBody | None = None
        self.spill_dir: Path | None = None
        self.spill_threshold = 1 << 20
        self._bearer = bearer
        if authenticator is None:
            self._auth_methods.clear()
        elif bearer is None:  # no [oidc]: the token mechanisms are neither offered nor taken
            for name in sasl.MECHANISMS:
                self._auth_methods.pop(name, None)

    # ----------------------------------------------------------------- connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        if first:
            peer = transport.get_extra_info("peername")
            self._peer_ip = str(peer[0]) if peer else "?"
            if not self._limiter.acquire(self._peer_ip):
                self._event("smtp.refused", reason="too many connections")
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(f"{replies.TOO_MANY_CONNECTIONS}\r\n".encode())
                transport.close()
                return
            self._admitted = True
            self._opened = True
            self._on_open(self)
            event(
                log,
                "smtp.connect",
                listener=self.listener,
                peer=self._peer_ip,
                session=self.session_id,
            )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._opened:
            return
        self._release()
        self._opened = False
        super().connection_lost(error)

    def _release(self) -> None:
        """Gives back the connection's slot, once.

        Also called when a TLS handshake fails: asyncio's SSL layer then never tells the
        application protocol that the connection is gone, and without this every failed
        handshake (a TLS scan makes hundreds) would hold a slot of the per-address limit
        for ever.
        """
        if not self._admitted:
            return
        self._admitted = False
        self._limiter.release(self._peer_ip)
        self._on_close(self)
        self._event("smtp.disconnect")
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def eof_received(self) -> bool | None:
        if not self._admitted:
            return False
        return super().eof_received()

    def _create_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()

    @property
    def queue_id(self) -> str | None:
        """The open transaction's queue id (None outside a transaction)."""
        envelope = self.envelope
        return envelope.queue_id if isinstance(envelope, GatewayEnvelope) else None

    def _event(self, name: str, *, level: int = logging.INFO, **fields: object) -> None:
        self._command_logged = True
        # Inside a transaction the queue id links the line to the message's other lines.
        if self.queue_id is not None:
            fields.setdefault("queue_id", self.queue_id)
        event(
            log,
            name,
            level=level,
            listener=self.listener,
            peer=self._peer_ip,
            session=self.session_id,
            **fields,
        )

    @property
    def peer_ip(self) -> str:
        return self._peer_ip

    def tls_object(self) -> ssl.SSLObject | None:
        if self.session is None or not self.session.ssl:
            return None
        obj = self.session.ssl.get("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    def close(self, reason: str) -> None:
        self._event("smtp.close", reason=reason)
        if self.transport is not None:
            self.transport.close()

    def _timeout_cb(self) -> None:
        if self.transport is not None and isinstance(self.transport, asyncio.WriteTransport):
            self.transport.write(f"{replies.IDLE_TIMEOUT}\r\n".encode())
        self.close("idle timeout")

    # ------------------------------------------------------------------- replies
    async def push(self, status: Any) -> None:
        line = status.encode("ascii") if isinstance(status, str) else bytes(status)
        refusal = line[:1] in (b"4", b"5")
        if refusal and self._command_line is not None and not self._command_logged:
            code = line[:3].decode("ascii", "replace")
            self._protocol_error("refused", self._command_line, status=code)
        if not self._in_ehlo:
            line = replies.with_enhanced_status(line)
        self._writer.write(line + b"\r\n")
        await self._writer.drain()

    async def reply(self, reply: replies.Reply) -> None:
        await self.push(str(reply))

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True  # RFC 2034: EHLO replies carry no enhanced status
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_ehlo = False

    # ------------------------------------------------------------------ TLS
    async def _implicit_handshake(self) -> bool:
        """SMTPS: TLS first, through the same path as STARTTLS, so failures are ours to log."""
        assert self.tls_context is not None and self.transport is not None
        waiter = self.loop.create_future()
        self._tls_protocol = sslproto.SSLProtocol(
            self.loop, self, self.tls_context, waiter, server_side=True
        )
        self._original_transport = self.transport
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        try:
            await asyncio.wait_for(waiter, timeout=self._timeout_duration)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log_tls_failure(exc)
            self.close("tls handshake failed")
            self._release()
            return False
        self._log_tls()
        return True

    def _log_tls_failure(self, exc: BaseException) -> None:
        cause = exc.__cause__ or exc
        self._event("smtp.tls_failed", error=f"{type(cause).__name__}: {cause}"[:200])

    def _log_tls(self) -> None:
        obj = self.tls_object()
        if obj is not None:
            metrics.tls_session(self.listener, obj.version())
            self._event("smtp.tls", version=obj.version(), cipher=(obj.cipher() or ("?",))[0])

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            # RFC 3207 4.2: never a second handshake inside TLS (it would nest, then die).
            await self.reply(replies.TLS_ALREADY_ACTIVE)
            return
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException as exc:
            self._log_tls_failure(exc)
            self.close("tls handshake failed")
            if self._original_transport is not None:
                self._original_transport.close()
            self._release()
            raise
        self._log_tls()  # logs nothing when no handshake happened (a 501 or 454 reply)

    # -------------------------------------------------------------- command loop
    def _protocol_error(self, reason: str, raw: bytes, **fields: object) -> None:
        """One log line per refused command line; never the line itself, only its start."""
        self._protocol_errors += 1
        if self._protocol_errors > PROTOCOL_ERRORS_LOGGED:
            return
        if self._protocol_errors == PROTOCOL_ERRORS_LOGGED:
            fields["further_errors_not_logged"] = True
        fields.setdefault("length", len(raw))  # an oversized line gives its own: raw is cut
        self._event(
            "smtp.protocol_error",
            level=logging.WARNING,
            reason=reason,
            excerpt=excerpt(raw),
            **fields,
        )

    async def _read_command(self) -> bytes | None:
        """One command line, or None after replying to an oversized one."""
        try:
            return await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            # Drain the oversized line, keeping only its start (for the log line).
            start = await self._reader.readexactly(exc.consumed)
            length = len(start)
            while True:
                try:
                    end = await self._reader.readuntil(b"\n")
                    length += len(end) - (2 if end.endswith(b"\r\n") else 1)  # as for others
                    break
                except asyncio.LimitOverrunError as more:
                    length += len(await self._reader.readexactly(more.consumed))
            self._protocol_error("command too long", start[:EXCERPT_BYTES], length=length)
            await self.reply(replies.COMMAND_TOO_LONG)
            return None

    async def _handle_client(self) -> None:
        assert self.session is not None
        if self._implicit_tls and not await self._implicit_handshake():
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        before_auth = 0
        while self.transport is not None:
            try:
                raw = await self._read_command()
                if raw is None:
                    continue
                self._command_line, self._command_logged = raw.rstrip(b"\r\n"), False
                if not raw.endswith(b"\r\n") or b"\r" in raw[:-2]:
                    # What follows a bare newline may be a smuggled command: stop reading.
                    self._protocol_error("bare newline in command", raw)
                    await self.reply(replies.BARE_NEWLINE_COMMAND)
                    self.close("bare newline in command")
                    return
                line = raw[:-2]
                # AUTH may carry an initial response (a bearer token) on its line.
                is_auth = line[:5].upper() == b"AUTH "
                if len(line) > (sasl.MAX_LINE if is_auth else COMMAND_LINE_LIMIT):
                    self._protocol_error("command too long", line)
                    await self.reply(replies.COMMAND_TOO_LONG)
                    continue
                verb_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    verb = verb_bytes.upper().decode("ascii")
                    arg = arg_bytes.strip().decode("ascii") or None
                except UnicodeDecodeError:
                    self._protocol_error("non-ASCII command", line)
                    await self.push("500 5.5.2 Commands and arguments must be ASCII")
                    continue
                starttls_missing = self.require_starttls and not self._tls_protocol
                if starttls_missing and verb not in ALLOWED_BEFORE_STARTTLS:
                    await self.reply(replies.STARTTLS_FIRST)
                    continue
                if self._auth is not None and not self.session.authenticated:
                    before_auth += 1
                    if before_auth > self._max_before_auth:
                        await self.reply(replies.TOO_MANY_COMMANDS)
                        self.close("too many commands before auth")
                        return
                method = self._smtp_methods.get(verb)
                if method is None:
                    # Echoed into a reply: control bytes (a terminal escape, a NUL) are not.
                    shown = "".join(c if " " <= c <= "~" else "?" for c in verb[:16])
                    self._protocol_error("unknown command", line)
                    await self.push(f'500 5.5.1 Command "{shown}" not recognized')
                    continue
                self._reset_timeout()
                await method(arg)
            except TLSSetupException:
                return
            except (asyncio.CancelledError, ConnectionResetError, asyncio.IncompleteReadError):
                if self._writer is not None:
                    self._writer.close()
                return
            except Exception as exc:
                self._event(
                    "smtp.error", level=logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300]
                )
                log.debug("smtp exception", exc_info=True)
                self.busy = False
                try:
                    await self.reply(replies.TEMPORARY_FAILURE)
                except Exception:
                    return

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        # The policy's hooks log their own refusals (smtp.reject, with the reason).
        self._command_logged = True
        return await super()._call_handler_hook(command, *args)

    # ---------------------------------------------------------------- commands
    async def _dsn_syntax_error(self, exc: DsnSyntaxError) -> None:
        self._protocol_error("DSN parameter", self._command_line or b"", detail=str(exc))
        await self.push(f"501 5.5.4 {exc}")

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.busy = True
        try:
            try:
                arg, params = dsn_params(self, arg, "FROM:", MAIL_KEYS)
                dsn = parse_mail(params)
            except DsnSyntaxError as exc:
                await self._dsn_syntax_error(exc)
                return
            had_sender = self.envelope is not None and bool(self.envelope.mail_from)
            await super().smtp_MAIL(arg)
            envelope = self.envelope
            if not had_sender and isinstance(envelope, GatewayEnvelope) and envelope.mail_from:
                envelope.dsn = dsn
        finally:
            if self.envelope is None or not self.envelope.mail_from:
                self.busy = False

    async def smtp_RSET(self, arg: str) -> None:
        self.busy = False
        await super().smtp_RSET(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        # A source route (<@relay:user@host>) is a relay request, whatever aiosmtpd's parser
        # would make of it (RFC 5321 C: routes are obsolete and must not be relied on).
        if arg is not None:
            rest = arg[3:].lstrip() if arg[:3].upper() == "TO:" else arg
            if rest.startswith("<@"):
                reply = replies.RELAY_DENIED
                self._event("smtp.reject", stage="RCPT", code=reply.code, status=reply.status,
                            reason="source route")  # fmt: skip
                await self.reply(reply)
                return
        try:
            arg, params = dsn_params(self, arg, "TO:", RCPT_KEYS)
            dsn = parse_rcpt(params)
        except DsnSyntaxError as exc:
            await self._dsn_syntax_error(exc)
            return
        envelope = self.envelope
        before = len(envelope.rcpt_tos) if envelope is not None else 0
        await super().smtp_RCPT(arg)
        # The policy adds a recipient once (a repeat of it is accepted, not added again).
        if isinstance(envelope, GatewayEnvelope) and len(envelope.rcpt_tos) > before:
            envelope.rcpt_dsn[envelope.rcpt_tos[-1]] = dsn

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = MessageBody(spill_threshold=self.spill_threshold, spill_dir=self.spill_dir)
        try:
            parser = DataParser(
                max_size=self.data_size_limit or 2**31, max_line=self._max_line, body=body
            )
            while not parser.done:
                chunk = await self._reader.read(65536)
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", None)
                used = parser.feed(chunk)
                if used < len(chunk):
                    # Pipelined commands after the final dot go back to the reader (RFC 2920).
                    self._reader._buffer[0:0] = chunk[used:]  # type: ignore[attr-defined]
            self._reset_timeout()
            if parser.error is not None:
                await self._data_failed(parser.error)
                return
            # The handler takes the body from here (it may be a file: see MessageBody).
            self.body = body
            status = await self._call_handler_hook("DATA")
        finally:
            self.body = None
            body.close()
        self.envelope = self._create_envelope()
        self.busy = False
        await self.push(str(status))

    async def _data_failed(self, error: DataError) -> None:
        self._event("smtp.reject", stage="DATA", reason=error.value)
        self.envelope = self._create_envelope()
        self.busy = False
        if error is DataError.TOO_BIG:
            await self.reply(replies.MESSAGE_TOO_BIG)
        elif error is DataError.LINE_TOO_LONG:
            await self.reply(replies.LINE_TOO_LONG)
        else:
            # Like Postfix's smtpd_forbid_bare_newline: answer, then close, so that nothing
            # the client sends next is read as commands.
            await self.reply(replies.BARE_NEWLINE_DATA)
            self.close("bare newline in data")

    # -------------------------------------------------------------------- AUTH
    async def _check(
        self, mechanism: str, login: str, attempt: Callable[[], Awaitable[str | None]]
    ) -> AuthResult:
        assert self._auth is not None
        delay = await self._penalty.wait_for(self._peer_ip)
        if delay:
            await asyncio.sleep(delay)
        identity = await attempt()
        if identity is None:
            failures = await self._penalty.failure(self._peer_ip)
            # `delay` is the penalty this attempt waited: the log shows the penalty applied,
            # whatever the machine's load added to it.
            self._event("smtp.auth_failed", mechanism=mechanism, failures=failures, delay=delay)
            await self._auth.failed(login, mechanism, self._peer_ip)
            return AuthResult(success=False, handled=False)
        await self._penalty.success(self._peer_ip)
        self._event("smtp.auth", mechanism=mechanism)
        return AuthResult(success=True, auth_data=identity)

    async def _credentials(self, args: list[str], prompt: bytes | str) -> bytes | None:
        if len(args) == 1:
            blob = await self.challenge_auth(prompt)
            return blob if isinstance(blob, bytes) else None
        try:
            return b64decode(args[1].encode(), validate=True)
        except ValueError:
            await self.push("501 5.5.2 Cannot decode base64")
            return None

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        blob = await self._credentials(args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Cannot split AUTH PLAIN value")
            return AuthResult(success=False, handled=True)
        return await self._password("PLAIN", LoginPassword(parts[1], parts[2]))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        login = await self._credentials(args, self.AuthLoginUsernameChallenge)
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._password("LOGIN", LoginPassword(login, password))

    async def _password(self, mechanism: str, creds: LoginPassword) -> AuthResult:
        assert self._auth is not None
        auth = self._auth
        try:
            login = creds.login.decode("utf-8")
            password = creds.password.decode("utf-8")
        except UnicodeDecodeError:
            login, password = "", ""
        return await self._check(
            mechanism, login, lambda: auth.password(login, password, self._peer_ip)
        )

    @auth_mechanism("EXTERNAL")
    async def auth_EXTERNAL(self, _: Any, args: list[str]) -> AuthResult:
        assert self._auth is not None
        auth = self._auth
        obj = self.tls_object()
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        authzid: str | None = None
        if len(args) == 2 and args[1] != "=":
            try:
                authzid = b64decode(args[1].encode(), validate=True).decode("utf-8")
            except ValueError:
                await self.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        if der is None:
            return await self._check("EXTERNAL", authzid or "", _none)
        return await self._check(
            "EXTERNAL", authzid or "", lambda: auth.certificate(authzid, der, self._peer_ip)
        )

    async def auth_OAUTHBEARER(self, _: Any, args: list[str]) -> AuthResult:
        return await self._bearer_auth(sasl.OAUTHBEARER, args)

    async def auth_XOAUTH2(self, _: Any, args: list[str]) -> AuthResult:
        return await self._bearer_auth(sasl.XOAUTH2, args)

    async def _bearer_auth(self, mechanism: str, args: list[str]) -> AuthResult:
        bearer = self._bearer
        assert bearer is not None
        blob = await self._credentials(args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        response = sasl.parse(mechanism, blob)
        if response is None:
            result = await self._check(mechanism, "", _none)
        else:
            presented = response
            try:
                result = await self._check(
                    mechanism,
                    response.authzid or "",
                    lambda: bearer.identity(presented, self._peer_ip),
                )
            except BearerUnavailable:
                # The provider is down: no penalty, and the client may try again later.
                await self.push("454 4.7.0 Temporary authentication failure")
                return AuthResult(success=False, handled=True)
        if result.success or mechanism != sasl.OAUTHBEARER:
            return result
        # RFC 7628 3.2.2: the error document, the client's lone \x01, then the 535.
        if await self.challenge_auth(bearer.challenge) is MISSING:
            return AuthResult(success=False, handled=True)
        return result


async def _none() -> None:
    return None


def dsn_params(
    server: SMTP, arg: str | None, keyword: str, keys: frozenset[str]
) -> tuple[str | None, dict[str, str]]:
    """`arg` of `server`'s MAIL or RCPT without its DSN parameters, and those parameters
    (values as sent: aiosmtpd upper-cases what it parses, and ENVID/ORCPT are case-sensitive).
    Raises DsnSyntaxError. Left to aiosmtpd when the line is not one it would read. Also the
    node link's (mssgate.nodelink), which carries them to a mailbox's home node."""
    if arg is None or server.session is None or not server.session.extended_smtp:
        return arg, {}
    rest = server._strip_command_keyword(keyword, arg)
    if rest is None:
        return arg, {}
    address, params = server._getaddr(rest)
    if address is None or not params:
        return arg, {}
    ours, others = split_params(params.split(), keys)
    if not ours:
        return arg, {}
    head = arg[: len(arg) - len(params)].rstrip()
    return " ".join([head, *others]), ours
