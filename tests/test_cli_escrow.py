"""`cert issue` keeps the key (sealed) and protects the .p12; `cert import` takes a real
openssl .p12; `domain set --sign-for-users` (issue 14 parts 1 and 5). openssl is the judge
of the .p12 files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, create_engine, select

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.db.schema import escrowed_keys
from mssgate.directory import Directory
from mssgate.directory.models import NewProfessional
from mssgate.directory.signing import SignForUsers, sign_for_users
from mssgate.pki import (
    create_dev_ca,
    issue_smime_cert,
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)
from mssgate.smime.escrow import (
    EscrowUnavailable,
    Kek,
    KeyEscrow,
    create_kek,
    escrowed_key,
    fingerprint,
    load_kek,
    unseal,
)
from tests.conftest import DOMAIN, Cli, pg_engine_for

ADDRESS = f"dr.martin@{DOMAIN}"
OTHER = f"dr.durand@{DOMAIN}"


def openssl(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, input=stdin)


@pytest.fixture
def mailboxes(cli: Cli, datadir: Path) -> Path:
    for who in (ADDRESS, OTHER):
        cli.ok("directory", "add", who, "--name", who.split("@")[0], "--rpps", "99700367909")
    return datadir


def test_init_makes_a_private_key_encryption_key(datadir: Path) -> None:
    kek = datadir / "certs" / "escrow.kek"
    assert kek.stat().st_mode & 0o777 == 0o600
    assert load_config(datadir / "mssgate.toml").smime.key_encryption_key_file == kek


def test_cert_issue_without_a_flag_prints_a_passphrase_once_that_opens_the_p12(
    cli: Cli, mailboxes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = cli.ok("cert", "issue", ADDRESS, "--out", str(out), stdin="ignored\n")
    [line] = [x for x in result.out.splitlines() if ".p12 passphrase" in x]
    passphrase = line.rsplit(": ", 1)[1].strip()
    assert len(passphrase) >= 20 and result.out.count(passphrase) == 1
    p12 = out / f"{ADDRESS}.p12"
    opened = openssl("pkcs12", "-in", p12, "-noout", "-passin", f"pass:{passphrase}")
    assert opened.returncode == 0, opened.stderr
    assert openssl("pkcs12", "-in", p12, "-noout", "-passin", "pass:").returncode != 0
    # The JSON form gives it once too, for scripts.
    again = cli.ok("cert", "issue", OTHER, "--out", str(out), "--json").json()
    assert again["p12_passphrase"] and again["escrowed"] is True


def test_cert_issue_passphrase_from_stdin_or_none(
    cli: Cli, mailboxes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = cli.ok(
        "cert", "issue", ADDRESS, "--out", str(out), "--passphrase-stdin", stdin="s3cret pass\n"
    )
    assert ".p12 passphrase" not in result.out
    p12 = out / f"{ADDRESS}.p12"
    assert openssl("pkcs12", "-in", p12, "-noout", "-passin", "pass:s3cret pass").returncode == 0
    cli.ok("cert", "issue", OTHER, "--out", str(out), "--no-passphrase")
    bare = openssl("pkcs12", "-in", out / f"{OTHER}.p12", "-noout", "-passin", "pass:")
    assert bare.returncode == 0, bare.stderr
    both = cli("cert", "issue", OTHER, "--out", str(out), "--no-passphrase", "--passphrase-stdin",
               "--force", stdin="x\n")  # fmt: skip
    assert both.code == 2 and "exclude each other" in both.err


def test_the_held_key_is_sealed_and_opens_only_with_the_installations_kek(
    cli: Cli, mailboxes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cli.ok("cert", "issue", ADDRESS, "--out", str(out), "--no-passphrase")
    cli.ok("cert", "issue", OTHER, "--out", str(out), "--no-passphrase", "--no-escrow")
    config = load_config(mailboxes / "mssgate.toml")
    engine = open_engine(config.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(escrowed_keys)).all()
        assert len(rows) == 1  # --no-escrow kept nothing
        key = load_private_key(out / f"{ADDRESS}.key.pem")
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem_body = (out / f"{ADDRESS}.key.pem").read_text().splitlines()[1].encode()
        sealed = bytes(rows[0].wrapped_key)
        for secret in (der, der[32:96], pem_body):
            assert secret not in sealed
        held = escrowed_key(engine, config, ADDRESS)
        assert held is not None and held.cert == load_certificate(out / f"{ADDRESS}.crt.pem")
        assert held.key.private_numbers() == key.private_numbers()  # type: ignore[union-attr]
        assert escrowed_key(engine, config, OTHER) is None
        # Another KEK does not open it; nor does the row moved onto another mailbox.
        with pytest.raises(EscrowUnavailable):
            unseal(Kek.of(b"\x01" * 32), ADDRESS, held.cert, sealed)
        kek_file = config.smime.key_encryption_key_file
        assert kek_file is not None
        with pytest.raises(EscrowUnavailable):
            unseal(load_kek(kek_file), OTHER, held.cert, sealed)
        # A KEK file others can read is refused rather than used.
        kek_file.chmod(0o644)
        with pytest.raises(EscrowUnavailable, match="readable by other users"):
            escrowed_key(engine, config, ADDRESS)
        kek_file.chmod(0o600)
        # Neither the audit trail nor anything it says holds the key.
        audit = cli.ok("audit", "--json").out
        assert "key.escrow" in audit and pem_body.decode() not in audit
    finally:
        engine.dispose()


def _openssl_p12(datadir: Path, tmp_path: Path, address: str, passphrase: str) -> Path:
    """What a practitioner's CA hands over: a .p12 written by openssl itself."""
    certs = datadir / "certs"
    key, cert = issue_smime_cert(
        load_private_key(certs / "ca.key.pem"), load_certificate(certs / "ca.crt.pem"), address
    )
    write_private_key(tmp_path / "own.key.pem", key)
    write_certificate(tmp_path / "own.crt.pem", cert)
    p12 = tmp_path / "own.p12"
    made = openssl("pkcs12", "-export", "-inkey", tmp_path / "own.key.pem",
                   "-in", tmp_path / "own.crt.pem", "-certfile", certs / "ca.crt.pem",
                   "-out", p12, "-passout", f"pass:{passphrase}")  # fmt: skip
    assert made.returncode == 0, made.stderr
    return p12


