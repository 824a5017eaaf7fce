"""Sign-then-encrypt from stock clients (issue 14 part 2) on a live gateway, over SMTP
submission, with messages made by openssl as the clients make them:

- NeoMutt's shape: `openssl smime -sign` (multipart/signed), then `openssl smime -encrypt`;
- Thunderbird's: an opaque signed-data (`smime -sign -nodetach`) inside the enveloped-data.

To an application mailbox the gateway holds the key of: decrypted, the inner signature
verified, delivered clear, documents read. To a person whose key it does not hold: delivered
as sent, still encrypted, when it is encrypted to the recipients' registered certificates (and
the sender's) only; the recipient decrypts and verifies it with openssl. To a person whose key
it holds, in a domain set to `verify`: opened, verified, encrypted again to the person.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.db.schema import certificates, professionals
from mssgate.db.tx import write
from mssgate.pki import (
    certificate_info,
    issue_smime_cert,
    load_certificate,
    load_private_key,
    write_certificate,
)
from mssgate.smime import split_entity
from mssgate.smime.recipients import KnownCertificates, recipients_of
from tests.conftest import DOMAIN, Cli
from tests.smtp.conftest import ALICE, BOB, Gateway
from tests.smtp.test_crl_reload import write_crl
from tests.smtp.test_encryption import (
    INSIDE,
    RIS,
    World,
    cr_img,
    head_of,
    readable,
    rejections,
    start,
)

SEALED = "smime=none (encrypted, signature not visible to the gateway)"
TO_OTHERS = (
    b"5.7.1 Message refused: it must be encrypted to the registered certificate of each of its"
    b" recipients (and may be to yours), and to no other key"
)
TAMPERED = b"5.7.7 Message refused: the content does not match its signature"


@pytest.fixture
def world(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> Iterator[World]:
    w = start(cli, gateway_setup, tmp_path, require_signature=True)
    yield w
    gateway_setup.stop()


def openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["openssl", *map(str, args)], input=stdin, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def client_message(
    w: World,
    tmp_path: Path,
    *,
    to: str,
    encrypt_to: tuple[Path, ...],
    opaque: bool = False,
    tamper: bool = False,
) -> bytes:
    """What a stock client sends: the body signed by Alice's key, then encrypted (AES-256-CBC,
    what openssl smime and most clients use) to `encrypt_to`, under From/To/Subject."""
    _, entity = split_entity(cr_img(to=to))
    (tmp_path / "entity.eml").write_bytes(entity)
    key, cert = w.key(ALICE)
    shape = ["-nodetach"] if opaque else []
    signed = openssl("smime", "-sign", "-md", "sha256", *shape, "-in", tmp_path / "entity.eml",
                     "-signer", cert, "-inkey", key)  # fmt: skip
    if tamper:
        assert b"Compte rendu ci-joint." in signed
        signed = signed.replace(b"Compte rendu ci-joint.", b"Compte rendu falsifie.")
    (tmp_path / "signed.eml").write_bytes(signed)
    sealed = openssl("smime", "-encrypt", "-aes256", "-in", tmp_path / "signed.eml",
                     "-from", ALICE, "-to", to, "-subject", "CR d'imagerie",
                     *encrypt_to)  # fmt: skip
    assert b"smime-type=enveloped-data" in sealed
    return crlf(sealed)


def recipient_reads(w: World, delivered: Path, tmp_path: Path) -> bytes:
    """What Bob's client does: decrypt with his key, verify Alice's signature against the CA;
    the verified content."""
    key, cert = w.key(BOB)
    opened = openssl("smime", "-decrypt", "-in", delivered, "-recip", cert, "-inkey", key)
    (tmp_path / "opened.eml").write_bytes(opened)
    signer = tmp_path / "signer.pem"
    content = openssl("smime", "-verify", "-in", tmp_path / "opened.eml", "-CAfile",
                      w.gateway.ca, "-signer", signer)  # fmt: skip
    assert load_certificate(signer) == load_certificate(w.key(ALICE)[1])
    return content


def test_application_mailbox_opens_both_client_shapes_and_the_pipeline_reads_them(
    world: World, tmp_path: Path
) -> None:
    ris_cert = world.key(RIS)[1]
    for opaque in (False, True):
        raw = client_message(world, tmp_path, to=RIS, encrypt_to=(ris_cert,), opaque=opaque)
        code, text = world.submit(raw, RIS)
        assert code == 250, text
    delivered = world.gateway.wait_delivered(RIS, 2)
    heads = [head_of(p) for p in delivered]
    for head, path in zip(heads, delivered, strict=True):
        assert "enveloped-data" not in head  # decrypted
        assert "smime=pass" in head and SEALED not in head  # the inner signature, verified
        assert f"From: {ALICE}" in head
        raw = path.read_bytes()
        if "multipart/signed" in head:
            assert b"ClinicalDocument" in readable(raw)
    # NeoMutt's inner multipart/signed and Thunderbird's opaque signed-data, each kept for the
    # RIS to check again.
    assert sum("multipart/signed" in h for h in heads) == 1
    assert sum("signed-data" in h for h in heads) == 1
    api = httpx.Client(
        base_url=f"https://127.0.0.1:{world.gateway.ports['api']}",
        verify=world.gateway.client_context(),
        headers={"Authorization": f"Bearer {world.token}"},
    )
    world.gateway.wait_event("documents.ingested", documents=1)
    with api:
        leases: list[dict[str, dict[str, object]]] = []
        for _ in range(200):  # both messages' CDAs, whatever order the worker took them in
            leases += api.post("/v1/leases", json={"max": 5, "lease_seconds": 60}).json()["leases"]
            if len(leases) >= 2:
                break
            world.gateway.wait_event("documents.ingested", documents=1)
    assert len(leases) == 2
    assert all(lease["document"]["sender"] == ALICE for lease in leases)
    assert rejections(world.gateway) == []


def test_a_bad_inner_signature_to_an_application_mailbox_is_refused(
    world: World, tmp_path: Path
) -> None:
    ris_cert = world.key(RIS)[1]
    raw = client_message(world, tmp_path, to=RIS, encrypt_to=(ris_cert,), tamper=True)
    assert world.submit(raw, RIS) == (554, TAMPERED)
    [refused] = rejections(world.gateway)
    assert refused["status"] == "554 5.7.7"
    assert world.gateway.mailbox(RIS) == []


def test_person_without_a_held_key_gets_it_still_encrypted_and_verifies_it(
    world: World, tmp_path: Path
) -> None:
    bob_cert, alice_cert = world.key(BOB)[1], world.key(ALICE)[1]
    # NeoMutt encrypts to the recipient and to its user (encrypt_self); Thunderbird too.
    for opaque in (False, True):
        raw = client_message(
            world, tmp_path, to=BOB, encrypt_to=(bob_cert, alice_cert), opaque=opaque
        )
        code, text = world.submit(raw, BOB)
        assert code == 250, text
    # Encrypted to Bob alone is as good.
    raw = client_message(world, tmp_path, to=BOB, encrypt_to=(bob_cert,))
    assert world.submit(raw, BOB)[0] == 250
    delivered = world.gateway.wait_delivered(BOB, 3)
    for path in delivered:
        head = head_of(path)
        assert "smime-type=enveloped-data" in head  # as sent
        assert SEALED in head and "smime=pass" not in head
        assert f"smtp.auth={ALICE}" in head
        assert b"ClinicalDocument" not in readable(path.read_bytes())
        content = recipient_reads(world, path, tmp_path)
        assert b"ClinicalDocument" in readable(crlf(content))
    event = world.gateway.wait_event("smime.encrypted_in", reason="sealed-for-recipients")
    assert event["decrypted"] is False
    assert rejections(world.gateway) == []


def test_encrypted_to_a_stranger_or_not_to_the_recipient_is_refused(
    world: World, cli: Cli, tmp_path: Path
) -> None:
    # A certificate from the same CA for an address that is no recipient of the message.
    data = world.gateway.data / "certs"
    ca_key, ca_cert = load_private_key(data / "ca.key.pem"), load_certificate(data / "ca.crt.pem")
    _, stranger = issue_smime_cert(ca_key, ca_cert, f"outsider@{DOMAIN}")
    write_certificate(tmp_path / "stranger.pem", stranger)
    bob_cert, alice_cert = world.key(BOB)[1], world.key(ALICE)[1]
    to_stranger = client_message(
        world, tmp_path, to=BOB, encrypt_to=(bob_cert, tmp_path / "stranger.pem")
    )
    assert world.submit(to_stranger, BOB) == (550, TO_OTHERS)
    # Encrypted only to its author: Bob could not read what the gateway would deliver.
    to_self = client_message(world, tmp_path, to=BOB, encrypt_to=(alice_cert,))
    assert world.submit(to_self, BOB) == (550, TO_OTHERS)
    reasons = [r["reason"] for r in rejections(world.gateway)]
    assert reasons[0].startswith("encrypted-to-unregistered: issuer=")
    assert reasons[1] == f"not-encrypted-for-recipient: {BOB}"
    assert world.gateway.mailbox(BOB) == []


def test_the_refusal_stays_a_domain_option(world: World, cli: Cli, tmp_path: Path) -> None:
    raw = client_message(world, tmp_path, to=BOB, encrypt_to=(world.key(BOB)[1],))
    cli.ok("domain", "set", DOMAIN, "--signature-inside-encryption", "refuse")
    assert world.submit(raw, BOB) == (550, INSIDE)
    [refused] = rejections(world.gateway)
    assert refused["reason"] == f"signature-inside-encryption: refused by {DOMAIN}"
    # Encrypt-then-sign still goes (the signature is outside), and the application mailbox
    # still opens what is encrypted to it.
    ris = client_message(world, tmp_path, to=RIS, encrypt_to=(world.key(RIS)[1],))
    assert world.submit(ris, RIS)[0] == 250
    cli.ok("domain", "set", DOMAIN, "--signature-inside-encryption", "accept")
    assert world.submit(raw, BOB)[0] == 250
    world.gateway.wait_delivered(BOB, 1)


def test_a_domain_set_to_verify_opens_with_the_held_key_verifies_and_seals_again(
    world: World, cli: Cli, tmp_path: Path
) -> None:
    # `cert issue` kept Bob's key (escrow): with `verify`, the gateway opens what is
    # encrypted to him, checks Alice's signature with the full policy, and encrypts it again
    # to his certificate alone.
    cli.ok("domain", "set", DOMAIN, "--signature-inside-encryption", "verify")
    bob_cert, alice_cert = world.key(BOB)[1], world.key(ALICE)[1]
    for opaque in (False, True):
        raw = client_message(
            world, tmp_path, to=BOB, encrypt_to=(bob_cert, alice_cert), opaque=opaque
        )
        code, text = world.submit(raw, BOB)
        assert code == 250, text
    tampered = client_message(world, tmp_path, to=BOB, encrypt_to=(bob_cert,), tamper=True)
    assert world.submit(tampered, BOB) == (554, TAMPERED)
    delivered = world.gateway.wait_delivered(BOB, 2)
    for path in delivered:
        head = head_of(path)
        # Sealed again the way it came (CBC), verified by the gateway this time.
        assert "smime-type=enveloped-data" in head
        assert "smime=pass body.smime-identifier=" + ALICE in head and SEALED not in head
        [only] = recipients_of(path.read_bytes())
        assert KnownCertificates.of([load_certificate(bob_cert)]).names(only)
        content = recipient_reads(world, path, tmp_path)
        assert b"ClinicalDocument" in readable(crlf(content))
    event = world.gateway.wait_event("smime.encrypted_in", decrypted=True)
    assert event["listener"] == "submission"
    [refused] = rejections(world.gateway)
    assert refused["status"] == "554 5.7.7"


@pytest.fixture
def crl_gateway(gateway_setup: Gateway, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway whose `policy.crl_files` names the dev CA's list (the test writes it, then
    starts the gateway)."""
    gateway_setup.env["MSSGATE_POLICY__CRL_FILES"] = json.dumps([str(tmp_path / "dev-ca.crl")])
    yield gateway_setup
    gateway_setup.stop()


