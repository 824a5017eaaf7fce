"""A database that is busy (a SQLite file locked by another writer, a PostgreSQL deadlock) makes
the API answer 503 with Retry-After, the answer a client retries, not a 500 that blames the request.

The errors are real ones, made by a real database here; only the route that raises them is the
test's own, so that each kind is seen by the API's error mapping exactly as a route would raise it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from mssgate.api.problems import install
from tests.conftest import pg_engine_for


def _answer(error: Exception) -> httpx.Response:
    app = FastAPI()
    install(app)

    @app.post("/v1/acks/x/ack")
    def raising() -> None:
        raise error

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.post("/v1/acks/x/ack")

    return asyncio.run(call())


def _sqlite_locked(tmp_path: Path) -> OperationalError:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    except OperationalError as exc:
        return exc
    finally:
        holder.close()
        engine.dispose()
    raise AssertionError("the write went through a file locked by another writer")


def _postgres_deadlock(schema: str) -> OperationalError:
    engine = pg_engine_for(schema)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS busy_test (id INT PRIMARY KEY, v INT)"))
        conn.execute(text("DELETE FROM busy_test"))
        conn.execute(text("INSERT INTO busy_test VALUES (1, 0), (2, 0)"))
    errors: list[OperationalError] = []
    barrier = threading.Barrier(2)

    def lock(first: int, second: int) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(text("UPDATE busy_test SET v = v + 1 WHERE id = :i"), {"i": first})
                barrier.wait()
                conn.execute(text("UPDATE busy_test SET v = v + 1 WHERE id = :i"), {"i": second})
        except OperationalError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lock, args=a) for a in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    engine.dispose()
    assert errors, "no deadlock: the two transactions did not cross"
    assert "deadlock" in str(errors[0]).lower()
    return errors[0]


def _assert_retryable(error: OperationalError) -> None:
    response = _answer(error)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["detail"] == "the database is busy; send the request again"


def test_a_locked_sqlite_file_is_503_with_retry_after(tmp_path: Path) -> None:
    _assert_retryable(_sqlite_locked(tmp_path))


def test_a_postgresql_deadlock_is_503_with_retry_after(pg_schema: str) -> None:
    _assert_retryable(_postgres_deadlock(pg_schema))


def test_any_other_error_is_still_a_bare_500() -> None:
    response = _answer(RuntimeError("boom /var/lib/secret"))
    assert response.status_code == 500
    assert "secret" not in response.text


def test_a_sqlite_error_that_retrying_cannot_mend_is_a_500(tmp_path: Path) -> None:
    # A missing table (migrations not run), a read-only or corrupt file: SQLite raises these
    # as OperationalError too, but a client sent back to retry them would retry for ever,
    # and the operator would see one warning line instead of the error.
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))
    except OperationalError as exc:
        error = exc
    finally:
        engine.dispose()
    response = _answer(error)
    assert response.status_code == 500
    assert "Retry-After" not in response.headers
    assert "no_such_table" not in response.text
