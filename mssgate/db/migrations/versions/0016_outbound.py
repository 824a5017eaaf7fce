"""Messages a RIS sends through the gateway (issue 15, mssgate.outbound): one row per
submission, unique per consumer and MSH-10 (the same message posted twice is sent once), and
one row per recipient naming the spool entry that carries it.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbound_messages",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("consumer_id", sa.Integer, nullable=False),
        sa.Column("control_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(8), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("unique_id", sa.String(300)),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ack", sa.Text, nullable=False),
        sa.UniqueConstraint("consumer_id", "control_id", name="uq_outbound_consumer_control"),
    )
    op.create_table(
        "outbound_recipients",
        sa.Column(
            "outbound_id",
            sa.String(32),
            sa.ForeignKey("outbound_messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("recipient", sa.String(254), primary_key=True),
        sa.Column("spool_id", sa.String(32), nullable=False),
        sa.Column("message_id", sa.String(300), nullable=False),
    )
    op.create_index("ix_outbound_recipients_message_id", "outbound_recipients", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_outbound_recipients_message_id", "outbound_recipients")
    op.drop_table("outbound_recipients")
    op.drop_table("outbound_messages")
