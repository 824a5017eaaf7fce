"""Migration 0023 (routing rules and queue tags) up and back on both backends: the tables
appear empty, a tag row cascades with its queue entry, and the downgrade removes both."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, inspect, text

from tests.test_migration_nodes import bare_engine, migrate  # noqa: F401  (the fixture)


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_0023_up_and_back(bare_engine: Engine) -> None:  # noqa: F811
    migrate(bare_engine, "0022")
    assert not {"routing_rules", "queue_document_tags"} & _tables(bare_engine)
    migrate(bare_engine, "0023")
    assert {"routing_rules", "queue_document_tags"} <= _tables(bare_engine)
    now = datetime.now(UTC)
    with bare_engine.begin() as conn:
        if bare_engine.dialect.name == "sqlite":
            conn.execute(text("PRAGMA foreign_keys = ON"))
        conn.execute(
            text(
                "INSERT INTO queue_documents (id, delivery_key, mailbox, sha256, size,"
                " content_type, received_at, sender, record, headers, encrypted, state,"
                " attempts, updated_at) VALUES ('d1', 'k1', 'ris@h.test', 'x', 1,"
                " 'text/xml', :t, 's@h.test', '{}', '', false, 'ready', 0, :t)"
            ),
            {"t": now},
        )
        conn.execute(text("INSERT INTO queue_document_tags VALUES ('d1', 'imaging')"))
        conn.execute(
            text("INSERT INTO routing_rules VALUES ('r', 1, true, '{}', :t, :t)"),
            {"t": now},
        )
        conn.execute(text("DELETE FROM queue_documents WHERE id = 'd1'"))
        assert conn.execute(text("SELECT count(*) FROM queue_document_tags")).scalar_one() == 0
    migrate(bare_engine, "0022", down=True)
    assert not {"routing_rules", "queue_document_tags"} & _tables(bare_engine)
