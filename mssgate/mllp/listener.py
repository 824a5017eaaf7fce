"""The MLLP listener ([hl7]): a RIS that speaks no HTTPS submits over MLLP inside TLS.

TLS with a client certificate is required and verified against tls.ca; the certificate's
SHA-256 then names one consumer (`mssgate consumer cert NAME` binds it), looked up again for
every frame so that a re-issued certificate, `consumer revoke` or `remove`, or a suspended
mailbox takes effect at once. A certificate of our CA bound to no consumer (a practitioner's,
a peer gateway's) is refused: the connection is closed after the handshake.

Each frame goes to `Outbound.submit`, as POST /v1/outbound does (in a thread: it is
synchronous), and its ACK is framed back. A frame over the size limit is answered AR and the
connection closed without reading the rest; a connection silent for read_timeout_seconds is
closed; bytes between frames are dropped and logged; an unfinished frame at EOF is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from mssgate import metrics
from mssgate.api.limits import Slots
from mssgate.config import Config
from mssgate.directory.consumers import Consumers, TokenRefused
from mssgate.directory.models import Consumer
from mssgate.errors import MssgateError, StorageError
from mssgate.listen import bind_failed
from mssgate.logs import event
from mssgate.mllp import framing
from mssgate.outbound import hl7in
from mssgate.outbound.ack import build_ack
from mssgate.outbound.hl7in import OTHER, Envelope, Problem, Rejection
from mssgate.outbound.service import Outbound
from mssgate.tls import server_context

log = logging.getLogger("mssgate.mllp")
READ_CHUNK = 64 * 1024
# HL7 table 0357: the receiving application failed for a reason that is not the message's.
INTERNAL_ERROR = 207
# TLS handshakes in progress at once. Each holds a descriptor for up to read_timeout_seconds
# before anyone is known: past this, a connection is closed at once, so that a flood of
# silent connections costs MLLP clients a retry rather than the process every descriptor
# (its other listeners with it).
MAX_HANDSHAKES = 64


def peer_sha256(writer: asyncio.StreamWriter) -> str | None:
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return hashlib.sha256(der).hexdigest() if der else None


class _BeforeTls(asyncio.Protocol):
    """A connection accepted, before its TLS handshake: nothing is read (so no ClientHello
    can be lost to a buffer) until start_tls takes the transport over."""

    def __init__(self, on_connected: Callable[[asyncio.Transport], None]) -> None:
        self._on_connected = on_connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._on_connected(transport)


def _log_dropped(items: list[framing.Event], peer: str, consumer: str) -> None:
    """One line per read and kind: a line per piece would let 64 KiB of <VT> write 65,536."""
    outside = sum(i.size for i in items if isinstance(i, framing.Garbage))
    cut = [i.size for i in items if isinstance(i, framing.Restarted)]
    if outside:
        event(log, "mllp.dropped", level=logging.WARNING, peer=peer, consumer=consumer,
              bytes=outside, what="bytes outside a frame")  # fmt: skip
    if cut:
        event(log, "mllp.dropped", level=logging.WARNING, peer=peer, consumer=consumer,
              bytes=sum(cut), frames=len(cut), what="frames cut by a new <VT>")  # fmt: skip


_STORAGE_ERRORS = (MssgateError, SQLAlchemyError, OSError)


def _log_failed(peer: str, consumer: str | None, during: str, exc: BaseException) -> None:
    event(log, "mllp.failed", level=logging.ERROR, peer=peer, consumer=consumer, during=during,
          error=f"{type(exc).__name__}: {exc}"[:300])  # fmt: skip


def envelope_of(body: bytes) -> Envelope:
    """The MSH fields an ACK echoes, read from whatever of the message there is."""
    head = body.split(b"\r", 1)[0]
    try:
        return hl7in.envelope_of(hl7in.parse_er7(head))
    except Rejection:
        return Envelope()


class MllpListener:
    def __init__(
        self,
        config: Config,
        consumers: Consumers,
        outbound: Outbound,
        slots: Slots | None = None,
    ) -> None:
        self._config = config
        self._consumers = consumers
        self._outbound = outbound
        hl7 = config.hl7
        self._max_size = hl7.max_message_size or config.smtp.max_message_size
        self._timeout = hl7.read_timeout_seconds
        self._facility = config.server.hostname
        # Each submission holds its body and several times it while signing: `serve` gives
        # the API's slots, so that the node's bound is one whichever way the RIS sends.
        self._slots = slots or Slots()
        self._open: set[asyncio.Task[None]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._ssl: ssl.SSLContext | None = None
        self._logs_handshakes = False
        self.server: asyncio.Server | None = None

    def context(self) -> ssl.SSLContext:
        tls = self._config.tls
        assert tls.cert is not None and tls.key is not None and tls.ca is not None
        ctx = server_context(
            tls.cert, tls.key, client_cas=[tls.ca.read_text()], request_client_cert=True
        )
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def start(self) -> int:
        hl7 = self._config.hl7
        self._ssl = self.context()
        loop = asyncio.get_running_loop()
        # asyncio's own loop: plain TCP, TLS started per connection (`_handshake`), so that a
        # failed handshake is logged (a server given ssl= closes it itself, saying nothing,
        # and the operator of a RIS that cannot connect has nothing to go on). uvloop reads
        # the ClientHello into the plain protocol before start_tls can take over (pausing
        # in connection_made does not hold it): there the server does TLS, unlogged.
        self._logs_handshakes = isinstance(loop, asyncio.BaseEventLoop) and (
            type(loop).__module__.startswith("asyncio")
        )
        try:
            if self._logs_handshakes:
                self.server = await loop.create_server(
                    lambda: _BeforeTls(self._handshake), host=hl7.bind, port=hl7.port,
                    reuse_address=True,
                )  # fmt: skip
            else:
                self.server = await asyncio.start_server(
                    self._accept, host=hl7.bind, port=hl7.port, ssl=self._ssl,
                    ssl_handshake_timeout=self._timeout, reuse_address=True,
                )  # fmt: skip
        except OSError as exc:
            raise bind_failed("HL7 MLLP", hl7.bind, hl7.port, "hl7.port", exc) from None
        port = int(self.server.sockets[0].getsockname()[1])
        event(log, "mllp.listening", port=port, max_message_size=self._max_size,
              handshake_failures_logged=self._logs_handshakes)  # fmt: skip
        return port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        tasks = [*self._handshakes, *self._open]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    def _handshake(self, transport: asyncio.Transport) -> None:
        if len(self._handshakes) >= MAX_HANDSHAKES:
            event(log, "mllp.refused", level=logging.WARNING,
                  peer=str(transport.get_extra_info("peername")),
                  reason="too many TLS handshakes in progress")  # fmt: skip
            transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._start_tls(transport))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _start_tls(self, transport: asyncio.Transport) -> None:
        assert self._ssl is not None
        loop = asyncio.get_running_loop()
        peer = str(transport.get_extra_info("peername"))
        reader = asyncio.StreamReader(limit=2 * READ_CHUNK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            tls = await loop.start_tls(
                transport, protocol, self._ssl, server_side=True,
                ssl_handshake_timeout=self._timeout,
            )  # fmt: skip
        except (ssl.SSLError, OSError) as exc:  # start_tls has closed the transport
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            event(log, "mllp.handshake_failed", level=logging.WARNING, peer=peer,
                  reason=str(reason)[:200])  # fmt: skip
            return
        if tls is None:  # the peer went away as the handshake ended
            return
        writer = asyncio.StreamWriter(tls, protocol, reader, loop)
        # A session now: max_connections counts it, not the handshakes.
        self._handshakes.discard(asyncio.current_task())
        await self._accept(reader, writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = str(writer.get_extra_info("peername"))
        if len(self._open) >= self._config.hl7.max_connections:
            event(log, "mllp.refused", level=logging.WARNING, peer=peer,
                  reason="too many connections (hl7.max_connections)")  # fmt: skip
            writer.close()
            return
        self._open.add(task)
        try:
            await self._session(reader, writer, peer)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            event(log, "mllp.closed", peer=peer, reason=f"{type(exc).__name__}: {exc}"[:200])
        except (MssgateError, SQLAlchemyError) as exc:  # the first lookup: no frame to answer
            _log_failed(peer, None, "certificate lookup", exc)
        finally:
            self._open.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def _consumer(self, sha256: str, peer: str) -> Consumer | None:
        found = await asyncio.to_thread(self._consumers.by_certificate, sha256)
        if isinstance(found, TokenRefused):
            event(log, "mllp.refused", level=logging.WARNING, peer=peer, cert_sha256=sha256,
                  reason=found.reason)  # fmt: skip
            return None
        return found

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        metrics.tls_session("hl7", ssl_object.version() if ssl_object is not None else None)
        sha256 = peer_sha256(writer)
        if sha256 is None:  # CERT_REQUIRED makes this unreachable; never serve without one
            event(log, "mllp.refused", level=logging.WARNING, peer=peer, reason="no certificate")
            return
        consumer = await self._consumer(sha256, peer)
        if consumer is None:
            return
        event(log, "mllp.connected", peer=peer, consumer=consumer.name)
        decoder = framing.Decoder(self._max_size)
        loop = asyncio.get_running_loop()
        # Each read waits read_timeout at most, and the whole frame twice that: a byte now and
        # then (CRs between frames, a frame never ended) would hold the connection for ever.
        frame_by = loop.time() + 2 * self._timeout
        while True:
            left = frame_by - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(reader.read(READ_CHUNK), min(self._timeout, left))
            except TimeoutError:
                reason = "silent" if left > self._timeout else "no complete frame in time"
                event(log, "mllp.timeout", peer=peer, consumer=consumer.name, reason=reason,
                      unfinished_bytes=decoder.pending)  # fmt: skip
                return
            if not data:
                if decoder.pending:
                    event(log, "mllp.partial_frame", level=logging.WARNING, peer=peer,
                          consumer=consumer.name, bytes=decoder.pending)  # fmt: skip
                else:
                    event(log, "mllp.closed", peer=peer, consumer=consumer.name, reason="eof")
                return
            items = decoder.feed(data)
            _log_dropped(items, peer, consumer.name)
            for item in items:
                if isinstance(item, framing.Garbage | framing.Restarted):
                    continue
                if isinstance(item, framing.Oversize):
                    text = f"the message exceeds {self._max_size} bytes (hl7.max_message_size)"
                    event(log, "mllp.oversize", level=logging.WARNING, peer=peer,
                          consumer=consumer.name, limit=self._max_size)  # fmt: skip
                    await self._answer(writer, self._refusal(item.head, OTHER, text))
                    return  # the rest of it is not read
                # Looked up again: a certificate re-issued or a consumer revoked since.
                try:
                    current = await self._consumer(sha256, peer)
                except _STORAGE_ERRORS as exc:
                    # As under a submission: the RIS is told to send it again, not cut off.
                    _log_failed(peer, consumer.name, "certificate lookup", exc)
                    text = "the gateway failed; send it again"
                    await self._answer(writer, self._refusal(item.body, INTERNAL_ERROR, text))
                    return
                if current is None:
                    text = "this certificate is not bound to an active consumer any more"
                    await self._answer(writer, self._refusal(item.body, OTHER, text))
                    return
                await self._answer(writer, await self._submit(current, item.body))
                frame_by = loop.time() + 2 * self._timeout

    async def _answer(self, writer: asyncio.StreamWriter, ack: str) -> None:
        writer.write(framing.frame(ack.encode("utf-8")))
        await asyncio.wait_for(writer.drain(), self._timeout)

    def _refusal(self, body: bytes, code: int, text: str) -> str:
        return build_ack("AR", envelope_of(body), facility=self._facility,
                         problems=[Problem(code, "MSH", None, text)])  # fmt: skip

    async def _submit(self, consumer: Consumer, body: bytes) -> str:
        if not await self._slots.take():
            text = "too many submissions in progress; send it again shortly"
            return self._refusal(body, INTERNAL_ERROR, text)
        try:
            answer = await asyncio.to_thread(self._outbound.submit, consumer, body, channel="mllp")
        except StorageError as exc:
            event(log, "mllp.not_stored", level=logging.ERROR, consumer=consumer.name,
                  error=str(exc)[:300])  # fmt: skip
            return self._refusal(body, INTERNAL_ERROR, f"{exc}; send it again")
        except (MssgateError, SQLAlchemyError, OSError) as exc:
            # The database or the disk away: the RIS is told to send it again, as the API
            # answers 503, rather than left without an ACK.
            event(log, "mllp.failed", level=logging.ERROR, consumer=consumer.name,
                  error=f"{type(exc).__name__}: {exc}"[:300])  # fmt: skip
            return self._refusal(body, INTERNAL_ERROR, "the gateway failed; send it again")
        finally:
            self._slots.give()
        event(log, "mllp.answered", consumer=consumer.name, status=answer.status,
              outbound_id=answer.outbound_id)  # fmt: skip
        return answer.ack
