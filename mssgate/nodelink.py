"""Delivery across nodes: a message for a mailbox homed on another node is handed to that
node over LMTP inside TLS, one recipient per transaction (so LMTP's reply after the data is
that recipient's), and the home node takes it into its own spool before it answers 250.

Both ends present the installation's server certificate (`node add` copies it to every node)
and each end requires exactly that certificate of the other: the installation's CA also
issues practitioners' certificates, and none of those may hand mail in past every check that
SMTP makes. Exactly once under normal operation; a crash between the home node's commit and
the sender node's bookkeeping sends it again (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, and_, select
from sqlalchemy.exc import SQLAlchemyError

from mssgate.config import parse_lmtp_target
from mssgate.db.schema import nodes, professionals
from mssgate.errors import MssgateError
from mssgate.handovers import HandOvers
from mssgate.identifiers import normalize_address
from mssgate.imap.backend import Backend, BackendSession, BackendUnavailable
from mssgate.imap.relay import relay
from mssgate.logs import event
from mssgate.mailstore import DeliveryFailed
from mssgate.mailstore.lmtp import LmtpStore
from mssgate.pki import load_certificate
from mssgate.returnpath import spooled_sender
from mssgate.smtp.dsnparams import (
    MAIL_KEYS,
    RCPT_KEYS,
    DsnSyntaxError,
    MessageDsn,
    RecipientDsn,
    dsn_mail_options,
    dsn_rcpt_options,
    parse_mail,
    parse_rcpt,
)
from mssgate.smtp.protocol import dsn_params
from mssgate.spool import Spool, new_queue_id
from mssgate.tls import client_context, server_context

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from mssgate.mailmove import Doveadm, MailboxMover

log = logging.getLogger("mssgate.nodelink")


class RemoteHome(BaseModel):
    model_config = ConfigDict(frozen=True)

    node: str
    address: str


class Homes:
    """Where a mailbox lives, seen from node `me`."""

    def __init__(self, engine: Engine, me: str) -> None:
        self._engine = engine
        self._me = me

    @property
    def engine(self) -> Engine:
        return self._engine

    def remote(self, recipient: str) -> RemoteHome | None:
        """The home node when it is another node; None: deliver here (homed here, or no home
        chosen, or its node unknown: never lose a message to a dangling name)."""
        query = (
            select(professionals.c.node, nodes.c.address)
            .select_from(professionals.join(nodes, nodes.c.name == professionals.c.node))
            .where(
                and_(
                    professionals.c.address == recipient.lower(),
                    professionals.c.local.is_(True),
                )
            )
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or row.node == self._me:
            return None
        return RemoteHome(node=row.node, address=row.address)

    def homed_here(self, recipient: str) -> bool | None:
        """True: a mailbox homed on this node (or on none); False: a mailbox homed on another
        node; None: no mailbox of this installation."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(professionals.c.node).where(
                    professionals.c.address == recipient.lower(),
                    professionals.c.local.is_(True),
                )
            ).first()
        if row is None:
            return None
        return row.node in (None, self._me)


def _der(cert_path: Path) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return load_certificate(cert_path).public_bytes(Encoding.DER)


def _node_client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = client_context(ca_pem=ca.read_text(), cert=cert, key=key)
    # Node addresses are whatever the operator announced (an IP on a private segment);
    # the peer is checked against the one certificate every node has instead (`_is_node`).
    ctx.check_hostname = False
    return ctx


def _is_node(peer_der: bytes | None, own: bytes) -> bool:
    """The pinning: the installation's CA also issues practitioners' certificates, so
    verifying against it is not enough; only the nodes' one server certificate opens a link."""
    return peer_der is not None and hmac.compare_digest(peer_der, own)


# A line's leading dot, lines ending at CRLF only: where the receiving listener
# (aiosmtpd) splits lines and removes the stuffed dot.
_LINE_DOT = re.compile(rb"(?:\A|(?<=\r\n))\.")


# TCP keepalive on every node-link socket, both ends: a relayed IMAP session may sit idle
# (IDLE) for as long as Dovecot's autologout, and a peer that vanished (power cut, a
# partition: no FIN, no RST) would otherwise hold its connection, its Dovecot process and
# one of node.max_connections until then. Dead after about 60 + 5 x 10 s of silence.
KEEPALIVE_IDLE_SECONDS = 60
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_PROBES = 5


