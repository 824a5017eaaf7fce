"""Queue tests run on SQLite always and on PostgreSQL when MSSGATE_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from mssgate.db import open_engine, sqlalchemy_url, upgrade
from mssgate.queue import DocumentQueue, QueueSettings
from tests.queue.helpers import RIS_A, RIS_B, add_mailboxes

PG_URL = os.environ.get("MSSGATE_TEST_POSTGRES_URL")


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("MSSGATE_TEST_POSTGRES_URL is not set: no PostgreSQL to test against")
    # One schema per test, so runs never see each other's rows.
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(sqlalchemy_url(PG_URL))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield schema
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def pg_engine_for(schema: str) -> Engine:
    assert PG_URL
    return create_engine(
        sqlalchemy_url(PG_URL),
        connect_args={"options": f"-csearch_path={schema}"},
        pool_size=10,
    )


@pytest.fixture
def pg_engine(pg_schema: str) -> Iterator[Engine]:
    engine = pg_engine_for(pg_schema)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    engine: Engine = request.getfixturevalue(name)
    add_mailboxes(engine, RIS_A, RIS_B)
    return engine


@pytest.fixture
def queue(engine: Engine, tmp_path: Path) -> DocumentQueue:
    return DocumentQueue(
        engine,
        settings=QueueSettings(max_attempts=3, visibility_timeout_seconds=30),
        data_dir=tmp_path,
    )
