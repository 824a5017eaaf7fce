"""Routing rules (issue 16): the rules written with `mssgate route add`, and the tags they put
on queued documents, one row per (document, tag) so that a lease can ask for one.

Two new tables: plain CREATE TABLE on SQLite, nothing rebuilt.

Revision ID: 0023
Revises: 0022
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routing_rules",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "queue_document_tags",
        sa.Column(
            "document_id",
            sa.String(32),
            sa.ForeignKey("queue_documents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("tag", sa.String(64), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("queue_document_tags")
    op.drop_table("routing_rules")
