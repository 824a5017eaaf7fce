"""Shared fixtures: a real data folder made by `mssgate init`, and the CLI run in-process.

The CLI runs through `mssgate.cli.run`, the same function the console script calls, so exit
codes and error lines are the real ones; a few tests also run the installed script itself.
"""

from __future__ import annotations

import io
import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine, create_engine, text

from mssgate.cli import run
from mssgate.db import open_engine, sqlalchemy_url, upgrade

# -- run length of property and fuzz tests ---------------------------------------------------
# "ci" (the default) is bounded and derandomized: the suite's time stays flat and a red run is
# reproducible. "fuzz" is for long runs (bench/fuzz.py sets it): fresh random inputs on every
# run, no deadline, no health check standing in the way; bench/fuzz.py also stops it on a clock.
# Pick one with HYPOTHESIS_PROFILE=fuzz or pytest's --hypothesis-profile=fuzz.
settings.register_profile("ci", max_examples=100, derandomize=True, deadline=2000, print_blob=True)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("MSSGATE_FUZZ_EXAMPLES", "10000")),
    derandomize=False,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fuzz: a fuzz target, run on a clock by bench/fuzz.py (docs/reliability.md)"
    )


REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

# -- which PostgreSQL the tests use: the one named, else the local one as .ci/run finds it ---
PG_ENV = "MSSGATE_TEST_POSTGRES_URL"
LOCAL_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _find_postgres() -> tuple[str | None, str]:
    """The server's URL (None: SQLite only) and how it was chosen, for the header line.

    Set and empty means "no PostgreSQL" even when one answers locally."""
    if PG_ENV in os.environ:
        url = os.environ[PG_ENV]
        return (url, f"from {PG_ENV}") if url else (None, f"{PG_ENV} is set empty")
    import psycopg

    try:
        psycopg.connect(LOCAL_PG_URL, connect_timeout=2).close()
    except psycopg.Error:
        return None, f"none answers at 127.0.0.1:5432; set {PG_ENV} to use another"
    # Subprocesses (serve, workers) and modules that read the variable see the same choice.
    os.environ[PG_ENV] = LOCAL_PG_URL
    return LOCAL_PG_URL, f"found at 127.0.0.1:5432 as {PG_ENV} is unset; set it empty to skip"


PG_URL, PG_HOW = _find_postgres()


def pytest_report_header(config: pytest.Config) -> str:
    if PG_URL:
        return f"databases: SQLite and PostgreSQL {PG_URL} ({PG_HOW})"
    return f"databases: SQLite only, the PostgreSQL tests skip ({PG_HOW})"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self._capsys = capsys
        self._monkeypatch = monkeypatch

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        self._capsys.readouterr()
        self._monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        code = run([str(a) for a in args])
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str, stdin: str | None = None) -> Result:
        result = self(*args, stdin=stdin)
        assert result.code == 0, f"exit {result.code}: {result.err}{result.out}"
        return result


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables must not truncate what tests read
    for key in list(os.environ):
        if key.startswith("MSSGATE_") and key != "MSSGATE_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)
    return Cli(capsys, monkeypatch)


DOMAIN = "hopital-a.test"


@pytest.fixture
def datadir(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An initialised data folder, selected through $MSSGATE_CONFIG."""
    data = tmp_path / "data"
    cli.ok("init", "--data", str(data), "--domain", DOMAIN)
    monkeypatch.setenv("MSSGATE_CONFIG", str(data / "mssgate.toml"))
    yield data


# Said by every test that skips for want of ../shared/fixtures (README, "The tests").
SHARED_SKIP_WHY = (
    "the ANS conformance examples (CI-SIS CDA, HL7 v2) state no licence that lets this project"
    " copy them; the DRIMbox files, MIT, are in tests/fixtures and generated samples cover"
    " the same code paths"
)


def shared_fixture(*parts: str) -> Path:
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/fixtures, absent from a clone: {SHARED_SKIP_WHY}")
    return path


# -- databases: SQLite always, PostgreSQL when MSSGATE_TEST_POSTGRES_URL is set -------------


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    if not PG_URL:
        pytest.skip(f"no PostgreSQL to test against: {PG_HOW}")
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
