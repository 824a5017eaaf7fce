"""Initial schema: directory, certificates, domains, consumers, audit chain.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "professionals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(254), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("id_type", sa.String(5)),
        sa.Column("idnat", sa.String(12)),
        sa.Column("profession_code", sa.String(16)),
        sa.Column("kind", sa.String(3), nullable=False),
        sa.Column("state", sa.String(9), nullable=False),
        sa.Column("local", sa.Boolean, nullable=False),
        sa.Column("password_hash", sa.String(200)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.CheckConstraint("kind IN ('PER', 'ORG', 'APP')", name="ck_professionals_kind"),
        sa.CheckConstraint("state IN ('active', 'suspended')", name="ck_professionals_state"),
        sa.CheckConstraint(
            "id_type IS NULL OR id_type IN ('RPPS', 'ADELI')", name="ck_prof_idtype"
        ),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "professional_id",
            sa.Integer,
            sa.ForeignKey("professionals.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("issuer", sa.Text, nullable=False),
        sa.Column("not_before", TZ, nullable=False),
        sa.Column("not_after", TZ, nullable=False),
        sa.Column("pem", sa.Text, nullable=False),
        sa.Column("added_at", TZ, nullable=False),
        sa.UniqueConstraint(
            "professional_id", "fingerprint_sha256", name="uq_certificates_prof_fp"
        ),
    )
    op.create_table(
        "domains",
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("kind", sa.String(7), nullable=False),
        sa.Column("relay_host", sa.String(253)),
        sa.Column("relay_port", sa.Integer),
        sa.Column("ca_pem", sa.Text),
        sa.Column("operator_dn", sa.Text),
        sa.Column("added_at", TZ, nullable=False),
        sa.CheckConstraint("kind IN ('local', 'trusted')", name="ck_domains_kind"),
    )
    op.create_table(
        "consumers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("mailbox", sa.String(254), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("pgp_key", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("revoked_at", TZ),
    )
    op.create_table(
        "audit",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": "0" * 64}])


def downgrade() -> None:
    for name in ("audit_head", "audit", "consumers", "domains", "certificates", "professionals"):
        op.drop_table(name)
