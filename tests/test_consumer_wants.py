"""Whether a delivery goes through the document pipeline: only for a mailbox that a
consumer not revoked takes (DocumentFeed.wants, asked per delivery with one statement)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssgate.config import load_config
from mssgate.db import open_engine, upgrade
from mssgate.directory import Directory
from mssgate.integration import DocumentFeed
from mssgate.queue import DocumentQueue
from mssgate.spool import Spool
from tests.queue.helpers import RIS_A, RIS_B, add_consumer, add_mailboxes


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, datadir: Path) -> Engine:
    if request.param == "postgres":
        return request.getfixturevalue("pg_engine")  # type: ignore[no-any-return]
    engine = open_engine(load_config(datadir / "mssgate.toml").database_url)
    upgrade(engine)
    return engine


def test_a_revoked_consumer_s_mailbox_is_no_longer_fed(engine: Engine, datadir: Path) -> None:
    config = load_config(datadir / "mssgate.toml")
    add_mailboxes(engine, RIS_A, RIS_B)
    add_consumer(engine, "ris-a", RIS_A)
    directory = Directory(engine, actor="test")
    feed = DocumentFeed(
        DocumentQueue.from_config(config, engine),
        Spool(engine, config.server.data_dir / "spool"),
        directory,
        config,
    )
    assert feed.wants(RIS_A)
    assert not feed.wants(RIS_B)  # a mailbox, but no consumer takes it
    assert not feed.wants(RIS_A.upper())  # the address as stored, as before
    directory.consumers.revoke("ris-a")
    assert not feed.wants(RIS_A)
    add_consumer(engine, "ris-a2", RIS_A)
    assert feed.wants(RIS_A)
