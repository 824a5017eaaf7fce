"""Queue tests run on SQLite always and on PostgreSQL when MSSGATE_TEST_POSTGRES_URL is set."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssgate.queue import DocumentQueue, QueueSettings
from tests.conftest import pg_engine_for
from tests.queue.helpers import RIS_A, RIS_B, add_mailboxes

__all__ = ["pg_engine_for"]  # tests/queue/pg_worker.py imports it from here


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
