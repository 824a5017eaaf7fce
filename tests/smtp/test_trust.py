"""S/MIME enforcement, DKIM and Authentication-Results on the live SMTP path."""

from __future__ import annotations

import json
import smtplib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mssgate.dkim import dkim_sign
from mssgate.pki import (
    create_dev_ca,
    dkim_dns_record,
    generate_dkim_key,
    issue_smime_cert,
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)
from mssgate.smime import sign_message
from tests.conftest import Cli
from tests.smtp.conftest import ALICE, BOB, PEER_DOMAIN, Gateway, message

PEER_SENDER = f"dr.b@{PEER_DOMAIN}"


@pytest.fixture
def keys(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    out = tmp_path / "smime"
    # --no-escrow: these users sign with their own client, so an unsigned message is refused
    # (with a key held, the gateway would sign it: tests/smtp/test_gateway_sign.py).
    cli.ok("cert", "issue", ALICE, "--out", str(out), "--no-escrow")
    cli.ok("cert", "issue", BOB, "--out", str(out), "--no-escrow")
    return {who: (out / f"{who}.key.pem", out / f"{who}.crt.pem") for who in (ALICE, BOB)}


def signed(raw: bytes, key: Path, cert: Path) -> bytes:
    return sign_message(raw, key=load_private_key(key), cert=load_certificate(cert))


@pytest.fixture
def strict(gateway_setup: Gateway, keys: dict[str, tuple[Path, Path]]) -> Gateway:
    gateway_setup.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    gateway_setup.start()
    yield gateway_setup  # type: ignore[misc]
    gateway_setup.stop()


def submit(gateway: Gateway, raw: bytes) -> tuple[int, bytes]:
    client = gateway.login()
    client.mail(ALICE)
    client.rcpt(BOB)
    result = client.data(raw)
    client.quit()
    return result


def test_signed_by_the_registered_sender_is_accepted_with_results(
    strict: Gateway, keys: dict[str, tuple[Path, Path]]
) -> None:
    forged = b"Authentication-Results: mx.hopital-a.test; smime=pass\r\n"
    code, _ = submit(strict, signed(forged + message(), *keys[ALICE]))
    assert code == 250
    [delivered] = strict.wait_delivered(BOB, 1)
    text = delivered.read_bytes().decode()
    head = text.split("\r\n\r\n", 1)[0]
    assert head.count("Authentication-Results: mx.hopital-a.test") == 1
    assert "smime=pass" in head and f"smtp.auth={ALICE}" in head
    assert "TLSv1.3" in head


@pytest.mark.parametrize(
    ("case", "code", "status"),
    [
        ("unsigned", 550, b"5.7.1"),
        ("other practitioner", 550, b"5.7.1"),
        ("unregistered", 550, b"5.7.1"),
        ("tampered", 554, b"5.7.7"),
        ("untrusted CA", 550, b"5.7.1"),
        ("address mismatch", 553, b"5.7.1"),
    ],
)
def test_signature_rejections(
    strict: Gateway, keys: dict[str, tuple[Path, Path]], tmp_path: Path,
    case: str, code: int, status: bytes,
) -> None:  # fmt: skip
    raw = message()
    if case == "other practitioner":
        raw = signed(raw, *keys[BOB])
    elif case == "unregistered":
        certs = strict.data / "certs"
        ca_key = load_private_key(certs / "ca.key.pem")
        key, cert = issue_smime_cert(ca_key, load_certificate(certs / "ca.crt.pem"), ALICE)
        write_private_key(tmp_path / "k.pem", key)
        write_certificate(tmp_path / "c.pem", cert)
        raw = signed(raw, tmp_path / "k.pem", tmp_path / "c.pem")
    elif case == "tampered":
        raw = signed(raw, *keys[ALICE]).replace(b"Bonjour", b"Bonsoir")
    elif case == "untrusted CA":
        ca_key, ca_cert = create_dev_ca("rogue")
        key, cert = issue_smime_cert(ca_key, ca_cert, ALICE)
        write_private_key(tmp_path / "k.pem", key)
        write_certificate(tmp_path / "c.pem", cert)
        raw = signed(raw, tmp_path / "k.pem", tmp_path / "c.pem")
    elif case == "address mismatch":
        # Signed by Alice, but the signed part claims another author: the From check of
        # the submission policy answers first.
        raw = signed(message(sender=BOB), *keys[BOB])
    got_code, text = submit(strict, raw)
    assert (got_code, text.split(b" ")[0]) == (code, status), text
    assert strict.mailbox(BOB) == []
    event = strict.wait_event("smtp.reject", stage="DATA")
    assert event["status"] == status.decode()


def test_rejection_is_audited(strict: Gateway) -> None:
    import sqlite3

    assert submit(strict, message())[0] == 550
    con = sqlite3.connect(strict.data / "mssgate.db")
    rows = con.execute("SELECT detail FROM audit WHERE action = 'message.rejected'").fetchall()
    con.close()
    assert len(rows) == 1
    detail = json.loads(rows[0][0])
    assert detail["status"] == "550 5.7.1" and detail["reason"] == "unsigned"


def test_revoked_certificate(
    gateway_setup: Gateway, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    certs = gateway_setup.data / "certs"
    ca_key = load_private_key(certs / "ca.key.pem")
    ca_cert = load_certificate(certs / "ca.crt.pem")
    alice = load_certificate(keys[ALICE][1])
    bob = load_certificate(keys[BOB][1])
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(bob.serial_number)
            .revocation_date(now - timedelta(minutes=1))
            .build()
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (tmp_path / "ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    gateway_setup.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    gateway_setup.env["MSSGATE_POLICY__CRL_FILES"] = json.dumps([str(tmp_path / "ca.crl")])
    gateway_setup.start()
    try:
        assert submit(gateway_setup, signed(message(), *keys[ALICE]))[0] == 250
        client = gateway_setup.login(BOB)
        client.mail(BOB)
        client.rcpt(ALICE)
        code, text = client.data(signed(message(sender=BOB, to=ALICE), *keys[BOB]))
        client.quit()
        assert (code, text.split(b" ")[0]) == (550, b"5.7.5")
        assert alice.serial_number != bob.serial_number
    finally:
        gateway_setup.stop()


def test_peer_message_signed_and_dkim_checked(
    gateway_setup: Gateway, peer_pki: dict[str, Path], tmp_path: Path
) -> None:
    # A practitioner registered at the peer operator, certified by the peer's CA.
    peer_ca_key = load_private_key(peer_pki["ca_key"])
    key, cert = issue_smime_cert(peer_ca_key, load_certificate(peer_pki["ca"]), PEER_SENDER)
    write_private_key(tmp_path / "b.key", key)
    write_certificate(tmp_path / "b.crt", cert)
    dkim_key = generate_dkim_key()
    dkim_pem = dkim_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    record = dkim_dns_record(dkim_key.public_key())
    gateway_setup.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    gateway_setup.env["MSSGATE_DKIM__DNS_OVERRIDES"] = json.dumps(
        {f"peer._domainkey.{PEER_DOMAIN}": record}
    )
    gateway_setup.start()
    try:
        raw = signed(message(sender=PEER_SENDER), tmp_path / "b.key", tmp_path / "b.crt")
        raw = dkim_sign(raw, selector="peer", domain=PEER_DOMAIN, key_pem=dkim_pem)
        ctx = gateway_setup.client_context()
        ctx.load_cert_chain(peer_pki["cert"], peer_pki["key"])

        def send(data: bytes) -> tuple[int, bytes]:
            client = smtplib.SMTP("127.0.0.1", gateway_setup.ports["mta"], timeout=15)
            client.ehlo(f"mx.{PEER_DOMAIN}")
            client.starttls(context=ctx)
            client.ehlo(f"mx.{PEER_DOMAIN}")
            assert client.mail(PEER_SENDER)[0] == 250
            assert client.rcpt(BOB)[0] == 250
            result = client.data(data)
            client.quit()
            return result

        assert send(raw)[0] == 250
        [delivered] = gateway_setup.wait_delivered(BOB, 1)
        head = delivered.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
        assert "smime=pass" in head
        assert f"dkim=pass header.d={PEER_DOMAIN}" in head
        # Signed by a certificate of our own CA for the peer's address: not the peer's CA.
        certs = gateway_setup.data / "certs"
        ours = load_private_key(certs / "ca.key.pem")
        k2, c2 = issue_smime_cert(ours, load_certificate(certs / "ca.crt.pem"), PEER_SENDER)
        write_private_key(tmp_path / "x.key", k2)
        write_certificate(tmp_path / "x.crt", c2)
        code, text = send(
            signed(message(sender=PEER_SENDER), tmp_path / "x.key", tmp_path / "x.crt")
        )
        assert (code, text.split(b" ")[0]) == (550, b"5.7.1")
        # A body changed after DKIM signing still passes S/MIME? No: S/MIME covers it too.
        assert send(raw.replace(b"Bonjour", b"Bonsoir"))[0] == 554
    finally:
        gateway_setup.stop()


def test_no_secret_in_the_log_after_a_session(
    strict: Gateway, keys: dict[str, tuple[Path, Path]]
) -> None:
    from tests.smtp.conftest import PASSWORD

    assert submit(strict, signed(message(), *keys[ALICE]))[0] == 250
    strict.wait_event("smtp.accept")
    logs = strict.logs()
    assert "smtp.auth" in logs  # the session was logged...
    assert PASSWORD not in logs and "BEGIN" not in logs  # ...without password or key
    assert "Bonjour" not in logs  # nor message content
