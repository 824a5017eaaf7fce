"""The statements of a lease and an ack, built once per backend.

Building a SQLAlchemy statement (coercing every clause, then its cache key) cost three to five
times executing the built one (issue 17's profile: a third of a lease+ack's CPU). Values are
bound parameters, named apart from the columns they set (SQLAlchemy reserves those names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, Update, bindparam, exists, select, update

from mssgate.db.schema import queue_document_tags, queue_documents
from mssgate.queue.backend import Backend
from mssgate.queue.models import QueueState

_q = queue_documents.c


@dataclass(frozen=True)
class QueueStatements:
    # Params: mailbox, limit.
    claim_ready: Select[Any]
    # Params: mailbox, limit, tag (the documents a routing rule tagged so).
    claim_ready_tagged: Select[Any]
    # Params: doc_id, new_lease_id, consumer, expires, now.
    take_lease: Update
    # Params: doc_id.
    lock_document: Select[Any]
    # Params: doc_id, now.
    mark_done: Update

    @classmethod
    def for_backend(cls, backend: Backend) -> QueueStatements:
        return cls(
            claim_ready=backend.claim(
                select(queue_documents)
                .where(_q.mailbox == bindparam("mailbox"), _q.state == QueueState.READY.value)
                .order_by(_q.seq)
                .limit(bindparam("limit"))
            ),
            claim_ready_tagged=backend.claim(
                select(queue_documents)
                .where(
                    _q.mailbox == bindparam("mailbox"),
                    _q.state == QueueState.READY.value,
                    exists()
                    .where(
                        queue_document_tags.c.document_id == _q.id,
                        queue_document_tags.c.tag == bindparam("tag"),
                    )
                    .correlate(queue_documents),
                )
                .order_by(_q.seq)
                .limit(bindparam("limit"))
            ),
            take_lease=update(queue_documents)
            .where(_q.id == bindparam("doc_id"), _q.state == QueueState.READY.value)
            .values(
                state=QueueState.LEASED.value,
                attempts=_q.attempts + 1,
                lease_id=bindparam("new_lease_id"),
                lease_consumer=bindparam("consumer"),
                lease_expires_at=bindparam("expires"),
                updated_at=bindparam("now"),
            ),
            lock_document=backend.lock(select(queue_documents).where(_q.id == bindparam("doc_id"))),
            mark_done=update(queue_documents)
            .where(_q.id == bindparam("doc_id"))
            .values(
                state=QueueState.DONE.value, lease_expires_at=None, updated_at=bindparam("now")
            ),
        )