def test_cert_import_of_an_openssl_p12(cli: Cli, mailboxes: Path, tmp_path: Path) -> None:
    p12 = _openssl_p12(mailboxes, tmp_path, ADDRESS, "the passphrase")
    wrong = cli("cert", "import", ADDRESS, str(p12), "--passphrase-stdin", stdin="not it\n")
    assert wrong.code == 1
    assert wrong.err.strip().count("\n") == 0 and "wrong passphrase" in wrong.err
    assert "not it" not in wrong.err
    done = cli.ok(
        "cert", "import", ADDRESS, str(p12), "--passphrase-stdin", stdin="the passphrase\n"
    )
    assert "imported for" in done.out
    config = load_config(mailboxes / "mssgate.toml")
    engine = open_engine(config.database_url)
    try:
        held = escrowed_key(engine, config, ADDRESS)
    finally:
        engine.dispose()
    assert held is not None and held.cert == load_certificate(tmp_path / "own.crt.pem")
    listed = cli.ok("cert", "list", ADDRESS, "--json").json()
    assert [c["fingerprint_sha256"] for c in listed] == [fingerprint(held.cert)]
    # Someone else's identity is refused for this address.
    theirs = _openssl_p12(mailboxes, tmp_path, OTHER, "p")
    refused = cli("cert", "import", ADDRESS, str(theirs), "--passphrase-stdin", stdin="p\n")
    assert refused.code == 1 and "not an S/MIME certificate for" in refused.err


def test_domain_set_sign_for_users(cli: Cli, datadir: Path) -> None:
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    try:
        assert sign_for_users(engine, DOMAIN) is SignForUsers.MISSING  # the default
        out = cli.ok("domain", "set", DOMAIN, "--sign-for-users", "off").out
        assert "sign for users off" in out
        assert sign_for_users(engine, DOMAIN) is SignForUsers.OFF
        cli.ok("domain", "set", DOMAIN, "--sign-for-users", "always")
        assert sign_for_users(engine, DOMAIN) is SignForUsers.ALWAYS
    finally:
        engine.dispose()
    bad = cli("domain", "set", DOMAIN, "--sign-for-users", "sometimes")
    assert bad.code == 2 and "off, missing or always" in bad.err
    cli.ok("domain", "trust", "peer.test", "--relay", "mx.peer.test")
    peer = cli("domain", "set", "peer.test", "--sign-for-users", "off")
    assert peer.code == 1 and "local domain" in peer.err


