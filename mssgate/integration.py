"""Glue between the spool and the RIS integration queue, and back.

- `DocumentFeed`: after a local delivery to a mailbox that a RIS consumes, the message goes
  through the document pipeline into that mailbox's queue (or quarantine). `ingest`
  is idempotent, so the at-least-once delivery upstream never doubles a document.
- `MailboxSealer`: the copy a mailbox stores, encrypted for a RIS that registered a key.
- `ReceiptSpooler`: MDN receipts the queue produces (on ack or on a final nack) are spooled
  like any message, with a null return path (RFC 8098 §3.3), to a local mailbox or, once the
  relay runs, to a trusted peer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.dkim import dkim_sign
from mssgate.documents import DocumentLimits, PipelineResult
from mssgate.documents.isolation import PipelinePool
from mssgate.errors import ValidationFailed
from mssgate.headers import read_headers
from mssgate.identifiers import normalize_address
from mssgate.logs import event
from mssgate.mailstore import DeliveryFailed
from mssgate.pki import load_certificate, load_private_key
from mssgate.pki.keys import same_key
from mssgate.queue.crypto import EncryptionError
from mssgate.queue.ingest import ingest
from mssgate.queue.service import DocumentQueue
from mssgate.routing.router import Router
from mssgate.smime import sign_message
from mssgate.spool import PendingDelivery, Spool, new_queue_id
from mssgate.spool.store import Notice, Route

if TYPE_CHECKING:
    from mssgate.outbound.forward import Forwarder

log = logging.getLogger("mssgate.integration")


class DocumentFeed:
    def __init__(
        self,
        queue: DocumentQueue,
        spool: Spool,
        directory: Directory,
        config: Config,
        *,
        on_message: Callable[[str, bytes, str], None] | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        # Shown every message delivered to a consumed mailbox, after its documents are
        # queued, with its envelope sender: the read receipts and delivery reports of what
        # the RIS sent (mssgate.outbound).
        self._on_message = on_message
        self._queue = queue
        self._spool = spool
        self._directory = directory
        self._limits = DocumentLimits.from_config(config.documents)
        self._allow_test = config.policy.allow_test_ins
        self._require_birthplace = config.policy.require_birthplace
        # Routing rules (configuration and database), read again at each ingest.
        self._router = Router.from_config(config, queue.engine)
        # Sends the rules' forwards (mssgate.outbound.forward); without one they are held.
        self._forwarder = forwarder

    def wants(self, mailbox: str) -> bool:
        """Whether a RIS consumes `mailbox`: only then do its messages go through the
        pipeline."""
        return self._directory.consumers.consumes(mailbox)

    def pipeline_arguments(self) -> dict[str, Any]:
        """The keyword arguments of `process_signed_message` (for a worker process)."""
        return {
            "limits": self._limits,
            "allow_test_oids": self._allow_test,
            "require_birthplace": self._require_birthplace,
        }

    def __call__(self, item: PendingDelivery, content: bytes) -> None:
        """The pipeline and the ingest in this thread, with no time bound (tests, tools);
        `serve` runs the pipeline in worker processes (mssgate.documents_worker)."""
        if self.wants(item.recipient):
            self.ingest(item.spool_id, item.recipient, content)

    def ingest(
        self,
        spool_id: str,
        mailbox: str,
        content: bytes,
        result: PipelineResult | None = None,
        *,
        pool: PipelinePool | None = None,
    ) -> None:
        """`pool`: the worker processes a routing rule's XPath runs in, under its budget
        (serve's document worker); without one it runs here, bounded in nodes only."""
        envelope = self._spool.envelope(spool_id)
        headers = read_headers(content)
        report = ingest(
            self._queue,
            content,
            delivery=spool_id,
            mailbox=mailbox,
            sender=envelope.sender,
            message_id=_header(headers.get("Message-ID")),
            subject=_header(headers.get("Subject")),
            received_at=envelope.received_at,
            limits=self._limits,
            allow_test_oids=self._allow_test,
            require_birthplace=self._require_birthplace,
            result=result,
            router=self._router.with_pool(pool),
            forwarder=self._forwarder,
        )
        if self._on_message is not None:
            self._on_message(mailbox, content, envelope.sender)
        new = set(report.queued) - set(report.duplicates) - set(report.replayed)
        # `documents`: every document the message carried; the others say what became of
        # them, so that quarantined or repeated documents are not read as sent to the RIS.
        event(
            log,
            "documents.ingested",
            queue_id=spool_id,
            documents=len(report.ids),
            queued=len(new),
            duplicates=len(report.duplicates),
            quarantined=len(report.held),
            replayed=len(report.replayed),
            copies=len(report.copies),
            forwards=len(report.forwards),
        )


def _header(value: object) -> str | None:
    return None if value is None else str(value)[:998]


class MailboxSealer:
    """What a local mailbox stores of a message: for a mailbox whose RIS registered an
    OpenPGP key, the whole message as PGP/MIME for that key, so that its mailbox on disk
    (Maildir or Dovecot's) holds ciphertext only and the RIS still reads it over IMAP."""

    def __init__(self, queue: DocumentQueue) -> None:
        self._queue = queue

    def __call__(self, recipient: str, message: bytes) -> bytes:
        try:
            return self._queue.seal_message(recipient, message)
        except EncryptionError as exc:
            # Never the clear message instead: the delivery waits for a usable key.
            raise DeliveryFailed(f"encryption at rest failed: {exc}") from exc


class NotificationSigner:
    """Signs what the gateway writes itself (MDN, DSN) like any outgoing message.

    The author of an MDN is the mailbox that received the original (an application mailbox
    such as a RIS has its own key); the author of a DSN is mailer-daemon@ our domain. Their
    keys live in `certs/mailboxes/<address>.key.pem` with the certificate beside it
    (`mssgate init` makes the mailer-daemon one; `mssgate consumer add` makes one for an
    application mailbox from the dev CA, `mssgate cert install-key` installs a production
    one). Without a key the message goes unsigned, and a peer that requires signatures will
    refuse it: the log says so.
    """

    def __init__(self, mailboxes: Path, *, dkim_selector: str, dkim_key: bytes | None) -> None:
        self._dir = mailboxes
        self._selector = dkim_selector
        self._dkim_key = dkim_key

    def __call__(self, message: bytes, *, relay: bool) -> bytes:
        author = _author(message)
        if author is not None:
            key, cert = self._dir / f"{author}.key.pem", self._dir / f"{author}.crt.pem"
            private = load_private_key(key) if key.exists() and cert.exists() else None
            if isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                certificate = load_certificate(cert)
                if same_key(private, certificate.public_key()):
                    message = sign_message(message, key=private, cert=certificate)
                else:
                    # Signing anyway gives a signature no verifier accepts, and says nothing:
                    # another pair's file copied by hand, or a --force install between files.
                    event(
                        log,
                        "notification.unsigned",
                        level=logging.ERROR,
                        reason=f"{key.name} does not match {cert.name}",
                        author=author,
                        fix=f"mssgate cert install-key {author} --force, with a matching pair",
                    )
            else:
                event(
                    log,
                    "notification.unsigned",
                    reason="no key for the author",
                    # The author is our own mailbox (a RIS), not a patient: naming it says
                    # which key to put in place, and how.
                    author=author,
                    fix=f"mssgate consumer add (dev CA) or mssgate cert install-key {author}",
                )
        if relay and author is not None and self._dkim_key is not None:
            message = dkim_sign(
                message,
                selector=self._selector,
                domain=author.rsplit("@", 1)[1],
                key_pem=self._dkim_key,
            )
        return message


def _author(message: bytes) -> str | None:
    headers = read_headers(message)
    found = getaddresses([str(v) for v in headers.get_all("From") or []])
    if len(found) != 1:
        return None
    try:
        return normalize_address(found[0][1])
    except ValidationFailed:
        return None


class ReceiptSpooler:
    """Spools a generated notification (MDN, DSN) with a null return path."""

    listener = "receipts"

    def __init__(
        self,
        spool: Spool,
        directory: Directory,
        wake: list[object],
        signer: NotificationSigner | None = None,
    ) -> None:
        self._spool = spool
        self._directory = directory
        self._wake = wake
        self._signer = signer

    def __call__(self, mdn: bytes, recipient: str) -> None:
        self.spool(mdn, recipient)

    def route(self, recipient: str) -> Route | None:
        """How a notification reaches `recipient`: None when its domain is neither ours nor
        on the trust list (it would be dropped)."""
        domain = recipient.rsplit("@", 1)[-1].lower()
        if domain in self._directory.domains.local_names():
            return "local"
        if self._directory.domains.peer_ca_pem(domain) is not None:
            return "relay"
        return None

    def prepare(self, mdn: bytes, recipient: str) -> Notice | None:
        """The notification signed and routed as it would be spooled, for a caller that
        spools it in its own transaction (`Spool.withdraw`); None when it would be dropped."""
        route = self.route(recipient)
        if route is None:
            return None
        if self._signer is not None:
            mdn = self._signer(mdn, relay=route == "relay")
        return Notice(content=mdn, recipient=recipient, route=route, listener=self.listener)

    def spool(self, mdn: bytes, recipient: str) -> str | None:
        """Returns the notification's queue id, or None when it was dropped."""
        notice = self.prepare(mdn, recipient)
        if notice is None:
            event(log, "receipt.dropped", reason="recipient domain neither local nor trusted")
            return None
        route = notice.route
        queue_id = new_queue_id()
        self._spool.accept(
            queue_id=queue_id,
            content=notice.content,
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
        return queue_id


class BounceSpooler(ReceiptSpooler):
    """DSNs of the relay (RFC 3464), spooled like receipts; a bounce never bounces."""

    listener = "bounces"
