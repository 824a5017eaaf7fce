"""Per-domain encryption policy: migration 0004 on both backends, the CLI, remote certificates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from mssgate.db import open_engine
from mssgate.db.migrate import _alembic_config, current_revision
from mssgate.directory import Directory
from mssgate.directory.models import EncryptionPolicy
from mssgate.pki import create_dev_ca, issue_smime_cert, write_certificate
from tests.conftest import DOMAIN, Cli, pg_engine_for

PEER = "clinique-b.test"


def migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def bare_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database (no migration run yet) on each backend."""
    if request.param == "sqlite":
        engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    else:
        engine = pg_engine_for(request.getfixturevalue("pg_schema"))
    yield engine
    engine.dispose()


def test_migration_0004_keeps_domains_on_the_default_and_checks_values(
    bare_engine: Engine,
) -> None:
    migrate(bare_engine, "0003")
    with bare_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO domains (name, kind, added_at)"
                " VALUES ('hopital-a.test', 'local', CURRENT_TIMESTAMP)"
            )
        )
    migrate(bare_engine, "0004")
    assert current_revision(bare_engine) == "0004"
    columns = {c["name"]: c for c in inspect(bare_engine).get_columns("domains")}
    assert columns["encryption"]["nullable"] and columns["cipher"]["nullable"]
    # Raw SQL at 0004: the Directory reads columns later migrations add.
    with bare_engine.connect() as conn:
        existing = conn.execute(text("SELECT encryption, cipher FROM domains")).one()
    assert tuple(existing) == (None, None)  # the global default
    for statement in ("UPDATE domains SET encryption = :v", "UPDATE domains SET cipher = :v"):
        with pytest.raises(IntegrityError), bare_engine.begin() as conn:
            conn.execute(text(statement), {"v": "weak"})
    with bare_engine.begin() as conn:
        conn.execute(text("UPDATE domains SET encryption = 'required'"))
    # Down and up again: the columns go and come back, the domain stays.
    migrate(bare_engine, "0003", down=True)
    assert "encryption" not in {c["name"] for c in inspect(bare_engine).get_columns("domains")}
    migrate(bare_engine, "head")
    directory = Directory(bare_engine, actor="test")
    assert [d.name for d in directory.domains.list()] == [DOMAIN]
    changed = directory.domains.set_encryption(DOMAIN, encryption=EncryptionPolicy.REQUIRED)
    assert changed.encryption is EncryptionPolicy.REQUIRED


def test_domain_add_and_list_with_encryption(cli: Cli, datadir: Path) -> None:
    cli.ok("domain", "add", "radiologie.test", "--encryption", "required")
    rows = {d["name"]: d for d in cli.ok("domain", "list", "--json").json()}
    assert rows["radiologie.test"]["encryption"] == "required"
    assert rows[DOMAIN]["encryption"] is None  # made by init: on the global default
    table = cli.ok("domain", "list").out
    assert "opportunistic (default)" in table and "required" in table


@pytest.mark.parametrize(
    "args",
    [
        ["domain", "add", "x.test", "--encryption", "sometimes"],
        ["domain", "trust", "p.test", "--relay", "h.test:25", "--encryption", "always"],
        ["domain", "trust", "p.test", "--relay", "h.test:25", "--cipher", "des"],
        ["domain", "set", DOMAIN, "--encryption", "maybe"],
        ["domain", "set", DOMAIN],
    ],
)
def test_bad_encryption_values_are_usage_errors(cli: Cli, datadir: Path, args: list[str]) -> None:
    result = cli(*args)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mssgate: error: "), result.err
    assert "x.test" not in cli.ok("domain", "list").out  # nothing was added


