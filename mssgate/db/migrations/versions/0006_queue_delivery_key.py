"""Queue documents are keyed by delivery, not by bytes: a resend is a new entry.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _rebuilding_parent(change: Callable[[], None]) -> None:
    """Runs a batch change of queue_documents without losing queue_contents.

    On SQLite a batch change copies the table and drops the old one; with foreign keys on
    (they always are, see mssgate.db.engine) that drop deletes every queue_contents row by
    ON DELETE CASCADE, and the pragma cannot be turned off inside the migration's
    transaction. The bytes are kept aside in a temporary table and put back.
    """
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("CREATE TEMP TABLE keep_queue_contents AS SELECT * FROM queue_contents")
    change()
    if sqlite:
        op.execute(
            "INSERT INTO queue_contents (document_id, content, hl7)"
            " SELECT document_id, content, hl7 FROM keep_queue_contents"
            " WHERE document_id NOT IN (SELECT document_id FROM queue_contents)"
            " AND document_id IN (SELECT id FROM queue_documents)"
        )
        op.execute("DROP TABLE keep_queue_contents")


def upgrade() -> None:
    op.add_column("queue_documents", sa.Column("delivery_key", sa.String(64)))
    op.add_column("queue_documents", sa.Column("duplicate_of", sa.String(32)))
    # A row from before was the one delivery of its bytes: its own id (32 characters, never
    # one of the 64-character keys computed from now on) is a key no replay will match.
    op.execute("UPDATE queue_documents SET delivery_key = id")

    def change() -> None:
        with op.batch_alter_table("queue_documents") as batch:
            batch.drop_constraint("uq_queue_documents_mailbox_sha256", type_="unique")
            batch.alter_column("delivery_key", existing_type=sa.String(64), nullable=False)
            batch.create_unique_constraint("uq_queue_documents_delivery_key", ["delivery_key"])

    _rebuilding_parent(change)
    op.create_index("ix_queue_documents_sha256", "queue_documents", ["mailbox", "sha256", "seq"])


def downgrade() -> None:
    # The old key holds one row per (mailbox, bytes): later copies (resends) go, with their
    # bytes; the earliest of each stays.
    op.execute(
        "DELETE FROM queue_documents WHERE seq NOT IN"
        " (SELECT MIN(seq) FROM queue_documents GROUP BY mailbox, sha256)"
    )
    op.execute(
        "DELETE FROM queue_contents WHERE document_id NOT IN (SELECT id FROM queue_documents)"
    )
    op.drop_index("ix_queue_documents_sha256", table_name="queue_documents")

    def change() -> None:
        with op.batch_alter_table("queue_documents") as batch:
            batch.drop_constraint("uq_queue_documents_delivery_key", type_="unique")
            batch.drop_column("duplicate_of")
            batch.drop_column("delivery_key")
            batch.create_unique_constraint(
                "uq_queue_documents_mailbox_sha256", ["mailbox", "sha256"]
            )

    _rebuilding_parent(change)
