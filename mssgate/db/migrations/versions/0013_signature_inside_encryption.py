"""Per local domain: what happens to sign-then-encrypt mail whose signature the gateway
cannot see (accept, verify with a key it holds, refuse; docs/smime.md, "Sign-then-encrypt
from stock clients").

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL is the default, `accept`: existing domains take what stock clients send.
    op.add_column(
        "domains",
        sa.Column(
            "signature_inside_encryption",
            sa.String(6),
            sa.CheckConstraint(
                "signature_inside_encryption IS NULL"
                " OR signature_inside_encryption IN ('accept', 'verify', 'refuse')",
                name="ck_domains_signature_inside_encryption",
            ),
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("domains") as batch:
        batch.drop_constraint("ck_domains_signature_inside_encryption", type_="check")
        batch.drop_column("signature_inside_encryption")
