"""The audit trail's hash chain: intact after real changes, broken by any tampering."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import DOMAIN, Cli


@pytest.fixture
def changes(cli: Cli, datadir: Path) -> Path:
    for name in ("a", "b", "c"):
        cli.ok(
            "directory", "add", f"{name}@{DOMAIN}", "--name", name.upper(), "--rpps", "99700367909"
        )
    cli.ok("directory", "suspend", f"b@{DOMAIN}")
    cli.ok("domain", "add", "clinique-b.test")
    return datadir / "mssgate.db"


def test_every_change_is_audited_in_order(cli: Cli, changes: Path) -> None:
    entries = cli.ok("audit", "--json").json()
    # `init` records the local domain, then the node it creates (its name is the host's).
    node = cli.ok("node", "list", "--json").json()[0]["name"]
    assert [(e["action"], e["subject"]) for e in entries] == [
        ("domain.add", DOMAIN),
        ("node.add", node),
        ("directory.add", f"a@{DOMAIN}"),
        ("directory.add", f"b@{DOMAIN}"),
        ("directory.add", f"c@{DOMAIN}"),
        ("directory.suspend", f"b@{DOMAIN}"),
        ("domain.add", "clinique-b.test"),
    ]
    assert all(e["actor"].startswith("cli:") for e in entries)
    assert [e["seq"] for e in entries] == list(range(1, 8))
    assert cli.ok("audit", "--since", "2000-01-01", "--json").json() == entries
    assert cli.ok("audit", "--since", "2999-01-01", "--json").json() == []
    assert "invalid --since" in cli("audit", "--since", "yesterday").err


def test_verify_intact(cli: Cli, changes: Path) -> None:
    report = cli.ok("audit", "verify", "--json").json()
    assert report["ok"] is True and report["entries"] == 7 and report["problems"] == []
    assert "intact" in cli.ok("audit", "verify").out
    cli.ok("audit", "verify", "--expect-head", report["head_hash"])
    wrong = cli("audit", "verify", "--expect-head", "0" * 64)
    assert wrong.code == 1 and "head hash differs" in wrong.err


def _tamper(db: Path, sql: str) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute(sql)
    con.close()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE audit SET subject = 'x@hopital-a.test' WHERE seq = 3", "entry 3 was modified"),
        ('UPDATE audit SET detail = \'{"kind": "ORG"}\' WHERE seq = 2', "entry 2 was modified"),
        ("UPDATE audit SET at = '2020-01-01 00:00:00.000000' WHERE seq = 4", "entry 4 was"),
        ("DELETE FROM audit WHERE seq = 3", "entries 3..3 are missing"),
        ("DELETE FROM audit WHERE seq = 7", "the head records entry 7"),
        ("UPDATE audit SET action = 'directory.add' WHERE seq = 6", "entry 6 was modified"),
    ],
)
def test_verify_detects_tampering(cli: Cli, changes: Path, sql: str, message: str) -> None:
    _tamper(changes, sql)
    result = cli("audit", "verify")
    assert result.code == 1
    assert "audit trail broken" in result.err
    assert message in result.err + result.out


def test_rehashing_one_row_still_breaks_the_next_link(cli: Cli, changes: Path) -> None:
    # An attacker who recomputes the edited row's own hash still breaks its successor.
    from mssgate.audit.chain import _digest

    con = sqlite3.connect(changes)
    row = con.execute(
        "SELECT seq, at, actor, action, subject, detail, prev_hash FROM audit WHERE seq=2"
    ).fetchone()
    con.close()
    from datetime import datetime

    forged = _digest(
        row[0], datetime.fromisoformat(row[1]), row[2], row[3], "evil@x.test", row[5], row[6]
    )
    con = sqlite3.connect(changes)
    with con:
        con.execute("UPDATE audit SET subject='evil@x.test', hash=? WHERE seq=2", (forged,))
    con.close()
    result = cli("audit", "verify")
    assert result.code == 1
    assert "entry 3 does not link" in result.err + result.out