def keepalive(sock: Any) -> None:
    """Turns TCP keepalive on for a node-link socket (a socket, an SSLSocket or asyncio's
    TransportSocket); the timings where the platform has them (Linux does)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class _LmtpOverTls(smtplib.SMTP_SSL):
    ehlo_msg = "lhlo"  # as smtplib.LMTP

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's hook for connect + handshake (not in typeshed).
        sock: socket.socket = super()._get_socket(  # type: ignore[misc]
            host, port, min(timeout, HANDSHAKE_SECONDS)
        )
        sock.settimeout(timeout)  # the LMTP exchange: the full timeout
        keepalive(sock)
        return sock

    def data(self, msg: ReadableBuffer | str) -> tuple[int, bytes]:
        """DATA whose dot-stuffing the node listener undoes exactly. smtplib stuffs a dot
        after a bare LF too, which aiosmtpd (lines end at CRLF) keeps: decrypted content
        may hold bare LFs, and the home node got "\n.." for "\n.", bytes a signature no
        longer covers."""
        assert isinstance(msg, bytes)  # LmtpStore sends bytes
        self.putcmd("data")
        code, reply = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        stuffed = _LINE_DOT.sub(b"..", msg)
        if not stuffed.endswith(b"\r\n"):
            stuffed += b"\r\n"
        self.send(stuffed + b".\r\n")
        return self.getreply()


# Connecting and the TLS handshake: a live node answers within this, whatever the LMTP
# timeout (delivery.lmtp_timeout_seconds, made for Dovecot writing a large message). A hung
# node (stopped, a frozen host) accepts TCP in its kernel and never answers the handshake.
HANDSHAKE_SECONDS = 5.0
# After a node could not be reached, its other messages fail at once (temporarily) for this
# long instead of each waiting for the handshake bound in its mailbox's lane, and the pass
# (which waits for every lane) holding up this node's own deliveries behind them.
UNREACHABLE_SECONDS = 10.0


class NodeHandOff:
    """The sending side: one recipient's message to its home node (raises DeliveryFailed,
    temporary while the home node is unreachable). Called from several delivery lanes
    (threads) at once: the target is per call, never kept on this shared object."""

    def __init__(self, *, cert: Path, key: Path, ca: Path, timeout: float) -> None:
        self._ctx = _node_client_context(cert, key, ca)
        self._own = _der(cert)
        self._timeout = timeout
        self._unreachable: dict[str, float] = {}  # address -> monotonic time of the failure
        self._lock = threading.Lock()

    def hand_over(self, address: str, recipient: str, message: bytes, *, queue_id: str,
                  sender: str, dsn: MessageDsn | None = None,
                  rcpt_dsn: RecipientDsn | None = None) -> None:  # fmt: skip
        try:
            _host, port = parse_lmtp_target(address)
            if port is None:
                raise ValueError(address)
        except ValueError:
            # The home node has not announced where it listens yet (or its row is damaged):
            # it may tell at its next start, so the delivery waits rather than being held.
            raise DeliveryFailed(f"the home node announces no usable address {address!r}") from None
        with self._lock:
            failed_at = self._unreachable.get(address)
        if failed_at is not None and time.monotonic() - failed_at < UNREACHABLE_SECONDS:
            raise DeliveryFailed(f"the home node {address} was unreachable moments ago")
        link = _NodeLmtp(address, ctx=self._ctx, own=self._own, timeout=self._timeout,
                         dsn=dsn, rcpt_dsn=rcpt_dsn)  # fmt: skip
        try:
            link.deliver(recipient, message, delivery_id=queue_id, sender=sender)
        finally:
            with self._lock:
                if link.connect_failed:
                    self._unreachable[address] = time.monotonic()
                else:
                    self._unreachable.pop(address, None)


class _NodeLmtp(LmtpStore):
    """One hand-over's connection to one node."""

    def __init__(self, address: str, *, ctx: ssl.SSLContext, own: bytes, timeout: float,
                 dsn: MessageDsn | None = None,
                 rcpt_dsn: RecipientDsn | None = None) -> None:  # fmt: skip
        super().__init__(address, timeout=timeout)
        self._ctx = ctx
        self._own = own
        self._dsn = dsn or MessageDsn()
        self._rcpt_dsn = rcpt_dsn or RecipientDsn()
        self.connect_failed = False
        self._handover_id = ""

    def deliver(self, recipient: str, message: bytes, *, delivery_id: str, sender: str) -> None:
        self._handover_id = delivery_id  # the sending node's spool queue id
        super().deliver(recipient, message, delivery_id=delivery_id, sender=sender)

    def _envelope(self, client: smtplib.SMTP, sender: str, recipient: str) -> None:  # type: ignore[override]
        client.ehlo_or_helo_if_needed()
        # Names the hand-over, so that the home node takes a resend (this attempt's 250 lost)
        # once (mssgate.handovers). A node without the command (an older version) answers
        # 5xx: the hand-over goes on as before, without that protection.
        client.docmd("XHANDOVER", self._handover_id)
        # The DSN parameters go to a home node that reads them (DSN in its LHLO reply); an
        # older one would refuse them (555), so it gets none, as before.
        mail: list[str] = []
        rcpt: list[str] = []
        if client.has_extn("dsn"):
            mail = dsn_mail_options(self._dsn)
            rcpt = dsn_rcpt_options(self._rcpt_dsn)
        LmtpStore._envelope(client, sender, recipient, mail_options=mail, rcpt_options=rcpt)

    def _connect(self) -> smtplib.SMTP:
        assert self._port is not None  # checked by NodeHandOff.hand_over
        try:
            client = _LmtpOverTls(self._host, self._port, timeout=self._timeout,
                                  context=self._ctx)  # fmt: skip
        except (OSError, smtplib.SMTPException):
            self.connect_failed = True
            raise
        sock = client.sock
        peer = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if not _is_node(peer, self._own):
            client.close()
            raise smtplib.SMTPException(f"{self.socket_path} is not a node of this installation")
        return client


