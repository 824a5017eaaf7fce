"""Schema migrations and the directory on both backends (SQLite here, PostgreSQL when given)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from mssgate import audit
from mssgate.db import open_engine, upgrade
from mssgate.db.migrate import current_revision, head_revision
from mssgate.db.schema import metadata
from mssgate.directory import Directory
from mssgate.directory.models import NewProfessional
from mssgate.errors import Conflict, StorageError

PG_URL = os.environ.get("MSSGATE_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def test_migrations_produce_exactly_the_declared_schema(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    upgrade(engine)  # a second run is a no-op


def test_directory_round_trip(engine: Engine) -> None:
    d = Directory(engine, actor="test")
    d.domains.add_local("hopital-a.test")
    new = NewProfessional(address="Dr.A@hopital-a.test", display_name="A", idnat="99700367909")
    prof = d.professionals.add(new, password="a long enough password")
    assert prof.address == "dr.a@hopital-a.test" and prof.idnat == "899700367909"
    assert prof.created_at.tzinfo is not None
    with pytest.raises(Conflict):
        d.professionals.add(new)
    assert d.professionals.authenticate("dr.a@hopital-a.test", "a long enough password")
    d.professionals.suspend("dr.a@hopital-a.test")
    assert d.professionals.get("dr.a@hopital-a.test").state == "suspended"
    report = audit.verify(engine)
    assert report.ok and report.entries == 3


def test_concurrent_appenders_never_fork_the_chain(engine: Engine) -> None:
    def append(i: int) -> None:
        with engine.begin() as conn:
            audit.append(conn, actor="t", action="test.concurrent", subject=str(i))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(append, range(80)))
    report = audit.verify(engine)
    assert report.ok, report.problems
    assert report.entries == report.head_seq == 80


def test_a_rolled_back_change_leaves_no_audit_row(engine: Engine) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), engine.begin() as conn:
        audit.append(conn, actor="t", action="x", subject="y")
        raise Boom
    assert audit.verify(engine).entries == 0


def test_bad_database_urls(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="invalid database URL"):
        open_engine("not a url")
    with pytest.raises(StorageError, match="unsupported database"):
        open_engine("mysql://x@y/z")
    with pytest.raises(StorageError, match="does not exist"):
        open_engine(f"sqlite:///{tmp_path}/missing/db.sqlite")
