"""PostgreSQL's pool (mssgate.db.engine): a connection idle for a while is tried before use and
replaced if it dropped; one used a moment ago is not tried (issue 17: the pre-ping of every
checkout was a round trip per lease and per ack), and if it dropped, its transaction fails
and the next one gets a new connection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from mssgate.db import engine as engine_module
from mssgate.db import open_engine, sqlalchemy_url
from tests import conftest

pytestmark = pytest.mark.postgres


@pytest.fixture
def pooled(pg_schema: str) -> Iterator[Engine]:
    assert conftest.PG_URL
    sep = "&" if "?" in conftest.PG_URL else "?"
    engine = open_engine(f"{conftest.PG_URL}{sep}options=-csearch_path%3D{pg_schema}")
    yield engine
    engine.dispose()


def _pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    assert conftest.PG_URL
    admin = create_engine(sqlalchemy_url(conftest.PG_URL))
    try:
        with admin.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        admin.dispose()


def test_an_idle_connection_that_dropped_is_replaced_unseen(
    pooled: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _pid(pooled)
    _terminate(first)
    monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.0)  # "idle for a while"
    second = _pid(pooled)  # no error: the dropped connection was found and replaced
    assert second != first


def test_a_connection_used_a_moment_ago_is_not_tried(pooled: Engine) -> None:
    first = _pid(pooled)
    _terminate(first)
    # Not tried, so its drop is seen by the transaction (as it would be had it dropped during
    # the transaction), reported as a disconnect...
    with pytest.raises(OperationalError) as failed:
        _pid(pooled)
    assert failed.value.connection_invalidated
    # ...and the next one runs on a new connection.
    assert _pid(pooled) != first
