"""The database's clock, for times that several machines write and compare.

Node heartbeats are stamped by each node and read by every other: stamped with each node's
own clock, a node whose clock runs a minute behind looks silent for a minute to the others,
and one past `node.down_after_seconds` behind looks down while it serves. Stamped and
compared with the one clock they share, the skew between nodes does not matter.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, func, select


def database_now(conn: Connection) -> datetime:
    """The database server's current time, aware UTC."""
    if conn.dialect.name == "postgresql":
        # clock_timestamp(), not now(): now() is the transaction's start.
        value: datetime = conn.execute(select(func.clock_timestamp())).scalar_one()
        # Naive read as UTC (directory.timeutil.aware; not imported: mssgate.directory's
        # package imports metrics, which imports this module, a cycle when entered here).
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)
    # SQLite runs inside this process: its clock is this machine's, as precise as SQLite
    # gives it (milliseconds), in the text form SQLAlchemy reads back for DateTime columns.
    text: str = conn.execute(select(func.strftime("%Y-%m-%d %H:%M:%f", "now"))).scalar_one()
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