def test_trust_keeps_encryption_on_update_and_set_changes_it(
    cli: Cli, datadir: Path, tmp_path: Path
) -> None:
    cli.ok("domain", "trust", PEER, "--relay", "mx.clinique-b.test:25",
           "--encryption", "required", "--cipher", "aes-cbc")  # fmt: skip

    def peer() -> dict[str, object]:
        rows = {d["name"]: d for d in cli.ok("domain", "list", "--json").json()}
        return rows[PEER]  # type: ignore[no-any-return]

    assert (peer()["encryption"], peer()["cipher"]) == ("required", "aes-cbc")
    # A second trust (a new relay, as the national list import does) keeps the policy.
    cli.ok("domain", "trust", PEER, "--relay", "mx2.clinique-b.test:25")
    assert (peer()["relay_host"], peer()["encryption"]) == ("mx2.clinique-b.test", "required")
    cli.ok("domain", "set", PEER, "--encryption", "off", "--cipher", "default")
    assert (peer()["encryption"], peer()["cipher"]) == ("off", None)
    cli.ok("domain", "trust", PEER, "--relay", "mx2.clinique-b.test:25", "--encryption", "default")
    assert peer()["encryption"] is None
    cli.ok("domain", "set", DOMAIN, "--encryption", "required")
    local = {d["name"]: d for d in cli.ok("domain", "list", "--json").json()}[DOMAIN]
    assert local["encryption"] == "required"
    # A cipher is about what the gateway sends: it has no meaning for a local domain.
    wrong = cli("domain", "set", DOMAIN, "--cipher", "aes-cbc")
    assert wrong.code == 1 and "local domain" in wrong.err
    missing = cli("domain", "set", "never.test", "--encryption", "off")
    assert missing.code == 1 and "no domain" in missing.err
    audit = cli.ok("audit", "--json").json()
    assert any(e["action"] == "domain.encryption" for e in audit)


def test_cert_add_for_a_correspondent_at_a_trusted_peer(
    cli: Cli, datadir: Path, tmp_path: Path
) -> None:
    ca_key, ca_cert = create_dev_ca("peer CA")
    remote = f"dr.b@{PEER}"
    _, cert = issue_smime_cert(ca_key, ca_cert, remote)
    write_certificate(tmp_path / "b.pem", cert)
    # Not on the trust list yet: unknown.
    refused = cli("cert", "add", remote, str(tmp_path / "b.pem"))
    assert refused.code == 1 and "trust list" in refused.err
    cli.ok("domain", "trust", PEER, "--relay", "mx.clinique-b.test:25")
    cli.ok("cert", "add", remote, str(tmp_path / "b.pem"))
    [listed] = cli.ok("cert", "list", remote, "--json").json()
    assert listed["address"] == remote
    # A known correspondent, not a mailbox of ours.
    shown = cli.ok("directory", "list", "--correspondents", "--json").json()
    entry = next(p for p in shown if p["address"] == remote)
    assert entry["local"] is False
    assert remote not in {p["address"] for p in cli.ok("directory", "list", "--json").json()}


def test_migration_0013_and_the_signature_inside_encryption_option(
    bare_engine: Engine, cli: Cli, datadir: Path
) -> None:
    migrate(bare_engine, "0012")
    with bare_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO domains (name, kind, added_at)"
                " VALUES ('hopital-a.test', 'local', CURRENT_TIMESTAMP)"
            )
        )
    migrate(bare_engine, "0013")
    # Read in SQL: today's Domains also reads tables of later revisions (domain_signing).
    with bare_engine.connect() as conn:
        existing = conn.execute(text("SELECT signature_inside_encryption FROM domains")).all()
    assert existing == [(None,)]  # accept, the default
    with pytest.raises(IntegrityError), bare_engine.begin() as conn:
        conn.execute(text("UPDATE domains SET signature_inside_encryption = 'maybe'"))
    migrate(bare_engine, "0012", down=True)
    columns = {c["name"] for c in inspect(bare_engine).get_columns("domains")}
    assert "signature_inside_encryption" not in columns
    migrate(bare_engine, "head")
    # The CLI on an initialised data folder: set, shown, back to the default, audited.
    table = cli.ok("domain", "list").out
    assert "accept (default)" in table
    out = cli.ok("domain", "set", DOMAIN, "--signature-inside-encryption", "refuse").out
    assert "signature inside encryption refuse" in out
    local = {d["name"]: d for d in cli.ok("domain", "list", "--json").json()}[DOMAIN]
    assert local["signature_inside_encryption"] == "refuse"
    cli.ok("domain", "set", DOMAIN, "--signature-inside-encryption", "default")
    local = {d["name"]: d for d in cli.ok("domain", "list", "--json").json()}[DOMAIN]
    assert local["signature_inside_encryption"] is None
    assert cli("domain", "set", DOMAIN, "--signature-inside-encryption", "maybe").code == 2
    cli.ok("domain", "trust", PEER, "--relay", "mx.clinique-b.test:25")
    wrong = cli("domain", "set", PEER, "--signature-inside-encryption", "refuse")
    assert wrong.code == 1 and "local domain" in wrong.err
    audit = cli.ok("audit", "--json").json()
    assert any(
        e["action"] == "domain.encryption"
        and (e.get("detail") or {}).get("signature_inside_encryption") == "refuse"
        for e in audit
    )
