"""RIS integration queue: documents, their bytes, quarantine, MDN outbox.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "queue_documents",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("mailbox", sa.String(254), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("subject", sa.Text),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("receipt_to", sa.String(254)),
        sa.Column("encrypted", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(6), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_id", sa.String(32)),
        sa.Column("lease_consumer", sa.String(64)),
        sa.Column("lease_expires_at", TZ),
        sa.Column("last_code", sa.Integer),
        sa.Column("last_reason", sa.Text),
        sa.Column("updated_at", TZ, nullable=False),
        sa.UniqueConstraint("mailbox", "sha256", name="uq_queue_documents_mailbox_sha256"),
        sa.CheckConstraint(
            "state IN ('ready', 'leased', 'done', 'dead')", name="ck_queue_documents_state"
        ),
    )
    op.create_index("ix_queue_documents_claim", "queue_documents", ["mailbox", "state", "seq"])
    op.create_table(
        "queue_contents",
        sa.Column(
            "document_id",
            sa.String(32),
            sa.ForeignKey("queue_documents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("hl7", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("dedup_key", sa.String(64), nullable=False, unique=True),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("mailbox", sa.String(254), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("subject", sa.Text),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("document", sa.Text),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("message", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.CheckConstraint("state IN ('held', 'released')", name="ck_quarantine_state"),
        sa.CheckConstraint("code BETWEEN 900 AND 999", name="ck_quarantine_code"),
    )
    op.create_table(
        "receipts_outbox",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("document_id", sa.String(32), nullable=False, unique=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("outcome", sa.String(9), nullable=False),
        sa.Column("mdn", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(7), nullable=False),
        sa.Column("handed_at", TZ),
        sa.CheckConstraint("state IN ('pending', 'handed')", name="ck_receipts_outbox_state"),
        sa.CheckConstraint("outcome IN ('processed', 'error')", name="ck_receipts_outbox_outcome"),
    )


def downgrade() -> None:
    op.drop_table("receipts_outbox")
    op.drop_table("quarantine")
    op.drop_table("queue_contents")
    op.drop_index("ix_queue_documents_claim", "queue_documents")
    op.drop_table("queue_documents")
