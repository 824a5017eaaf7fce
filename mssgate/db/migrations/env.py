"""Alembic environment: the caller hands over an open connection (see mssgate.db.migrate)."""

from alembic import context

connection = context.config.attributes["connection"]
# Batch mode lets later migrations alter tables on SQLite (copy-and-move).
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
