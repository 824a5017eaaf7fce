"""Rows for the admin console's pages: many of each, written straight into the tables (the
console reads tables; going through SMTP for 10,000 messages would test something else).
Shared with bench/admin_console.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from mssgate import audit
from mssgate.audit import NewEntry
from mssgate.db.schema import (
    domains,
    professionals,
    quarantine,
    queue_documents,
    spool_messages,
    spool_recipients,
)
from mssgate.db.tx import write

BATCH = 1000


def seed(engine: Engine, rows: int, *, mailbox: str, sender: str = "dr.x@clinique-b.test") -> None:
    """`rows` entries in the directory, domains, spool, queue (for `mailbox`), quarantine
    and audit trail, with arrival times one second apart."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for first in range(0, rows, BATCH):
        numbers = range(first, min(first + BATCH, rows))
        at = [start + timedelta(seconds=i) for i in numbers]
        with write(engine) as conn:
            conn.execute(professionals.insert(), [
                {"address": f"dr{i:06d}@annuaire.test", "display_name": f"Dr {i}",
                 "id_type": "RPPS", "idnat": f"{i:011d}", "profession_code": "10",
                 "kind": "PER", "state": "active", "local": False, "source": "annuaire",
                 "created_at": t, "updated_at": t}
                for i, t in zip(numbers, at, strict=True)
            ])  # fmt: skip
            conn.execute(domains.insert(), [
                {"name": f"peer{i:06d}.test", "kind": "trusted", "relay_host": f"mx.peer{i}.test",
                 "relay_port": 25, "added_at": t}
                for i, t in zip(numbers, at, strict=True)
            ])  # fmt: skip
            conn.execute(spool_messages.insert(), [
                {"id": f"{i:011X}SEED{i:06d}"[:32], "received_at": t, "listener": "mta",
                 "sender": sender, "size": 1000 + i, "state": "queued"}
                for i, t in zip(numbers, at, strict=True)
            ])  # fmt: skip
            conn.execute(spool_recipients.insert(), [
                {"spool_id": f"{i:011X}SEED{i:06d}"[:32], "recipient": mailbox, "route": "local",
                 "state": "pending", "attempts": 1, "last_error": "451 4.3.0 try again",
                 "next_attempt_at": t, "updated_at": t}
                for i, t in zip(numbers, at, strict=True)
            ])  # fmt: skip
            conn.execute(queue_documents.insert(), [
                {"id": f"doc{i:06d}", "delivery_key": f"key{i:06d}", "mailbox": mailbox,
                 "sha256": f"{i:064x}", "size": 10, "content_type": "text/xml",
                 "received_at": t, "sender": sender, "record": "{}", "headers": "",
                 "encrypted": False, "state": "ready", "attempts": 0, "updated_at": t}
                for i, t in zip(numbers, at, strict=True)
            ])  # fmt: skip
            conn.execute(quarantine.insert(), [
                {"id": f"held{i:06d}", "dedup_key": f"dedup{i:06d}", "received_at": t,
                 "mailbox": mailbox, "sender": sender, "subject": f"report {i}", "code": 906,
                 "reason": f"test INS refused ({i})", "sha256": f"{i:064x}", "size": 10,
                 "content_type": "text/xml", "origin": "attachment", "state": "held",
                 "updated_at": t}
                for i, t in zip(numbers, at, strict=True)
            ])  # fmt: skip
            audit.append_many(conn, [
                NewEntry(actor="seed", action="seed.row", subject=f"row {i}",
                         detail={"n": i})
                for i in numbers
            ])  # fmt: skip
