"""A received message is stored once (stored_messages), referenced by its documents.

Rows written before keep their inline copies (quarantine.message, the e-mail inside
queue_contents.hl7) and still read as they did: nothing is rewritten here.

Revision ID: 0008
Revises: 0007
"""

import base64

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_messages",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("mailbox", sa.String(254), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("encrypted", sa.Boolean, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Plain ADD COLUMN: on SQLite a batch (table rebuild) of queue_documents would empty
    # queue_contents through its ON DELETE CASCADE (see 0006).
    op.add_column("queue_documents", sa.Column("message_ref", sa.String(64)))
    op.add_column("queue_contents", sa.Column("hl7_email_at", sa.Integer))
    # Nothing references quarantine: rebuilding it on SQLite is safe.
    with op.batch_alter_table("quarantine") as batch:
        batch.add_column(sa.Column("message_ref", sa.String(64)))
        batch.alter_column("content", existing_type=sa.LargeBinary, nullable=True)
        batch.alter_column("message", existing_type=sa.LargeBinary, nullable=True)


def downgrade() -> None:
    bind = op.get_bind()
    # Put every message back inline before its table goes.
    bind.execute(
        sa.text(
            "UPDATE quarantine SET message = (SELECT content FROM stored_messages"
            " WHERE stored_messages.id = quarantine.message_ref) WHERE message IS NULL"
        )
    )
    bind.execute(sa.text("UPDATE quarantine SET content = message WHERE content IS NULL"))
    # And every MDM its e-mail, where it was cut out.
    rows = bind.execute(
        sa.text(
            "SELECT c.document_id, c.hl7, c.hl7_email_at, m.content FROM queue_contents c"
            " JOIN queue_documents d ON d.id = c.document_id"
            " JOIN stored_messages m ON m.id = d.message_ref"
            " WHERE c.hl7_email_at IS NOT NULL"
        )
    ).all()
    for document_id, hl7, at, message in rows:
        whole = bytes(hl7)[:at] + base64.b64encode(bytes(message)) + bytes(hl7)[at:]
        bind.execute(
            sa.text("UPDATE queue_contents SET hl7 = :hl7 WHERE document_id = :id"),
            {"hl7": whole, "id": document_id},
        )
    with op.batch_alter_table("quarantine") as batch:
        batch.alter_column("message", existing_type=sa.LargeBinary, nullable=False)
        batch.alter_column("content", existing_type=sa.LargeBinary, nullable=False)
        batch.drop_column("message_ref")
    op.drop_column("queue_contents", "hl7_email_at")
    op.drop_column("queue_documents", "message_ref")
    op.drop_table("stored_messages")
