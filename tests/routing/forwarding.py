"""The database of the routing-forward tests: one gateway's, on SQLite or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssgate.config import Config, load_config
from mssgate.db import open_engine, upgrade
from mssgate.smime.mailbox_keys import ensure_mailbox_key
from tests.queue.helpers import DOMAIN, add_mailboxes

FWD = f"routeur@{DOMAIN}"  # the application mailbox forwards are sent from
ENGINES = ["sqlite", "postgresql"]  # a fixture's params, given to forwarding_gateway


def forwarding_gateway(
    request: pytest.FixtureRequest, datadir: Path, *mailboxes: str
) -> tuple[Config, Engine]:
    """The data folder's configuration and its database on the fixture's param (the
    PostgreSQL one skips without a server), with `mailboxes` and FWD, which has the key pair
    a forward is signed with."""
    config = load_config(datadir / "mssgate.toml")
    if request.param == "sqlite":
        engine = open_engine(config.database_url)
        upgrade(engine)
    else:
        engine = request.getfixturevalue("pg_engine")
    add_mailboxes(engine, *mailboxes, FWD)
    ensure_mailbox_key(config, FWD, common_name="Routeur")
    return config, engine
