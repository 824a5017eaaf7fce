"""The S/MIME encryption policy on a live gateway: decryption for an application mailbox (with
openssl-made and gateway-made messages), tampering, a `required` local domain, and encrypted
mail for a person whose key the gateway does not hold."""

from __future__ import annotations

import base64
import email
import json
import smtplib
import sqlite3
import subprocess
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mssgate.pki import issue_smime_cert, load_certificate, load_private_key
from mssgate.smime import decrypt, encrypt, sign_message, split_entity
from tests.conftest import DOMAIN, Cli
from tests.documents.factory import CdaSpec, make_cda
from tests.smtp.conftest import ALICE, BOB, PEER_DOMAIN, Gateway

RIS = f"ris@{DOMAIN}"
CANNOT_DECRYPT = b"5.7.5 Message refused: the gateway cannot decrypt it for the application mailbox"
REQUIRED = b"5.7.1 Message refused: the recipient's domain accepts only S/MIME-encrypted messages"
INSIDE = (
    b"5.7.5 Message refused: its signature is inside the encryption, where the gateway cannot"
    b" check it; sign the encrypted message (encrypt, then sign) or send it signed and"
    b" unencrypted"
)
MIXED = (
    b"5.7.1 Message refused: encrypted mail for an application mailbox must have no other kind"
    b" of recipient; send it separately"
)
CBC = (
    b"5.7.5 Message refused: AES-CBC encryption is accepted only around signed content; use AES-GCM"
)


class World:
    def __init__(self, gateway: Gateway, token: str, smime: Path) -> None:
        self.gateway = gateway
        self.token = token
        self.smime = smime

    def key(self, who: str) -> tuple[Path, Path]:
        folder = self.gateway.data / "certs" / "mailboxes" if who == RIS else self.smime
        return folder / f"{who}.key.pem", folder / f"{who}.crt.pem"

    def sign(self, raw: bytes, who: str = ALICE, *, detached: bool = True) -> bytes:
        key, cert = self.key(who)
        return sign_message(
            raw, key=load_private_key(key), cert=load_certificate(cert), detached=detached
        )

    def encrypt(self, raw: bytes, *recipients: str, mode: str = "aes-gcm") -> bytes:
        certs = [load_certificate(self.key(r)[1]) for r in recipients]
        return encrypt(raw, certs, mode=mode)  # type: ignore[arg-type]

    def submit(self, raw: bytes, *recipients: str) -> tuple[int, bytes]:
        client = self.gateway.login()
        client.mail(ALICE)
        for r in recipients:
            assert client.rcpt(r)[0] == 250
        result = client.data(raw)
        client.quit()
        return result


def start(cli: Cli, gateway: Gateway, tmp_path: Path, *, require_signature: bool) -> World:
    smime = tmp_path / "smime"
    cli.ok("directory", "add", RIS, "--name", "RIS imagerie", "--kind", "application")
    # The application mailbox's key pair where the gateway looks for it.
    cli.ok("cert", "issue", RIS, "--out", str(gateway.data / "certs" / "mailboxes"))
    cli.ok("cert", "issue", ALICE, "--out", str(smime))
    cli.ok("cert", "issue", BOB, "--out", str(smime))
    token = cli.ok("consumer", "add", "ris-a", "--mailbox", RIS, "--json").json()["token"]
    gateway.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true" if require_signature else "false"
    gateway.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    gateway.start()
    return World(gateway, token, smime)


