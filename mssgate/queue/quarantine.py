"""Documents held for an operator: the ANS code, the reason, the untouched bytes.

Nothing is dropped: the held bytes and the whole message they came in are kept, so that
`release` can run the pipeline again (after the operator raised a limit, allowed test INS, or
fixed the directory) and `delete` is an explicit, audited act.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Row, Select, delete, select, update

from mssgate import audit
from mssgate.db.schema import quarantine, stored_messages
from mssgate.db.tx import write
from mssgate.directory.timeutil import aware
from mssgate.documents.record import DocumentInfo, Quarantined
from mssgate.errors import Conflict, NotFound
from mssgate.queue.backend import backend_for, storable
from mssgate.queue.crypto import is_sealed
from mssgate.queue.messages import forget_if_unreferenced, keep_message, read_message
from mssgate.queue.models import QuarantineEntry, QuarantineState


def _entry(row: Row[Any]) -> QuarantineEntry:
    return QuarantineEntry(
        id=row.id,
        received_at=aware(row.received_at),
        mailbox=row.mailbox,
        sender=row.sender,
        message_id=row.message_id,
        subject=row.subject,
        code=row.code,
        reason=row.reason,
        sha256=row.sha256,
        size=row.size,
        content_type=row.content_type,
        origin=row.origin,
        state=QuarantineState(row.state),
        document=DocumentInfo.model_validate_json(row.document) if row.document else None,
        updated_at=aware(row.updated_at),
        encrypted=(
            bool(row.stored_encrypted)
            if row.message_ref is not None
            else is_sealed(bytes(row.message))  # a row written before revision 0008
        ),
    )


def _select() -> Select[Any]:
    # The stored message's `encrypted` flag, not its bytes: a listing reads no message.
    return select(quarantine, stored_messages.c.encrypted.label("stored_encrypted")).outerjoin(
        stored_messages, stored_messages.c.id == quarantine.c.message_ref
    )


def _dedup_key(mailbox: str, message: bytes, held: Quarantined) -> str:
    message_digest = hashlib.sha256(message).hexdigest()
    parts = [mailbox, message_digest, held.origin, held.sha256]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


class QuarantineStore:
    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._backend = backend_for(engine)
        self._clock = clock or (lambda: datetime.now(UTC))

    def hold(
        self,
        held: Quarantined,
        *,
        message: bytes,
        mailbox: str,
        sender: str,
        message_id: str | None,
        subject: str | None,
        received_at: datetime,
        actor: str = "queue",
        sealed: tuple[bytes, bytes] | None = None,
    ) -> tuple[str, bool]:
        """Keeps one quarantined outcome; (id, created). Holding the same twice is a no-op.

        `sealed` is (content, message) encrypted to the mailbox's RIS key, stored instead of
        the clear bytes; the dedup key is still the clear message's, so a replay matches.
        """
        key = _dedup_key(mailbox, message, held)
        content: bytes | None
        content, stored_message = sealed if sealed is not None else (held.content, None)
        if sealed is None and held.content == message:
            content = None  # held whole: the message is the content, kept once
        held_id = secrets.token_hex(16)
        now = self._clock()
        with write(self._engine) as conn:
            ref = keep_message(
                conn, self._backend, mailbox=mailbox, message=message, stored=stored_message,
                at=now,
            )  # fmt: skip
            created = self._backend.insert_ignore(
                conn,
                quarantine,
                {
                    "id": held_id,
                    "dedup_key": key,
                    "received_at": received_at,
                    "mailbox": mailbox,
                    "sender": sender,
                    "message_id": storable(message_id),
                    "subject": storable(subject),
                    "code": int(held.code),
                    "reason": storable(held.reason),
                    "sha256": held.sha256,
                    "size": held.size,
                    "content_type": storable(held.content_type, 200),
                    "origin": storable(held.origin),
                    "document": held.document.model_dump_json() if held.document else None,
                    "state": QuarantineState.HELD.value,
                    "content": content,
                    "message": None,
                    "message_ref": ref,
                    "updated_at": now,
                },
            )
            if not created:
                existing = conn.execute(
                    select(quarantine.c.id).where(quarantine.c.dedup_key == key)
                ).scalar_one()
                return str(existing), False
            audit.append(
                conn,
                actor=actor,
                action="quarantine.hold",
                subject=held_id,
                detail={
                    "mailbox": mailbox,
                    "code": int(held.code),
                    "sha256": held.sha256,
                    "encrypted": sealed is not None,
                },
            )
        return held_id, True

    def entries(self, *, state: QuarantineState | None = None) -> list[QuarantineEntry]:
        query = _select().order_by(quarantine.c.received_at, quarantine.c.id)
        if state is not None:
            query = query.where(quarantine.c.state == state.value)
        with self._engine.connect() as conn:
            return [_entry(r) for r in conn.execute(query)]

    def _row(self, held_id: str) -> Row[Any]:
        with self._engine.connect() as conn:
            row = conn.execute(_select().where(quarantine.c.id == held_id)).first()
        if row is None:
            raise NotFound(f"no quarantined document {held_id!r}")
        return row

    def get(self, held_id: str) -> QuarantineEntry:
        return _entry(self._row(held_id))

    def content(self, held_id: str) -> bytes:
        row = self._row(held_id)
        return self._message(row) if row.content is None else bytes(row.content)

    def message(self, held_id: str) -> bytes:
        return self._message(self._row(held_id))

    def _message(self, row: Row[Any]) -> bytes:
        if row.message is not None:
            return bytes(row.message)  # inline, written before revision 0008
        with self._engine.connect() as conn:
            return read_message(conn, row.message_ref)

    def mark_released(self, held_id: str, *, actor: str, detail: dict[str, Any]) -> None:
        with write(self._engine) as conn:
            result = conn.execute(
                update(quarantine)
                .where(quarantine.c.id == held_id, quarantine.c.state == "held")
                .values(state=QuarantineState.RELEASED.value, updated_at=self._clock())
            )
            if result.rowcount != 1:
                raise Conflict(f"quarantined document {held_id} is not held")
            audit.append(
                conn, actor=actor, action="quarantine.release", subject=held_id, detail=detail
            )

    def delete(self, held_id: str, *, actor: str) -> QuarantineEntry:
        entry = self.get(held_id)
        with write(self._engine) as conn:
            ref = conn.execute(
                select(quarantine.c.message_ref).where(quarantine.c.id == held_id)
            ).scalar_one_or_none()
            result = conn.execute(delete(quarantine).where(quarantine.c.id == held_id))
            if result.rowcount != 1:
                raise NotFound(f"no quarantined document {held_id!r}")
            if ref is not None:
                forget_if_unreferenced(conn, ref)
            audit.append(
                conn,
                actor=actor,
                action="quarantine.delete",
                subject=held_id,
                detail={"mailbox": entry.mailbox, "code": entry.code, "sha256": entry.sha256},
            )
        return entry
