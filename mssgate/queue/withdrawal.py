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

import json

from sqlalchemy import Engine, select

from mssgate.db.schema import queue_documents
from mssgate.documents.record import DocumentRecord

_LIKE_ESCAPE = "\\"


def _like_fragment(text: str) -> str:
    """`text` matched literally inside a LIKE pattern."""
    for char in (_LIKE_ESCAPE, "%", "_"):
        text = text.replace(char, _LIKE_ESCAPE + char)
    return text


def _same_sender(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def _sent_by(engine: Engine, unique_id: str, *, mailbox: str, sender: str) -> set[str] | None:
    """None when `sender` sent `mailbox` the document `unique_id` (not a withdrawal of it);
    else whoever else did (empty: nobody)."""
    # The record column holds the DocumentRecord's JSON: the LIKE (the id as a JSON string)
    # narrows the mailbox's entries to those naming it; each is then read whole (the id
    # may be another's `replaces`).
    pattern = "%" + _like_fragment(json.dumps(unique_id, ensure_ascii=False)) + "%"
    query = select(queue_documents.c.sender, queue_documents.c.record).where(
        queue_documents.c.mailbox == mailbox,
        queue_documents.c.record.like(pattern, escape=_LIKE_ESCAPE),
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    others: set[str] = set()
    for row in rows:
        earlier = DocumentRecord.model_validate_json(row.record).document
        if earlier.unique_id != unique_id or earlier.withdrawn:
            continue
        if _same_sender(str(row.sender), sender):
            return None
        others.add(str(row.sender))
    return others


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
