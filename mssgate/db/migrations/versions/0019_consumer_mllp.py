"""MLLP for the RIS (issue 15, mssgate.mllp): the client certificate a consumer's MLLP
connections present (its SHA-256, one per consumer: issuing a new one drops the old), and
where its mailbox's queue is pushed (mllp://host:port, and the CA its server is checked
against).

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consumers") as batch:
        batch.add_column(sa.Column("mllp_cert_sha256", sa.String(64)))
        batch.add_column(sa.Column("push_url", sa.String(300)))
        batch.add_column(sa.Column("push_ca", sa.Text))
        batch.create_unique_constraint("uq_consumers_mllp_cert", ["mllp_cert_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("consumers") as batch:
        batch.drop_constraint("uq_consumers_mllp_cert", type_="unique")
        batch.drop_column("push_ca")
        batch.drop_column("push_url")
        batch.drop_column("mllp_cert_sha256")