# What XHANDOVER accepts: a spool queue id (new_queue_id), with room for other forms.
_HANDOVER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Set on a connection by XHANDOVER, for its next transaction.
_HANDOVER = "_mssgate_handover"
# Set on an envelope by MAIL and RCPT: the RFC 3461 parameters handed over with it.
_DSN = "_mssgate_dsn"
_RCPT_DSN = "_mssgate_rcpt_dsn"


class _Handler:
    def __init__(self, spool: Spool, homes: Homes, own: bytes,
                 on_accepted: Callable[[str], None]) -> None:  # fmt: skip
        self._spool = spool
        self._homes = homes
        self._own = own
        self._on_accepted = on_accepted
        self._handovers = HandOvers(homes.engine)
        # Hand-overs being taken now: a resend arriving while the first is still being
        # spooled waits for it, then finds it taken.
        self._taking: dict[tuple[str, str], asyncio.Task[str]] = {}

    async def handle_EHLO(self, server: LMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:  # fmt: skip
        # DSN: the sending node passes the parameters of what it hands over (NodeLmtp).
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", responses[-1]]

    async def handle_RCPT(self, server: LMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:  # fmt: skip
        if not _from_a_node(server, self._own):
            return "530 5.7.0 only the nodes of this installation may deliver here"
        if envelope.rcpt_tos:
            return "452 4.5.3 one recipient per transaction"
        try:
            recipient = normalize_address(address)
        except ValueError:
            return "550 5.1.3 bad recipient address"
        try:
            here = await asyncio.to_thread(self._homes.homed_here, recipient)
        except SQLAlchemyError:
            return "451 4.3.0 directory unavailable"
        if here is None:
            return "550 5.1.1 no mailbox of this node"
        if not here:
            # Moved to another node since the sender read its home: temporary, so that the
            # sender reads the home again at its next attempt (a 5xx bounced the message).
            return "451 4.2.0 this mailbox is homed on another node now"
        envelope.rcpt_tos.append(recipient)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        handover_id: str | None = getattr(server, _HANDOVER, None)
        setattr(server, _HANDOVER, None)  # one transaction's
        if not _from_a_node(server, self._own) or len(envelope.rcpt_tos) != 1:
            return "554 5.5.1 no valid recipient"
        if handover_id is None:
            return await self._take(session, envelope)
        key = (handover_id, envelope.rcpt_tos[0])
        while (earlier := self._taking.get(key)) is not None:
            await asyncio.wait({earlier})  # its outcome is read from the table below
        # In a task of its own: a sender that gives up (its LMTP timeout while a large message
        # is being spooled, a cut connection) makes aiosmtpd cancel this handler, and a
        # hand-over cancelled between the spool's commit and its row was spooled again at the
        # resend: the very duplicate the row is for.
        taking = asyncio.create_task(self._take_once(key, session, envelope))
        self._taking[key] = taking
        taking.add_done_callback(lambda _: self._taking.pop(key, None))
        return await asyncio.shield(taking)

    async def _take_once(self, key: tuple[str, str], session: Session,
                         envelope: Envelope) -> str:  # fmt: skip
        try:
            taken = await asyncio.to_thread(self._handovers.taken, *key)
        except SQLAlchemyError:
            return "451 4.3.0 cannot spool now, try again"
        if taken is not None:
            # This node spooled it already; the sender did not hear the 250.
            event(log, "node.handover_repeated", queue_id=taken, handover=key[0])
            return f"250 2.0.0 {taken} accepted"
        reply = await self._take(session, envelope)
        if reply.startswith("250 "):
            queue_id = reply.split()[2]
            try:
                await asyncio.to_thread(self._handovers.record, *key, queue_id)
            except SQLAlchemyError as exc:
                # Spooled: 250 all the same. Only a resend would be taken twice.
                event(log, "node.handover_unrecorded", level=logging.ERROR,
                      queue_id=queue_id, error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        return reply

    async def _take(self, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        queue_id = new_queue_id()
        peer: object = session.peer
        if isinstance(peer, tuple):
            peer = peer[0]
        try:
            rcpt_dsn: RecipientDsn = getattr(envelope, _RCPT_DSN, RecipientDsn())
            await asyncio.to_thread(
                self._spool.accept, queue_id=queue_id, content=content, listener="node",
                sender=spooled_sender(envelope.mail_from), identity=None, peer=str(peer)[:64],
                recipients=[(envelope.rcpt_tos[0], "local")],
                dsn=getattr(envelope, _DSN, None),
                rcpt_dsn={envelope.rcpt_tos[0]: rcpt_dsn},
            )  # fmt: skip
        except (MssgateError, SQLAlchemyError, OSError) as exc:
            event(log, "node.accept_failed", level=logging.ERROR,
                  error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            return "451 4.3.0 cannot spool now, try again"
        event(log, "node.accepted", queue_id=queue_id, size=len(content))
        self._on_accepted(queue_id)
        return f"250 2.0.0 {queue_id} accepted"


def _from_a_node(server: LMTP, own: bytes) -> bool:
    if getattr(server, _SPENT, False):
        return False
    transport: Any = server.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return _is_node(peer, own)


def _transport_is_node(transport: asyncio.BaseTransport, own: bytes) -> bool:
    ssl_object = transport.get_extra_info("ssl_object")
    peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return _is_node(peer, own)


async def start_node_listener(
    *,
    bind: str,
    port: int,
    cert: Path,
    key: Path,
    ca: Path,
    hostname: str,
    spool: Spool,
    homes: Homes,
    max_size: int,
    on_accepted: Callable[[str], None],
    imap_backend: Backend | None = None,
    max_connections: int = 500,
    mover: MailboxMover | None = None,
    doveadm: Doveadm | None = None,
) -> asyncio.Server:
    """LMTP with implicit TLS; a client must present the installation's server certificate.
    With `imap_backend`, it also serves the IMAP sessions other nodes relay (`XIMAP`).
    At most `max_connections` node connections at once (node.max_connections)."""
    ctx = server_context(cert, key, client_cas=[ca.read_text()], request_client_cert=True)
    ctx.verify_mode = ssl.CERT_REQUIRED
    own = _der(cert)
    handler = _Handler(spool, homes, own, on_accepted)
    loop = asyncio.get_running_loop()

    # What a node hands over is what it spooled after its own checks, and that may exceed
    # this node's SMTP limits without being refused: the accepting node checked the size
    # received, then prepended its Received and Authentication-Results fields (and may have
    # decrypted, bringing lines no listener saw); nodes may also differ in max_message_size.
    # A refusal here is permanent for the sender (a bounce for mail it accepted), so the
    # bound is only against memory exhaustion by a broken node, and lines are not limited.
    limit = 2 * max_size + (1 << 20)
    open_links = 0

    class NodeLmtp(LMTP):
        line_length_limit = limit  # aiosmtpd's default, 1001 bytes, answers 500
        _counted = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # Called once the TLS handshake is done, the peer's certificate known. Anyone
            # our CA issued a certificate to (every practitioner) gets past TLS: such a peer
            # is cut here, before the greeting, instead of holding a connection (and a slot)
            # until its first command is refused.
            nonlocal open_links
            transport = cast(asyncio.Transport, transport)
            peer = str(transport.get_extra_info("peername"))[:80]
            if not _transport_is_node(transport, own):
                event(log, "node.link_refused", level=logging.WARNING, peer=peer,
                      reason="not a node of this installation")  # fmt: skip
                transport.abort()
                return
            if open_links >= max_connections:
                event(log, "node.link_refused", level=logging.WARNING, peer=peer,
                      reason="too many connections", limit=max_connections)  # fmt: skip
                transport.write(b"421 4.3.2 too many node-link connections, try again later\r\n")
                transport.close()
                return
            open_links += 1
            self._counted = True
            sock = transport.get_extra_info("socket")
            if sock is not None:
                keepalive(sock)
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            nonlocal open_links
            if not self._counted:
                return  # refused in connection_made: aiosmtpd never saw it
            self._counted = False
            open_links -= 1
            super().connection_lost(error)

        async def smtp_MAIL(self, arg: str | None) -> None:
            try:
                arg, params = dsn_params(self, arg, "FROM:", MAIL_KEYS)
                dsn = parse_mail(params)
            except DsnSyntaxError as exc:
                await self.push(f"501 5.5.4 {exc}")
                return
            had_sender = self.envelope is not None and bool(self.envelope.mail_from)
            await super().smtp_MAIL(arg)
            if not had_sender and self.envelope is not None and self.envelope.mail_from:
                setattr(self.envelope, _DSN, dsn)

        async def smtp_RCPT(self, arg: str | None) -> None:
            try:
                arg, params = dsn_params(self, arg, "TO:", RCPT_KEYS)
                dsn = parse_rcpt(params)
            except DsnSyntaxError as exc:
                await self.push(f"501 5.5.4 {exc}")
                return
            envelope = self.envelope
            before = len(envelope.rcpt_tos) if envelope is not None else 0
            await super().smtp_RCPT(arg)
            # One recipient per transaction (handle_RCPT): its parameters are the envelope's.
            if envelope is not None and len(envelope.rcpt_tos) > before:
                setattr(envelope, _RCPT_DSN, dsn)

        async def smtp_XIMAP(self, arg: str | None) -> None:
            """`XIMAP <user> <client ip>`: another node's IMAP front door authenticated `user`
            and relays the session here, where the mailbox lives (`NodeImap`, the client).
            250 carries the engine's capabilities; then the connection is that IMAP session."""
            await _serve_imap(self, arg, homes=homes, own=own, backend=imap_backend)

        async def smtp_XHANDOVER(self, arg: str | None) -> None:
            """`XHANDOVER <id>`: the sending node's name for the hand-over that follows (its
            spool queue id), by which a resend is recognized (mssgate.handovers)."""
            if not _from_a_node(self, own):
                await self.push("530 5.7.0 only the nodes of this installation may deliver here")
                return
            if arg is None or not _HANDOVER_ID.fullmatch(arg):
                await self.push("501 5.5.4 Syntax: XHANDOVER <id>")
                return
            setattr(self, _HANDOVER, arg)
            await self.push("250 2.0.0 ok")

        async def smtp_XMOVE(self, arg: str | None) -> None:
            """`XMOVE <user> <target node>`: `directory move` asks the mailbox's home node
            to move it (mssgate.mailmove); the reply comes when the move is done."""
            from mssgate.nodemove import serve_move

            await serve_move(self, arg, own=own, mover=mover)

        async def smtp_XDSYNC(self, arg: str | None) -> None:
            """`XDSYNC <user>`: the moving node's dsync; then the connection carries the
            dsync stream to this node's `doveadm dsync-server -u <user>`."""
            from mssgate.nodemove import serve_dsync

            await serve_dsync(self, arg, homes=homes, own=own, doveadm=doveadm)

    def factory() -> LMTP:
        return NodeLmtp(handler, hostname=hostname, data_size_limit=limit,
                        decode_data=False, loop=loop)  # fmt: skip

    # A peer that connects and never completes TLS holds no slot, but a socket: bounded.
    return await loop.create_server(factory, host=bind, port=port, ssl=ctx, reuse_address=True,
                                    ssl_handshake_timeout=2 * HANDSHAKE_SECONDS)  # fmt: skip


class CrossNodeDelivery:
    """What the delivery worker asks (mssgate.spool.delivery.CrossNode)."""

    def __init__(self, homes: Homes, handoff: NodeHandOff) -> None:
        self._homes = homes
        self._handoff = handoff
        self._handovers = HandOvers(homes.engine)

    def home_elsewhere(self, recipient: str) -> str | None:
        home = self._homes.remote(recipient)
        return None if home is None else home.address

    def hand_over(self, address: str, recipient: str, message: bytes, *, queue_id: str,
                  sender: str, dsn: MessageDsn | None = None,
                  rcpt_dsn: RecipientDsn | None = None) -> None:  # fmt: skip
        self._handoff.hand_over(address, recipient, message, queue_id=queue_id, sender=sender,
                                dsn=dsn, rcpt_dsn=rcpt_dsn)  # fmt: skip

    def taken_elsewhere(self, queue_id: str, recipient: str) -> bool:
        return self._handovers.taken(queue_id, recipient) is not None


# ---------------------------------------------------------------------- IMAP on any node

# Set on a connection once it has carried an IMAP session: it never speaks for a node again.
_SPENT = "_mssgate_ximap_spent"

# The whole node-to-node opening (greeting, LHLO, XIMAP and the home node's Dovecot start):
# bounded, so that a client never waits on a node that accepts and never answers.
IMAP_OPEN_SECONDS = 30.0


async def _serve_imap(
    server: LMTP, arg: str | None, *, homes: Homes, own: bytes, backend: Backend | None
) -> None:
    """The home node's side of `XIMAP`: after 250 the connection carries IMAP bytes both
    ways until either side closes; then the LMTP session ends."""
    if not _from_a_node(server, own):
        await server.push("530 5.7.0 only the nodes of this installation may open IMAP here")
        return
    if backend is None:
        await server.push("502 5.5.1 IMAP is not served on this node")
        return
    user, _, peer_ip = (arg or "").partition(" ")
    try:
        user = normalize_address(user)
        address = ipaddress.ip_address(peer_ip)
        # Canonical, and no IPv6 scope: "fe80::1%<anything>" parses, spaces and NUL included,
        # and the text goes into the engine's environment.
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise ValueError("scoped address")
        peer_ip = str(address)
    except ValueError:
        await server.push("501 5.5.4 Syntax: XIMAP <user> <client ip>")
        return
    try:
        here = await asyncio.to_thread(homes.homed_here, user)
    except SQLAlchemyError:
        await server.push("451 4.3.0 directory unavailable")
        return
    if not here:
        await server.push("550 5.1.1 no mailbox homed on this node")
        return
    sock = server.transport.get_extra_info("sockname") if server.transport else None
    try:
        session = await backend.open(user, peer_ip=peer_ip, local_ip=str((sock or ("?",))[0]))
    except BackendUnavailable:
        await server.push("451 4.3.0 mailbox engine unavailable")
        return
    # From here on the bytes are the IMAP client's, relayed by the other node: whatever of
    # them is still buffered when the session ends must never be read as LMTP commands with
    # the node's authority (a MAIL/RCPT/DATA pipelined behind LOGOUT would be spooled with
    # trusted headers). Spent, then aborted: no command after it is served.
    setattr(server, _SPENT, True)
    try:
        await server.push(f"250 2.0.0 {session.capabilities}")
        event(log, "node.imap_open", peer=peer_ip)
        # aiosmtpd's idle timer is for LMTP commands; an IMAP client may IDLE for longer,
        # and the engine's own autologout bounds the session.
        timer = getattr(server, "_timeout_handle", None)
        if timer is not None:
            timer.cancel()
        await relay(server._reader, server._writer, session)
    finally:
        # Also when the other node closes first: aiosmtpd then cancels this command.
        event(log, "node.imap_closed", peer=peer_ip)
        await session.close()
        transport = cast(asyncio.Transport | None, server.transport)
        if transport is not None:
            # abort, not close: a close waits to flush output the client may never read,
            # and aiosmtpd's command loop would go on reading meanwhile.
            transport.abort()


class _NodeImapSession:
    """An IMAP session on the home node, spoken to through the node link."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, capabilities: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._capabilities = capabilities

    @property
    def capabilities(self) -> str:
        return self._capabilities

    @property
    def reader(self) -> asyncio.StreamReader:
        return self._reader

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 5)


class NodeImap:
    """The front door's mailbox engine on a node of several: a mailbox homed here opens in
    this node's Dovecot (`local`), one homed on another node is relayed to that node over
    the node link (implicit TLS, the nodes' pinned certificate both ways, `XIMAP`)."""

    def __init__(
        self, local: Backend, homes: Homes, *, cert: Path, key: Path, ca: Path, hostname: str
    ) -> None:
        self._local = local
        self._homes = homes
        self._ctx = _node_client_context(cert, key, ca)
        self._own = _der(cert)
        self._hostname = hostname

    async def open(self, user: str, *, peer_ip: str, local_ip: str) -> BackendSession:
        try:
            home = await asyncio.to_thread(self._homes.remote, user)
        except SQLAlchemyError as exc:
            raise BackendUnavailable(f"directory unavailable: {type(exc).__name__}") from exc
        if home is None:
            return await self._local.open(user, peer_ip=peer_ip, local_ip=local_ip)
        try:
            host, port = parse_lmtp_target(home.address)
            if port is None:
                raise ValueError(home.address)
        except ValueError:
            raise BackendUnavailable(f"node {home.node} announces no usable address") from None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=self._ctx, limit=_REPLY_LIMIT),
                HANDSHAKE_SECONDS,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            event(log, "node.imap_unreachable", level=logging.WARNING, node=home.node,
                  error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            raise BackendUnavailable(f"node {home.node} unreachable") from exc
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                keepalive(sock)
            ssl_object = writer.get_extra_info("ssl_object")
            peer = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            if not _is_node(peer, self._own):
                raise BackendUnavailable(f"{home.address} is not a node of this installation")
            capabilities = await asyncio.wait_for(
                self._ximap(reader, writer, user, peer_ip), IMAP_OPEN_SECONDS
            )
        except BaseException as exc:
            writer.close()
            if not isinstance(exc, _OPENING_FAILED):
                raise
            event(log, "node.imap_unreachable", level=logging.WARNING, node=home.node,
                  error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            if isinstance(exc, BackendUnavailable):
                raise
            raise BackendUnavailable(f"node {home.node}: {type(exc).__name__}") from exc
        return _NodeImapSession(reader, writer, capabilities)

    async def _ximap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     user: str, peer_ip: str) -> str:  # fmt: skip
        await _expect(reader, 220)
        writer.write(f"LHLO {self._hostname}\r\n".encode())
        await _expect(reader, 250)
        writer.write(f"XIMAP {user} {peer_ip}\r\n".encode())
        return await _expect(reader, 250)


_REPLY_LIMIT = 64 * 1024
# What may go wrong between the TLS handshake and the 250 to XIMAP: the node link's errors,
# a reply out of bounds, the home node's refusal (BackendUnavailable).
_OPENING_FAILED = (
    OSError,
    TimeoutError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ValueError,
    BackendUnavailable,
)


async def _expect(reader: asyncio.StreamReader, code: int) -> str:
    """Reads one (possibly multi-line) reply; its last line's text, or BackendUnavailable."""
    while True:
        line = (await reader.readuntil(b"\n")).decode("utf-8", "replace").rstrip("\r\n")
        if line[3:4] != "-":
            break
    if not line[:3].isdigit() or int(line[:3]) != code:
        raise BackendUnavailable(f"the home node answered {line[:200]!r}")
    return line[4:].removeprefix("2.0.0 ").strip()
