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


def upgrade() -> None:
    with op.batch_alter_table("spool_messages") as batch:
        batch.add_column(sa.Column("dsn_ret", sa.String(4)))
        batch.add_column(sa.Column("dsn_envid", sa.String(100)))
    with op.batch_alter_table("spool_recipients") as batch:
        batch.add_column(sa.Column("dsn_notify", sa.String(32)))
        batch.add_column(sa.Column("dsn_orcpt", sa.Text))
    with op.batch_alter_table("outbound_recipients") as batch:
        batch.add_column(sa.Column("dsn_action", sa.String(16)))
        batch.add_column(sa.Column("dsn_status", sa.String(16)))
        batch.add_column(sa.Column("dsn_detail", sa.String(400)))
        batch.add_column(sa.Column("dsn_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("outbound_recipients") as batch:
        for name in ("dsn_at", "dsn_detail", "dsn_status", "dsn_action"):
            batch.drop_column(name)
    with op.batch_alter_table("spool_recipients") as batch:
        batch.drop_column("dsn_orcpt")
        batch.drop_column("dsn_notify")
    with op.batch_alter_table("spool_messages") as batch:
        batch.drop_column("dsn_envid")
        batch.drop_column("dsn_ret")
