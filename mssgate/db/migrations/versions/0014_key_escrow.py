"""Practitioners' signing keys held by the gateway (wrapped), and per local domain whether
the gateway signs for its users (docs/smime.md, "Signed by the gateway").

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "escrowed_keys",
        sa.Column(
            "professional_id",
            sa.Integer,
            sa.ForeignKey("professionals.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False),
        sa.Column("cert_pem", sa.Text, nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    )
    # No row: the default, `missing`, for every local domain, the existing ones included.
    op.create_table(
        "domain_signing",
        sa.Column(
            "name",
            sa.String(253),
            sa.ForeignKey("domains.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sign_for_users", sa.String(7), nullable=False),
        sa.CheckConstraint(
            "sign_for_users IN ('off', 'missing', 'always')", name="ck_domain_signing_mode"
        ),
    )


def downgrade() -> None:
    op.drop_table("domain_signing")
    op.drop_table("escrowed_keys")