def test_an_expired_or_revoked_registered_certificate_is_no_recipient(
    crl_gateway: Gateway, cli: Cli, tmp_path: Path
) -> None:
    # Bob has three certificates registered: his current one, one that expired yesterday
    # (registered while it was valid), one his CA revoked. A message encrypted to either of
    # the last two is not one the gateway passes unseen: the expired key may be gone, the
    # revoked one in someone else's hands; the relay encrypts to neither either.
    data = crl_gateway.data
    ca_key = load_private_key(data / "certs" / "ca.key.pem")
    ca_cert = load_certificate(data / "certs" / "ca.crt.pem")
    stamp = dt.datetime.now(dt.UTC)
    _, expired = issue_smime_cert(ca_key, ca_cert, BOB, not_before=stamp - dt.timedelta(days=400),
                                  not_after=stamp - dt.timedelta(days=1))  # fmt: skip
    _, revoked = issue_smime_cert(ca_key, ca_cert, BOB)
    old, bad = tmp_path / "bob-expired.pem", tmp_path / "bob-revoked.pem"
    write_certificate(old, expired)
    write_certificate(bad, revoked)
    cli.ok("cert", "add", BOB, str(bad))
    # `cert add` refuses an expired certificate: this one was registered before it expired.
    engine = open_engine(load_config(data / "mssgate.toml").database_url)
    try:
        info = certificate_info(expired)
        with write(engine) as conn:
            bob_id = conn.execute(
                select(professionals.c.id).where(professionals.c.address == BOB)
            ).scalar_one()
            conn.execute(certificates.insert().values(
                professional_id=bob_id, fingerprint_sha256=info.fingerprint_sha256,
                serial=info.serial, subject=info.subject, issuer=info.issuer,
                not_before=info.not_before, not_after=info.not_after, added_at=stamp,
                pem=expired.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            ))  # fmt: skip
    finally:
        engine.dispose()
    write_crl(data, tmp_path / "dev-ca.crl", revoked=(revoked,))
    world = start(cli, crl_gateway, tmp_path, require_signature=True)
    bob_cert = world.key(BOB)[1]
    for encrypt_to in ((old,), (bad,), (bob_cert, old), (bob_cert, bad)):
        raw = client_message(world, tmp_path, to=BOB, encrypt_to=encrypt_to)
        assert world.submit(raw, BOB) == (550, TO_OTHERS), encrypt_to
    # His current certificate, with Alice's, still goes.
    raw = client_message(world, tmp_path, to=BOB, encrypt_to=(bob_cert, world.key(ALICE)[1]))
    assert world.submit(raw, BOB)[0] == 250
    world.gateway.wait_delivered(BOB, 1)
    reasons = [r["reason"] for r in rejections(world.gateway)]
    assert len(reasons) == 4
    assert all(r.startswith("encrypted-to-unregistered: issuer=") for r in reasons), reasons


