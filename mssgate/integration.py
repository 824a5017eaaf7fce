"""Glue between the spool and the RIS integration queue, and back.

- `DocumentFeed`: after a local delivery to a mailbox that a RIS consumes, the message goes
  through the document pipeline into that mailbox's queue (or quarantine). `ingest_message`
  is idempotent, so the at-least-once delivery upstream never doubles a document.
- `ReceiptSpooler`: MDN receipts the queue produces (on ack or on a final nack) are spooled
  like any message, with a null return path (RFC 8098 §3.3), to a local mailbox or, once the
  relay runs, to a trusted peer.
"""

from __future__ import annotations

import logging
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY

from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.documents import DocumentLimits
from mssgate.logs import event
from mssgate.queue.ingest import ingest_message
from mssgate.queue.service import DocumentQueue
from mssgate.spool import PendingDelivery, Spool, new_queue_id
from mssgate.spool.store import Route

log = logging.getLogger("mssgate.integration")


class DocumentFeed:
    def __init__(
        self, queue: DocumentQueue, spool: Spool, directory: Directory, config: Config
    ) -> None:
        self._queue = queue
        self._spool = spool
        self._directory = directory
        self._limits = DocumentLimits()
        self._allow_test = config.policy.allow_test_ins

    def _consumed(self, mailbox: str) -> bool:
        return any(c.mailbox == mailbox and c.active for c in self._directory.consumers.list())

    def __call__(self, item: PendingDelivery, content: bytes) -> None:
        if not self._consumed(item.recipient):
            return
        envelope = self._spool.envelope(item.spool_id)
        headers = BytesHeaderParser(policy=SMTP_POLICY).parsebytes(content)
        ids = ingest_message(
            self._queue,
            content,
            mailbox=item.recipient,
            sender=envelope.sender,
            message_id=_header(headers.get("Message-ID")),
            subject=_header(headers.get("Subject")),
            received_at=envelope.received_at,
            limits=self._limits,
            allow_test_oids=self._allow_test,
        )
        event(log, "documents.ingested", queue_id=item.spool_id, documents=len(ids))


def _header(value: object) -> str | None:
    return None if value is None else str(value)[:998]


class ReceiptSpooler:
    """Spools a generated notification (MDN, DSN) with a null return path."""

    listener = "receipts"

    def __init__(self, spool: Spool, directory: Directory, wake: list[object]) -> None:
        self._spool = spool
        self._directory = directory
        self._wake = wake

    def __call__(self, mdn: bytes, recipient: str) -> None:
        domain = recipient.rsplit("@", 1)[-1].lower()
        route: Route
        if domain in self._directory.domains.local_names():
            route = "local"
        elif self._directory.domains.peer_ca_pem(domain) is not None:
            route = "relay"
        else:
            event(log, "receipt.dropped", reason="recipient domain neither local nor trusted")
            return
        queue_id = new_queue_id()
        self._spool.accept(
            queue_id=queue_id,
            content=mdn,
            listener=self.listener,
            sender="",
            identity=None,
            peer=None,
            recipients=[(recipient.lower(), route)],
        )
        event(log, "receipt.spooled", queue_id=queue_id, route=route)
        for callback in self._wake:
            if callable(callback):
                callback()


class BounceSpooler(ReceiptSpooler):
    """DSNs of the relay (RFC 3464), spooled like receipts; a bounce never bounces."""

    listener = "bounces"
