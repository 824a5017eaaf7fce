"""Delivered messages wait for the document pipeline in `spool_documents`, off the delivery path.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spool_documents",
        sa.Column(
            "spool_id",
            sa.String(32),
            sa.ForeignKey("spool_messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("mailbox", sa.String(254), primary_key=True),
        sa.Column("state", sa.String(7), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('pending', 'done', 'held')", name="ck_spool_documents_state"),
    )
    op.create_index("ix_spool_documents_due", "spool_documents", ["state", "next_attempt_at"])


def downgrade() -> None:
    # Before this revision the pipeline ran inside the delivery: a message still waiting here
    # has its mailbox copy already, and only its documents would be lost, so refuse.
    pending = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM spool_documents WHERE state != 'done'"))
        .scalar_one()
    )
    if pending:
        raise RuntimeError(
            f"{pending} delivered message(s) still wait for the document pipeline:"
            " let serve run them through the pipeline first, then downgrade"
        )
    op.drop_index("ix_spool_documents_due", table_name="spool_documents")
    op.drop_table("spool_documents")
