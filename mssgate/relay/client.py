"""An SMTP client for one job: hand one message to a peer operator's gateway, over verified
mutual TLS, and say what happened to each recipient.

Written on asyncio streams rather than with aiosmtplib: RFC 5321 4.5.3.2 gives each stage its
own timeout (aiosmtplib has one for all), we need every RCPT reply rather than an exception
when some are refused, the STARTTLS server name must be overridable for loopback tests, and a
plaintext-injection check before the handshake needs the stream in hand. It is also one
dependency fewer in a process that holds the operator's keys.

Strictness, on purpose: never a byte of the envelope before TLS is up and verified; no
PIPELINING (one command, one reply), no SMTPUTF8, no AUTH (peers know us by certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from mssgate.config import RelayConfig
from mssgate.smtp.dsnparams import MessageDsn, RecipientDsn, dsn_mail_options, dsn_rcpt_options

# RFC 5321 4.5.3.1.5 caps a reply line at 512 octets; leave room for sloppy servers but
# never let a hostile one make us buffer without end.
_LINE_LIMIT = 4096
_MAX_REPLY_LINES = 100
_CHUNK = 64 * 1024
_QUIT_TIMEOUT = 30.0
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)
# An address goes between angle brackets on a command line: anything that could end the
# bracket, the line or the parameter list is refused before it reaches the wire.
_ADDRESS = re.compile(r"[!#-;=?A-~]{1,64}@[A-Za-z0-9.\-\[\]:]{1,253}")


class Outcome(Enum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class RecipientOutcome:
    recipient: str
    outcome: Outcome
    # The server's reply code, or None when no reply decided (refused connection, TLS, timeout).
    code: int | None
    # RFC 3463 enhanced status: the server's own when it gave one, else derived from the code.
    status: str
    # The server's reply ("550 5.1.1 no such user"), or our description of what went wrong.
    reply: str
    remote_mta: str
    # The peer offers DSN (RFC 3461) and was passed the recipient's NOTIFY/ORCPT: reporting
    # its delivery is the peer's from here (else a requested success is reported "relayed").
    peer_dsn: bool = False

    @property
    def from_server(self) -> bool:
        return self.code is not None


@dataclass(frozen=True)
class Timeouts:
    """Seconds, per RFC 5321 4.5.3.2 (the defaults of RelayConfig are the RFC's values)."""

    connect: float = 60.0
    greeting: float = 300.0
    command: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    data_end: float = 600.0

    @classmethod
    def from_config(cls, config: RelayConfig) -> Timeouts:
        return cls(
            connect=config.connect_timeout_seconds,
            greeting=config.greeting_timeout_seconds,
            command=config.command_timeout_seconds,
            rcpt=config.rcpt_timeout_seconds,
            data_init=config.data_init_timeout_seconds,
            data_block=config.data_block_timeout_seconds,
            data_end=config.data_end_timeout_seconds,
        )


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.code} {' '.join(self.lines)}".strip()

    @property
    def status(self) -> str:
        first = self.lines[0] if self.lines else ""
        found = _ENHANCED.match(first)
        if found is not None and found.group(1) == str(self.code)[0]:
            return f"{found.group(1)}.{found.group(2)}.{found.group(3)}"
        return f"{str(self.code)[0]}.0.0"


