"""The hand-overs a home node took from other nodes (mssgate.handovers): a resend after a
lost 250 is recognized and answered 250 without a second delivery.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_handovers",
        sa.Column("handover_id", sa.String(64), primary_key=True),
        sa.Column("recipient", sa.String(320), primary_key=True),
        sa.Column("queue_id", sa.String(64), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_node_handovers_accepted_at", "node_handovers", ["accepted_at"])


def downgrade() -> None:
    op.drop_index("ix_node_handovers_accepted_at", "node_handovers")
    op.drop_table("node_handovers")
