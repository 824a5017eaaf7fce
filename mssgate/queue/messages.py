"""Received messages stored once per mailbox, referenced by their documents.

A message of a hundred documents used to be stored a hundred and more times: inside each
document's HL7 MDM (its e-mail, base64) and beside each quarantined entry. It is now one row
of `stored_messages`, written in the transaction of the first row that references it; the
MDM is stored without its e-mail and gets it back when read (`splice_email`).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import datetime
from typing import Final

from sqlalchemy import Connection, delete, exists, select

from mssgate.db.schema import quarantine, queue_documents, stored_messages
from mssgate.errors import NotFound, StorageError
from mssgate.queue.backend import Backend

# Random bytes whose base64 stands for the e-mail while the MDM is built: found once, cut
# out, and their place kept. 24 bytes: 32 base64 characters, no padding, never met by chance.
_MARKER_BYTES: Final = 24


def message_ref(mailbox: str, message: bytes, *, encrypted: bool) -> str:
    """The row's key: one per (mailbox, message, clear or sealed), so a replay finds it."""
    digest = hashlib.sha256(message).hexdigest()
    form = "sealed" if encrypted else "clear"
    return hashlib.sha256(f"{mailbox}\0{digest}\0{form}".encode()).hexdigest()


def keep_message(
    conn: Connection,
    backend: Backend,
    *,
    mailbox: str,
    message: bytes,
    stored: bytes | None = None,
    at: datetime,
) -> str:
    """Inside the caller's transaction: the message's row, written if new; returns its key.
    `stored` is what to keep instead of the clear `message` (sealed for the RIS's key)."""
    encrypted = stored is not None
    ref = message_ref(mailbox, message, encrypted=encrypted)
    row = {
        "id": ref,
        "mailbox": mailbox,
        "sha256": hashlib.sha256(message).hexdigest(),
        "size": len(message),
        "encrypted": encrypted,
        "content": stored if stored is not None else message,
        "created_at": at,
    }
    # The row is share-locked until the caller's reference commits: `forget_if_unreferenced`
    # in another process (the CLI beside serve, on PostgreSQL) waits for it, then sees the
    # reference. Found gone under the lock (deleted as this ran), it is written again.
    # (SQLite has one writer: the lock clause is not rendered there.)
    for _ in range(3):
        backend.insert_ignore(conn, stored_messages, row)
        found = conn.execute(
            select(stored_messages.c.id)
            .where(stored_messages.c.id == ref)
            .with_for_update(read=True, key_share=True)
        ).first()
        if found is not None:
            return ref
    raise StorageError(f"stored message {ref} keeps being deleted; try again")


def read_message(conn: Connection, ref: str) -> bytes:
    found = conn.execute(
        select(stored_messages.c.content).where(stored_messages.c.id == ref)
    ).scalar_one_or_none()
    if found is None:
        raise NotFound(f"stored message {ref} is missing")
    return bytes(found)


def forget_if_unreferenced(conn: Connection, ref: str) -> None:
    """After a referencing row went: the message goes too once nothing points at it.

    The row is locked first, so a transaction that is writing a new reference (and holds
    `keep_message`'s share lock) commits before the check below looks for references."""
    locked = conn.execute(
        select(stored_messages.c.id).where(stored_messages.c.id == ref).with_for_update()
    ).first()
    if locked is None:
        return
    used = conn.execute(
        select(
            exists().where(quarantine.c.message_ref == ref)
            | exists().where(queue_documents.c.message_ref == ref)
        )
    ).scalar_one()
    if not used:
        conn.execute(delete(stored_messages).where(stored_messages.c.id == ref))


def email_marker() -> bytes:
    return secrets.token_bytes(_MARKER_BYTES)


def cut_email(hl7: bytes, marker: bytes) -> tuple[bytes, int]:
    """The MDM built with `marker` as its e-mail, without it, and where it was."""
    encoded = base64.b64encode(marker)
    at = hl7.find(encoded)
    if at < 0 or hl7.find(encoded, at + 1) >= 0:
        raise ValueError("the e-mail marker is not in the MDM exactly once")
    return hl7[:at] + hl7[at + len(encoded) :], at


def splice_email(hl7: bytes, at: int, message: bytes) -> bytes:
    return hl7[:at] + base64.b64encode(message) + hl7[at:]
