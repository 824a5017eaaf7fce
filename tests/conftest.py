"""Shared fixtures: a real data folder made by `mssgate init`, and the CLI run in-process.

The CLI runs through `mssgate.cli.run`, the same function the console script calls, so exit
codes and error lines are the real ones; a few tests also run the installed script itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine, create_engine, text, update

from mssgate import passwords
from mssgate.cli import run
from mssgate.config import AuthConfig
from mssgate.db import open_engine, sqlalchemy_url, upgrade
from mssgate.db.schema import nodes
from mssgate.db.tx import write

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
    # pytest-xdist's own marker, named here too so that --strict-markers accepts it in a run
    # without the plugin (tests that share a machine-wide resource run on one worker).
    config.addinivalue_line("markers", "xdist_group(name): run on one worker with its group")


# -- the longest tests first -----------------------------------------------------------------
# pytest-xdist hands tests to its workers in collection order, a few at a time, as they finish
# (--dist loadgroup; a group goes whole to one worker, the largest groups first). A long test
# handed out last holds the run open while the other workers have nothing left to do; handed
# out first, it runs beside the short ones. Longest first, as measured in a 4-worker run on a
# 2-core machine (docs/performance.md, "Test suite"): 15-30 s each, most of them two gateways
# or a gateway killed and started again. The `slow` marker puts a test here too. Only the
# order changes; a test missing from this list is run as before, in its place.
LONG_TESTS = (
    "tests/smtp/test_nodes_load.py::",
    "tests/smtp/test_nodes_move.py::",
    "tests/test_tls_scan.py::",
    "tests/smtp/test_nodes_imap.py::",
    "tests/mllp/test_push.py::test_a_ris_down_costs_no_attempt_and_nothing_is_lost_when",
    "tests/smtp/test_encryption_relay.py::",
    "tests/smtp/test_load_with_ris.py::",
    "tests/api/test_outbound_memory.py::",
    "tests/smtp/test_imap_paths.py::",
    "tests/documents/test_mime_fuzz.py::",
    "tests/smtp/test_nodes_serve.py::",
    "tests/smtp/test_supervision_review.py::test_running_out_of_file_descriptors",
    "tests/queue/test_processes.py::",
    "tests/imap/test_preauth_hardening.py::",
    "tests/smtp/test_login_cache_serve.py::",
    "tests/mllp/test_listener.py::test_a_trickle_that_never_ends_a_frame_is_closed",
    "tests/test_demo.py::",
    "tests/hostile/test_corpus.py::",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        for i, prefix in enumerate(LONG_TESTS):
            if item.nodeid.startswith(prefix):
                return i
        return len(LONG_TESTS) if item.get_closest_marker("slow") else len(LONG_TESTS) + 1

    items.sort(key=rank)  # stable: the order within each rank is collection's


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


# Argon2id cost of the passwords the tests' CLI hashes (`directory add --password-stdin` in
# most gateway fixtures). The production cost (64 MiB, 3 passes, 4 lanes: ~0.2 s of both cores
# per hash) made three accounts per gateway test cost more than the test itself, and these
# tests are about logins, not the hash's cost. Each hash records its parameters, so gateways
# started by the tests (which drop MSSGATE_* and keep the default cost) verify these hashes as
# they were made. The default cost itself is tested in tests/test_login_cache.py (which sets
# its own cost where it runs the CLI).
TEST_ARGON2 = {
    "MSSGATE_AUTH__ARGON2_MEMORY_KIB": "8",
    "MSSGATE_AUTH__ARGON2_TIME_COST": "1",
    "MSSGATE_AUTH__ARGON2_PARALLELISM": "1",
}


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables must not truncate what tests read
    # The CLI's console read COLUMNS once, when mssgate.cli.context was first imported: in a
    # test process where a test module imported it first (collection, under pytest-xdist),
    # it kept 80 columns and wrapped the tables that tests read. Same width either way.
    from mssgate.cli.context import stdout as console

    monkeypatch.setattr(console, "_width", 200)
    for key in list(os.environ):
        if key.startswith("MSSGATE_") and key != "MSSGATE_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)
    for key, value in TEST_ARGON2.items():
        monkeypatch.setenv(key, value)
    yield Cli(capsys, monkeypatch)
    # The CLI set the process's hashing cost (mssgate.passwords.configure) from the test's
    # environment: the next test starts from the default, as a fresh process would.
    passwords.configure(AuthConfig())


DOMAIN = "hopital-a.test"


@pytest.fixture(scope="session")
def datadir_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `mssgate init` per test process, copied by `datadir` for each test.

    `init` costs 0.3 s to 1 s (two RSA-2048 keys, the migrations, fsyncs) and more than 500
    tests start from the same data folder. A copy is the same folder: the files with their
    modes (keys 0600, folder 0700), the database with its rows and audit chain. Tests then
    share the dev CA's and the server's keys, which no test relies on being unique (a test
    that needs a second gateway or CA makes its own with `init` or `create_dev_ca`), and
    every test still gets its own folder and database to change as it likes."""
    data = tmp_path_factory.mktemp("datadir-template") / "data"
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("MSSGATE_") and key != "MSSGATE_TEST_POSTGRES_URL":
                patch.delenv(key)
        code = run(["init", "--data", str(data), "--domain", DOMAIN])
    assert code == 0, f"mssgate init exited {code}"
    return data


def copy_datadir(template: Path, data: Path) -> None:
    """`template` copied to `data`, with the two places `init` wrote its own path in: the
    configuration's server.data_dir and the node's row (`serve` refuses a folder that another
    node's row names)."""
    shutil.copytree(template, data, symlinks=True)
    config = data / "mssgate.toml"
    text_before = config.read_text(encoding="utf-8")
    quoted = f'data_dir = "{template}"'
    assert text_before.count(quoted) == 1, text_before
    config.write_text(text_before.replace(quoted, f'data_dir = "{data}"'), encoding="utf-8")
    engine = open_engine(f"sqlite:///{data / 'mssgate.db'}")
    try:
        with write(engine) as conn:
            moved = conn.execute(
                update(nodes).where(nodes.c.data_dir == str(template)).values(data_dir=str(data))
            )
            assert moved.rowcount == 1
    finally:
        engine.dispose()


@pytest.fixture
def datadir(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, datadir_template: Path
) -> Iterator[Path]:
    """An initialised data folder (`mssgate init --domain hopital-a.test`, copied from the
    session's template), selected through $MSSGATE_CONFIG."""
    data = tmp_path / "data"
    copy_datadir(datadir_template, data)
    monkeypatch.setenv("MSSGATE_CONFIG", str(data / "mssgate.toml"))
    yield data


@contextlib.contextmanager
def install_lock(target: Path) -> Iterator[None]:
    """Held while a test installs a tool into `target` on first use (npm ci, a venv): test
    processes running side by side (pytest-xdist) install it once, the others wait and
    find it there. The lock file is outside `target`, which the install may remove."""
    digest = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"mssgate-tests-install-{digest}.lock", "wb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
