"""Delivery status notifications (RFC 3461, issue 15): the DSN parameters a message came with
(RET and ENVID on the message, NOTIFY and ORCPT on each recipient) kept with its spool entry
so that a crash loses none of them; and, for a RIS's copy, what a DSN from the recipient's
domain reported (mssgate.outbound.receipts): the status says `delivered` or `failed`.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


# Plain ADD/DROP COLUMN, never batch mode: on SQLite a batch rebuilds the table, and
# rebuilding spool_messages cascades (ON DELETE CASCADE) through its recipients.
def upgrade() -> None:
    op.add_column("spool_messages", sa.Column("dsn_ret", sa.String(4)))
    op.add_column("spool_messages", sa.Column("dsn_envid", sa.String(100)))
    op.add_column("spool_recipients", sa.Column("dsn_notify", sa.String(32)))
    op.add_column("spool_recipients", sa.Column("dsn_orcpt", sa.Text))
    op.add_column("outbound_recipients", sa.Column("dsn_action", sa.String(16)))
    op.add_column("outbound_recipients", sa.Column("dsn_status", sa.String(16)))
    op.add_column("outbound_recipients", sa.Column("dsn_detail", sa.String(400)))
    op.add_column("outbound_recipients", sa.Column("dsn_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    for name in ("dsn_at", "dsn_detail", "dsn_status", "dsn_action"):
        op.drop_column("outbound_recipients", name)
    op.drop_column("spool_recipients", "dsn_orcpt")
    op.drop_column("spool_recipients", "dsn_notify")
    op.drop_column("spool_messages", "dsn_envid")
    op.drop_column("spool_messages", "dsn_ret")
