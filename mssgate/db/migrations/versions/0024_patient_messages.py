"""Patient mailboxes (issue 16, section 3): the messages sent to a patient's mailbox, which
the patient's replies must refer to, and which say when a professional ended the
conversation (X-MSS-MES: FIN).

One new table: plain CREATE TABLE on SQLite, nothing rebuilt.

Revision ID: 0024
Revises: 0023
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_messages",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("ins", sa.String(15), nullable=False),
        sa.Column("mailbox", sa.String(254), nullable=False),
        sa.Column("spool_id", sa.String(32), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_conversation", sa.Boolean, nullable=False),
    )
    op.create_index("ix_patient_messages_reply", "patient_messages", ["ins", "message_id"])
    op.create_index("ix_patient_messages_pair", "patient_messages", ["ins", "mailbox", "seq"])


def downgrade() -> None:
    op.drop_table("patient_messages")