def test_verify_encrypts_again_to_no_revoked_held_certificate(
    crl_gateway: Gateway, cli: Cli, tmp_path: Path
) -> None:
    # Bob's key is held and his domain set to `verify`, but his CA revoked the certificate
    # (a lost laptop): what is encrypted to it is not opened and sealed again to that same
    # certificate, for whoever has the key now; and, named by a revoked certificate only,
    # it does not pass unopened either.
    smime = tmp_path / "smime"
    cli.ok("cert", "issue", ALICE, "--out", str(smime))
    cli.ok("cert", "issue", BOB, "--out", str(smime))
    cli.ok("domain", "set", DOMAIN, "--signature-inside-encryption", "verify")
    bob_cert = smime / f"{BOB}.crt.pem"
    write_crl(crl_gateway.data, tmp_path / "dev-ca.crl", revoked=(load_certificate(bob_cert),))
    crl_gateway.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    crl_gateway.start()
    world = World(crl_gateway, "", smime)
    raw = client_message(world, tmp_path, to=BOB, encrypt_to=(bob_cert, world.key(ALICE)[1]))
    assert world.submit(raw, BOB) == (550, TO_OTHERS)
    [refused] = rejections(world.gateway)
    assert refused["reason"].startswith("encrypted-to-unregistered: issuer=")
    assert world.gateway.mailbox(BOB) == []


