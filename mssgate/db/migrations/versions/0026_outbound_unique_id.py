"""An index on outbound_messages (consumer_id, unique_id): a routing rule's forward asks,
before sending, whether the same document already went to the same address by a forward
(mssgate.outbound.forward); without it, each forward read every forward ever made.

A plain CREATE INDEX on SQLite, nothing rebuilt.

Revision ID: 0026
Revises: 0025
"""

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_outbound_messages_unique_id", "outbound_messages", ["consumer_id", "unique_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_outbound_messages_unique_id", "outbound_messages")
