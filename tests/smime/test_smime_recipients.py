"""Whom an encrypted message is encrypted to, read from RecipientInfos made by openssl: by
issuer and serial (`smime -encrypt`), by subject key identifier (`cms -keyid`), by key
agreement (an EC certificate), and RecipientInfos that name no certificate (a password)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms, core  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from mssgate.pki import create_dev_ca, issue_smime_cert, write_certificate
from mssgate.smime import sign_message
from mssgate.smime.recipients import (
    MAX_RECIPIENT_INFOS,
    KnownCertificates,
    UnreadableEnvelope,
    recipients_of,
)

ENTITY = b"Content-Type: text/plain\r\n\r\nBonjour\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, x509.Certificate]]:
    folder = tmp_path_factory.mktemp("recipients")
    ca_key, ca_cert = create_dev_ca("recipients test CA")
    other_key, other_ca = create_dev_ca("another CA")
    made = {
        "bob": issue_smime_cert(ca_key, ca_cert, "bob@hopital-a.test")[1],
        "alice": issue_smime_cert(ca_key, ca_cert, "alice@hopital-a.test")[1],
        "ec": issue_smime_cert(ca_key, ca_cert, "ec@hopital-a.test", key_type="ec")[1],
        # Same serial space, another issuer: must not pass for bob.
        "stranger": issue_smime_cert(other_key, other_ca, "bob@hopital-a.test")[1],
    }
    out = {}
    for name, cert in made.items():
        path = folder / f"{name}.pem"
        write_certificate(path, cert)
        out[name] = (path, cert)
    return out


def openssl(tmp_path: Path, tool: str, *args: str | Path) -> bytes:
    """`openssl TOOL -in ENTITY ARGS...` (options first, the recipients' files last)."""
    (tmp_path / "in.eml").write_bytes(ENTITY)
    command = ["openssl", tool, "-in", str(tmp_path / "in.eml"), *map(str, args)]
    result = subprocess.run(command, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def test_issuer_and_serial_from_smime_encrypt(
    certs: dict[str, tuple[Path, x509.Certificate]], tmp_path: Path
) -> None:
    sealed = openssl(tmp_path, "smime", "-encrypt", "-aes256", certs["bob"][0], certs["alice"][0])
    found = recipients_of(sealed)
    assert len(found) == 2 and all(r.issuer_serial is not None for r in found)
    both = KnownCertificates.of([certs["bob"][1], certs["alice"][1]])
    assert all(both.names(r) for r in found)
    only_bob = KnownCertificates.of([certs["bob"][1]])
    assert sorted(only_bob.names(r) for r in found) == [False, True]  # in no set order
    # Another CA's certificate for the same address is another certificate.
    assert not any(KnownCertificates.of([certs["stranger"][1]]).names(r) for r in found)


def test_key_identifier_and_gcm_from_cms(
    certs: dict[str, tuple[Path, x509.Certificate]], tmp_path: Path
) -> None:
    sealed = openssl(tmp_path, "cms", "-encrypt", "-aes-256-gcm", "-keyid", certs["bob"][0])
    assert b"authEnveloped-data" in sealed
    [found] = recipients_of(sealed)
    assert found.issuer_serial is None and found.key_id is not None
    assert KnownCertificates.of([certs["bob"][1]]).names(found)
    assert not KnownCertificates.of([certs["alice"][1]]).names(found)


def test_key_agreement_names_the_ec_certificate(
    certs: dict[str, tuple[Path, x509.Certificate]], tmp_path: Path
) -> None:
    sealed = openssl(tmp_path, "cms", "-encrypt", "-aes256", certs["ec"][0], certs["bob"][0])
    found = recipients_of(sealed)
    assert len(found) == 2
    assert all(KnownCertificates.of([certs["ec"][1], certs["bob"][1]]).names(r) for r in found)
    assert [KnownCertificates.of([certs["bob"][1]]).names(r) for r in found].count(True) == 1


def test_a_password_recipient_names_no_certificate(
    certs: dict[str, tuple[Path, x509.Certificate]], tmp_path: Path
) -> None:
    sealed = openssl(
        tmp_path, "cms", "-encrypt", "-aes256", "-pwri_password", "secret", certs["bob"][0]
    )
    found = recipients_of(sealed)
    known = KnownCertificates.of([certs["bob"][1]])
    assert sorted(known.names(r) for r in found) == [False, True]
    assert any("pwri" in r.description for r in found)


@pytest.mark.parametrize(
    "raw",
    [
        ENTITY,
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64\r\n",
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMAMCAQE=\r\n",
    ],
)
def test_anything_else_is_unreadable(raw: bytes) -> None:
    with pytest.raises(UnreadableEnvelope):
        recipients_of(raw)


def test_signed_data_is_not_an_envelope(
    certs: dict[str, tuple[Path, x509.Certificate]], tmp_path: Path
) -> None:
    ca_key, ca_cert = create_dev_ca("signer CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, "alice@hopital-a.test")
    assert isinstance(key, rsa.RSAPrivateKey)
    opaque = sign_message(b"From: alice@hopital-a.test\r\n" + ENTITY, key=key, cert=cert,
                          detached=False)  # fmt: skip
    with pytest.raises(UnreadableEnvelope, match="signed_data"):
        recipients_of(opaque)


def _tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 128:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _enveloped(recipient_infos: bytes, *, tail: bytes | None = None) -> bytes:
    """An EnvelopedData message whose RecipientInfos SET holds `recipient_infos` as they are
    (hand-made DER: what a sender, not a library, writes)."""
    tail = (
        cms.EncryptedContentInfo(
            {
                "content_type": "data",
                "content_encryption_algorithm": {
                    "algorithm": "aes256_cbc",
                    "parameters": b"\x00" * 16,
                },
            }
        ).dump()
        if tail is None
        else tail
    )
    enveloped = _tlv(0x30, core.Integer(0).dump() + _tlv(0x31, recipient_infos) + tail)
    info = _tlv(0x30, core.ObjectIdentifier("1.2.840.113549.1.7.3").dump() + _tlv(0xA0, enveloped))
    return (
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(info)
    )


KTRI = cms.RecipientInfo(
    name="ktri",
    value=cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": cms.RecipientIdentifier(name="subject_key_identifier", value=b"\x01" * 20),
            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
            "encrypted_key": b"\x00" * 8,
        }
    ),
).dump()


def test_recipient_infos_are_counted_up_to_the_bound_only() -> None:
    # MAX_RECIPIENT_INFOS + 1 of them, then bytes that are no element: counting stops at the
    # bound, and nothing past it is parsed (asn1crypto's len() parsed every element first,
    # a second of CPU for a 25 MB message, and raised on the broken one).
    raw = _enveloped(KTRI * (MAX_RECIPIENT_INFOS + 1) + b"\x30\x05\x02\x01")
    with pytest.raises(UnreadableEnvelope, match=f"more than {MAX_RECIPIENT_INFOS}"):
        recipients_of(raw)
    assert len(recipients_of(_enveloped(KTRI * 3))) == 3


@pytest.mark.parametrize(
    ("infos", "tail"),
    [
        (KTRI, b""),  # no EncryptedContentInfo
        (b"\x30\x05\x02\x01", None),  # an element longer than its SET
        (b"", None),  # no RecipientInfo at all
    ],
    ids=["no-content-info", "element-overruns", "empty"],
)
def test_a_broken_envelope_is_unreadable_not_an_error(infos: bytes, tail: bytes | None) -> None:
    # Raised as a bare ValueError before, outside the function's own handling: an SMTP
    # session would have answered 500 with the parser's message instead of 554 5.7.5.
    with pytest.raises(UnreadableEnvelope):
        recipients_of(_enveloped(infos, tail=tail))


def test_key_agreement_recipients_are_counted_up_to_the_bound_only() -> None:
    # One KeyAgreeRecipientInfo holding MAX_RECIPIENT_INFOS + 1 encrypted keys, then bytes
    # that are no element: refused on the count, nothing past the bound parsed.
    # RecipientEncryptedKey: rid rKeyId [0] IMPLICIT { subjectKeyIdentifier }, encryptedKey.
    key = _tlv(0x30, _tlv(0xA0, _tlv(0x04, b"\x02" * 20)) + _tlv(0x04, b"\x00" * 8))
    head = cms.KeyAgreeRecipientInfo(
        {
            "version": "v3",
            "originator": cms.OriginatorIdentifierOrKey(
                name="subject_key_identifier", value=b"\x03" * 20
            ),
            "key_encryption_algorithm": {"algorithm": "aes256_wrap"},
            "recipient_encrypted_keys": [],
        }
    ).dump()
    # The same KeyAgreeRecipientInfo with its (last) SEQUENCE OF keys filled by hand.
    fields = head[2:] if head[1] < 0x80 else head[2 + (head[1] & 0x7F) :]
    assert fields.endswith(b"\x30\x00")
    many = fields[:-2] + _tlv(0x30, key * (MAX_RECIPIENT_INFOS + 1) + b"\x30\x05\x02\x01")
    kari = _tlv(0xA1, many)  # [1] IMPLICIT: the RecipientInfo choice for key agreement
    with pytest.raises(UnreadableEnvelope, match="key-agreement"):
        recipients_of(_enveloped(kari))
    few = _tlv(0xA1, fields[:-2] + _tlv(0x30, key * 2))
    assert len(recipients_of(_enveloped(few))) == 2


def test_key_agreement_by_key_identifier_names_the_ec_certificate(
    certs: dict[str, tuple[Path, x509.Certificate]], tmp_path: Path
) -> None:
    # `cms -keyid` with an EC certificate: rKeyId in the KeyAgreeRecipientInfo. It was read
    # with the wrong field name and refused as unreadable (554 5.7.5).
    sealed = openssl(tmp_path, "cms", "-encrypt", "-aes256", "-keyid", certs["ec"][0])
    [found] = recipients_of(sealed)
    assert found.key_id is not None
    assert KnownCertificates.of([certs["ec"][1]]).names(found)
    assert not KnownCertificates.of([certs["bob"][1]]).names(found)
