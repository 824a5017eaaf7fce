"""The login cache (mssgate.logincache) against the real directory, on SQLite and PostgreSQL.

"Another node" is a second engine and Directory on the same database, as a second gateway
process would hold: its changes reach this node's cache through the account row alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, select, update

from mssgate import metrics, passwords
from mssgate.config import AuthConfig, config_from_mapping
from mssgate.db import open_engine
from mssgate.db.schema import professionals
from mssgate.db.tx import write
from mssgate.directory import Directory
from mssgate.directory.models import NewProfessional
from mssgate.logincache import LoginCache
from tests.conftest import Cli, pg_engine_for

DOMAIN = "hopital-a.test"
ALICE = f"alice@{DOMAIN}"
PASSWORD = "a long enough password"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """This node's engine and another node's, on one database."""
    if request.param == "sqlite":
        mine: Engine = request.getfixturevalue("sqlite_engine")
        other = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    else:
        mine = request.getfixturevalue("pg_engine")
        other = pg_engine_for(request.getfixturevalue("pg_schema"))
    Directory(mine, actor="test").domains.add_local(DOMAIN)
    yield mine, other
    other.dispose()


def add_alice(directory: Directory, password: str = PASSWORD) -> None:
    new = NewProfessional(address=ALICE, display_name="Alice", idnat="99700367909")
    directory.professionals.add(new, password=password)


def login(directory: Directory, cache: LoginCache, password: str = PASSWORD) -> bool:
    return directory.professionals.authenticate(ALICE, password, cache=cache) is not None


def hits() -> float:
    value = metrics.default().registry.get_sample_value(
        "mssgate_auth_cache_lookups_total", {"outcome": "hit"}
    )
    return value or 0.0


def test_second_login_is_served_by_the_cache(two_nodes: tuple[Engine, Engine]) -> None:
    here = Directory(two_nodes[0], actor="test")
    add_alice(here)
    cache = LoginCache(300, 100)
    before = hits()
    assert login(here, cache) and (cache.hits, cache.misses) == (0, 1)
    assert login(here, cache) and login(here, cache)
    assert cache.hits == 2 and hits() - before == 2
    # The login name is normalised before the lookup, as before the cache.
    assert here.professionals.authenticate(ALICE.upper(), PASSWORD, cache=cache) is not None
    assert cache.hits == 3


def test_the_cache_holds_no_password(two_nodes: tuple[Engine, Engine]) -> None:
    here = Directory(two_nodes[0], actor="test")
    add_alice(here)
    cache = LoginCache(300, 100)
    assert login(here, cache)
    digest, _ = cache._entries[ALICE]
    assert PASSWORD.encode() not in digest and len(digest) == 32
    # Another process (another key) cannot use this one's entries.
    assert not LoginCache(300, 100).knows(ALICE, PASSWORD, "x")


def test_wrong_password_after_a_cached_success_is_refused(
    two_nodes: tuple[Engine, Engine],
) -> None:
    here = Directory(two_nodes[0], actor="test")
    add_alice(here)
    cache = LoginCache(300, 100)
    assert login(here, cache) and login(here, cache)
    assert not login(here, cache, PASSWORD + "x")
    assert not login(here, cache, PASSWORD[:-1])
    assert cache.hits == 1  # the wrong ones were verified in full, and refused
    assert login(here, cache) and cache.hits == 2  # the right one still cached


@pytest.mark.parametrize("change", ["passwd", "suspend", "remove", "remove and add again"])
def test_a_change_on_another_node_ends_the_cached_login_at_once(
    two_nodes: tuple[Engine, Engine], change: str
) -> None:
    here = Directory(two_nodes[0], actor="node-a")
    there = Directory(two_nodes[1], actor="node-b")
    add_alice(here)
    cache = LoginCache(300, 100)
    assert login(here, cache) and login(here, cache) and cache.hits == 1
    if change == "passwd":
        there.professionals.set_password(ALICE, "another long password")
    elif change == "suspend":
        there.professionals.suspend(ALICE)
    elif change == "remove":
        there.professionals.remove(ALICE)
    else:
        there.professionals.remove(ALICE)
        add_alice(there)  # same password, new hash (new salt): a new account
    hits_before = cache.hits
    refused = change != "remove and add again"
    assert login(here, cache) is not refused
    assert cache.hits == hits_before  # not one answer came from the old entry
    if change == "passwd":
        assert here.professionals.authenticate(ALICE, "another long password", cache=cache)


def test_reactivation_does_not_revive_the_cache_for_a_wrong_password(
    two_nodes: tuple[Engine, Engine],
) -> None:
    here = Directory(two_nodes[0], actor="node-a")
    there = Directory(two_nodes[1], actor="node-b")
    add_alice(here)
    cache = LoginCache(300, 100)
    assert login(here, cache)
    there.professionals.suspend(ALICE)
    assert not login(here, cache)
    there.professionals.reactivate(ALICE)
    # Same hash, same password: the entry answers again (nothing about the password changed).
    assert login(here, cache) and cache.hits == 1
    assert not login(here, cache, "not the password at all")


def test_a_hash_rewritten_in_the_row_is_a_different_entry(two_nodes: tuple[Engine, Engine]) -> None:
    """Any write of the stored hash (a script, a restore) ends the entry, not only passwd."""
    here = Directory(two_nodes[0], actor="test")
    add_alice(here)
    cache = LoginCache(300, 100)
    assert login(here, cache)
    rehashed = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    with write(two_nodes[1]) as conn:
        conn.execute(
            update(professionals)
            .where(professionals.c.address == ALICE)
            .values(password_hash=rehashed)
        )
    assert login(here, cache) and cache.hits == 0  # verified in full, the cheap old hash
    assert login(here, cache) and cache.hits == 1


def test_ttl_zero_turns_the_cache_off(two_nodes: tuple[Engine, Engine]) -> None:
    here = Directory(two_nodes[0], actor="test")
    add_alice(here)
    cache = LoginCache(0, 100)
    for _ in range(3):
        assert login(here, cache)
    assert (cache.hits, cache.misses, cache.size) == (0, 0, 0) and not cache.enabled


def test_an_entry_lives_ttl_after_its_verification() -> None:
    now = [1000.0]
    cache = LoginCache(300, 10, clock=lambda: now[0])
    cache.remember(ALICE, PASSWORD, "h")
    now[0] += 299
    assert cache.knows(ALICE, PASSWORD, "h")  # a hit does not extend it
    now[0] += 1
    assert not cache.knows(ALICE, PASSWORD, "h") and cache.size == 0


def test_failed_checks_are_never_remembered_and_size_is_bounded() -> None:
    cache = LoginCache(300, 3)
    for n in range(1000):
        assert not cache.knows(f"user{n}@{DOMAIN}", PASSWORD, "h")
    assert cache.size == 0
    for n in range(10):
        cache.remember(f"user{n}@{DOMAIN}", PASSWORD, "h")
    assert cache.size == 3
    assert cache.knows(f"user9@{DOMAIN}", PASSWORD, "h")
    assert not cache.knows(f"user0@{DOMAIN}", PASSWORD, "h")  # least recently used, gone
    # Other fields never stand in for one another.
    assert not cache.knows(f"user9@{DOMAIN}", PASSWORD + "h", "")


def test_auth_section_from_file_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSSGATE_AUTH__CACHE_SECONDS", "0")
    config = config_from_mapping({"auth": {"argon2_memory_kib": 19456, "argon2_time_cost": 2}})
    assert config.auth.cache_seconds == 0 and config.auth.argon2_memory_kib == 19456
    assert AuthConfig().argon2_memory_kib == 65536 and AuthConfig().argon2_parallelism == 4
    with pytest.raises(Exception, match="argon2_memory_kib"):
        config_from_mapping({"auth": {"argon2_memory_kib": 16, "argon2_parallelism": 4}})


def test_argon2_cost_is_configurable_and_old_hashes_keep_verifying() -> None:
    old = passwords.hash_password(PASSWORD)
    assert "m=65536,t=3,p=4" in old
    try:
        passwords.configure(
            AuthConfig(argon2_memory_kib=19456, argon2_time_cost=2, argon2_parallelism=1)
        )
        new = passwords.hash_password(PASSWORD)
        assert "m=19456,t=2,p=1" in new
        assert passwords.verify_password(old, PASSWORD) and passwords.verify_password(new, PASSWORD)
        assert not passwords.verify_password(old, PASSWORD + "x")
        passwords.burn_verification(PASSWORD)  # the dummy follows the configured cost
        assert passwords._dummy_hash is not None and "m=19456" in passwords._dummy_hash
    finally:
        passwords.configure(AuthConfig())


def test_the_cli_hashes_new_passwords_at_the_configured_cost(
    cli: Cli, datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSSGATE_AUTH__ARGON2_MEMORY_KIB", "19456")
    monkeypatch.setenv("MSSGATE_AUTH__ARGON2_TIME_COST", "2")
    monkeypatch.setenv("MSSGATE_AUTH__ARGON2_PARALLELISM", "1")
    try:
        cli.ok("directory", "add", ALICE, "--name", "A", "--rpps", "99700367909",
               "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    finally:
        passwords.configure(AuthConfig())  # the CLI ran in this process
    engine = open_engine(f"sqlite:///{datadir / 'mssgate.db'}")
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                select(professionals.c.password_hash).where(professionals.c.address == ALICE)
            ).scalar_one()
        assert "$m=19456,t=2,p=1$" in stored
        # Verified at whatever cost the process now has: the hash carries its own.
        assert Directory(engine, actor="test").professionals.authenticate(ALICE, PASSWORD)
    finally:
        engine.dispose()
