"""`mssgate consumer cert|set` and `consumer add --push`: what they accept and refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.errors import ValidationFailed
from mssgate.mllp.target import PushTarget, parse_push_url
from tests.conftest import DOMAIN, Cli

RIS = f"ris@{DOMAIN}"


@given(st.text(max_size=60))
def test_a_push_address_is_mllp_host_port_or_refused(text: str) -> None:
    try:
        target = parse_push_url(text)
    except ValidationFailed as exc:
        assert "mllp://host:port" in str(exc)
        return
    assert 0 < target.port < 65536 and target.host
    assert parse_push_url(str(target)) == target


def test_push_addresses() -> None:
    assert parse_push_url("mllp://ris.test:2575") == PushTarget("ris.test", 2575)
    assert parse_push_url("mllp://[::1]:2575") == PushTarget("::1", 2575)
    assert str(PushTarget("::1", 2575)) == "mllp://[::1]:2575"
    for bad in ("http://ris:80", "mllp://ris", "mllp://ris:0", "mllp://ris:70000", "mllp://:1"):
        with pytest.raises(ValidationFailed):
            parse_push_url(bad)


def test_consumer_push_and_cert_commands(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    cli.ok("directory", "add", RIS, "--name", "RIS", "--kind", "application")
    assert cli("consumer", "add", "ris", "--mailbox", RIS, "--push", "ftp://x:1").code == 1
    assert cli("consumer", "add", "ris", "--mailbox", RIS, "--push-ca", "x.pem").code == 2
    pgp = tmp_path / "k.asc"
    pgp.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    refused = cli("consumer", "add", "ris", "--mailbox", RIS, "--pgp-key", str(pgp),
                  "--push", "mllp://ris.test:2575")  # fmt: skip
    assert refused.code == 2 and "pgp" in refused.err
    assert cli("consumer", "list", "--json").json() == []  # nothing left behind
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    bad_ca = cli("consumer", "add", "ris", "--mailbox", RIS, "--push", "mllp://r.test:1",
                 "--push-ca", str(not_pem))  # fmt: skip
    assert bad_ca.code == 1 and "PEM certificate" in bad_ca.err
    added = cli.ok("consumer", "add", "ris", "--mailbox", RIS, "--push", "mllp://r.test:2575",
                   "--push-ca", str(datadir / "certs" / "ca.crt.pem"), "--json").json()  # fmt: skip
    assert added["push"] == "mllp://r.test:2575"
    assert cli("consumer", "set", "ris").code == 2
    assert cli("consumer", "set", "ris", "--no-push", "--push", "mllp://a:1").code == 2
    assert cli("consumer", "set", "nobody", "--no-push").code == 1
    missing = cli("consumer", "cert", "nobody", "--out", str(tmp_path / "n"))
    assert missing.code == 1 and "nobody" in missing.err and not (tmp_path / "n").exists()
    cli.ok("consumer", "set", "ris", "--no-push")
    [row] = cli.ok("consumer", "list", "--json").json()
    assert row["push_url"] is None and row["mllp_cert_sha256"] is None
    first = cli.ok("consumer", "cert", "ris", "--out", str(tmp_path / "c"), "--json").json()
    assert (tmp_path / "c" / "ris.key.pem").stat().st_mode & 0o777 == 0o600
    assert cli("consumer", "cert", "ris", "--out", str(tmp_path / "c")).code == 1  # files exist
    second = cli.ok("consumer", "cert", "ris", "--out", str(tmp_path / "c"), "--force",
                    "--json").json()  # fmt: skip
    assert first["sha256"] != second["sha256"]
    [row] = cli.ok("consumer", "list", "--json").json()
    assert row["mllp_cert_sha256"] == second["sha256"]
    actions = [e["action"] for e in cli.ok("audit", "--json").json()]
    assert actions.count("consumer.cert") == 2 and actions.count("consumer.push") == 2
