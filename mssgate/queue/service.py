"""The document queue: ready -> leased -> done, or back to ready, or dead.

Every transition is one transaction holding the row change and its audit entry. Attempts
count deliveries (leases): a nack or an expired lease sends the document back to ready until
it has been delivered `max_attempts` times, then it goes dead, so one bad document never
blocks the rest. Consumers see only their mailbox; order is arrival order per mailbox.

Receipts (MDNs) are written to `receipts_outbox` in the transaction that decides them and
handed to `on_receipt` after the commit; a callback failure leaves them pending there.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, func, or_, select, update

from mssgate import __version__, audit
from mssgate.config import Config, QueueConfig
from mssgate.db.schema import (
    consumers,
    queue_contents,
    queue_document_tags,
    queue_documents,
    receipts_outbox,
)
from mssgate.db.tx import write
from mssgate.directory.timeutil import aware
from mssgate.documents.record import DocumentRecord
from mssgate.errors import Conflict, NotFound, StorageError, ValidationFailed
from mssgate.logs import event
from mssgate.queue import scans
from mssgate.queue.backend import Backend, backend_for, storable
from mssgate.queue.crypto import AtRestCipher
from mssgate.queue.hl7mdm import MdmEnvelope, build_mdm
from mssgate.queue.mdn import Outcome, build_mdn, label_for
from mssgate.queue.messages import (
    cut_email,
    email_marker,
    keep_message,
    read_message,
    splice_email,
)
from mssgate.queue.models import Blob, Lease, QueueEntry, QueueState, Receipt
from mssgate.queue.quarantine import QuarantineStore
from mssgate.queue.statements import QueueStatements
from mssgate.queue.transitions import TransitionGroup
from mssgate.queue.withdrawal import unique_id_key

log = logging.getLogger(__name__)

ReceiptCallback = Callable[[bytes, str], None]
ENCRYPTED_MEDIA_TYPE = "application/pgp-encrypted"
HL7_MEDIA_TYPE = "x-application/hl7-v2+er7; charset=utf-8"
# A pending receipt older than this was not handed over in line: the outbox drain sends it.
RECEIPT_RETRY = timedelta(seconds=60)
# How often a lease looks for its mailbox's lapsed leases (serve's reaper covers all of them).
EXPIRY_SCAN_INTERVAL = scans.INTERVAL


class LeaseLost(Conflict):
    """The lease named is not held any more (expired, or the document moved on)."""


class Holder(Protocol):
    """A consumer as the queue needs it: who (for the audit) and which mailbox."""

    @property
    def name(self) -> str: ...

    @property
    def mailbox(self) -> str: ...


@dataclass(frozen=True)
class QueueSettings:
    visibility_timeout_seconds: int = 300
    max_lease_seconds: int = 3600
    max_attempts: int = 5
    max_lease_batch: int = 100
    final_nack_codes: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: QueueConfig) -> QueueSettings:
        return cls(
            visibility_timeout_seconds=config.visibility_timeout_seconds,
            max_lease_seconds=config.max_lease_seconds,
            max_attempts=config.max_attempts,
            max_lease_batch=config.max_lease_batch,
            final_nack_codes=config.final_nack_codes,
        )


@dataclass(frozen=True)
class NewDocument:
    """One accepted document with its envelope, as ingest hands it over."""

    record: DocumentRecord
    content: bytes
    email: bytes
    headers: str
    receipt_to: str | None
    # The delivery it came in (the spool entry's queue id): with the mailbox, the place in
    # the message and the bytes, what a replay of that delivery repeats.
    delivery: str


def delivery_key(mailbox: str, delivery: str, origin: str, sha256: str) -> str:
    parts = (mailbox, delivery, origin, sha256)
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class _PendingReceipt:
    id: str
    recipient: str
    mdn: bytes


class DocumentQueue:
    def __init__(
        self,
        engine: Engine,
        *,
        settings: QueueSettings | None = None,
        data_dir: Path | None = None,
        on_receipt: ReceiptCallback | None = None,
        facility: str = "mssgate",
        reporting_ua: str = "mssgate",
        clock: Callable[[], datetime] = _utcnow,
        mss_nil: str | None = None,
    ) -> None:
        self._engine = engine
        self._backend: Backend = backend_for(engine)
        self.settings = settings or QueueSettings()
        self._data_dir = data_dir
        self._cipher: AtRestCipher | None = None
        self.on_receipt = on_receipt
        self._facility = facility
        self._reporting_ua = reporting_ua
        self._clock = clock
        self._mss_nil = mss_nil
        self.quarantine = QuarantineStore(engine, clock=self._now)
        self._transitions = TransitionGroup(engine, on_rollback=lambda: self._expiry_scans.forget())
        self._statements = QueueStatements.for_backend(self._backend)
        self._expiry_scans = scans.ScanTimes(interval=EXPIRY_SCAN_INTERVAL)

    @classmethod
    def from_config(
        cls, config: Config, engine: Engine, *, on_receipt: ReceiptCallback | None = None
    ) -> DocumentQueue:
        return cls(
            engine,
            settings=QueueSettings.from_config(config.queue),
            data_dir=config.server.data_dir,
            on_receipt=on_receipt,
            facility=config.server.domain,
            reporting_ua=f"{config.server.hostname}; mssgate {__version__}",
            mss_nil=config.policy.mss_nil,
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def backend(self) -> Backend:
        return self._backend

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    # -- enqueue -------------------------------------------------------------------------

    def _keys_for(self, conn: Connection, mailbox: str) -> list[str]:
        rows = conn.execute(
            select(consumers.c.pgp_key).where(
                consumers.c.mailbox == mailbox,
                consumers.c.revoked_at.is_(None),
                consumers.c.pgp_key.is_not(None),
            )
        )
        return sorted(str(r.pgp_key) for r in rows)

    def encryption_keys(self, mailbox: str) -> list[str]:
        """The OpenPGP keys of the mailbox's active consumers; empty: stored in clear."""
        with self._engine.connect() as conn:
            return self._keys_for(conn, mailbox)

    def seal_message(self, mailbox: str, message: bytes) -> bytes:
        """What the mailbox itself stores of `message`: the message as it is, or, when its
        RIS registered a key, the whole message as PGP/MIME for that key (RFC 3156)."""
        keys = self.encryption_keys(mailbox)
        return self.cipher().seal_message(message, keys) if keys else message

    def cipher(self) -> AtRestCipher:
        if self._cipher is None:
            if self._data_dir is None:
                raise StorageError("encryption at rest needs the data folder (its GnuPG home)")
            self._cipher = AtRestCipher(self._data_dir / "gnupg")
        return self._cipher

    def _delivered(self, conn: Connection, key: str) -> str | None:
        found = conn.execute(
            select(queue_documents.c.id).where(queue_documents.c.delivery_key == key)
        ).scalar_one_or_none()
        return None if found is None else str(found)

    def _earliest_copy(self, conn: Connection, mailbox: str, sha256: str) -> str | None:
        found = conn.execute(
            select(queue_documents.c.id)
            .where(queue_documents.c.mailbox == mailbox, queue_documents.c.sha256 == sha256)
            .order_by(queue_documents.c.seq)
            .limit(1)
        ).scalar_one_or_none()
        return None if found is None else str(found)

    def duplicate_of(self, doc_id: str) -> str | None:
        """The mailbox's earlier copy of the same bytes that `doc_id` repeats, if any."""
        with self._engine.connect() as conn:
            found = conn.execute(
                select(queue_documents.c.duplicate_of).where(queue_documents.c.id == doc_id)
            ).scalar_one_or_none()
        return None if found is None else str(found)

    def enqueue(self, doc: NewDocument, *, actor: str = "queue") -> tuple[str, bool]:
        """Queues a document; (id, created). A replay of the same delivery (ingest runs
        again after a crash) yields the first record; the same bytes in another delivery
        are a new entry whose `duplicate_of` names the mailbox's earliest copy (never for a
        withdrawal, whose bytes are the document's it withdraws)."""
        record = doc.record
        if not record.mailbox or not record.sender or record.received_at is None:
            raise ValidationFailed("a queued document needs its mailbox, sender and date")
        key = delivery_key(record.mailbox, doc.delivery, record.origin, record.sha256)
        with self._engine.connect() as conn:
            existing = self._delivered(conn, key)
        if existing is not None:
            return existing, False
        doc_id = _new_id()
        now = self._now()
        stored = record.model_copy(update={"id": doc_id, "state": None})
        with self._engine.connect() as conn:
            keys = self._keys_for(conn, record.mailbox)
        # In clear, the MDM is stored without its e-mail, which is stored once per message
        # (mssgate.queue.messages); encrypted, it stays whole inside its own ciphertext.
        marker = None if keys else email_marker()
        hl7_text = build_mdm(
            stored,
            doc.content,
            MdmEnvelope(
                control_id=doc_id,
                created_at=now,
                sending_facility=self._facility,
                receiving_application=record.mailbox.split("@", 1)[0],
                receiving_facility=record.mailbox.rsplit("@", 1)[-1],
                message_id=record.message_id,
                subject=record.subject,
                sender=record.sender,
                mailbox=record.mailbox,
                email=doc.email if marker is None else marker,
            ),
        ).encode("utf-8")
        content, hl7_bytes = doc.content, hl7_text
        email_at: int | None = None
        if marker is not None:
            hl7_bytes, email_at = cut_email(hl7_text, marker)
        if keys:
            cipher = self.cipher()
            content, hl7_bytes = cipher.encrypt(content, keys), cipher.encrypt(hl7_bytes, keys)
        with write(self._engine) as conn:
            # Read under the write transaction: on SQLite no other enqueue runs meanwhile.
            # A withdrawal carries the very CDA it withdraws: the same bytes, not a repeat
            # (a RIS that skips `duplicate_of` entries would never see it).
            duplicate_of = (
                None
                if record.document.withdrawn
                else self._earliest_copy(conn, record.mailbox, record.sha256)
            )
            ref = None
            if email_at is not None:
                ref = keep_message(
                    conn, self._backend, mailbox=record.mailbox, message=doc.email, at=now
                )
            created = self._backend.insert_ignore(
                conn,
                queue_documents,
                {
                    "id": doc_id,
                    "delivery_key": key,
                    "duplicate_of": duplicate_of,
                    "mailbox": record.mailbox,
                    "sha256": record.sha256,
                    "size": record.size,
                    "content_type": storable(record.content_type, 200),
                    "received_at": record.received_at,
                    "sender": record.sender,
                    "message_id": storable(record.message_id),
                    "subject": storable(record.subject),
                    "record": stored.model_dump_json(),
                    "headers": storable(doc.headers),
                    "receipt_to": doc.receipt_to,
                    "encrypted": bool(keys),
                    "state": QueueState.READY.value,
                    "attempts": 0,
                    "updated_at": now,
                    "message_ref": ref,
                    "unique_id_sha256": unique_id_key(stored),
                },
            )
            if not created:
                # The same delivery, replayed concurrently, committed first.
                other = self._delivered(conn, key)
                if other is None:
                    raise StorageError("a queue entry collided on its random id; try again")
                return other, False
            conn.execute(
                queue_contents.insert().values(
                    document_id=doc_id, content=content, hl7=hl7_bytes, hl7_email_at=email_at
                )
            )
            if record.tags:
                # Rows of their own, so that a lease can ask for one (?tag=); the record
                # shows them too.
                conn.execute(
                    queue_document_tags.insert(),
                    [{"document_id": doc_id, "tag": tag} for tag in record.tags],
                )
            audit.append(
                conn,
                actor=actor,
                action="queue.enqueue",
                subject=doc_id,
                detail={
                    "mailbox": record.mailbox,
                    "sha256": record.sha256,
                    "format": record.document.format,
                    "encrypted": bool(keys),
                    "duplicate_of": duplicate_of,
                    **({"tags": list(record.tags)} if record.tags else {}),
                },
            )
        if duplicate_of is not None:
            # Said out loud: the RIS gets it again, and an operator can see why.
            event(log, "queue.resent", document_id=doc_id, duplicate_of=duplicate_of)
        return doc_id, True

    # -- lease / ack / nack ------------------------------------------------------------------

    def _expire(
        self, conn: Connection, now: datetime, mailbox: str | None
    ) -> tuple[int, list[_PendingReceipt]]:
        query = select(queue_documents).where(
            queue_documents.c.state == QueueState.LEASED.value,
            queue_documents.c.lease_expires_at <= now,
        )
        if mailbox is not None:
            query = query.where(queue_documents.c.mailbox == mailbox)
        receipts: list[_PendingReceipt] = []
        rows = conn.execute(self._backend.claim(query.order_by(queue_documents.c.seq))).all()
        for row in rows:
            dead = row.attempts >= self.settings.max_attempts
            target = QueueState.DEAD if dead else QueueState.READY
            conn.execute(
                update(queue_documents)
                .where(queue_documents.c.id == row.id)
                .values(
                    state=target.value,
                    lease_expires_at=None,
                    last_reason="lease expired" if row.last_reason is None else row.last_reason,
                    updated_at=now,
                )
            )
            audit.append(
                conn,
                actor="queue",
                action="queue.expire",
                subject=row.id,
                detail={"consumer": row.lease_consumer, "attempts": row.attempts, "to": target},
            )
            if dead:
                receipts += self._receipt(conn, row, "error", row.last_code or 906, now)
        return len(rows), receipts

    def _expire_scan(self, conn: Connection, now: datetime, mailbox: str) -> list[_PendingReceipt]:
        self._expiry_scans.mark(mailbox, now)
        return self._expire(conn, now, mailbox)[1]

    def lease(
        self,
        holder: Holder,
        *,
        max_documents: int = 1,
        lease_seconds: int | None = None,
        tag: str | None = None,
    ) -> list[Lease]:
        """Leases the mailbox's oldest ready documents, only those a routing rule tagged
        `tag` when given (committed with whatever transitions other consumers make
        meanwhile: mssgate.queue.transitions)."""
        rows, expires, receipts = self._transitions.run(
            lambda: self._lease_tx(holder, max_documents, lease_seconds, tag)
        )
        self._hand_over(receipts)
        # The answer is made after the commit, by the caller's thread: not in the transaction
        # that every transition of the group waits for (mssgate.queue.transitions).
        return [
            Lease(
                lease_id=row.lease_id,
                expires_at=expires,
                document=self._record(row, QueueState.LEASED),
            )
            for row in rows
        ]

    def _lease_tx(
        self, holder: Holder, max_documents: int, lease_seconds: int | None, tag: str | None
    ) -> tuple[list[Any], datetime, list[_PendingReceipt]]:
        if not 1 <= max_documents <= self.settings.max_lease_batch:
            raise ValidationFailed(f"max must be between 1 and {self.settings.max_lease_batch}")
        seconds = lease_seconds or self.settings.visibility_timeout_seconds
        if not 1 <= seconds <= self.settings.max_lease_seconds:
            raise ValidationFailed(
                f"lease_seconds must be between 1 and {self.settings.max_lease_seconds}"
            )
        with write(self._engine) as conn:
            now = self._now()
            scanned = self._expiry_scans.due(holder.mailbox, now)
            receipts = self._expire_scan(conn, now, holder.mailbox) if scanned else []
            expires = now + timedelta(seconds=seconds)
            claim: dict[str, Any] = {"mailbox": holder.mailbox, "limit": max_documents}
            if tag is not None:
                claim["tag"] = tag
            leased = self._take(conn, holder, claim, expires, now)
            if not scanned and len(leased) < max_documents:
                # Fewer ready than asked: a lease lapsed since the last scan is owed now.
                receipts = self._expire_scan(conn, now, holder.mailbox)
                claim["limit"] = max_documents - len(leased)
                leased += self._take(conn, holder, claim, expires, now)
                # A lapsed lease given back is older than what the first pass took.
                leased.sort(key=lambda row: row.seq)
            for row in leased:
                audit.append(
                    conn,
                    actor=f"consumer:{holder.name}",
                    action="queue.lease",
                    subject=row.id,
                    detail={"attempt": row.attempts, "seconds": seconds},
                )
        return leased, expires, receipts

    def _take(
        self,
        conn: Connection,
        holder: Holder,
        claim: dict[str, Any],
        expires: datetime,
        now: datetime,
    ) -> list[Any]:
        """Claims and leases up to `claim["limit"]` ready documents (only those tagged
        `claim["tag"]` when given); returns their rows as leased (attempts counted, lease
        ids), in seq order. PostgreSQL does it in one statement, SQLite one per document."""
        statements = self._statements
        if statements.lease_ready is not None and statements.lease_ready_tagged is not None:
            params = {
                "in_mailbox": claim["mailbox"],
                "limit": claim["limit"],
                "lease_ids": [_new_id() for _ in range(claim["limit"])],
                "consumer": holder.name,
                "expires": expires,
                "now": now,
            }
            statement = statements.lease_ready
            if "tag" in claim:
                params["in_tag"] = claim["tag"]
                statement = statements.lease_ready_tagged
            return sorted(statement.rows(conn, params), key=lambda row: row.seq)
        claim_ready = statements.claim_ready_tagged if "tag" in claim else statements.claim_ready
        taken = []
        for candidate in claim_ready.rows(conn, claim):
            row = statements.take_lease.first(
                conn,
                {
                    "doc_id": candidate.id,
                    "new_lease_id": _new_id(),
                    "consumer": holder.name,
                    "expires": expires,
                    "now": now,
                },
            )
            if row is not None:  # still ready: the UPDATE checks again
                taken.append(row)
        return taken

    def _held_row(self, conn: Connection, holder: Holder, document_id: str) -> Any:
        row = self._statements.lock_document.first(conn, {"doc_id": document_id})
        # Another mailbox's document answers exactly like a missing one: no existence leak.
        if row is None or row.mailbox != holder.mailbox:
            raise NotFound("no such document")
        return row

    def _check_lease(self, row: Any, lease_id: str, now: datetime) -> None:
        if row.state != QueueState.LEASED.value or row.lease_id != lease_id:
            raise LeaseLost("this lease is not held any more (expired or superseded)")
        if aware(row.lease_expires_at) <= now:
            raise LeaseLost("this lease has expired")

    def ack(self, holder: Holder, document_id: str, lease_id: str) -> None:
        self._hand_over(self._transitions.run(lambda: self._ack_tx(holder, document_id, lease_id)))

    def _ack_tx(self, holder: Holder, document_id: str, lease_id: str) -> list[_PendingReceipt]:
        with write(self._engine) as conn:
            now = self._now()
            # The lease still held (the usual case) is checked and acked by one statement;
            # otherwise the row, read and locked, says what the ack gets instead.
            row = self._statements.ack_held.first(
                conn,
                {
                    "doc_id": document_id,
                    "holder_mailbox": holder.mailbox,
                    "held_lease": lease_id,
                    "now": now,
                },
            )
            if row is None:
                row = self._held_row(conn, holder, document_id)
                if row.state == QueueState.DONE.value and row.lease_id == lease_id:
                    return []  # a retried ack (the client lost our first answer)
                self._check_lease(row, lease_id, now)
                # Held after all (a clock between the two reads): acked as before.
                self._statements.mark_done.rows(conn, {"doc_id": document_id, "now": now})
            audit.append(
                conn,
                actor=f"consumer:{holder.name}",
                action="queue.ack",
                subject=document_id,
                detail={"attempts": row.attempts},
            )
            return self._receipt(conn, row, "processed", None, now)

    def nack(
        self, holder: Holder, document_id: str, lease_id: str, *, code: int, reason: str
    ) -> QueueState:
        """Gives the document back; returns where it went (ready, or dead for good)."""
        target, receipts = self._transitions.run(
            lambda: self._nack_tx(holder, document_id, lease_id, code, reason)
        )
        self._hand_over(receipts)
        return target

    def _nack_tx(
        self, holder: Holder, document_id: str, lease_id: str, code: int, reason: str
    ) -> tuple[QueueState, list[_PendingReceipt]]:
        with write(self._engine) as conn:
            now = self._now()
            row = self._held_row(conn, holder, document_id)
            self._check_lease(row, lease_id, now)
            final = code in self.settings.final_nack_codes
            dead = final or row.attempts >= self.settings.max_attempts
            target = QueueState.DEAD if dead else QueueState.READY
            conn.execute(
                update(queue_documents)
                .where(queue_documents.c.id == document_id)
                .values(
                    state=target.value,
                    lease_expires_at=None,
                    last_code=code,
                    last_reason=reason,
                    updated_at=now,
                )
            )
            audit.append(
                conn,
                actor=f"consumer:{holder.name}",
                action="queue.nack",
                subject=document_id,
                detail={"attempts": row.attempts, "code": code, "to": target.value},
            )
            receipts = self._receipt(conn, row, "error", code, now, reason=reason) if dead else []
        return target, receipts

    def reap(self) -> int:
        """Returns every expired lease (all mailboxes) to ready or dead now."""
        with write(self._engine) as conn:
            count, receipts = self._expire(conn, self._now(), None)
        self._hand_over(receipts)
        return count

    def requeue(self, document_id: str, *, actor: str) -> QueueEntry:
        """An operator sends a document back to ready with a fresh attempt count."""
        with write(self._engine) as conn:
            row = conn.execute(
                self._backend.lock(
                    select(queue_documents).where(queue_documents.c.id == document_id)
                )
            ).first()
            if row is None:
                raise NotFound(f"no queued document {document_id!r}")
            if row.state == QueueState.READY.value:
                raise Conflict(f"document {document_id} is ready already")
            conn.execute(
                update(queue_documents)
                .where(queue_documents.c.id == document_id)
                .values(
                    state=QueueState.READY.value,
                    attempts=0,
                    lease_id=None,
                    lease_consumer=None,
                    lease_expires_at=None,
                    updated_at=self._now(),
                )
            )
            audit.append(
                conn,
                actor=actor,
                action="queue.requeue",
                subject=document_id,
                detail={"from": row.state, "attempts": row.attempts},
            )
        return self.entry(document_id)

    # -- receipts ----------------------------------------------------------------------------

    def _receipt(
        self,
        conn: Connection,
        row: Any,
        outcome: Outcome,
        code: int | None,
        now: datetime,
        *,
        reason: str | None = None,
    ) -> list[_PendingReceipt]:
        if not row.receipt_to:
            return []
        mdn = build_mdn(
            row.headers,
            outcome=outcome,
            code=code,
            label=label_for(code) if code is not None else None,
            reporting_ua=self._reporting_ua,
            our_address=row.mailbox,
            reason=reason,
            now=now,
            mss_nil=self._mss_nil,
        )
        receipt_id = _new_id()
        created = self._backend.insert_ignore(
            conn,
            receipts_outbox,
            {
                "id": receipt_id,
                "document_id": row.id,
                "created_at": now,
                "recipient": row.receipt_to,
                "sender": row.mailbox,
                "outcome": outcome,
                "mdn": mdn,
                "state": "pending",
            },
        )
        if not created:
            return []  # one receipt per document, even after a requeue
        audit.append(
            conn,
            actor="queue",
            action="receipt.create",
            subject=row.id,
            detail={"outcome": outcome, "code": code, "to": row.receipt_to},
        )
        return [_PendingReceipt(receipt_id, row.receipt_to, mdn)]

    def _hand_over(self, receipts: Iterable[_PendingReceipt]) -> None:
        callback = self.on_receipt
        if callback is None:
            return
        for receipt in receipts:
            self._send(callback, receipt.id, receipt.mdn, receipt.recipient)

    def _send(self, callback: ReceiptCallback, receipt_id: str, mdn: bytes, to: str) -> bool:
        """Hands one receipt to the mail side; on failure the row stays pending in the
        outbox, for `drain_receipts` to try again later."""
        try:
            callback(mdn, to)
        except Exception:
            log.exception("receipt callback failed; the MDN stays in the outbox")
            return False
        self.mark_handed(receipt_id)
        return True

    def drain_receipts(self, *, retry_after: timedelta = RECEIPT_RETRY) -> int:
        """Hands over receipts left pending (a failed callback, or a crash between the
        commit and the hand-over); returns how many went. Each is claimed first by stamping
        `handed_at` while still pending, so that another gateway process on the same database
        leaves it alone for `retry_after`; receipts younger than that are still being handed
        over in line by the request that made them."""
        callback = self.on_receipt
        if callback is None:
            return 0
        handed = 0
        for receipt in self.pending_receipts():
            cutoff = self._now() - retry_after
            if receipt.created_at > cutoff:
                continue
            with write(self._engine) as conn:
                claimed = conn.execute(
                    update(receipts_outbox)
                    .where(
                        receipts_outbox.c.id == receipt.id,
                        receipts_outbox.c.state == "pending",
                        or_(
                            receipts_outbox.c.handed_at.is_(None),
                            receipts_outbox.c.handed_at <= cutoff,
                        ),
                    )
                    .values(handed_at=self._now())
                ).rowcount
            if claimed == 1 and self._send(callback, receipt.id, receipt.mdn, receipt.recipient):
                handed += 1
        return handed

    def pending_receipts(self) -> list[Receipt]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(receipts_outbox)
                .where(receipts_outbox.c.state == "pending")
                .order_by(receipts_outbox.c.created_at)
            ).all()
        return [
            Receipt(
                id=r.id,
                document_id=r.document_id,
                created_at=aware(r.created_at),
                recipient=r.recipient,
                sender=r.sender,
                outcome=r.outcome,
                mdn=bytes(r.mdn),
            )
            for r in rows
        ]

    def mark_handed(self, receipt_id: str) -> None:
        with write(self._engine) as conn:
            conn.execute(
                update(receipts_outbox)
                .where(receipts_outbox.c.id == receipt_id)
                .values(state="handed", handed_at=self._now())
            )

    # -- reading -----------------------------------------------------------------------------

    def _record(self, row: Any, state: QueueState | None = None) -> DocumentRecord:
        # Parsed by pydantic from the JSON it wrote (half the time of json.loads then
        # model_validate: a lease's answer is made for every document leased); the two
        # fields set here are plain strings of ours.
        record = DocumentRecord.model_validate_json(row.record)
        return record.model_copy(
            update={
                "state": (state or QueueState(row.state)).value,
                "duplicate_of": row.duplicate_of,
            }
        )

    def _entry(self, row: Any) -> QueueEntry:
        return QueueEntry(
            id=row.id,
            mailbox=row.mailbox,
            state=QueueState(row.state),
            attempts=row.attempts,
            received_at=aware(row.received_at),
            sender=row.sender,
            sha256=row.sha256,
            size=row.size,
            content_type=row.content_type,
            encrypted=row.encrypted,
            lease_consumer=row.lease_consumer if row.state == "leased" else None,
            lease_expires_at=aware(row.lease_expires_at) if row.lease_expires_at else None,
            last_code=row.last_code,
            last_reason=row.last_reason,
            receipt_to=row.receipt_to,
            duplicate_of=row.duplicate_of,
            updated_at=aware(row.updated_at),
            record=self._record(row),
        )

    def entry(self, document_id: str) -> QueueEntry:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(queue_documents).where(queue_documents.c.id == document_id)
            ).first()
        if row is None:
            raise NotFound(f"no queued document {document_id!r}")
        return self._entry(row)

    def entries(
        self, *, state: QueueState | None = None, mailbox: str | None = None
    ) -> list[QueueEntry]:
        query = select(queue_documents).order_by(queue_documents.c.seq)
        if state is not None:
            query = query.where(queue_documents.c.state == state.value)
        if mailbox is not None:
            query = query.where(queue_documents.c.mailbox == mailbox)
        with self._engine.connect() as conn:
            return [self._entry(r) for r in conn.execute(query)]

    def document(self, holder: Holder, document_id: str) -> DocumentRecord:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(queue_documents).where(queue_documents.c.id == document_id)
            ).first()
        if row is None or row.mailbox != holder.mailbox:
            raise NotFound("no such document")
        return self._record(row)

    def _blob(self, holder: Holder, document_id: str, column: str, media_type: str) -> Blob:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(
                    queue_documents.c.mailbox,
                    queue_documents.c.encrypted,
                    queue_contents.c[column].label("data"),
                )
                .join(queue_contents, queue_contents.c.document_id == queue_documents.c.id)
                .where(queue_documents.c.id == document_id)
            ).first()
        if row is None or row.mailbox != holder.mailbox:
            raise NotFound("no such document")
        if row.encrypted:
            return Blob(data=bytes(row.data), media_type=ENCRYPTED_MEDIA_TYPE, encrypted=True)
        return Blob(data=bytes(row.data), media_type=media_type, encrypted=False)

    def content(self, holder: Holder, document_id: str) -> tuple[Blob, str]:
        """The document's bytes and its original Content-Type."""
        record = self.document(holder, document_id)
        return self._blob(holder, document_id, "content", record.content_type), (
            record.content_type
        )

    def hl7(self, holder: Holder, document_id: str) -> Blob:
        blob = self._blob(holder, document_id, "hl7", HL7_MEDIA_TYPE)
        with self._engine.connect() as conn:
            row = conn.execute(
                select(queue_contents.c.hl7_email_at, queue_documents.c.message_ref)
                .join(queue_documents, queue_contents.c.document_id == queue_documents.c.id)
                .where(queue_contents.c.document_id == document_id)
            ).one()
            if row.hl7_email_at is None or row.message_ref is None:
                return blob  # whole as stored: encrypted, or written before revision 0008
            message = read_message(conn, row.message_ref)
        return blob.model_copy(update={"data": splice_email(blob.data, row.hl7_email_at, message)})

    def counts(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(queue_documents.c.state, func.count()).group_by(queue_documents.c.state)
            ).all()
        counts = {s.value: 0 for s in QueueState}
        counts.update({str(state): int(n) for state, n in rows})
        return counts
