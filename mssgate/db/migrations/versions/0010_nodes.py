"""Several nodes on one database: the nodes table, the node holding each spool file, the home
node of each mailbox.

Existing rows get NULL: the migration runs before any node name is known to it (the CLI of
any node may run it). A spool row with NULL is adopted at start by the node whose data folder
holds its file, or by the only registered node (Spool.recover); a mailbox with NULL has no
home chosen.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("address", sa.String(300), nullable=False),
        sa.Column("data_dir", sa.Text),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    )
    # Plain ADD COLUMN: on SQLite a batch (table rebuild) of spool_messages or professionals
    # would empty the tables that reference them through ON DELETE CASCADE (see 0006).
    op.add_column("spool_messages", sa.Column("node", sa.String(63)))
    op.create_index("ix_spool_messages_node", "spool_messages", ["node", "state"])
    op.add_column("professionals", sa.Column("node", sa.String(63)))


def downgrade() -> None:
    op.drop_index("ix_spool_messages_node", table_name="spool_messages")
    # Plain DROP COLUMN (SQLite >= 3.35), for the same reason as above.
    op.drop_column("professionals", "node")
    op.drop_column("spool_messages", "node")
    op.drop_table("nodes")
