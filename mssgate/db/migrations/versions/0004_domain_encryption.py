"""Per-domain S/MIME encryption policy and cipher.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN with a column CHECK: SQLite and PostgreSQL both take it without the
    # table copy a batch migration would make. NULL keeps every existing domain on the
    # global default, which is what it had before.
    op.add_column(
        "domains",
        sa.Column(
            "encryption",
            sa.String(13),
            sa.CheckConstraint(
                "encryption IS NULL OR encryption IN ('required', 'opportunistic', 'off')",
                name="ck_domains_encryption",
            ),
        ),
    )
    op.add_column(
        "domains",
        sa.Column(
            "cipher",
            sa.String(7),
            sa.CheckConstraint(
                "cipher IS NULL OR cipher IN ('aes-gcm', 'aes-cbc')", name="ck_domains_cipher"
            ),
        ),
    )


def downgrade() -> None:
    # Batch mode: SQLite rebuilds the table, and would carry the column CHECKs over to a
    # table that no longer has their columns unless they are dropped first.
    with op.batch_alter_table("domains") as batch:
        batch.drop_constraint("ck_domains_cipher", type_="check")
        batch.drop_constraint("ck_domains_encryption", type_="check")
        batch.drop_column("cipher")
        batch.drop_column("encryption")
