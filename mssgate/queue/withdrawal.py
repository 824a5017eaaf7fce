"""Whether a withdrawal (MDM^T04) or a replacement (MDM^T10) may reach the RIS as such: only
from the sender of the document it withdraws or replaces.

Nothing in an IHE_XDM.ZIP proves who may withdraw a document: any practitioner can mail an
entry whose status is Deprecated, with a uniqueId copied from a report they were sent (or
guessed). A RIS that gets MDM^T04 takes the document out of the patient's record, so the
gateway honours a withdrawal only when this mailbox got the document with that uniqueId, not
itself withdrawn, from the same envelope sender (authenticated by its MSSanté operator like
any sender); anything else is held for an operator with the reason. A replacement (a CDA
whose relatedDocument RPLC names an earlier document) does the same harm through T10 (the
RIS supersedes the earlier document with it): from anyone else it goes as a new document
(T02) with a note, its content delivered, nothing superseded.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Engine, Select, select

from mssgate.db.schema import queue_documents
from mssgate.documents.record import DocumentRecord


def unique_id_key(record: DocumentRecord) -> str | None:
    """What queue_documents.unique_id_sha256 holds for `record`: the hash of its uniqueId
    (fixed-size, whatever the sender put there), or None for a withdrawal, which is never
    the document another withdrawal or a replacement names, and without a uniqueId."""
    document = record.document
    if not document.unique_id or document.withdrawn:
        return None
    return _key(document.unique_id)


def _key(unique_id: str) -> str:
    return hashlib.sha256(unique_id.encode("utf-8")).hexdigest()


def senders_query(unique_id: str, mailbox: str) -> Select[tuple[str]]:
    """Who sent `mailbox` the document `unique_id`: on the index (mailbox, unique_id_sha256),
    a few rows whatever the size of the mailbox's queue."""
    return select(queue_documents.c.sender).where(
        queue_documents.c.mailbox == mailbox,
        queue_documents.c.unique_id_sha256 == _key(unique_id),
    )


def _same_sender(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def _sent_by(engine: Engine, unique_id: str, *, mailbox: str, sender: str) -> set[str] | None:
    """None when `sender` sent `mailbox` the document `unique_id` (not a withdrawal of it);
    else whoever else did (empty: nobody)."""
    with engine.connect() as conn:
        senders = {str(s) for s in conn.execute(senders_query(unique_id, mailbox)).scalars()}
    if any(_same_sender(s, sender) for s in senders):
        return None
    return senders


def _not_sent(unique_id: str, sender: str, others: set[str]) -> str:
    if others:
        return (
            f"{sender} did not send document {unique_id} to this mailbox"
            f" ({', '.join(sorted(others)[:3])} did)"
        )
    return f"this mailbox never got document {unique_id} from {sender}"


def withdrawal_refusal(
    engine: Engine, record: DocumentRecord, *, mailbox: str, sender: str
) -> str | None:
    """None when `record` (withdrawn) withdraws a document `sender` sent to `mailbox`;
    else why it is held."""
    unique_id = record.document.unique_id
    if not unique_id:
        return f"withdrawal from {sender} names no document (no uniqueId): held, not sent as T04"
    others = _sent_by(engine, unique_id, mailbox=mailbox, sender=sender)
    if others is None:
        return None
    return f"withdrawal: {_not_sent(unique_id, sender, others)}: held, not sent as T04"


def replacement_refusal(
    engine: Engine, record: DocumentRecord, *, mailbox: str, sender: str
) -> str | None:
    """None when the document `record` replaces came to `mailbox` from `sender`; else why
    it goes to the RIS as a new document (T02) rather than as that one's replacement."""
    replaced = record.document.replaces
    if not replaced:
        return None
    others = _sent_by(engine, replaced, mailbox=mailbox, sender=sender)
    if others is None:
        return None
    return (
        f"its CDA replaces document {replaced}, but {_not_sent(replaced, sender, others)}:"
        " sent as a new document (MDM^T02), not as the replacement (T10)"
    )
