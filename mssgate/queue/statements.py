"""The statements of a lease and an ack, built once per backend.

Building a SQLAlchemy statement (coercing every clause, then its cache key) cost three to five
times executing the built one (issue 17's profile: a third of a lease+ack's CPU); executing a
built one through SQLAlchemy, half of what was left, so they run as `Prepared` statements on the
driver's cursor (mssgate.db.prepared). Values are bound parameters, named apart from the columns
they set (SQLAlchemy reserves those names). Every statement returns the whole row, or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, bindparam, cast, exists, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.elements import Grouping

from mssgate.db.prepared import Prepared
from mssgate.db.schema import queue_document_tags, queue_documents
from mssgate.queue.backend import Backend
from mssgate.queue.models import QueueState

_q = queue_documents.c


@dataclass(frozen=True)
class QueueStatements:
    # Params: mailbox, limit.
    claim_ready: Prepared
    # Params: mailbox, limit, tag (the documents a routing rule tagged so).
    claim_ready_tagged: Prepared
    # Params: doc_id, new_lease_id, consumer, expires, now. The row as leased, or none when
    # the document was taken meanwhile.
    take_lease: Prepared
    # Params: doc_id.
    lock_document: Prepared
    # Params: doc_id, now.
    mark_done: Prepared
    # Params: doc_id, holder_mailbox, held_lease, now. The ack of a lease still held, in one
    # statement; no row back means the lease or the document is not what the ack says, and
    # the caller reads the row to say which.
    ack_held: Prepared
    # PostgreSQL only (None on SQLite): claim_ready and take_lease in one statement, one round
    # trip for the whole batch. Params: in_mailbox, limit, in_tag (tagged), lease_ids (one per
    # document, in seq order), consumer, expires, now. Rows come back in no order. (An UPDATE
    # reserves its columns' names for bound parameters: hence in_mailbox.)
    lease_ready: Prepared | None
    lease_ready_tagged: Prepared | None

    @classmethod
    def for_backend(cls, backend: Backend) -> QueueStatements:
        ready = _q.mailbox == bindparam("mailbox"), _q.state == QueueState.READY.value
        tagged = (
            exists()
            .where(
                queue_document_tags.c.document_id == _q.id,
                queue_document_tags.c.tag == bindparam("tag"),
            )
            .correlate(queue_documents)
        )
        postgres = backend.name == "postgresql"
        return cls(
            claim_ready=_rows(
                backend.claim(
                    select(queue_documents).where(*ready).order_by(_q.seq).limit(bindparam("limit"))
                )
            ),
            claim_ready_tagged=_rows(
                backend.claim(
                    select(queue_documents)
                    .where(*ready, tagged)
                    .order_by(_q.seq)
                    .limit(bindparam("limit"))
                )
            ),
            lease_ready=_rows(_lease_ready(backend, False)) if postgres else None,
            lease_ready_tagged=_rows(_lease_ready(backend, True)) if postgres else None,
            ack_held=_rows(
                update(queue_documents)
                .where(
                    _q.id == bindparam("doc_id"),
                    _q.mailbox == bindparam("holder_mailbox"),
                    _q.state == QueueState.LEASED.value,
                    _q.lease_id == bindparam("held_lease"),
                    _q.lease_expires_at > bindparam("now"),
                )
                .values(
                    state=QueueState.DONE.value, lease_expires_at=None, updated_at=bindparam("now")
                )
                .returning(*queue_documents.c)
            ),
            take_lease=_rows(
                update(queue_documents)
                .where(_q.id == bindparam("doc_id"), _q.state == QueueState.READY.value)
                .values(
                    state=QueueState.LEASED.value,
                    attempts=_q.attempts + 1,
                    lease_id=bindparam("new_lease_id"),
                    lease_consumer=bindparam("consumer"),
                    lease_expires_at=bindparam("expires"),
                    updated_at=bindparam("now"),
                )
                .returning(*queue_documents.c)
            ),
            lock_document=_rows(
                backend.lock(select(queue_documents).where(_q.id == bindparam("doc_id")))
            ),
            mark_done=Prepared(
                update(queue_documents)
                .where(_q.id == bindparam("doc_id"))
                .values(
                    state=QueueState.DONE.value, lease_expires_at=None, updated_at=bindparam("now")
                )
            ),
        )


def _rows(statement: ClauseElement) -> Prepared:
    """A statement that selects or returns the whole row, in the table's column order."""
    return Prepared(statement, queue_documents.c)


def _lease_ready(backend: Backend, tagged: bool) -> ReturningUpdate[Any]:
    candidates = select(_q.id, _q.seq).where(
        _q.mailbox == bindparam("in_mailbox"), _q.state == QueueState.READY.value
    )
    if tagged:
        candidates = candidates.where(
            exists()
            .where(
                queue_document_tags.c.document_id == _q.id,
                queue_document_tags.c.tag == bindparam("in_tag"),
            )
            .correlate(queue_documents)
        )
    # The candidates are locked (SKIP LOCKED: another leaser's are passed over) in a CTE, then
    # numbered in seq order in a second one (PostgreSQL refuses a window function beside FOR
    # UPDATE) so that each takes its own lease id, made in Python by the secrets module.
    picked = backend.claim(candidates.order_by(_q.seq).limit(bindparam("limit"))).cte("picked")
    numbered = select(picked.c.id, func.row_number().over(order_by=picked.c.seq).label("n")).cte(
        "numbered"
    )
    # Grouped: PostgreSQL subscripts a parenthesised CAST only.
    lease_ids = Grouping(cast(bindparam("lease_ids", type_=ARRAY(Text)), ARRAY(Text)))
    return (
        update(queue_documents)
        .where(_q.id == numbered.c.id)
        .values(
            state=QueueState.LEASED.value,
            attempts=_q.attempts + 1,
            lease_id=lease_ids[numbered.c.n],
            lease_consumer=bindparam("consumer"),
            lease_expires_at=bindparam("expires"),
            updated_at=bindparam("now"),
        )
        .returning(*queue_documents.c)
    )
