"""Screening cases (issue 16, section 2): each CANCER-D2LM interpretation form the d2lm
preset sent to a CRCDC for the second reading (L2), until the L2 result comes back.

One new table: plain CREATE TABLE on SQLite, nothing rebuilt.

Revision ID: 0025
Revises: 0024
"""

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "screening_cases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("mailbox", sa.String(254), nullable=False),
        sa.Column("queue_document_id", sa.String(32), nullable=False),
        sa.Column("document_id", sa.String(200), nullable=False),
        sa.Column("set_id", sa.String(200)),
        sa.Column("ins", sa.String(64)),
        sa.Column("ins_oid", sa.String(64)),
        sa.Column("exam_date", sa.Date, nullable=False),
        sa.Column("exam_date_known", sa.Boolean, nullable=False),
        sa.Column("departement", sa.String(3)),
        sa.Column("crcdc", sa.String(254), nullable=False),
        sa.Column("l1_rpps", sa.String(200)),
        sa.Column("l1_email", sa.String(200)),
        sa.Column("gp_rpps", sa.String(200)),
        sa.Column("gp_email", sa.String(200)),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True)),
        sa.Column("result_queue_document_id", sa.String(32)),
        sa.Column("result_document_id", sa.String(200)),
        sa.UniqueConstraint("mailbox", "document_id", name="uq_screening_cases_form"),
    )
    op.create_index("ix_screening_cases_open", "screening_cases", ["state", "exam_date"])
    op.create_index("ix_screening_cases_set", "screening_cases", ["crcdc", "set_id"])


def downgrade() -> None:
    op.drop_index("ix_screening_cases_set", table_name="screening_cases")
    op.drop_index("ix_screening_cases_open", table_name="screening_cases")
    op.drop_table("screening_cases")
