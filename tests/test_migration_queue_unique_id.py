"""Migration 0021 (the uniqueId of queued documents, hashed and indexed) on a database with
entries, on both backends, and back: every entry gets the key of its stored record's uniqueId
(none for a withdrawal or without one), across more than one batch, and the rows that cascade
from queue_documents survive both ways (a SQLite table rebuild would delete them)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from sqlalchemy import Engine, text

from tests.test_migration_nodes import bare_engine, migrate  # noqa: F401  (the fixture)

ENTRIES = 1203  # past two batches of the migration's 500


def document(n: int) -> dict[str, object]:
    if n % 3 == 0:
        return {"format": "cda", "unique_id": f"1.2.3^{n}", "withdrawn": True}
    if n % 3 == 1:
        return {"format": "cda", "unique_id": f"1.2.3^{n}"}
    return {"format": "pdf"}


def expected(n: int) -> str | None:
    if n % 3 != 1:
        return None
    return hashlib.sha256(f"1.2.3^{n}".encode()).hexdigest()


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT count(*) FROM queue_documents")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM queue_contents")).scalar_one(),
        )


def test_0021_fills_the_key_from_the_record_and_keeps_the_rows(
    bare_engine: Engine,  # noqa: F811
) -> None:
    migrate(bare_engine, "0020")
    stamp = datetime.now(UTC)
    rows = [
        {
            "id": f"d{n}",
            "key": f"k{n}",
            "t": stamp,
            "record": json.dumps({"document": document(n), "mailbox": "ris@h.test"}),
        }
        for n in range(ENTRIES)
    ]
    with bare_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO queue_documents (id, delivery_key, mailbox, sha256, size,"
                " content_type, received_at, sender, record, headers, encrypted, state,"
                " attempts, updated_at) VALUES (:id, :key, 'ris@h.test', 'x', 1,"
                " 'text/xml', :t, 'dr@x.test', :record, '', false, 'ready', 0, :t)"
            ),
            rows,
        )
        conn.execute(
            text("INSERT INTO queue_contents (document_id, content, hl7) VALUES (:id, :b, :b)"),
            [{"id": r["id"], "b": b"x"} for r in rows],
        )
    assert counts(bare_engine) == (ENTRIES, ENTRIES)
    migrate(bare_engine, "0021")
    assert counts(bare_engine) == (ENTRIES, ENTRIES)
    with bare_engine.connect() as conn:
        keys = dict(
            tuple(r) for r in conn.execute(text("SELECT id, unique_id_sha256 FROM queue_documents"))
        )
    assert keys == {f"d{n}": expected(n) for n in range(ENTRIES)}
    migrate(bare_engine, "0020", down=True)
    assert counts(bare_engine) == (ENTRIES, ENTRIES)
    migrate(bare_engine, "head")
    assert counts(bare_engine) == (ENTRIES, ENTRIES)
