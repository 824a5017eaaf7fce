"""Business acknowledgements leasable on the queue API (issue 15, mssgate.outbound.zamqueue):
each ZAM of an outbound message once, as an item of kind `ack` for the consumer that sent
it; and, per copy, whether its ZAM^Z02 was made, so that the sweeper reads only the copies
still in flight. Copies sent before this revision get their ZAMs at the first sweep.

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbound_recipients") as batch:
        batch.add_column(
            sa.Column("reception_zam", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_index(
        "ix_outbound_recipients_reception_zam", "outbound_recipients", ["reception_zam"]
    )
    op.create_table(
        "outbound_acks",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column(
            "outbound_id",
            sa.String(32),
            sa.ForeignKey("outbound_messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("consumer_id", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("trigger", sa.String(3), nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
        sa.Column("accepted", sa.Boolean, nullable=False),
        sa.Column("er7", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(6), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_id", sa.String(32)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('ready', 'leased', 'done')", name="ck_outbound_acks_state"),
        sa.CheckConstraint("trigger IN ('Z02', 'Z03')", name="ck_outbound_acks_trigger"),
        sa.UniqueConstraint("id", name="uq_outbound_acks_id"),
    )
    op.create_index("ix_outbound_acks_claim", "outbound_acks", ["consumer_id", "state", "seq"])
    op.create_index(
        "ix_outbound_acks_outbound", "outbound_acks", ["outbound_id", "position", "trigger"]
    )


def downgrade() -> None:
    op.drop_index("ix_outbound_acks_outbound", "outbound_acks")
    op.drop_index("ix_outbound_acks_claim", "outbound_acks")
    op.drop_table("outbound_acks")
    op.drop_index("ix_outbound_recipients_reception_zam", "outbound_recipients")
    with op.batch_alter_table("outbound_recipients") as batch:
        batch.drop_column("reception_zam")