@pytest.fixture
def world(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> Iterator[World]:
    w = start(cli, gateway_setup, tmp_path, require_signature=True)
    yield w
    gateway_setup.stop()


@pytest.fixture
def lax(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> Iterator[World]:
    w = start(cli, gateway_setup, tmp_path, require_signature=False)
    yield w
    gateway_setup.stop()


def cr_img(to: str = RIS, message_id: str = "<cr-1@hopital-a.test>") -> bytes:
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = to
    msg["Subject"] = "CR d'imagerie"
    msg["Message-ID"] = message_id
    msg.set_content("Compte rendu ci-joint.")
    msg.add_attachment(make_cda(CdaSpec()), maintype="text", subtype="xml", filename="CR.xml")
    return msg.as_bytes(policy=policy.SMTP)


def openssl(*args: str | Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()


def openssl_sign_then_encrypt(w: World, tmp_path: Path) -> bytes:
    """What a client using OpenSSL sends: `cms -sign`, then `cms -encrypt -aes-256-gcm`."""
    outer, entity = split_entity(cr_img())
    (tmp_path / "entity.eml").write_bytes(entity)
    key, cert = w.key(ALICE)
    openssl("cms", "-sign", "-in", tmp_path / "entity.eml", "-signer", cert, "-inkey", key,
            "-out", tmp_path / "signed.eml")  # fmt: skip
    openssl("cms", "-encrypt", "-aes-256-gcm", "-in", tmp_path / "signed.eml",
            "-out", tmp_path / "sealed.eml", w.key(RIS)[1])  # fmt: skip
    sealed = (tmp_path / "sealed.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert b"smime-type=authEnveloped-data" in sealed
    return outer + sealed


def readable(raw: bytes) -> bytes:
    """Every leaf part of `raw`, decoded from its transfer encoding."""
    parsed = email.message_from_bytes(raw, policy=policy.SMTP)
    parts = [p.get_payload(decode=True) for p in parsed.walk() if not p.is_multipart()]
    return b"".join(p for p in parts if isinstance(p, bytes))


def head_of(path: Path) -> str:
    return path.read_bytes().split(b"\r\n\r\n", 1)[0].decode()


def rejections(gateway: Gateway) -> list[dict[str, str]]:
    con = sqlite3.connect(gateway.data / "mssgate.db")
    try:
        rows = con.execute("SELECT detail FROM audit WHERE action = 'message.rejected'")
        return [json.loads(r[0]) for r in rows.fetchall()]
    finally:
        con.close()


def test_application_mailbox_gets_sign_then_encrypt_in_clear_and_the_pipeline_runs(
    world: World, tmp_path: Path
) -> None:
    by_openssl = openssl_sign_then_encrypt(world, tmp_path)
    by_gateway = world.encrypt(world.sign(cr_img(message_id="<cr-2@hopital-a.test>")), RIS)
    for raw in (by_openssl, by_gateway):
        code, text = world.submit(raw, RIS)
        assert code == 250, text
    delivered = world.gateway.wait_delivered(RIS, 2)
    for path in delivered:
        head = head_of(path)
        # Decrypted: the signed entity is the top level, under the sender's own headers.
        assert "pkcs7-mime" not in head
        assert "Content-Type: multipart/signed" in head
        assert f"From: {ALICE}" in head and "Subject: CR d'imagerie" in head
        assert "smime=pass" in head  # the inner signature was verified after decryption
        assert b"ClinicalDocument" in readable(path.read_bytes())
    # The document pipeline read both CDAs and queued them for the RIS.
    world.gateway.wait_event("documents.ingested", documents=1)
    api = httpx.Client(
        base_url=f"https://127.0.0.1:{world.gateway.ports['api']}",
        verify=world.gateway.client_context(),
        headers={"Authorization": f"Bearer {world.token}"},
    )
    with api:
        leases = api.post("/v1/leases", json={"max": 5, "lease_seconds": 60}).json()["leases"]
    assert len(leases) >= 1
    doc = leases[0]["document"]
    assert doc["mailbox"] == RIS and doc["sender"] == ALICE
    assert doc["ins"]["value"] == "279035121518989"
    assert rejections(world.gateway) == []


def test_application_mailbox_gets_encrypt_then_sign_and_triple_wrap_opened(
    world: World,
) -> None:
    # Encrypt, then sign: the outer signature is checked, then the encrypted entity it
    # covers is opened for the RIS. A triple wrap (sign, encrypt, sign) opens to the inner
    # signed message. CBC is fine there: the outer signature covers the ciphertext.
    encrypt_then_sign = world.sign(
        world.encrypt(cr_img(message_id="<cr-3@hopital-a.test>"), RIS, mode="aes-cbc")
    )
    triple = world.sign(
        world.encrypt(world.sign(cr_img(message_id="<cr-4@hopital-a.test>")), RIS),
        detached=False,
    )
    for raw in (encrypt_then_sign, triple):
        code, text = world.submit(raw, RIS)
        assert code == 250, text
    delivered = world.gateway.wait_delivered(RIS, 2)
    heads = {head_of(p): p for p in delivered}
    for head, path in heads.items():
        assert "pkcs7-mime" not in head  # neither the opaque signature nor the encryption
        assert f"From: {ALICE}" in head and "smime=pass" in head
        assert b"ClinicalDocument" in readable(path.read_bytes())
    # The triple wrap's inner signature is kept for the RIS to check again.
    assert sum("Content-Type: multipart/signed" in head for head in heads) == 1
    world.gateway.wait_event("documents.ingested", documents=1)
    # A ciphertext altered under a valid outer signature cannot happen (the signature covers
    # it); one encrypted to another key, signed by Alice, is refused as undecryptable.
    other = world.sign(world.encrypt(cr_img(), BOB))
    assert world.submit(other, RIS) == (554, CANNOT_DECRYPT)
    assert [r["reason"] for r in rejections(world.gateway)][-1].startswith("undecryptable")


def test_tampered_ciphertext_is_refused(world: World) -> None:
    sealed = world.encrypt(world.sign(cr_img()), RIS)
    head, body = sealed.split(b"\r\n\r\n", 1)
    der = bytearray(base64.b64decode(b"".join(body.split())))
    der[-40] ^= 0x01  # inside the GCM ciphertext
    tampered = head + b"\r\n\r\n" + base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n")
    assert world.submit(tampered, RIS) == (554, CANNOT_DECRYPT)
    # Encrypted to someone else (Bob), addressed to the RIS: no key of ours opens it.
    assert world.submit(world.encrypt(world.sign(cr_img()), BOB), RIS) == (554, CANNOT_DECRYPT)
    assert world.gateway.mailbox(RIS) == []
    reasons = [r["reason"] for r in rejections(world.gateway)]
    assert len(reasons) == 2 and all(r.startswith("undecryptable") for r in reasons)
    assert all(r["status"] == "554 5.7.5" for r in rejections(world.gateway))


def test_required_local_domain_refuses_clear_mail(world: World, cli: Cli) -> None:
    # Changed on the running gateway: the next message sees it.
    cli.ok("domain", "set", DOMAIN, "--encryption", "required")
    signed = world.sign(cr_img(to=BOB))
    assert world.submit(signed, BOB) == (550, REQUIRED)
    [rejected] = rejections(world.gateway)
    assert rejected["status"] == "550 5.7.1" and rejected["reason"] == "not-encrypted"
    event = world.gateway.wait_event("smtp.reject", stage="DATA")
    assert event["status"] == "5.7.1"
    # Encrypted mail still goes: to the RIS (decrypted here), and encrypt-then-sign to Bob.
    assert world.submit(world.encrypt(world.sign(cr_img()), RIS), RIS)[0] == 250
    assert world.submit(world.sign(world.encrypt(cr_img(to=BOB), BOB)), BOB)[0] == 250
    world.gateway.wait_delivered(BOB, 1)
    cli.ok("domain", "set", DOMAIN, "--encryption", "default")
    assert world.submit(signed, BOB)[0] == 250


def test_person_mailbox_needs_the_signature_outside_the_encryption_when_refused(
    world: World, cli: Cli
) -> None:
    # The domain's choice; by default it is delivered still encrypted
    # (tests/smtp/test_sign_then_encrypt.py).
    cli.ok("domain", "set", DOMAIN, "--signature-inside-encryption", "refuse")
    sign_then_encrypt = world.encrypt(world.sign(cr_img(to=BOB)), BOB)
    assert world.submit(sign_then_encrypt, BOB) == (550, INSIDE)
    reason = rejections(world.gateway)[0]["reason"]
    assert reason == f"signature-inside-encryption: refused by {DOMAIN}"
    # Encrypt, then sign (opaque or detached): the outer signature is Alice's and is checked.
    for detached in (True, False):
        triple = world.sign(world.encrypt(cr_img(to=BOB), BOB), detached=detached)
        code, text = world.submit(triple, BOB)
        assert code == 250, text
    delivered = world.gateway.wait_delivered(BOB, 2)
    assert all("smime=pass" in head_of(p) for p in delivered)
    [detached] = [p for p in delivered if "Content-Type: multipart/signed" in head_of(p)]
    # Still encrypted for Bob, who alone can read it.
    raw = detached.read_bytes()
    assert b"ClinicalDocument" not in readable(raw)
    sealed_part = email.message_from_bytes(raw, policy=policy.SMTP).get_payload(0)
    assert isinstance(sealed_part, EmailMessage)
    assert sealed_part.get_content_type() == "application/pkcs7-mime"
    key, cert = world.key(BOB)
    bob_key = load_private_key(key)
    assert isinstance(bob_key, rsa.RSAPrivateKey)
    opened = decrypt(sealed_part.as_bytes(), bob_key, load_certificate(cert))
    assert b"ClinicalDocument" in readable(opened)
    # Encrypted for the RIS and Bob at once: the gateway will not open it for one only.
    both = world.encrypt(world.sign(cr_img(to=f"{RIS}, {BOB}")), RIS, BOB)
    assert world.submit(both, RIS, BOB) == (550, MIXED)


def test_without_signature_requirement_encrypted_mail_passes_and_cbc_needs_one(
    lax: World,
) -> None:
    assert lax.submit(lax.encrypt(cr_img(to=BOB), BOB), BOB)[0] == 250
    lax.gateway.wait_delivered(BOB, 1)
    # GCM to the RIS: decrypted even though unsigned; CBC would be malleable without one.
    assert lax.submit(lax.encrypt(cr_img(), RIS), RIS)[0] == 250
    [delivered] = lax.gateway.wait_delivered(RIS, 1)
    assert "pkcs7-mime" not in head_of(delivered)
    assert lax.submit(lax.encrypt(cr_img(), RIS, mode="aes-cbc"), RIS) == (554, CBC)


def test_cbc_is_decrypted_when_a_signature_follows(world: World) -> None:
    sealed = world.encrypt(world.sign(cr_img()), RIS, mode="aes-cbc")
    assert b"smime-type=enveloped-data" in sealed
    assert world.submit(sealed, RIS)[0] == 250
    [delivered] = world.gateway.wait_delivered(RIS, 1)
    assert "smime=pass" in head_of(delivered)


def test_required_domain_from_a_peer_notifications_pass_clear_mail_does_not(
    world: World, cli: Cli, peer_pki: dict[str, Path]
) -> None:
    cli.ok("domain", "set", DOMAIN, "--encryption", "required")
    peer_ca_key = load_private_key(peer_pki["ca_key"])
    daemon = f"mailer-daemon@{PEER_DOMAIN}"
    key, cert = issue_smime_cert(peer_ca_key, load_certificate(peer_pki["ca"]), daemon)
    ctx = world.gateway.client_context()
    ctx.load_cert_chain(peer_pki["cert"], peer_pki["key"])

    def from_peer(sender: str, raw: bytes) -> tuple[int, bytes]:
        client = smtplib.SMTP("127.0.0.1", world.gateway.ports["mta"], timeout=15)
        client.ehlo(f"mx.{PEER_DOMAIN}")
        client.starttls(context=ctx)
        client.ehlo(f"mx.{PEER_DOMAIN}")
        assert client.mail(sender)[0] == 250
        assert client.rcpt(BOB)[0] == 250
        result = client.data(raw)
        client.quit()
        return result

    report = (
        f"From: {daemon}\r\nTo: {ALICE}\r\nSubject: Delivery Status Notification\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="R"\r\n\r\n'
        "--R\r\nContent-Type: text/plain\r\n\r\nNot delivered.\r\n"
        "--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        "Final-Recipient: rfc822; x@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--R--\r\n"
    ).encode()
    signed = sign_message(report.replace(ALICE.encode(), BOB.encode()), key=key, cert=cert)
    # A bounce (null sender) is taken in clear; the same from a named sender is not.
    assert from_peer("<>", signed)[0] == 250
    assert from_peer(daemon, signed) == (550, REQUIRED)
