"""`mssgate cert|domain|consumer ...` through the real CLI, with openssl as the judge."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from mssgate.pki import create_dev_ca, issue_smime_cert, write_certificate, write_private_key
from tests.conftest import DOMAIN, Cli

ADDRESS = f"dr.martin@{DOMAIN}"


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def mailbox(cli: Cli, datadir: Path) -> str:
    cli.ok("directory", "add", ADDRESS, "--name", "Dr Martin", "--rpps", "99700367909")
    return ADDRESS


def _igc_standin(datadir: Path) -> tuple[Any, Any]:
    """A CA standing for IGC-Santé, added to the installation's trust anchors (tls.ca) as a
    production operator does before installing a key pair it issued."""
    ca_key, ca_cert = create_dev_ca("IGC-Santé stand-in")
    with (datadir / "certs" / "ca.crt.pem").open("ab") as bundle:
        bundle.write(ca_cert.public_bytes(Encoding.PEM))
    return ca_key, ca_cert


def test_cert_issue_is_verified_by_openssl(
    cli: Cli, datadir: Path, mailbox: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = cli.ok("cert", "issue", mailbox, "--out", str(out), "--json").json()
    cert, key, p12 = Path(result["cert"]), Path(result["key"]), Path(result["p12"])
    assert cert == out / f"{mailbox}.crt.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert p12.stat().st_mode & 0o777 == 0o600
    assert openssl("x509", "-checkend", "86400", "-noout", "-in", cert).returncode == 0
    ca = datadir / "certs" / "ca.crt.pem"
    verify = openssl("verify", "-purpose", "smimesign", "-CAfile", ca, cert)
    assert verify.returncode == 0, verify.stderr
    text = openssl("x509", "-noout", "-text", "-in", cert).stdout
    assert f"email:{mailbox}" in text
    assert "E-mail Protection" in text
    # Registered: listed, with the fingerprint openssl computes.
    listed = cli.ok("cert", "list", mailbox, "--json").json()
    fp = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", cert).stdout
    assert listed[0]["fingerprint_sha256"] == fp.split("=")[1].strip().replace(":", "").lower()
    # A second issue without --force refuses before touching anything.
    again = cli("cert", "issue", mailbox, "--out", str(out))
    assert again.code == 1 and "exists (use --force to overwrite)" in again.err
    assert len(cli.ok("cert", "list", mailbox, "--json").json()) == 1


def test_cert_issue_for_unknown_mailbox(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    result = cli("cert", "issue", f"ghost@{DOMAIN}", "--out", str(tmp_path / "o"))
    assert result.code == 1 and "no mailbox" in result.err
    assert not (tmp_path / "o").exists()


def test_cert_add_checks_the_address_and_purpose(
    cli: Cli, datadir: Path, mailbox: str, tmp_path: Path
) -> None:
    ca_key, ca_cert = create_dev_ca("external test CA")
    _, other = issue_smime_cert(ca_key, ca_cert, f"someone.else@{DOMAIN}")
    write_certificate(tmp_path / "other.pem", other)
    wrong = cli("cert", "add", mailbox, str(tmp_path / "other.pem"))
    assert wrong.code == 1 and "not an S/MIME certificate for" in wrong.err
    past = datetime.now(UTC) - timedelta(days=1)
    _, expired = issue_smime_cert(ca_key, ca_cert, mailbox, not_after=past)
    write_certificate(tmp_path / "expired.pem", expired)
    old = cli("cert", "add", mailbox, str(tmp_path / "expired.pem"))
    assert old.code == 1 and "expired" in old.err
    _, good = issue_smime_cert(ca_key, ca_cert, mailbox.upper())
    write_certificate(tmp_path / "good.pem", good)
    cli.ok("cert", "add", mailbox, str(tmp_path / "good.pem"))
    dup = cli("cert", "add", mailbox, str(tmp_path / "good.pem"))
    assert dup.code == 1 and "registered" in dup.err
    (tmp_path / "junk.pem").write_text("not a certificate")
    junk = cli("cert", "add", mailbox, str(tmp_path / "junk.pem"))
    assert junk.code == 1 and "junk.pem" in junk.err


def test_domain_add_trust_list_untrust(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    cli.ok("domain", "add", "Clinique-B.test")
    _, peer_ca = create_dev_ca("peer CA")
    write_certificate(tmp_path / "peer-ca.pem", peer_ca)
    cli.ok(
        "domain", "trust", "radiologie-c.test", "--relay", "mx.radiologie-c.test:10025",
        "--ca", str(tmp_path / "peer-ca.pem"),
    )  # fmt: skip
    rows = {d["name"]: d for d in cli.ok("domain", "list", "--json").json()}
    assert rows[DOMAIN]["kind"] == "local"
    assert rows["clinique-b.test"]["kind"] == "local"
    peer = rows["radiologie-c.test"]
    assert (peer["kind"], peer["relay_host"], peer["relay_port"]) == (
        "trusted",
        "mx.radiologie-c.test",
        10025,
    )
    assert "peer CA" in peer["ca_subject"]
    cli.ok("domain", "untrust", "radiologie-c.test")
    assert "radiologie-c.test" not in {d["name"] for d in cli.ok("domain", "list", "--json").json()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["domain", "add", DOMAIN], "already a local domain"),
        (["domain", "add", "nodot"], "at least two labels"),
        (["domain", "trust", DOMAIN, "--relay", "h.test:25"], "is a local domain"),
        (["domain", "untrust", "never.test"], "not on the trust list"),
    ],
)
def test_domain_errors(cli: Cli, datadir: Path, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.code == 1
    assert message in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["domain", "trust", "peer.test", "--relay", "h.test:"], "expected HOST or HOST:PORT"),
        (["domain", "trust", "peer.test", "--relay", "h.test:99999"], "port must be"),
        (["domain", "add", "peer.test", "--encryption", "maybe"], "--encryption"),
        (["directory", "add", f"a@{DOMAIN}", "--name", "A", "--kind", "robot"], "--kind: unknown"),
        (["audit", "--since", "yesterday"], "invalid --since 'yesterday'"),
    ],
)
def test_bad_option_values_are_usage_errors(
    cli: Cli, datadir: Path, args: list[str], message: str
) -> None:
    result = cli(*args)
    assert result.code == 2, result.err
    assert result.err.startswith("mssgate: error: ") and message in result.err
    assert result.err.count("\n") == 1


def test_relay_without_port_is_smtp_25(cli: Cli, datadir: Path) -> None:
    cli.ok("domain", "trust", "peer.test", "--relay", "mx.peer.test")
    cli.ok("domain", "trust", "six.test", "--relay", "[2001:db8::1]")
    rows = {d["name"]: d for d in cli.ok("domain", "list", "--json").json()}
    assert (rows["peer.test"]["relay_host"], rows["peer.test"]["relay_port"]) == (
        "mx.peer.test",
        25,
    )
    assert (rows["six.test"]["relay_host"], rows["six.test"]["relay_port"]) == ("2001:db8::1", 25)


def test_trust_refuses_a_leaf_as_ca(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    ca_key, ca_cert = create_dev_ca("x")
    _, leaf = issue_smime_cert(ca_key, ca_cert, "a@x.test")
    write_certificate(tmp_path / "leaf.pem", leaf)
    result = cli(
        "domain", "trust", "p.test", "--relay", "h.test:25", "--ca", str(tmp_path / "leaf.pem")
    )
    assert result.code == 1 and "not a CA certificate" in result.err


def test_consumer_add_list_revoke(cli: Cli, datadir: Path, mailbox: str) -> None:
    from mssgate.config import load_config
    from mssgate.db import open_engine
    from mssgate.directory import Directory

    created = cli.ok("consumer", "add", "ris-a", "--mailbox", mailbox, "--json").json()
    token = created["token"]
    assert created["name"] == "ris-a" and token.startswith("mssg_") and len(token) > 40
    text = cli.ok("consumer", "list").out
    assert "ris-a" in text and token not in text
    engine = open_engine(load_config(datadir / "mssgate.toml").database_url)
    try:
        consumers = Directory(engine, actor="test").consumers
        found = consumers.by_token(token)
        assert found is not None and found.mailbox == mailbox
        assert consumers.by_token(token[:-1] + "x") is None
        assert token.encode() not in (datadir / "mssgate.db").read_bytes()
        cli.ok("consumer", "revoke", "ris-a")
        assert consumers.by_token(token) is None
    finally:
        engine.dispose()
    assert cli.ok("consumer", "list", "--json").json()[0]["revoked_at"] is not None
    again = cli("consumer", "revoke", "ris-a")
    assert again.code == 1 and "no active consumer" in again.err


def test_consumer_errors(cli: Cli, datadir: Path, mailbox: str, tmp_path: Path) -> None:
    ghost = cli("consumer", "add", "x", "--mailbox", f"ghost@{DOMAIN}")
    assert ghost.code == 1 and "no mailbox" in ghost.err
    bad_name = cli("consumer", "add", "Bad Name", "--mailbox", mailbox)
    assert bad_name.code == 1 and "invalid consumer name" in bad_name.err
    cli.ok("consumer", "add", "ris", "--mailbox", mailbox)
    again = cli("consumer", "add", "ris", "--mailbox", mailbox)
    assert again.code == 1 and "exists already" in again.err
    (tmp_path / "k.asc").write_text("hello")
    bad_key = cli(
        "consumer", "add", "ris2", "--mailbox", mailbox, "--pgp-key", str(tmp_path / "k.asc")
    )
    assert bad_key.code == 1 and "OpenPGP" in bad_key.err


def test_consumer_add_gives_its_mailbox_a_signing_key(
    cli: Cli, datadir: Path, mailbox: str
) -> None:
    created = cli.ok("consumer", "add", "ris-a", "--mailbox", mailbox, "--json").json()
    signing = created["signing_key"]
    key, cert = Path(signing["key"]), Path(signing["cert"])
    # Where serve looks for it (mssgate.smime.mailbox_keys): DATA/certs/mailboxes/.
    assert signing["status"] == "issued"
    assert (key, cert) == (
        datadir / "certs" / "mailboxes" / f"{mailbox}.key.pem",
        datadir / "certs" / "mailboxes" / f"{mailbox}.crt.pem",
    )
    assert key.stat().st_mode & 0o777 == 0o600
    ca = datadir / "certs" / "ca.crt.pem"
    verify = openssl("verify", "-purpose", "smimesign", "-CAfile", ca, cert)
    assert verify.returncode == 0, verify.stderr
    listed = cli.ok("cert", "list", mailbox, "--json").json()
    assert len(listed) == 1
    # A second consumer of the same mailbox keeps the pair in place.
    before = key.read_bytes()
    again = cli.ok("consumer", "add", "ris-b", "--mailbox", mailbox, "--json").json()
    assert again["signing_key"]["status"] == "existing" and key.read_bytes() == before
    assert len(cli.ok("cert", "list", mailbox, "--json").json()) == 1


def test_consumer_add_without_a_dev_ca_names_the_import_command(
    cli: Cli, datadir: Path, mailbox: str, tmp_path: Path
) -> None:
    (datadir / "certs" / "ca.key.pem").unlink()  # production: no CA key on the gateway
    result = cli.ok("consumer", "add", "ris-a", "--mailbox", mailbox)
    assert "token (shown once" in result.out
    assert f"mssgate cert install-key {mailbox} --key KEY.pem --cert CERT.pem" in result.err
    assert not (datadir / "certs" / "mailboxes" / f"{mailbox}.key.pem").exists()
    # That command puts an operator's key pair where serve finds it.
    ca_key, ca_cert = _igc_standin(datadir)
    key, cert = issue_smime_cert(ca_key, ca_cert, mailbox)
    write_private_key(tmp_path / "k.pem", key)
    write_certificate(tmp_path / "c.pem", cert)
    _, other = issue_smime_cert(ca_key, ca_cert, mailbox)
    write_certificate(tmp_path / "other.pem", other)
    mismatch = cli("cert", "install-key", mailbox, "--key", str(tmp_path / "k.pem"),
                   "--cert", str(tmp_path / "other.pem"))  # fmt: skip
    assert mismatch.code == 1 and "does not match" in mismatch.err
    cli.ok("cert", "install-key", mailbox, "--key", str(tmp_path / "k.pem"),
           "--cert", str(tmp_path / "c.pem"))  # fmt: skip
    held = datadir / "certs" / "mailboxes" / f"{mailbox}.key.pem"
    assert held.stat().st_mode & 0o777 == 0o600
    assert len(cli.ok("cert", "list", mailbox, "--json").json()) == 1
    twice = cli("cert", "install-key", mailbox, "--key", str(tmp_path / "k.pem"),
                "--cert", str(tmp_path / "c.pem"))  # fmt: skip
    assert twice.code == 1 and "use --force to overwrite" in twice.err
    quiet = cli.ok("consumer", "add", "ris-b", "--mailbox", mailbox, "--json")
    assert quiet.json()["signing_key"]["status"] == "existing" and quiet.err == ""


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (-400, -30, "expired on"),
        (30, 400, "not valid before"),
    ],
)
def test_install_key_refuses_a_certificate_out_of_its_validity_leaving_nothing(
    cli: Cli, datadir: Path, mailbox: str, tmp_path: Path, start: int, end: int, message: str
) -> None:
    # Before: the files were written first and the registration refused the expired one
    # afterwards (exit 1, yet serve signed receipts with it); a certificate not valid yet was
    # taken without a word. Peers refuse a signature made outside the signer's validity.
    ca_key, ca_cert = _igc_standin(datadir)
    now = datetime.now(UTC)
    key, cert = issue_smime_cert(
        ca_key, ca_cert, mailbox,
        not_before=now + timedelta(days=start), not_after=now + timedelta(days=end),
    )  # fmt: skip
    write_private_key(tmp_path / "k.pem", key)
    write_certificate(tmp_path / "c.pem", cert)
    result = cli("cert", "install-key", mailbox, "--key", str(tmp_path / "k.pem"),
                 "--cert", str(tmp_path / "c.pem"))  # fmt: skip
    assert result.code == 1 and message in result.err, result.err
    assert sorted(p.name for p in (datadir / "certs" / "mailboxes").iterdir()) == sorted(
        p.name for p in (datadir / "certs" / "mailboxes").iterdir() if "mailer-daemon" in p.name
    )
    assert cli.ok("cert", "list", mailbox, "--json").json() == []


def test_install_key_beside_a_leftover_certificate_writes_no_half_pair(
    cli: Cli, datadir: Path, mailbox: str, tmp_path: Path
) -> None:
    # Before: the key was written, then the certificate refused ("file exists"): the new key
    # sat beside the old certificate, a pair that does not match, which serve then raised on
    # for every message to the mailbox instead of finding no key.
    ca_key, ca_cert = _igc_standin(datadir)
    held = datadir / "certs" / "mailboxes"
    _, old = issue_smime_cert(ca_key, ca_cert, mailbox)
    write_certificate(held / f"{mailbox}.crt.pem", old)
    key, cert = issue_smime_cert(ca_key, ca_cert, mailbox)
    write_private_key(tmp_path / "k.pem", key)
    write_certificate(tmp_path / "c.pem", cert)
    result = cli("cert", "install-key", mailbox, "--key", str(tmp_path / "k.pem"),
                 "--cert", str(tmp_path / "c.pem"))  # fmt: skip
    assert result.code == 1 and "use --force to overwrite" in result.err
    assert not (held / f"{mailbox}.key.pem").exists()
    cli.ok("cert", "install-key", mailbox, "--key", str(tmp_path / "k.pem"),
           "--cert", str(tmp_path / "c.pem"), "--force")  # fmt: skip
    assert (held / f"{mailbox}.crt.pem").read_bytes() == (tmp_path / "c.pem").read_bytes()


def test_consumer_add_of_one_mailbox_at_once_from_several_processes(
    cli: Cli, datadir: Path
) -> None:
    # Before: the processes that lost the race to write the key failed with "file exists
    # (use --force to overwrite)" (an option consumer add does not have), or, seeing the key
    # before its certificate, with "unusable key ... fix or remove", naming a good pair.
    import json
    import sys

    boxes = [f"ris{n}@{DOMAIN}" for n in range(2)]
    for box in boxes:
        cli.ok("directory", "add", box, "--name", "RIS", "--kind", "application")
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mssgate",
                "consumer",
                "add",
                f"c{n}-{i}",
                "--mailbox",
                box,
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, box in enumerate(boxes)
        for i in range(3)
    ]
    answers = [(run.wait(60), *run.communicate()) for run in runs]
    assert [(code, err) for code, _, err in answers] == [(0, "")] * len(runs)
    statuses = [json.loads(out)["signing_key"]["status"] for _, out, _ in answers]
    for n in range(len(boxes)):
        assert sorted(statuses[n * 3 : n * 3 + 3]) == ["existing"] * 2 + ["issued"]
    ca = datadir / "certs" / "ca.crt.pem"
    for box in boxes:
        cert = datadir / "certs" / "mailboxes" / f"{box}.crt.pem"
        assert openssl("verify", "-CAfile", ca, cert).returncode == 0
        assert len(cli.ok("cert", "list", box, "--json").json()) == 1


def test_consumer_add_waits_for_a_pair_being_written(cli: Cli, datadir: Path, mailbox: str) -> None:
    # Another `consumer add` of the mailbox has written the key, not yet its certificate:
    # the pair is taken once complete, not called unusable (deterministic half of the race
    # above).
    import threading

    held = datadir / "certs" / "mailboxes"
    from mssgate.pki import load_certificate, load_private_key

    ca_key = load_private_key(datadir / "certs" / "ca.key.pem")
    key, cert = issue_smime_cert(
        ca_key, load_certificate(datadir / "certs" / "ca.crt.pem"), mailbox
    )
    write_private_key(held / f"{mailbox}.key.pem", key)
    later = threading.Timer(0.5, write_certificate, (held / f"{mailbox}.crt.pem", cert))
    later.start()
    try:
        added = cli.ok("consumer", "add", "ris-a", "--mailbox", mailbox, "--json").json()
    finally:
        later.join()
    assert added["signing_key"]["status"] == "existing"


def test_check_reports_the_mailbox_key_pairs_receipts_are_signed_with(
    cli: Cli, datadir: Path, mailbox: str, tmp_path: Path
) -> None:
    # Before: `check` looked at the TLS and DKIM files only; a RIS pair expiring (the dev
    # CA's lasts 825 days), not matching, or readable by others went unnoticed until peers
    # refused its receipts.
    cli.ok("consumer", "add", "ris-a", "--mailbox", mailbox)
    report = cli.ok("check", "--json").json()
    (pair,) = [c for c in report["checks"] if c["check"] == f"mailbox key {mailbox}"]
    assert pair["ok"] is True and "days left" in pair["detail"]
    held = datadir / "certs" / "mailboxes"
    ca_key, ca_cert = _igc_standin(datadir)
    _, other = issue_smime_cert(ca_key, ca_cert, mailbox)
    write_certificate(held / f"{mailbox}.crt.pem", other)
    broken = cli("check")
    assert broken.code == 1
    assert (
        f"FAIL mailbox key {mailbox}: {mailbox}.key.pem does not match {mailbox}.crt.pem"
        in broken.out
    )
    now = datetime.now(UTC)
    key, expired = issue_smime_cert(
        ca_key, ca_cert, mailbox,
        not_before=now - timedelta(days=400), not_after=now - timedelta(days=1),
    )  # fmt: skip
    write_private_key(held / f"{mailbox}.key.pem", key)
    write_certificate(held / f"{mailbox}.crt.pem", expired)
    (held / f"{mailbox}.key.pem").chmod(0o644)
    out = cli("check").out
    assert f"FAIL mailbox key {mailbox}: {held / f'{mailbox}.crt.pem'} expired" in out
    assert "readable by others" in out
    # Another mailbox's valid pair copied under this one's name.
    key, stranger = issue_smime_cert(ca_key, ca_cert, f"other@{DOMAIN}")
    write_private_key(held / f"{mailbox}.key.pem", key)
    write_certificate(held / f"{mailbox}.crt.pem", stranger)
    assert (
        f"FAIL mailbox key {mailbox}: {mailbox}.crt.pem is not an S/MIME certificate for"
        f" {mailbox}" in cli("check").out
    )


@pytest.mark.parametrize("name", ["Bad Name", "ris-a"])
def test_a_refused_consumer_add_issues_no_key(
    cli: Cli, datadir: Path, mailbox: str, name: str
) -> None:
    # Before: the key pair was issued and its certificate registered, then the name was
    # refused (invalid, or a consumer of that name exists): a failed command left both.
    held = datadir / "certs" / "mailboxes" / f"{mailbox}.key.pem"
    if name == "ris-a":
        other = f"ris@{DOMAIN}"
        cli.ok("directory", "add", other, "--name", "RIS", "--kind", "application")
        cli.ok("consumer", "add", "ris-a", "--mailbox", other)
    refused = cli("consumer", "add", name, "--mailbox", mailbox)
    assert refused.code == 1, refused.err
    assert not held.exists()
    assert cli.ok("cert", "list", mailbox, "--json").json() == []


def test_install_key_refuses_a_certificate_from_a_ca_outside_tls_ca(
    cli: Cli, datadir: Path, mailbox: str, tmp_path: Path
) -> None:
    # Before: any CA was taken (a self-signed stand-in too); peers, who trust our operator's
    # bundle, refused every receipt signed with it.
    ca_key, ca_cert = create_dev_ca("Unknown CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, mailbox)
    write_private_key(tmp_path / "k.pem", key)
    write_certificate(tmp_path / "c.pem", cert)
    result = cli("cert", "install-key", mailbox, "--key", str(tmp_path / "k.pem"),
                 "--cert", str(tmp_path / "c.pem"))  # fmt: skip
    assert result.code == 1 and "does not chain to the trust anchors" in result.err, result.err
    assert not (datadir / "certs" / "mailboxes" / f"{mailbox}.key.pem").exists()
    # Once its CA is among the anchors (an intermediate may follow in the file), it goes in.
    with (datadir / "certs" / "ca.crt.pem").open("ab") as bundle:
        bundle.write(ca_cert.public_bytes(Encoding.PEM))
    cli.ok("cert", "install-key", mailbox, "--key", str(tmp_path / "k.pem"),
           "--cert", str(tmp_path / "c.pem"))  # fmt: skip
