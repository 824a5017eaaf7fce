"""`mssgate directory ...` driven through the real CLI against a temp data folder."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import DOMAIN, Cli

GOOD_RPPS = "99700367909"  # the ANS test practitioner of the DRIMbox example
PASSWORD = "correct horse battery"


def add(cli: Cli, address: str, *extra: str) -> None:
    # A person's mailbox needs an RPPS: the default one unless the test gives its own or a kind.
    if "--rpps" not in extra and "--kind" not in extra:
        extra = ("--rpps", GOOD_RPPS, *extra)
    cli.ok("directory", "add", address, "--name", "Dr Test", *extra)


def test_add_then_list_json(cli: Cli, datadir: Path) -> None:
    add(cli, f"Marie.Curie@{DOMAIN.upper()}", "--rpps", GOOD_RPPS, "--profession", "10")
    add(cli, f"radiologie@{DOMAIN}", "--kind", "organisation")
    rows = cli.ok("directory", "list", "--json").json()
    assert [r["address"] for r in rows] == [f"marie.curie@{DOMAIN}", f"radiologie@{DOMAIN}"]
    marie = rows[0]
    assert marie["idnat"] == "8" + GOOD_RPPS
    assert marie["id_type"] == "RPPS"
    assert marie["kind"] == "PER"
    assert marie["state"] == "active"
    assert marie["profession_code"] == "10"
    assert marie["has_password"] is False
    assert rows[1]["kind"] == "ORG"


def test_show_text_and_json(cli: Cli, datadir: Path) -> None:
    add(cli, f"a@{DOMAIN}")
    assert f"a@{DOMAIN}" in cli.ok("directory", "show", f"A@{DOMAIN}").out
    assert cli.ok("directory", "show", f"a@{DOMAIN}", "--json").json()["display_name"] == "Dr Test"


def test_idnat_forms_are_normalised(cli: Cli, datadir: Path) -> None:
    add(cli, f"a@{DOMAIN}", "--rpps", "8" + GOOD_RPPS)
    add(cli, f"b@{DOMAIN}", "--rpps", "100000009")  # ADELI, Luhn-valid
    rows = {r["address"]: r for r in cli.ok("directory", "list", "--json").json()}
    assert rows[f"a@{DOMAIN}"]["idnat"] == "8" + GOOD_RPPS
    assert rows[f"b@{DOMAIN}"]["id_type"] == "ADELI"
    assert rows[f"b@{DOMAIN}"]["idnat"] == "0100000009"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad@@x.test", "--name", "X"], "needs exactly one '@'"),
        ([f"a%b@{DOMAIN}", "--name", "X"], "'%' is not allowed"),
        ([f"a@{DOMAIN}", "--name", "X", "--rpps", "99700367908"], "check digit"),
        ([f"a@{DOMAIN}", "--name", "X", "--rpps", "1234"], "expected 11 digits"),
        ([f"a@{DOMAIN}", "--name", "   "], "a display name is required"),
        (["a@elsewhere.test", "--name", "X", "--rpps", GOOD_RPPS], "elsewhere.test is not a local"),
        ([f"a@{DOMAIN}", "--name", "X", "--profession", "99"], "needs a national identifier"),
        (["a@[127.0.0.1]", "--name", "X"], "IP literals"),
    ],
)
def test_bad_inputs_exit_1_with_one_line(
    cli: Cli, datadir: Path, args: list[str], message: str
) -> None:
    result = cli("directory", "add", *args)
    assert result.code == 1
    assert message in result.err
    assert result.err.count("\n") == 1 and result.err.startswith("mssgate: error: ")
    assert "Traceback" not in result.err
    assert cli.ok("directory", "list", "--json").json() == []


def test_duplicate_is_refused_and_nothing_half_written(cli: Cli, datadir: Path) -> None:
    add(cli, f"a@{DOMAIN}")
    before = len(cli.ok("audit", "--json").json())
    result = cli("directory", "add", f"A@{DOMAIN}", "--name", "Other", "--rpps", GOOD_RPPS)
    assert result.code == 1 and "exists already" in result.err
    assert len(cli.ok("audit", "--json").json()) == before
    assert cli.ok("directory", "show", f"a@{DOMAIN}", "--json").json()["display_name"] == "Dr Test"


def test_usage_errors_exit_2(cli: Cli, datadir: Path) -> None:
    assert cli("directory", "add", f"a@{DOMAIN}").code == 2  # --name missing
    assert cli("directory", "frobnicate").code == 2
    assert cli("--no-such-option").code == 2


def test_suspend_reactivate_remove(cli: Cli, datadir: Path) -> None:
    add(cli, f"a@{DOMAIN}")
    cli.ok("directory", "suspend", f"a@{DOMAIN}")
    assert cli.ok("directory", "show", f"a@{DOMAIN}", "--json").json()["state"] == "suspended"
    cli.ok("directory", "reactivate", f"a@{DOMAIN}")
    assert cli.ok("directory", "show", f"a@{DOMAIN}", "--json").json()["state"] == "active"
    cli.ok("directory", "remove", f"a@{DOMAIN}")
    missing = cli("directory", "show", f"a@{DOMAIN}")
    assert missing.code == 1 and "no mailbox" in missing.err
    for verb in ("suspend", "reactivate", "remove"):
        result = cli("directory", verb, f"ghost@{DOMAIN}")
        assert result.code == 1 and "no mailbox 'ghost@" in result.err


def test_passwd_and_authentication(cli: Cli, datadir: Path) -> None:
    from mssgate.config import load_config
    from mssgate.db import open_engine
    from mssgate.directory import Directory

    cli.ok(
        "directory", "add", f"a@{DOMAIN}", "--name", "A", "--rpps", GOOD_RPPS, "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    empty = cli("directory", "add", f"b@{DOMAIN}", "--name", "B", "--rpps", GOOD_RPPS,
                "--password-stdin")  # fmt: skip
    assert empty.code == 1 and "no password on standard input" in empty.err
    cli.ok("directory", "passwd", f"a@{DOMAIN}", "--password-stdin", stdin=PASSWORD + "\n")
    # Without --password-stdin there is no way to give the password: a usage error, one line.
    usage = cli("directory", "passwd", f"a@{DOMAIN}", stdin=PASSWORD + "\n")
    assert usage.code == 2 and usage.err.count("\n") == 1 and "--password-stdin" in usage.err
    short = cli("directory", "passwd", f"a@{DOMAIN}", "--password-stdin", stdin="short\n")
    assert short.code == 1 and "too short" in short.err
    engine = open_engine(load_config(datadir / "mssgate.toml").database_url)
    try:
        directory = Directory(engine, actor="test")
        assert directory.professionals.authenticate(f"A@{DOMAIN}", PASSWORD) is not None
        assert directory.professionals.authenticate(f"a@{DOMAIN}", PASSWORD + "x") is None
        assert directory.professionals.authenticate(f"nobody@{DOMAIN}", PASSWORD) is None
        cli.ok("directory", "suspend", f"a@{DOMAIN}")
        assert directory.professionals.authenticate(f"a@{DOMAIN}", PASSWORD) is None
    finally:
        engine.dispose()
    # The hash is Argon2id and the password itself is nowhere in the database file.
    con = sqlite3.connect(datadir / "mssgate.db")
    (stored,) = con.execute("SELECT password_hash FROM professionals").fetchone()
    con.close()
    assert stored.startswith("$argon2id$")
    assert PASSWORD.encode() not in (datadir / "mssgate.db").read_bytes()


def test_missing_config_is_one_line(cli: Cli, tmp_path: Path) -> None:
    result = cli("--config", str(tmp_path / "nope.toml"), "directory", "list")
    assert result.code == 1
    assert "configuration file not found" in result.err


def test_installed_console_script(datadir: Path) -> None:
    import subprocess
    import sys

    script = Path(sys.executable).parent / "mssgate"
    ok = subprocess.run([script, "directory", "list", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "[]"
    bad = subprocess.run(
        [script, "directory", "add", "x@y", "--name", "X"], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("mssgate: error: invalid address")
    assert "Traceback" not in bad.stderr


def test_help_shows_no_type_after_plain_flags() -> None:
    import subprocess
    import sys

    script = Path(sys.executable).parent / "mssgate"
    env = {"COLUMNS": "120", "PATH": "/usr/bin:/bin"}
    for args in (["directory", "add", "--help"], ["consumer", "add", "--help"]):
        shown = subprocess.run([script, *args], capture_output=True, text=True, env=env)
        assert shown.returncode == 0, shown.stderr
        assert "--json" in shown.stdout and "--help" in shown.stdout
        assert "<bool>" not in shown.stdout  # a flag takes no value
        assert "<str>" in shown.stdout  # options that do still say what they take
