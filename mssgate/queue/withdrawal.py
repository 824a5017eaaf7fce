"""Whether a withdrawal may reach the RIS as MDM^T04: only from the document's own sender.

Nothing in an IHE_XDM.ZIP proves who may withdraw a document: any practitioner can mail an
entry whose status is Deprecated, with a uniqueId copied from a report they were sent (or
guessed). A RIS that gets MDM^T04 takes the document out of the patient's record, so the
gateway honours a withdrawal only when this mailbox got the document with that uniqueId, not
itself withdrawn, from the same envelope sender (authenticated by its MSSanté operator like
any sender); anything else is held for an operator with the reason.
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


def withdrawal_refusal(
    engine: Engine, record: DocumentRecord, *, mailbox: str, sender: str
) -> str | None:
    """None when `record` (withdrawn) withdraws a document `sender` sent to `mailbox`;
    else why it is held."""
    unique_id = record.document.unique_id
    if not unique_id:
        return f"withdrawal from {sender} names no document (no uniqueId): held, not sent as T04"
    # The record column holds the JSON of the DocumentRecord: the LIKE narrows the mailbox's
    # entries to those naming the id; each is then read whole (the id may be another's
    # `replaces`). An id the JSON escapes (a quote, a backslash) is not found: held, safe.
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
    if others:
        return (
            f"withdrawal of document {unique_id} from {sender}, who did not send it to this"
            f" mailbox ({', '.join(sorted(others)[:3])} did): held, not sent as T04"
        )
    return (
        f"withdrawal of document {unique_id} from {sender}: this mailbox never got that"
        " document from that sender: held, not sent as T04"
    )
