"""outbound_messages.origin_sender: for a routing rule's forward, the envelope sender of the
document it forwarded (mssgate.outbound.forward). At the recipient every forward has one
sender, our application mailbox; a withdrawal or replacement is forwarded only when the
document it names was forwarded there for the same sender, or anyone who sent a copy of a
document's uniqueId here could withdraw or replace the genuine one there in our name.

A plain ADD COLUMN (nullable) on SQLite, nothing rebuilt.

Revision ID: 0027
Revises: 0026
"""

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbound_messages", sa.Column("origin_sender", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("outbound_messages", "origin_sender")
