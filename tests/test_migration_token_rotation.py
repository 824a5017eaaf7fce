"""Migration 0022 (a consumer's replaced token and its grace) on a database with a consumer,
on both backends, and back: the consumer row stays as it was, with its id (what its
outbound messages and ZAM items are keyed by), and the new columns start empty."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, text

from tests.test_migration_nodes import bare_engine, migrate  # noqa: F401 (the fixture)

_READ = "SELECT id, name, mailbox, token_sha256, mllp_cert_sha256 FROM consumers"


def test_0022_keeps_consumers_both_ways(bare_engine: Engine) -> None:  # noqa: F811
    engine = bare_engine
    migrate(engine, "0021")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO consumers (id, name, mailbox, token_sha256, created_at,"
                " mllp_cert_sha256) VALUES (7, 'ris-a', 'ris-a@hopital-a.test', :digest, :at,"
                " :cert)"
            ),
            {"digest": "ab" * 32, "at": datetime(2026, 1, 1, tzinfo=UTC), "cert": "cd" * 32},
        )
        before = [tuple(r) for r in conn.execute(text(_READ))]
    migrate(engine, "0022")
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(text(_READ))] == before
        added = "SELECT previous_token_sha256, previous_token_until FROM consumers"
        assert [tuple(r) for r in conn.execute(text(added))] == [(None, None)]
    migrate(engine, "0021", down=True)
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(text(_READ))] == before
