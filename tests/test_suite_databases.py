"""`make test` finds the local PostgreSQL as .ci/run does, and says in one header line which
databases the tests run on (issue 18 item 4)."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

from tests.conftest import LOCAL_PG_URL, PG_ENV, REPO


def _header(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != PG_ENV}
    if env_value is not None:
        env[PG_ENV] = env_value
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:randomly",
         "tests/test_identifiers.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return [line for line in run.stdout.splitlines() if line.startswith("databases:")]


def _local_server_answers() -> bool:
    try:
        psycopg.connect(LOCAL_PG_URL, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def test_unset_url_uses_the_local_server_when_one_answers() -> None:
    [line] = _header(None)
    if _local_server_answers():
        assert line == (
            f"databases: SQLite and PostgreSQL {LOCAL_PG_URL} (found at 127.0.0.1:5432 as"
            f" {PG_ENV} is unset; set it empty to skip)"
        )
    else:
        assert line.startswith("databases: SQLite only, the PostgreSQL tests skip (none answers")


def test_a_url_set_is_used_and_an_empty_one_means_sqlite_only() -> None:
    [named] = _header("postgresql://someone@db.example.test:5433/x")
    assert named == (
        "databases: SQLite and PostgreSQL postgresql://someone@db.example.test:5433/x"
        f" (from {PG_ENV})"
    )
    [off] = _header("")
    assert off == f"databases: SQLite only, the PostgreSQL tests skip ({PG_ENV} is set empty)"