def test_an_application_mailbox_without_a_held_key_gets_no_sealed_mail(
    world: World, cli: Cli, tmp_path: Path
) -> None:
    # A RIS mailbox whose key is not in certs/mailboxes (the RIS keeps it) with a registered
    # certificate: sign-then-encrypt to it would pass unopened, its signature checked by
    # nobody (a RIS verifies no S/MIME: it trusts the gateway to have), and fill the
    # quarantine at will. Passing unopened is for persons, whose clients check the signature.
    ris2 = f"ris-b@{DOMAIN}"
    cli.ok("directory", "add", ris2, "--name", "RIS B", "--kind", "application")
    cli.ok("cert", "issue", ris2, "--out", str(tmp_path / "ris-b"))
    ris2_cert = tmp_path / "ris-b" / f"{ris2}.crt.pem"
    raw = client_message(world, tmp_path, to=ris2, encrypt_to=(ris2_cert,))
    assert world.submit(raw, ris2) == (550, INSIDE)
    # With a person beside it, the same.
    both = client_message(world, tmp_path, to=ris2, encrypt_to=(ris2_cert, world.key(BOB)[1]))
    assert world.submit(both, ris2, BOB) == (550, INSIDE)
    reasons = [r["reason"] for r in rejections(world.gateway)]
    assert reasons == [f"signature-inside-encryption: application mailbox {ris2}"] * 2
    assert world.gateway.mailbox(ris2) == [] and world.gateway.mailbox(BOB) == []
