"""A read receipt (MDN) for a copy the RIS sent (mssgate.outbound.receipts): when, and the
disposition it reported; the status says `read` and a ZAM^Z03 follows.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbound_recipients") as batch:
        batch.add_column(sa.Column("read_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("disposition", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("outbound_recipients") as batch:
        batch.drop_column("disposition")
        batch.drop_column("read_at")
