"""mssgate.dkim: sign and verify with RSA and Ed25519 keys, DNS answered from a dict."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mssgate.dkim import SIGNED_HEADERS, DkimError, DkimStatus, dkim_sign, dkim_verify
from mssgate.pki import dkim_dns_record, generate_dkim_key

DOMAIN = "hopital-a.test"
MESSAGE = (
    b"From: Dr Alice <dr.alice.martin@hopital-a.test>\r\n"
    b"To: <secretariat@clinique-b.test>\r\n"
    b"Subject: Compte rendu\r\n"
    b"Date: Sat, 28 Nov 2026 09:00:00 +0100\r\n"
    b"Message-ID: <cr-1@hopital-a.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Compte rendu de consultation.\r\n"
)


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return generate_dkim_key()


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(params=["rsa-sha256", "ed25519-sha256"])
def signed(
    request: pytest.FixtureRequest, rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey
):
    algorithm = request.param
    key = rsa_key if algorithm == "rsa-sha256" else ed_key
    raw = dkim_sign(
        MESSAGE, selector="mss2026", domain=DOMAIN, key_pem=pem(key), algorithm=algorithm
    )
    zone = {f"mss2026._domainkey.{DOMAIN}": dkim_dns_record(key.public_key()).encode()}
    return algorithm, raw, zone


def test_sign_then_verify(signed) -> None:
    algorithm, raw, zone = signed
    assert raw.startswith(b"DKIM-Signature: ")
    assert raw.endswith(MESSAGE)
    result = dkim_verify(raw, dns_txt=zone.get)
    assert result.status is DkimStatus.PASS
    (one,) = result.signatures
    assert (one.domain, one.selector, one.algorithm) == (DOMAIN, "mss2026", algorithm)
    assert result.passing_domains == (DOMAIN,)


def test_signed_header_list(signed) -> None:
    _, raw, _ = signed
    field = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\nFrom:", 1)[0]
    h_tag = b"".join(field.split()).split(b"h=", 1)[1].split(b";", 1)[0]
    assert h_tag.split(b":") == list(SIGNED_HEADERS)
    assert h_tag.count(b"from") == 2  # oversigned


@pytest.mark.parametrize(
    "tamper",
    [
        lambda raw: raw.replace(b"consultation.", b"consultatiom."),
        lambda raw: raw.replace(b"Subject: Compte rendu", b"Subject: Compte rendu!"),
        lambda raw: b"From: <attacker@evil.test>\r\n" + raw,  # oversigning catches an added From
    ],
    ids=["body", "subject", "extra-from"],
)
def test_tampered_message_fails(signed, tamper) -> None:
    _, raw, zone = signed
    result = dkim_verify(tamper(raw), dns_txt=zone.get)
    assert result.status is DkimStatus.FAIL
    assert result.passing_domains == ()


def test_relaxed_canonicalisation_tolerates_whitespace_refolding(signed) -> None:
    _, raw, zone = signed
    refolded = raw.replace(b"Subject: Compte rendu", b"Subject:  Compte\r\n rendu")
    assert dkim_verify(refolded, dns_txt=zone.get).status is DkimStatus.PASS


def test_missing_key_record_is_permerror(signed) -> None:
    _, raw, _ = signed
    result = dkim_verify(raw, dns_txt=lambda name: None)
    assert result.status is DkimStatus.PERMERROR


def test_lookup_failure_is_temperror(signed) -> None:
    _, raw, _ = signed

    def broken(name: str) -> bytes | None:
        raise TimeoutError(name)

    assert dkim_verify(raw, dns_txt=broken).status is DkimStatus.TEMPERROR


def test_key_of_another_selector_fails(signed, rsa_key, ed_key) -> None:
    algorithm, raw, _ = signed
    other = (
        generate_dkim_key() if algorithm == "rsa-sha256" else ed25519.Ed25519PrivateKey.generate()
    )
    zone = {f"mss2026._domainkey.{DOMAIN}": dkim_dns_record(other.public_key()).encode()}
    assert dkim_verify(raw, dns_txt=zone.get).status is DkimStatus.FAIL


def test_unsigned_message_is_none() -> None:
    result = dkim_verify(MESSAGE, dns_txt=lambda name: None)
    assert result.status is DkimStatus.NONE
    assert result.signatures == ()


def test_one_good_signature_is_enough(rsa_key) -> None:
    good = dkim_sign(MESSAGE, selector="mss2026", domain=DOMAIN, key_pem=pem(rsa_key))
    broken = (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=other.test; s=x; h=from; bh=AAAA; b=AAAA\r\n" + good
    )
    zone = {f"mss2026._domainkey.{DOMAIN}": dkim_dns_record(rsa_key.public_key()).encode()}
    result = dkim_verify(broken, dns_txt=zone.get)
    assert result.status is DkimStatus.PASS
    assert [s.status for s in result.signatures][1] is DkimStatus.PASS
    assert result.signatures[0].status is not DkimStatus.PASS


def test_wrong_key_type_is_refused(rsa_key, ed_key) -> None:
    with pytest.raises(DkimError, match="Ed25519"):
        dkim_sign(
            MESSAGE, selector="s", domain=DOMAIN, key_pem=pem(rsa_key), algorithm="ed25519-sha256"
        )
    with pytest.raises(DkimError, match="RSA"):
        dkim_sign(MESSAGE, selector="s", domain=DOMAIN, key_pem=pem(ed_key), algorithm="rsa-sha256")
    with pytest.raises(DkimError, match="PEM"):
        dkim_sign(MESSAGE, selector="s", domain=DOMAIN, key_pem=b"not a key")
