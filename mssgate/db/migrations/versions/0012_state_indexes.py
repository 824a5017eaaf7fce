"""Indexes on the state of spool messages, RIS documents and quarantine entries, and on
which professionals are hosted mailboxes and where.

The admin console counts what is still waiting (queued messages, ready or leased
documents, held quarantine entries) and, as `node list` does, the mailboxes each node homes.
Without these indexes those counts read every row ever kept (done and released ones, every
correspondent of the Annuaire) on each load of the overview.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_spool_messages_state", "spool_messages", ["state"])
    op.create_index("ix_queue_documents_state", "queue_documents", ["state"])
    op.create_index("ix_quarantine_state", "quarantine", ["state"])
    op.create_index("ix_professionals_local_node", "professionals", ["local", "node"])


def downgrade() -> None:
    op.drop_index("ix_professionals_local_node", table_name="professionals")
    op.drop_index("ix_quarantine_state", table_name="quarantine")
    op.drop_index("ix_queue_documents_state", table_name="queue_documents")
    op.drop_index("ix_spool_messages_state", table_name="spool_messages")
