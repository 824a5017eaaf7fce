"""Document pipeline jobs: delivered messages whose documents a RIS waits for.

A job is recorded in the transaction that records the delivery (`Spool.delivered`), and the
spool keeps the message and its file until every job of it is done. The document worker
(mssgate.documents_worker) takes due jobs, runs the pipeline apart from delivery, ingests the
outcome and marks the job done, in that order: a crash in between runs the job again, and
ingesting the same delivery again changes nothing.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine, and_, select, update

from mssgate import audit
from mssgate.db.schema import spool_documents, spool_messages
from mssgate.db.tx import write
from mssgate.directory.timeutil import now


class DocumentJob(BaseModel):
    model_config = ConfigDict(frozen=True)

    spool_id: str
    mailbox: str
    attempts: int


def add_document_job(conn: Connection, spool_id: str, mailbox: str) -> None:
    """Inside the delivery's transaction. A message delivered again (a held delivery that
    an operator released) makes its job due again rather than a second row."""
    stamp = now()
    found = conn.execute(
        update(spool_documents)
        .where(spool_documents.c.spool_id == spool_id, spool_documents.c.mailbox == mailbox)
        .values(state="pending", next_attempt_at=stamp, updated_at=stamp)
    ).rowcount
    if not found:
        conn.execute(
            spool_documents.insert().values(
                spool_id=spool_id,
                mailbox=mailbox,
                state="pending",
                attempts=0,
                last_error=None,
                next_attempt_at=stamp,
                updated_at=stamp,
            )
        )


def release_document_jobs(conn: Connection, spool_id: str) -> int:
    """`spool release`: held jobs of the message are due again; returns how many."""
    stamp = now()
    result = conn.execute(
        update(spool_documents)
        .where(spool_documents.c.spool_id == spool_id, spool_documents.c.state == "held")
        .values(state="pending", next_attempt_at=stamp, updated_at=stamp)
    )
    return int(result.rowcount)


class DocumentJobs:
    def __init__(self, engine: Engine, *, node: str | None = None) -> None:
        self._engine = engine
        # The pipeline reads the spool file: only jobs of this node's entries (see Spool).
        self._node = node

    def _key(self, job: DocumentJob) -> object:
        return and_(
            spool_documents.c.spool_id == job.spool_id, spool_documents.c.mailbox == job.mailbox
        )

    def due(self, *, limit: int = 100) -> list[DocumentJob]:
        query = select(spool_documents).where(
            spool_documents.c.state == "pending", spool_documents.c.next_attempt_at <= now()
        )
        if self._node is not None:
            query = query.join(
                spool_messages, spool_messages.c.id == spool_documents.c.spool_id
            ).where(spool_messages.c.node == self._node)
        query = query.order_by(spool_documents.c.spool_id).limit(limit)
        with self._engine.connect() as conn:
            return [
                DocumentJob(spool_id=r.spool_id, mailbox=r.mailbox, attempts=r.attempts)
                for r in conn.execute(query)
            ]

    def pending(self) -> int:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(spool_documents.c.spool_id).where(spool_documents.c.state == "pending")
            )
            return len(rows.all())

    def mark_done(self, conn: Connection, job: DocumentJob) -> None:
        """Inside `Spool.settle`'s transaction, which then finishes the message if it can."""
        conn.execute(
            update(spool_documents)
            .where(self._key(job))  # type: ignore[arg-type]
            .values(state="done", attempts=job.attempts + 1, last_error=None, updated_at=now())
        )

    def retry(self, job: DocumentJob, *, error: str, delay: timedelta) -> None:
        """The gateway's footing failed (database, disk): the job stays due, later."""
        stamp = now()
        with write(self._engine) as conn:
            conn.execute(
                update(spool_documents)
                .where(self._key(job))  # type: ignore[arg-type]
                .values(
                    attempts=job.attempts + 1,
                    last_error=error[:500],
                    next_attempt_at=stamp + delay,
                    updated_at=stamp,
                )
            )

    def hold(self, job: DocumentJob, *, reason: str) -> None:
        """Set aside after an unexpected error, until `spool release` makes it due again;
        the message and its file stay meanwhile."""
        with write(self._engine) as conn:
            # Only a job still pending: one an operator dropped meanwhile (`spool delete
            # --force`) stays dropped.
            held = conn.execute(
                update(spool_documents)
                .where(
                    self._key(job),  # type: ignore[arg-type]
                    spool_documents.c.state == "pending",
                )
                .values(
                    state="held",
                    attempts=job.attempts + 1,
                    last_error=reason[:500],
                    updated_at=now(),
                )
            ).rowcount
            if not held:
                return
            audit.append(
                conn,
                actor="spool",
                action="documents.held",
                subject=job.spool_id,
                detail={"mailbox": job.mailbox, "reason": reason[:200]},
            )
