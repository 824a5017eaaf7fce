"""Spool recipients may be `held`: set aside after an unexpected error, with its reason.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_OLD = "state IN ('pending', 'delivered', 'failed')"
_NEW = "state IN ('pending', 'delivered', 'failed', 'held')"


def upgrade() -> None:
    # Batch mode: SQLite cannot alter a CHECK in place, it rebuilds the table.
    with op.batch_alter_table("spool_recipients") as batch:
        batch.drop_constraint("ck_spool_recipients_state", type_="check")
        batch.create_check_constraint("ck_spool_recipients_state", _NEW)


def downgrade() -> None:
    # A held delivery goes back to pending: the worker retries it, as before this revision.
    op.execute("UPDATE spool_recipients SET state = 'pending' WHERE state = 'held'")
    with op.batch_alter_table("spool_recipients") as batch:
        batch.drop_constraint("ck_spool_recipients_state", type_="check")
        batch.create_check_constraint("ck_spool_recipients_state", _OLD)