class SessionFailed(Exception):
    """The session cannot go on; every recipient not yet decided gets this outcome."""

    def __init__(self, text: str, *, status: str, reply: Reply | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.status = status
        self.reply = reply

    @property
    def permanent(self) -> bool:
        return self.status.startswith("5")

    def outcome(self, recipient: str, remote_mta: str) -> RecipientOutcome:
        return RecipientOutcome(
            recipient=recipient,
            outcome=Outcome.PERMANENT if self.permanent else Outcome.TEMPORARY,
            code=self.reply.code if self.reply is not None else None,
            status=self.status,
            reply=str(self.reply) if self.reply is not None else self.text,
            remote_mta=remote_mta,
        )


def _from_reply(reply: Reply, stage: str) -> SessionFailed:
    # Only a 5xx is the server's final word; anything unexpected (a 3xx to MAIL, a 2xx to
    # DATA) is a broken conversation, worth another try later rather than a bounce.
    if 400 <= reply.code < 600:
        return SessionFailed(f"{stage}: {reply}", status=reply.status, reply=reply)
    return SessionFailed(f"{stage}: unexpected reply {reply}", status="4.5.0", reply=reply)


def _temporary(stage: str, what: str, status: str = "4.4.2") -> SessionFailed:
    return SessionFailed(f"{stage}: {what}", status=status)


def check_address(address: str, *, allow_null: bool = False) -> None:
    if address == "" and allow_null:
        return
    if len(address) > 254 or not _ADDRESS.fullmatch(address):
        raise SessionFailed(f"address {address!r} cannot be sent", status="5.1.3")


def wire_data(content: bytes) -> bytes:
    """The DATA payload: CRLF line ends (signatures are computed over the canonical CRLF form
    anyway), dot-stuffed (RFC 5321 4.5.2), and the terminating dot line."""
    data = _LINE_END.sub(b"\r\n", content)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LEADING_DOT.sub(b"..", data) + b".\r\n"


class SmtpSession:
    """One connection, from the greeting to QUIT. Build it with `open`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        remote_mta: str,
        timeouts: Timeouts,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.remote_mta = remote_mta
        self._timeouts = timeouts
        self.extensions: dict[str, str] = {}
        self.peer_certificate: bytes | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext,
        helo_name: str,
        timeouts: Timeouts,
        tls_server_name: str | None = None,
    ) -> SmtpSession:
        """Connects, EHLO, STARTTLS (the peer's certificate verified by `tls`), EHLO again.

        Raises SessionFailed (temporary: the message is not the problem) on any failure.
        """
        try:
            async with asyncio.timeout(timeouts.connect):
                reader, writer = await asyncio.open_connection(host, port, limit=_LINE_LIMIT)
        except TimeoutError:
            raise _temporary("connect", f"{host}:{port} did not answer", "4.4.1") from None
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            raise _temporary("connect", f"{host}:{port}: {reason}", "4.4.1") from None
        session = cls(reader, writer, remote_mta=host, timeouts=timeouts)
        try:
            await session._handshake(helo_name, tls, tls_server_name or host)
        except BaseException:
            session.abort()
            raise
        return session

    async def _handshake(self, helo_name: str, tls: ssl.SSLContext, server_name: str) -> None:
        greeting = await self._reply("greeting", self._timeouts.greeting)
        if greeting.code != 220:
            # Even a 554 greeting is about the session, not this message: retry, and let
            # the give-up clock bounce it if the peer never takes mail again.
            raise _temporary("greeting", str(greeting), "4.4.2")
        await self._ehlo(helo_name)
        if "STARTTLS" not in self.extensions:
            raise _temporary("ehlo", "the peer does not offer STARTTLS", "4.7.4")
        reply = await self._command("STARTTLS", "starttls", self._timeouts.command)
        if reply.code != 220:
            raise _temporary("starttls", str(reply), "4.7.4")
        # Bytes already buffered were sent in clear after the 220: reading them as if they
        # came inside TLS is the STARTTLS command injection of CVE-2011-0411.
        if getattr(self._reader, "_buffer", b""):
            raise _temporary("starttls", "plaintext received after the 220 reply", "4.7.0")
        try:
            async with asyncio.timeout(self._timeouts.command):
                await self._writer.start_tls(tls, server_hostname=server_name)
        except ssl.SSLCertVerificationError as exc:
            why = exc.verify_message or str(exc)
            raise _temporary("tls", f"TLS verification failed: {why}", "4.7.5") from None
        except TimeoutError:
            raise _temporary("tls", "TLS handshake timed out", "4.7.5") from None
        except (ssl.SSLError, OSError) as exc:
            raise _temporary("tls", f"TLS handshake failed: {exc}", "4.7.5") from None
        ssl_object = self._writer.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            self.peer_certificate = ssl_object.getpeercert(binary_form=True)
        # RFC 3207 4.2: everything learnt before TLS is forgotten.
        self.extensions = {}
        await self._ehlo(helo_name)

    async def _ehlo(self, helo_name: str) -> None:
        reply = await self._command(f"EHLO {helo_name}", "ehlo", self._timeouts.command)
        if reply.code != 250:
            raise _temporary("ehlo", str(reply), "4.5.0")
        extensions = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.partition(" ")
            extensions[keyword.upper()] = params.strip()
        self.extensions = extensions

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        content: bytes,
        *,
        dsn: MessageDsn | None = None,
        rcpt_dsn: Mapping[str, RecipientDsn] | None = None,
    ) -> list[RecipientOutcome]:
        """MAIL, RCPT for each recipient, DATA. Never raises for a session failure: every
        recipient gets an outcome (transport failures make the undecided ones temporary).
        `dsn`, `rcpt_dsn`: RFC 3461 parameters, sent when the peer offers DSN."""
        decided: dict[str, RecipientOutcome] = {}
        try:
            await self._transaction(
                sender, recipients, content, decided, dsn or MessageDsn(), rcpt_dsn or {}
            )
        except SessionFailed as exc:
            for rcpt in recipients:
                if rcpt not in decided:
                    decided[rcpt] = exc.outcome(rcpt, self.remote_mta)
        return [decided[r] for r in recipients]

    async def _transaction(
        self,
        sender: str,
        recipients: Sequence[str],
        content: bytes,
        decided: dict[str, RecipientOutcome],
        dsn: MessageDsn,
        rcpt_dsn: Mapping[str, RecipientDsn],
    ) -> None:
        check_address(sender, allow_null=True)
        peer_dsn = "DSN" in self.extensions
        data = wire_data(content)
        size = len(data) - 3  # the terminating dot line is no part of the message
        params = ""
        limit = self.extensions.get("SIZE")
        if limit is not None:
            if limit.isdigit() and int(limit) > 0 and size > int(limit):
                raise SessionFailed(
                    f"message of {size} bytes exceeds the peer's limit of {limit}",
                    status="5.3.4",
                )
            params += f" SIZE={size}"
        if any(b >= 0x80 for b in content):
            if "8BITMIME" not in self.extensions:
                raise SessionFailed("8-bit message and the peer lacks 8BITMIME", status="5.6.3")
            params += " BODY=8BITMIME"
        if peer_dsn:
            params += "".join(f" {o}" for o in dsn_mail_options(dsn))
        reply = await self._command(f"MAIL FROM:<{sender}>{params}", "mail", self._timeouts.command)
        if reply.code != 250:
            raise _from_reply(reply, "mail")
        accepted: list[str] = []
        for rcpt in recipients:
            try:
                check_address(rcpt)
            except SessionFailed as exc:
                decided[rcpt] = exc.outcome(rcpt, self.remote_mta)
                continue
            wanted = rcpt_dsn.get(rcpt, RecipientDsn()) if peer_dsn else RecipientDsn()
            extra = "".join(f" {o}" for o in dsn_rcpt_options(wanted))
            reply = await self._command(f"RCPT TO:<{rcpt}>{extra}", "rcpt", self._timeouts.rcpt)
            if reply.code in (250, 251):
                accepted.append(rcpt)
            else:
                decided[rcpt] = _from_reply(reply, "rcpt").outcome(rcpt, self.remote_mta)
        if not accepted:
            return
        reply = await self._command("DATA", "data", self._timeouts.data_init)
        if reply.code != 354:
            raise _from_reply(reply, "data")
        for start in range(0, len(data), _CHUNK):
            await self._write(data[start : start + _CHUNK], "data", self._timeouts.data_block)
        reply = await self._reply("data end", self._timeouts.data_end)
        if reply.code != 250:
            raise _from_reply(reply, "data end")
        for rcpt in accepted:
            decided[rcpt] = RecipientOutcome(
                recipient=rcpt,
                outcome=Outcome.DELIVERED,
                code=reply.code,
                status=reply.status,
                reply=str(reply),
                remote_mta=self.remote_mta,
                peer_dsn=peer_dsn,
            )

    async def quit(self) -> None:
        """Polite end; never raises. The outcomes are already known and recorded."""
        with contextlib.suppress(SessionFailed):
            await self._command("QUIT", "quit", min(self._timeouts.command, _QUIT_TIMEOUT))
        self.abort()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(_QUIT_TIMEOUT):
                await self._writer.wait_closed()

    def abort(self) -> None:
        self._writer.close()

    async def _command(self, line: str, stage: str, timeout: float) -> Reply:
        await self._write(line.encode("ascii") + b"\r\n", stage, timeout)
        return await self._reply(stage, timeout)

    async def _write(self, data: bytes, stage: str, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(data)
                await self._writer.drain()
        except TimeoutError:
            raise _temporary(stage, f"timed out after {timeout:g}s sending") from None
        except (OSError, ssl.SSLError) as exc:
            raise _temporary(stage, f"connection lost: {exc}") from None

    async def _reply(self, stage: str, timeout: float) -> Reply:
        lines: list[str] = []
        code: int | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await self._reader.readuntil(b"\n")
                    line = raw.rstrip(b"\r\n").decode("ascii", "replace")
                    if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                        raise _temporary(stage, f"malformed reply line {line[:80]!r}", "4.5.0")
                    if code is not None and int(line[:3]) != code:
                        raise _temporary(stage, "reply codes differ across lines", "4.5.0")
                    code = int(line[:3])
                    lines.append(_UNPRINTABLE.sub("?", line[4:]))
                    if line[3:4] != "-":
                        return Reply(code, tuple(lines))
                    if len(lines) >= _MAX_REPLY_LINES:
                        raise _temporary(stage, "reply too long", "4.5.0")
        except TimeoutError:
            raise _temporary(stage, f"no reply within {timeout:g}s") from None
        except asyncio.IncompleteReadError:
            raise _temporary(stage, "connection closed by the peer") from None
        except asyncio.LimitOverrunError:
            raise _temporary(stage, "reply line too long", "4.5.0") from None
        except (OSError, ssl.SSLError) as exc:
            raise _temporary(stage, f"connection lost: {exc}") from None


OnResult = Callable[[list[RecipientOutcome]], Awaitable[None]]


async def relay_message(
    host: str,
    port: int,
    *,
    sender: str,
    recipients: Sequence[str],
    content: bytes,
    tls: ssl.SSLContext,
    helo_name: str,
    timeouts: Timeouts,
    tls_server_name: str | None = None,
    on_result: OnResult | None = None,
    dsn: MessageDsn | None = None,
    rcpt_dsn: Mapping[str, RecipientDsn] | None = None,
) -> list[RecipientOutcome]:
    """One message to its recipients at one peer, one connection. Never raises for an SMTP,
    TLS or network failure: those are outcomes.

    `on_result` runs after the final DATA reply and before QUIT, so that the caller can make
    "delivered" durable while the window for a duplicate is as small as it can be.
    """
    try:
        session = await SmtpSession.open(
            host,
            port,
            tls=tls,
            helo_name=helo_name,
            timeouts=timeouts,
            tls_server_name=tls_server_name,
        )
    except SessionFailed as exc:
        return [exc.outcome(r, host) for r in recipients]
    try:
        outcomes = await session.send(sender, recipients, content, dsn=dsn, rcpt_dsn=rcpt_dsn)
        if on_result is not None:
            await on_result(outcomes)
        return outcomes
    finally:
        await session.quit()
