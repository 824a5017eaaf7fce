"""Migration 0006 on both backends: queued documents and their bytes survive the change of
key (SQLite rebuilds the table, whose drop would cascade to queue_contents)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, select, text

from mssgate.db import open_engine
from mssgate.db.migrate import _alembic_config
from mssgate.db.schema import queue_contents, queue_documents
from mssgate.queue import DocumentQueue
from tests.conftest import pg_engine_for
from tests.queue.helpers import RIS_A, add_mailboxes, cda, deliver, mail


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


def _old_row(conn: object, doc_id: str, seq_sha: str) -> None:
    now = datetime.now(UTC)
    conn.execute(  # type: ignore[attr-defined]
        text(
            "INSERT INTO queue_documents (id, mailbox, sha256, size, content_type, received_at,"
            " sender, record, headers, encrypted, state, attempts, updated_at) VALUES"
            " (:id, :box, :sha, 3, 'text/xml', :now, 's@x.test', '{}', '', false, 'done', 1,"
            " :now)"
        ),
        {"id": doc_id, "box": RIS_A, "sha": seq_sha, "now": now},
    )
    conn.execute(  # type: ignore[attr-defined]
        text("INSERT INTO queue_contents (document_id, content, hl7) VALUES (:id, :c, :h)"),
        {"id": doc_id, "c": b"abc", "h": b"MSH"},
    )


def test_upgrade_keeps_documents_and_bytes_and_downgrade_keeps_the_first(
    bare_engine: Engine, tmp_path: Path
) -> None:
    migrate(bare_engine, "0005")
    with bare_engine.begin() as conn:
        _old_row(conn, "a" * 32, "1" * 64)
        _old_row(conn, "b" * 32, "2" * 64)
    migrate(bare_engine, "0006")
    with bare_engine.connect() as conn:
        rows = conn.execute(
            select(queue_documents.c.id, queue_documents.c.delivery_key).order_by("seq")
        ).all()
        kept = conn.execute(select(queue_contents.c.document_id, queue_contents.c.content)).all()
    assert [(r.id, r.delivery_key) for r in rows] == [("a" * 32,) * 2, ("b" * 32,) * 2]
    assert sorted((r.document_id, bytes(r.content)) for r in kept) == [
        ("a" * 32, b"abc"),
        ("b" * 32, b"abc"),
    ]

    # Resends now coexist; going down keeps the earliest copy of each and its bytes.
    migrate(bare_engine, "head")
    add_mailboxes(bare_engine, RIS_A)
    queue = DocumentQueue(bare_engine, data_dir=tmp_path)
    [first] = deliver(queue, mail([cda(1)], n=1))
    [second] = deliver(queue, mail([cda(1)], n=2))
    assert queue.entry(second).duplicate_of == first
    migrate(bare_engine, "0005", down=True)
    with bare_engine.connect() as conn:
        ids = set(conn.execute(text("SELECT id FROM queue_documents")).scalars())
        blobs = set(conn.execute(text("SELECT document_id FROM queue_contents")).scalars())
    assert ids == blobs == {"a" * 32, "b" * 32, first}
