"""The push of a consumer's queue to its RIS over MLLP and TLS (`consumer add --push`).

One lane per pushed consumer sends its mailbox's documents in queue order, each as the MDM
the queue built for it (GET /v1/documents/{id}/hl7), and takes them through the queue's own
lease, ack and nack, so nothing here can lose one: the document is leased before it is sent,
acked only when the ACK's MSA-1 is AA, nacked (back to ready, 906 and the RIS's words) on
AE, AR, no ACK in time or a connection cut; a crash leaves the lease to expire and the
document to go again. Delivery is at least once: the RIS deduplicates on MSH-10 (the
document's id), as MLLP receivers do.

The connection is opened before anything is leased: a RIS that is down or refuses our
certificate costs no delivery attempt (queue.max_attempts counts only documents the RIS was
sent). After any failure the lane waits push_retry_first_seconds * 2**n, capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError

from mssgate.config import Config
from mssgate.db.schema import consumers, queue_documents
from mssgate.directory import Directory
from mssgate.directory.models import Consumer
from mssgate.errors import MssgateError
from mssgate.logs import event
from mssgate.mllp import framing
from mssgate.mllp.listener import envelope_of
from mssgate.mllp.target import parse_push_url
from mssgate.outbound import hl7in
from mssgate.queue.models import QueueState
from mssgate.queue.service import DocumentQueue, LeaseLost
from mssgate.supervisor import PassHealth
from mssgate.tls import client_context

log = logging.getLogger("mssgate.mllp.push")
# The code a push failure is nacked with (the ANS guide's "other" integration error).
NACK_CODE = 906
MAX_ACK_BYTES = 1 << 20
_DB_ERRORS = (MssgateError, SQLAlchemyError, OSError)
SEALED = (
    "another consumer of its mailbox has an OpenPGP key: the documents are stored encrypted"
    " for it, and only the API hands them over"
)


class Refused(Exception):
    """The RIS did not take the document: its ACK said AE/AR, or none came."""


def ack_outcome(text: str, expected: str | None = None) -> tuple[str, str]:
    """(MSA-1, what the ACK says of it) of an HL7 ACK; Refused when it is none, or when its
    MSA-2 is not `expected` (the MSH-10 sent)."""
    try:
        message = hl7in.parse_er7(text.encode("utf-8"))
        msa = message.segment("MSA")
    except (hl7in.Rejection, KeyError, IndexError, UnicodeEncodeError):
        raise Refused("the answer is not an HL7 ACK") from None
    code = hl7in.value(msa, 1)
    # An AA naming another message (a stale answer, a RIS mixing up its connections) says
    # nothing of this one: acking on it could drop a document the RIS never took.
    acked = hl7in.value(msa, 2)
    if expected is not None and acked != expected:
        raise Refused(f"the RIS acknowledged another message (MSA-2 {acked[:80]!r})")
    words = [hl7in.value(msa, 3)]
    with contextlib.suppress(KeyError):
        words += [hl7in.value(err, 8) or hl7in.value(err, 3, 2) for err in message.segments("ERR")]
    return code, "; ".join(w for w in words if w)[:300]


class MllpPush:
    def __init__(self, config: Config, directory: Directory, queue: DocumentQueue) -> None:
        self._config = config
        self._hl7 = config.hl7
        self._directory = directory
        self._queue = queue
        tls = config.tls
        assert tls.cert is not None and tls.key is not None and tls.ca is not None
        self._cert: Path = tls.cert
        self._key: Path = tls.key
        self._ca: Path = tls.ca
        # Long enough for the exchange once connected; the queue caps what may be asked.
        wanted = int(self._hl7.push_ack_timeout_seconds * 2) + 10
        self._lease_seconds = max(1, min(wanted, queue.settings.max_lease_seconds))
        self.health = PassHealth()

    async def run(self) -> None:
        """Starts, stops and restarts one lane per pushed consumer, as `consumer add --push`,
        `consumer set` and `consumer remove` change them (no restart needed)."""
        lanes: dict[int, tuple[tuple[str, str | None], asyncio.Task[None]]] = {}
        try:
            while True:
                try:
                    pushed = await asyncio.to_thread(self._directory.consumers.pushed)
                    wanted = {c.id: (c, ca) for c, ca in pushed}
                except _DB_ERRORS as exc:
                    event(log, "mllp.push_lookup_failed", level=logging.ERROR,
                          error=f"{type(exc).__name__}: {exc}"[:300])  # fmt: skip
                    self.health.failed(type(exc).__name__)
                    await asyncio.sleep(self._hl7.push_poll_seconds)
                    continue
                self.health.succeeded()
                for consumer_id, (key, task) in list(lanes.items()):
                    found = wanted.get(consumer_id)
                    if found is None or (found[0].push_url, found[1]) != key or task.done():
                        if task.done() and not task.cancelled() and task.exception():
                            error = task.exception()
                            event(log, "mllp.push_crashed", level=logging.ERROR,
                                  consumer_id=consumer_id,
                                  error=f"{type(error).__name__}: {error}"[:300])  # fmt: skip
                        task.cancel()
                        del lanes[consumer_id]
                for consumer_id, (consumer, ca) in wanted.items():
                    if consumer_id not in lanes:
                        task = asyncio.create_task(
                            self._lane(consumer, ca), name=f"mllp-push-{consumer.name}"
                        )
                        lanes[consumer_id] = ((consumer.push_url or "", ca), task)
                await asyncio.sleep(self._hl7.push_poll_seconds)
        finally:
            for _, task in lanes.values():
                task.cancel()
            for _, task in lanes.values():
                with contextlib.suppress(BaseException):
                    await task

    def _context(self, ca_pem: str | None) -> ssl.SSLContext:
        pem = ca_pem if ca_pem is not None else self._ca.read_text()
        return client_context(ca_pem=pem, cert=self._cert, key=self._key)

    async def _lane(self, consumer: Consumer, ca_pem: str | None) -> None:
        assert consumer.push_url is not None
        target = parse_push_url(consumer.push_url)
        context = self._context(ca_pem)
        event(log, "mllp.push_started", consumer=consumer.name, to=str(target))
        failures = 0
        blocked = False
        while True:
            try:
                if await asyncio.to_thread(self._sealed, consumer.mailbox):
                    # Each lease counts an attempt and a sealed document can only be nacked:
                    # pushing would send them dead, error MDN and all, one by one.
                    if not blocked:
                        event(log, "mllp.push_blocked", level=logging.WARNING,
                              consumer=consumer.name, reason=SEALED)  # fmt: skip
                    blocked = True
                    await asyncio.sleep(self._hl7.push_poll_seconds)
                    continue
                blocked = False
                # Nothing to send opens no connection (a RIS down costs no warning then).
                waiting = await asyncio.to_thread(self._waiting, consumer.mailbox)
                failed = waiting and await self._session(
                    consumer, target.host, target.port, context
                )
            except _DB_ERRORS as exc:
                event(log, "mllp.push_db_failed", level=logging.ERROR, consumer=consumer.name,
                      error=f"{type(exc).__name__}: {exc}"[:300])  # fmt: skip
                waiting, failed = True, True
            if failed:
                failures += 1
                first, cap = self._hl7.push_retry_first_seconds, self._hl7.push_retry_max_seconds
                await asyncio.sleep(min(cap, first * 2 ** min(failures - 1, 30)))
            else:
                failures = 0
                if not waiting:
                    await asyncio.sleep(self._hl7.push_poll_seconds)

    def _sealed(self, mailbox: str) -> bool:
        """Whether the mailbox's documents are stored encrypted (a consumer of it has an
        OpenPGP key), which only the API can hand over."""
        query = (
            select(consumers.c.id)
            .where(
                consumers.c.mailbox == mailbox,
                consumers.c.revoked_at.is_(None),
                consumers.c.pgp_key.is_not(None),
            )
            .limit(1)
        )
        with self._queue.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def _waiting(self, mailbox: str) -> bool:
        """Whether the mailbox has a document to lease: ready, or leased past its lease."""
        now = datetime.now(UTC)
        query = (
            select(queue_documents.c.id)
            .where(
                queue_documents.c.mailbox == mailbox,
                or_(
                    queue_documents.c.state == QueueState.READY.value,
                    (queue_documents.c.state == QueueState.LEASED.value)
                    & (queue_documents.c.lease_expires_at <= now),
                ),
            )
            .limit(1)
        )
        with self._queue.engine.connect() as conn:
            return conn.execute(query).first() is not None

    async def _session(
        self, consumer: Consumer, host: str, port: int, context: ssl.SSLContext
    ) -> bool:
        """Sends what the mailbox has, on one connection; True when something failed."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, server_hostname=host),
                self._hl7.push_connect_timeout_seconds,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            event(log, "mllp.push_unreachable", level=logging.WARNING, consumer=consumer.name,
                  to=f"{host}:{port}", error=f"{type(exc).__name__}: {exc}"[:300])  # fmt: skip
            return True
        try:
            while True:
                leases = await asyncio.to_thread(
                    self._queue.lease, consumer, max_documents=1, lease_seconds=self._lease_seconds
                )
                if not leases:
                    return False
                document_id = leases[0].document.id
                assert document_id is not None  # a queued record always has its id
                if not await self._send(consumer, document_id, leases[0].lease_id, reader, writer):
                    return True
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def _send(
        self,
        consumer: Consumer,
        document_id: str,
        lease_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """One leased document to the RIS; True when it answered AA (and it is acked)."""
        blob = await asyncio.to_thread(self._queue.hl7, consumer, document_id)
        try:
            if blob.encrypted:
                raise Refused("stored encrypted for an OpenPGP key: lease it over the API")
            writer.write(framing.frame(blob.data))
            await asyncio.wait_for(writer.drain(), self._hl7.push_ack_timeout_seconds)
            answer = await asyncio.wait_for(
                self._read_ack(reader), self._hl7.push_ack_timeout_seconds
            )
            code, words = ack_outcome(answer, expected=envelope_of(blob.data).control_id)
            if code != "AA":
                raise Refused(f"the RIS answered {code or 'no MSA-1'}: {words}".rstrip(": "))
        except (Refused, OSError, ssl.SSLError, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, Refused) else (
                f"no ACK: {type(exc).__name__} {exc}".strip())  # fmt: skip
            state = await self._nack(consumer, document_id, lease_id, reason)
            event(log, "mllp.push_refused", level=logging.WARNING, consumer=consumer.name,
                  document_id=document_id, reason=reason[:300], state=state)  # fmt: skip
            return False
        try:
            await asyncio.to_thread(self._queue.ack, consumer, document_id, lease_id)
        except LeaseLost:
            # It went back to ready meanwhile: it goes again (the RIS sees it twice).
            event(log, "mllp.push_lease_lost", level=logging.WARNING, consumer=consumer.name,
                  document_id=document_id)  # fmt: skip
            return False
        event(log, "mllp.pushed", consumer=consumer.name, document_id=document_id)
        return True

    async def _nack(self, consumer: Consumer, document_id: str, lease_id: str, reason: str) -> str:
        try:
            state = await asyncio.to_thread(
                self._queue.nack, consumer, document_id, lease_id, code=NACK_CODE, reason=reason
            )
        except LeaseLost:
            return "lease lost"
        return state.value

    async def _read_ack(self, reader: asyncio.StreamReader) -> str:
        decoder = framing.Decoder(MAX_ACK_BYTES)
        while True:
            data = await reader.read(64 * 1024)
            if not data:
                raise Refused("the RIS closed the connection without an ACK")
            for item in decoder.feed(data):
                if isinstance(item, framing.Oversize):
                    raise Refused("the RIS's answer is larger than an ACK can be")
                if isinstance(item, framing.Frame):
                    return item.body.decode("utf-8", errors="replace")
