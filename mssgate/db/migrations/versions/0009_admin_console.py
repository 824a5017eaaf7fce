"""The admin console's token (one row, hashed) and an index for its quarantine pages.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_token",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("session_key", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_admin_token_one"),
    )
    op.create_index("ix_quarantine_received", "quarantine", ["received_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_received", table_name="quarantine")
    op.drop_table("admin_token")
