"""A consumer's token can be replaced without a new consumer (`mssgate consumer token`): the
consumer id, which its outbound messages, ZAM items, leases and MLLP certificate are keyed
by, stays. The token it replaces may keep working for a grace period so that a RIS switches
without downtime: its SHA-256 and the end of that grace are kept beside the current one.

SQLite gets a plain ADD COLUMN and CREATE INDEX: no batch rebuild of a table others refer to.

Revision ID: 0022
Revises: 0021
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("consumers", sa.Column("previous_token_sha256", sa.String(64)))
    op.add_column("consumers", sa.Column("previous_token_until", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_consumers_previous_token", "consumers", ["previous_token_sha256"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ix_consumers_previous_token", table_name="consumers")
    # Plain DROP COLUMN (SQLite 3.35+): no rebuild.
    op.drop_column("consumers", "previous_token_until")
    op.drop_column("consumers", "previous_token_sha256")
