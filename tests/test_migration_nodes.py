"""Migration 0010 (nodes) on a database with data, on both backends, and back: the spool rows
with their recipients, and the mailboxes with what references them, survive both ways (a
SQLite table rebuild would cascade deletions through ON DELETE CASCADE)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, text

from mssgate.db import open_engine
from mssgate.db.migrate import _alembic_config
from tests.conftest import pg_engine_for


def migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def bare_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    else:
        engine = pg_engine_for(request.getfixturevalue("pg_schema"))
    yield engine
    engine.dispose()


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()  # noqa: S608
            for t in ("spool_messages", "spool_recipients", "professionals")
        }


def test_0010_keeps_the_spool_and_the_directory_both_ways(bare_engine: Engine) -> None:
    migrate(bare_engine, "0009")
    stamp = datetime.now(UTC)
    with bare_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO professionals (address, display_name, kind, state, local, source,"
                " created_at, updated_at) VALUES ('bob@h.test', 'Bob', 'ORG', 'active', true,"
                " 'manual', :t, :t)"
            ),
            {"t": stamp},
        )
        conn.execute(
            text(
                "INSERT INTO spool_messages (id, received_at, listener, sender, size, state)"
                " VALUES ('q1', :t, 'mta', 'a@x.test', 10, 'queued')"
            ),
            {"t": stamp},
        )
        conn.execute(
            text(
                "INSERT INTO spool_recipients (spool_id, recipient, route, state, attempts,"
                " next_attempt_at, updated_at) VALUES ('q1', 'bob@h.test', 'local', 'pending',"
                " 0, :t, :t)"
            ),
            {"t": stamp},
        )
    before = counts(bare_engine)
    assert before == {"spool_messages": 1, "spool_recipients": 1, "professionals": 1}
    migrate(bare_engine, "0010")
    assert counts(bare_engine) == before
    with bare_engine.connect() as conn:
        nodes = conn.execute(text("SELECT node FROM spool_messages")).scalars().all()
        homes = conn.execute(text("SELECT node FROM professionals")).scalars().all()
    assert nodes == [None] and homes == [None]
    migrate(bare_engine, "head")
    migrate(bare_engine, "0009", down=True)
    assert counts(bare_engine) == before
    migrate(bare_engine, "head")
    assert counts(bare_engine) == before
