"""The uniqueId of each queued document, indexed per mailbox (issue 15): a withdrawal or a
replacement is honoured only from whoever sent this mailbox the document it names, and that
check read every entry of the mailbox matching the id as text in the JSON record (0.23 s at
100k entries, on each such message). The column holds the SHA-256 of the uniqueId, so that a
hostile id of any length fits a fixed-size key (PostgreSQL refuses index entries past ~2.7
kB), and is NULL for a withdrawal (never what another withdrawal names) and for a document
without a uniqueId.

SQLite gets a plain ADD COLUMN and CREATE INDEX: no batch rebuild, which copies the table
and, with queue_contents and others referring to it ON DELETE CASCADE, lost their rows. The
existing entries are filled from their stored record, a batch at a time.

Revision ID: 0021
Revises: 0020
"""

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

_BATCH = 500

_docs = sa.table(
    "queue_documents",
    sa.column("seq", sa.Integer),
    sa.column("record", sa.Text),
    sa.column("unique_id_sha256", sa.String(64)),
)


def _key(record_json: str) -> str | None:
    """As mssgate.queue.withdrawal.unique_id_key, from the record as stored then."""
    document = json.loads(record_json).get("document") or {}
    unique_id = document.get("unique_id")
    if not unique_id or document.get("withdrawn"):
        return None
    return hashlib.sha256(unique_id.encode("utf-8")).hexdigest()


def upgrade() -> None:
    op.add_column("queue_documents", sa.Column("unique_id_sha256", sa.String(64)))
    op.create_index(
        "ix_queue_documents_unique_id", "queue_documents", ["mailbox", "unique_id_sha256"]
    )
    conn = op.get_bind()
    last = 0
    while True:
        rows = conn.execute(
            sa.select(_docs.c.seq, _docs.c.record)
            .where(_docs.c.seq > last)
            .order_by(_docs.c.seq)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        keys = [{"at": seq, "key": key} for seq, record in rows if (key := _key(record))]
        if keys:
            conn.execute(
                _docs.update()
                .where(_docs.c.seq == sa.bindparam("at"))
                .values(unique_id_sha256=sa.bindparam("key")),
                keys,
            )
        last = rows[-1].seq


def downgrade() -> None:
    op.drop_index("ix_queue_documents_unique_id", table_name="queue_documents")
    # Plain DROP COLUMN (SQLite 3.35+): no rebuild of a table others cascade from.
    op.drop_column("queue_documents", "unique_id_sha256")
