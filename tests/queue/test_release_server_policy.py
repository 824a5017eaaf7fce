"""`quarantine release` applies the running server's policy, not the CLI's own environment
(issue 18 item 3): serve publishes its document policy in the database at start."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from mssgate.config import load_config
from mssgate.db import open_engine, upgrade
from mssgate.queue import DocumentQueue
from tests.conftest import PG_URL, Cli
from tests.queue.helpers import RIS_A, add_mailboxes, cda, deliver, mail
from tests.smtp.conftest import Gateway, free_env


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Nothing for SQLite (the data folder's file); a schema of its own on PostgreSQL, named
    in the URL so that serve and the CLI both use it."""
    if request.param == "sqlite":
        return {}
    schema = request.getfixturevalue("pg_schema")  # skips, saying why, without a server
    url = f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    monkeypatch.setenv("MSSGATE_DATABASE__URL", url)
    return {"MSSGATE_DATABASE__URL": url}


def _held(datadir: Path) -> tuple[DocumentQueue, str]:
    """A document held for its test INS (906), received while test INS were refused."""
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)
    queue = DocumentQueue.from_config(config, engine)
    add_mailboxes(engine, RIS_A)
    [held] = deliver(queue, mail([cda(4)]), allow_test_oids=False)
    assert queue.quarantine.get(held).code == 906
    return queue, held


def test_release_applies_the_running_servers_policy(
    cli: Cli, datadir: Path, database_env: dict[str, str]
) -> None:
    queue, held = _held(datadir)
    gateway = Gateway(data=datadir, env=free_env(datadir) | database_env)
    gateway.start(extra_env={"MSSGATE_POLICY__ALLOW_TEST_INS": "true"})
    try:
        # The CLI's own environment does not allow test INS (the cli fixture clears
        # MSSGATE_*): only the server's published policy lets the document through.
        result = cli.ok("quarantine", "release", held)
    finally:
        assert gateway.stop() == 0
    assert "with the policy of the server running on " in result.out
    assert " since " in result.out and "UTC" in result.out
    [entry] = queue.entries()
    assert entry.id in result.out and entry.state.value == "ready"
    assert cli.ok("quarantine", "show", held, "--json").json()["state"] == "released"
    queue.engine.dispose()


def test_without_a_published_policy_release_says_it_uses_its_own(
    cli: Cli, datadir: Path, database_env: dict[str, str]
) -> None:
    queue, held = _held(datadir)
    refused = cli("quarantine", "release", held)
    assert refused.code == 1
    assert "no server has published its policy" in refused.err
    assert "still quarantined (906)" in refused.err and "with this command's policy" in refused.err
    assert queue.entries() == []
    queue.engine.dispose()