def test_domain_list_shows_sign_for_users(cli: Cli, datadir: Path) -> None:
    """Issue 14 part 1: the per-domain setting was audited and applied but shown nowhere."""
    cli.ok("domain", "add", "clinique-a.test")
    cli.ok("domain", "trust", "peer.test", "--relay", "mx.peer.test")
    cli.ok("domain", "set", DOMAIN, "--sign-for-users", "always")

    def listed() -> dict[str, object]:
        return {d["name"]: d["sign_for_users"] for d in cli.ok("domain", "list", "--json").json()}

    # Stored, the default where none is (never null for a local domain), null for a peer.
    assert listed() == {DOMAIN: "always", "clinique-a.test": "missing", "peer.test": None}
    table = cli.ok("domain", "list").out
    assert "sign for users" in table
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if "│" in line}
    assert rows[DOMAIN].rstrip(" │").endswith("always"), table
    assert rows["clinique-a.test"].rstrip(" │").endswith("missing"), table
    cli.ok("domain", "set", DOMAIN, "--sign-for-users", "off")
    assert listed()[DOMAIN] == "off"


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_key_held_by_one_node_opens_on_another_with_the_same_kek(
    db: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The sealed key lives in the shared database: a second engine (another node) with a
    copy of the KEK file opens it; with another KEK it does not."""
    engine: Engine = request.getfixturevalue("pg_engine" if db == "postgresql" else "sqlite_engine")
    directory = Directory(engine, actor="test")
    directory.domains.add_local(DOMAIN)
    directory.professionals.add(
        NewProfessional(address=ADDRESS, display_name="Dr Martin", idnat="899700367909")
    )
    ca_key, ca_cert = create_dev_ca("test CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, ADDRESS)
    kek_a = create_kek(tmp_path / "a" / "escrow.kek")
    KeyEscrow(engine, "test").put(kek_a, ADDRESS, key, cert)  # type: ignore[arg-type]
    copy = tmp_path / "b" / "escrow.kek"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "a" / "escrow.kek").read_bytes())
    copy.chmod(0o600)
    # Another node: its own engine on the same database.
    if db == "postgresql":
        other = pg_engine_for(request.getfixturevalue("pg_schema"))
    else:
        other = create_engine(engine.url)
    try:
        held = escrowed_key(other, copy, ADDRESS)
        assert held is not None and held.cert == cert
        create_kek(tmp_path / "c" / "escrow.kek")
        with pytest.raises(EscrowUnavailable, match="another key encryption key"):
            escrowed_key(other, tmp_path / "c" / "escrow.kek", ADDRESS)
    finally:
        other.dispose()


def test_check_says_whether_this_node_opens_the_held_keys(
    cli: Cli, mailboxes: Path, tmp_path: Path
) -> None:
    line = "signing keys held"
    assert "no signing key held yet" not in cli.ok("check").out  # init made the file
    cli.ok("cert", "issue", ADDRESS, "--out", str(tmp_path / "out"), "--no-passphrase")
    assert f"ok   {line}: 1 signing key(s) held" in cli.ok("check").out
    kek = mailboxes / "certs" / "escrow.kek"
    kek.rename(tmp_path / "kek.away")
    failed = cli("check")
    assert failed.code == 1 and f"FAIL {line}: no key encryption key at {kek}" in failed.out
    # Another file (another installation's) does not open them either.
    create_kek(kek)
    failed = cli("check")
    assert failed.code == 1 and "this node cannot open them" in failed.out


def test_drop_key_ends_the_gateways_signing_for_that_user(
    cli: Cli, mailboxes: Path, tmp_path: Path
) -> None:
    cli.ok("cert", "issue", ADDRESS, "--out", str(tmp_path / "out"), "--no-passphrase")
    config = load_config(mailboxes / "mssgate.toml")
    engine = open_engine(config.database_url)
    try:
        assert escrowed_key(engine, config, ADDRESS) is not None
        assert "is deleted" in cli.ok("cert", "drop-key", ADDRESS).out
        assert escrowed_key(engine, config, ADDRESS) is None
    finally:
        engine.dispose()
    again = cli("cert", "drop-key", ADDRESS)
    assert again.code == 1 and "no signing key is held" in again.err
    assert "key.unescrow" in cli.ok("audit", "--json").out
    assert len(cli.ok("cert", "list", ADDRESS, "--json").json()) == 1
