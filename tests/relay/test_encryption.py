"""The relay worker with the encryption policy: a real spool, directory and peer socket."""

from __future__ import annotations

import asyncio
import email
import email.policy

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mssgate.directory.models import Cipher, EncryptionPolicy
from mssgate.dkim import DkimStatus, dkim_sign, dkim_verify
from mssgate.pki import create_dev_ca, dkim_dns_record, generate_dkim_key, issue_smime_cert
from mssgate.relay.encryption import OutgoingEncryption
from mssgate.smime import decrypt, encrypt
from tests.relay.conftest import ALICE, DR_B, DR_C, LOCAL, PEER, World, message
from tests.relay.test_worker import parse_dsn


@pytest.fixture
def dkim_key() -> rsa.RSAPrivateKey:
    return generate_dkim_key()


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def bob(world: World) -> tuple[rsa.RSAPrivateKey, object]:
    """DR_B's key pair at the peer; its certificate registered here as a correspondent's."""
    ca_key, ca_cert = create_dev_ca("peer S/MIME CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, DR_B)
    world.directory.certificates.register(DR_B, cert)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key, cert


def encryption(world: World, key: rsa.RSAPrivateKey, default: str) -> OutgoingEncryption:
    return OutgoingEncryption(
        world.directory,
        default=EncryptionPolicy(default),
        dkim_selector="mssgate",
        dkim_key_pem=pem(key),
    )


def deliver(world: World, worker_encryption: OutgoingEncryption) -> list[bytes]:
    async def scenario() -> list[bytes]:
        peer = world.peer()
        await peer.start()
        try:
            await world.worker(encryption=worker_encryption).run_once()
        finally:
            await peer.stop()
        return [m.content for m in peer.handler.messages]

    return asyncio.run(scenario())


def test_dkim_is_made_again_over_the_ciphertext(
    world: World, bob: tuple[rsa.RSAPrivateKey, object], dkim_key: rsa.RSAPrivateKey
) -> None:
    # What DATA spools for a peer: DKIM-signed over the clear message.
    signed = dkim_sign(message(), selector="mssgate", domain=LOCAL, key_pem=pem(dkim_key))
    world.submit(signed, DR_B)
    [sent] = deliver(world, encryption(world, dkim_key, "opportunistic"))
    head = sent.split(b"\r\n\r\n", 1)[0]
    assert b"smime-type=authEnveloped-data" in head and b"Compte rendu" not in sent
    assert head.count(b"DKIM-Signature:") == 1
    record = dkim_dns_record(dkim_key.public_key()).encode()
    result = dkim_verify(sent, dns_txt=lambda name: record)
    assert [s.status for s in result.signatures] == [DkimStatus.PASS]
    key, cert = bob
    assert b"Compte rendu." in decrypt(sent, key, cert)  # type: ignore[arg-type]


def test_each_recipient_gets_a_copy_only_they_can_open(
    world: World, bob: tuple[rsa.RSAPrivateKey, object], dkim_key: rsa.RSAPrivateKey
) -> None:
    # DR_C has no certificate: under "opportunistic" the copy for them goes in clear.
    world.submit(message(), DR_B, DR_C)
    sent = deliver(world, encryption(world, dkim_key, "opportunistic"))
    assert len(sent) == 2
    sealed = [m for m in sent if b"pkcs7-mime" in m]
    clear = [m for m in sent if b"pkcs7-mime" not in m]
    assert len(sealed) == 1 and b"Compte rendu." in clear[0]


def test_required_without_a_usable_certificate_bounces(
    world: World, dkim_key: rsa.RSAPrivateKey
) -> None:
    # RCPT checked it; the certificate went away while the message waited.
    world.directory.domains.set_encryption(PEER, encryption=EncryptionPolicy.REQUIRED)
    queue_id = world.submit(message(), DR_B)
    assert deliver(world, encryption(world, dkim_key, "opportunistic")) == []
    assert world.state(queue_id) == "failed"
    [(raw, to)] = world.dsns
    msg, blocks = parse_dsn(raw)
    assert to == ALICE and blocks[1]["Status"] == "5.7.1"
    human = next(msg.iter_parts()).get_content()
    assert f"<{DR_B}>: {PEER} requires S/MIME encryption and the gateway has no usable" in human


def test_off_already_encrypted_and_cbc(
    world: World, bob: tuple[rsa.RSAPrivateKey, object], dkim_key: rsa.RSAPrivateKey
) -> None:
    key, cert = bob
    # Off: as written, certificate or not.
    world.directory.domains.set_encryption(PEER, encryption=EncryptionPolicy.OFF)
    plain = message()
    world.submit(plain, DR_B)
    assert deliver(world, encryption(world, dkim_key, "required")) == [plain]
    # Already encrypted by its author: never encrypted twice, even under "required".
    world.directory.domains.set_encryption(PEER, encryption=None)
    own = encrypt(message(), [cert])  # type: ignore[list-item]
    world.submit(own, DR_B)
    assert deliver(world, encryption(world, dkim_key, "required")) == [own]
    # A peer whose readers lack AuthEnvelopedData: CBC.
    world.directory.domains.set_encryption(PEER, cipher=Cipher.AES_CBC)
    world.submit(message(), DR_B)
    [sent] = deliver(world, encryption(world, dkim_key, "opportunistic"))
    parsed = email.message_from_bytes(sent, policy=email.policy.SMTP)
    assert parsed.get_param("smime-type") == "enveloped-data"
    assert b"Compte rendu." in decrypt(sent, key, cert)  # type: ignore[arg-type]


def test_no_relay_without_encryption_settings_is_unchanged(world: World) -> None:
    # The worker without an OutgoingEncryption sends what was spooled (the existing tests).
    plain = message()
    world.submit(plain, DR_B)

    async def scenario() -> list[bytes]:
        peer = world.peer()
        await peer.start()
        try:
            await world.worker().run_once()
        finally:
            await peer.stop()
        return [m.content for m in peer.handler.messages]

    assert asyncio.run(scenario()) == [plain]
