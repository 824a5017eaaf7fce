"""Durable spool: messages and per-recipient delivery state.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "spool_messages",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("listener", sa.String(16), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("identity", sa.String(254)),
        sa.Column("peer", sa.String(64)),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.CheckConstraint("state IN ('queued', 'done')", name="ck_spool_messages_state"),
    )
    op.create_table(
        "spool_recipients",
        sa.Column(
            "spool_id",
            sa.String(32),
            sa.ForeignKey("spool_messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("recipient", sa.String(254), primary_key=True),
        sa.Column("route", sa.String(8), nullable=False),
        sa.Column("state", sa.String(9), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.CheckConstraint("route IN ('local', 'relay')", name="ck_spool_recipients_route"),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed')", name="ck_spool_recipients_state"
        ),
    )
    op.create_index("ix_spool_recipients_pending", "spool_recipients", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_spool_recipients_pending", "spool_recipients")
    op.drop_table("spool_recipients")
    op.drop_table("spool_messages")
