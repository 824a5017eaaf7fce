"""mssgate.pki: generated material checked by cryptography and by the real openssl."""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import stat
import subprocess
from pathlib import Path

import pydantic
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from mssgate.errors import PKIError
from mssgate.pki import (
    CertificateInfo,
    DevPKIPaths,
    SmimeFiles,
    certificate_info,
    create_dev_ca,
    days_left,
    dkim_dns_record,
    generate_dkim_key,
    init_dev_pki,
    is_smime_for,
    issue_server_cert,
    issue_smime_cert,
    issue_smime_files,
    load_certificate,
    load_certificates,
    load_private_key,
    write_certificate,
    write_pkcs12,
    write_private_key,
    write_public_file,
)

OPENSSL = "/usr/bin/openssl"
DOMAIN = "hopital.example"
HOSTNAME = "mss.hopital.example"
EMAIL = "secretariat.cardio@hopital.example"
P12_PASSWORD = b"correct horse battery staple"

needs_openssl = pytest.mark.skipif(not Path(OPENSSL).exists(), reason="needs /usr/bin/openssl")


def openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"openssl {' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}")
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def dev_pki(tmp_path: Path) -> DevPKIPaths:
    return init_dev_pki(tmp_path / "certs", domain=DOMAIN, hostname=HOSTNAME)


@pytest.fixture
def smime(dev_pki: DevPKIPaths, tmp_path: Path) -> SmimeFiles:
    return issue_smime_files(
        dev_pki.ca_key,
        dev_pki.ca_cert,
        EMAIL,
        tmp_path / "smime",
        common_name="Secrétariat cardiologie",
        p12_password=P12_PASSWORD,
    )


# --- init_dev_pki ---------------------------------------------------------------------------


def test_init_dev_pki_layout_and_modes(dev_pki: DevPKIPaths, tmp_path: Path) -> None:
    assert dev_pki.certs_dir == tmp_path / "certs"
    assert mode(dev_pki.certs_dir) == 0o700
    assert sorted(p.name for p in dev_pki.certs_dir.iterdir()) == [
        "ca.crt.pem",
        "ca.key.pem",
        "dkim.key.pem",
        "server.crt.pem",
        "server.key.pem",
    ]
    for key in (dev_pki.ca_key, dev_pki.server_key, dev_pki.dkim_key):
        assert mode(key) == 0o600, key
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, clear
    for cert in (dev_pki.ca_cert, dev_pki.server_cert):
        assert mode(cert) == 0o644, cert
    assert load_certificate(dev_pki.ca_cert).subject.rfc4514_string() == (
        f"O=mssgate (development only),CN=mssgate dev CA {DOMAIN}"
    )


@needs_openssl
def test_server_cert_verifies_with_openssl(dev_pki: DevPKIPaths) -> None:
    out = openssl("verify", "-CAfile", dev_pki.ca_cert, dev_pki.server_cert).stdout
    assert out.strip() == f"{dev_pki.server_cert}: OK"
    for purpose in ("sslserver", "sslclient"):
        openssl("verify", "-purpose", purpose, "-CAfile", dev_pki.ca_cert, dev_pki.server_cert)
    openssl("verify", "-x509_strict", "-CAfile", dev_pki.ca_cert, dev_pki.server_cert)
    checkend = openssl("x509", "-in", dev_pki.server_cert, "-noout", "-checkend", "86400")
    assert "Certificate will not expire" in checkend.stdout
    openssl("x509", "-in", dev_pki.ca_cert, "-noout", "-checkend", "86400")


@needs_openssl
def test_server_cert_extensions_in_openssl_text(dev_pki: DevPKIPaths) -> None:
    text = openssl("x509", "-in", dev_pki.server_cert, "-text", "-noout").stdout
    assert f"DNS:{HOSTNAME}, DNS:localhost, IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "CA:FALSE" in text
    assert "Digital Signature" in text
    assert f"Subject: CN = {HOSTNAME}" in text

    ca_text = openssl("x509", "-in", dev_pki.ca_cert, "-text", "-noout").stdout
    assert "CA:TRUE, pathlen:0" in ca_text
    assert "Certificate Sign, CRL Sign" in ca_text
    assert "X509v3 Subject Key Identifier" in ca_text


def test_server_cert_extensions_in_cryptography(dev_pki: DevPKIPaths) -> None:
    ca = load_certificate(dev_pki.ca_cert)
    cert = load_certificate(dev_pki.server_cert)
    ext = cert.extensions

    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOSTNAME, "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_encipherment  # EC key: signatures only
    basic = ext.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert not basic.value.ca

    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    cert.verify_directly_issued_by(ca)
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc

    ca_basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca_basic.ca
    assert ca_basic.path_length == 0
    ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign
    assert ca_usage.crl_sign
    assert isinstance(load_private_key(dev_pki.ca_key), ec.EllipticCurvePrivateKey)


def test_rsa_server_cert_allows_key_encipherment() -> None:
    ca_key, ca_cert = create_dev_ca("test CA")
    key, cert = issue_server_cert(
        ca_key, ca_cert, "mx.example.test", extra_names=("::1",), key_type="rsa"
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    info = certificate_info(cert)
    assert info.dns_names == ("mx.example.test",)
    assert info.ip_addresses == ("::1",)


def test_init_refuses_to_overwrite_without_force(dev_pki: DevPKIPaths) -> None:
    before = {p: p.read_bytes() for p in dev_pki.files()}
    with pytest.raises(
        PKIError, match=r"^file exists \(use --force to overwrite\): .*ca\.crt\.pem$"
    ):
        init_dev_pki(dev_pki.certs_dir, domain=DOMAIN, hostname=HOSTNAME)
    assert {p: p.read_bytes() for p in dev_pki.files()} == before

    # Even a single leftover file blocks the run, and nothing else gets written.
    dev_pki.ca_cert.unlink()
    dev_pki.ca_key.unlink()
    dev_pki.server_cert.unlink()
    dev_pki.server_key.unlink()
    with pytest.raises(PKIError, match=r"dkim\.key\.pem"):
        init_dev_pki(dev_pki.certs_dir, domain=DOMAIN, hostname=HOSTNAME)
    assert [p.name for p in dev_pki.certs_dir.iterdir()] == ["dkim.key.pem"]


def test_init_force_replaces_everything(dev_pki: DevPKIPaths) -> None:
    dev_pki.server_key.chmod(0o644)
    old_ca = load_certificate(dev_pki.ca_cert)
    again = init_dev_pki(dev_pki.certs_dir, domain=DOMAIN, hostname=HOSTNAME, force=True)
    assert again == dev_pki
    assert load_certificate(dev_pki.ca_cert) != old_ca
    assert mode(dev_pki.server_key) == 0o600
    assert not [p for p in dev_pki.certs_dir.iterdir() if p.name.endswith(".tmp")]


def test_init_rejects_bad_names(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="not a valid DNS name"):
        init_dev_pki(tmp_path / "c", domain="exa mple.org", hostname="mss.example.org")
    with pytest.raises(PKIError, match="not a valid DNS name"):
        init_dev_pki(tmp_path / "c", domain="example.org", hostname="-bad-.example.org")
    assert not (tmp_path / "c").exists()


def test_init_refuses_a_file_as_certs_dir(tmp_path: Path) -> None:
    target = tmp_path / "certs"
    target.write_text("not a folder")
    with pytest.raises(PKIError, match="not a directory"):
        init_dev_pki(target, domain=DOMAIN, hostname=HOSTNAME)


# --- S/MIME ---------------------------------------------------------------------------------


def test_smime_files_layout_and_modes(smime: SmimeFiles, tmp_path: Path) -> None:
    out = tmp_path / "smime"
    assert smime.cert_path == out / f"{EMAIL}.crt.pem"
    assert smime.key_path == out / f"{EMAIL}.key.pem"
    assert smime.p12_path == out / f"{EMAIL}.p12"
    assert mode(out) == 0o700
    assert mode(smime.cert_path) == 0o644
    assert mode(smime.key_path) == 0o600
    assert mode(smime.p12_path) == 0o600
    assert load_certificate(smime.cert_path) == smime.certificate


def test_smime_cert_content(smime: SmimeFiles) -> None:
    cert = smime.certificate
    assert cert.subject.rfc4514_string() == (
        f"1.2.840.113549.1.9.1={EMAIL},CN=Secrétariat cardiologie"
    )
    ext = cert.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == [EMAIL]
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.content_commitment
    assert usage.key_encipherment
    assert isinstance(load_private_key(smime.key_path), rsa.RSAPrivateKey)


@needs_openssl
def test_smime_cert_verifies_for_smimesign(dev_pki: DevPKIPaths, smime: SmimeFiles) -> None:
    for purpose in ("smimesign", "smimeencrypt"):
        openssl("verify", "-purpose", purpose, "-CAfile", dev_pki.ca_cert, smime.cert_path)
    # A TLS purpose must not accept a mail certificate.
    bad = openssl(
        "verify", "-purpose", "sslserver", "-CAfile", dev_pki.ca_cert, smime.cert_path, check=False
    )
    assert bad.returncode != 0
    text = openssl("x509", "-in", smime.cert_path, "-text", "-noout").stdout
    assert f"email:{EMAIL}" in text
    assert "E-mail Protection" in text
    assert "Digital Signature, Non Repudiation, Key Encipherment" in text


@needs_openssl
def test_openssl_signs_and_verifies_with_smime_identity(
    dev_pki: DevPKIPaths, smime: SmimeFiles, tmp_path: Path
) -> None:
    message = tmp_path / "message.txt"
    message.write_text("Compte rendu de consultation.\r\n")
    signed = tmp_path / "signed.eml"
    openssl(
        "smime", "-sign", "-in", message, "-signer", smime.cert_path,
        "-inkey", smime.key_path, "-out", signed,
    )  # fmt: skip
    verified = tmp_path / "verified.txt"
    result = openssl(
        "smime", "-verify", "-in", signed, "-CAfile", dev_pki.ca_cert, "-out", verified
    )
    assert "Verification successful" in result.stderr
    assert verified.read_bytes().replace(b"\r\n", b"\n") == b"Compte rendu de consultation.\n"

    # Someone else's CA does not vouch for it.
    other = init_dev_pki(tmp_path / "other", domain="other.example", hostname="mss.other.example")
    refused = openssl(
        "smime", "-verify", "-in", signed, "-CAfile", other.ca_cert, "-out", verified, check=False
    )
    assert refused.returncode != 0


@needs_openssl
def test_openssl_encrypts_to_smime_identity(smime: SmimeFiles, tmp_path: Path) -> None:
    message = tmp_path / "message.txt"
    message.write_text("confidentiel\n")
    encrypted = tmp_path / "encrypted.eml"
    openssl("smime", "-encrypt", "-aes256", "-in", message, "-out", encrypted, smime.cert_path)
    decrypted = tmp_path / "decrypted.txt"
    openssl(
        "smime", "-decrypt", "-in", encrypted, "-recip", smime.cert_path,
        "-inkey", smime.key_path, "-out", decrypted,
    )  # fmt: skip
    assert decrypted.read_text().strip() == "confidentiel"


@needs_openssl
def test_pkcs12_read_by_openssl_and_cryptography(dev_pki: DevPKIPaths, smime: SmimeFiles) -> None:
    info = openssl(
        "pkcs12", "-info", "-nokeys", "-in", smime.p12_path,
        "-passin", f"pass:{P12_PASSWORD.decode()}",
    )  # fmt: skip
    assert "PBES2, PBKDF2, AES-256-CBC" in info.stderr
    assert "MAC: sha256" in info.stderr
    assert f"friendlyName: {EMAIL}" in info.stdout
    assert info.stdout.count("-----BEGIN CERTIFICATE-----") == 2
    wrong = openssl(
        "pkcs12", "-info", "-nokeys", "-in", smime.p12_path, "-passin", "pass:nope", check=False
    )
    assert wrong.returncode != 0

    bundle = pkcs12.load_pkcs12(smime.p12_path.read_bytes(), P12_PASSWORD)
    assert bundle.cert is not None
    assert bundle.cert.certificate == smime.certificate
    assert bundle.cert.friendly_name == EMAIL.encode()
    assert bundle.key is not None
    assert bundle.key.public_key() == smime.certificate.public_key()
    assert [c.certificate for c in bundle.additional_certs] == [load_certificate(dev_pki.ca_cert)]


@needs_openssl
def test_pkcs12_without_password(dev_pki: DevPKIPaths, tmp_path: Path) -> None:
    files = issue_smime_files(
        dev_pki.ca_key, dev_pki.ca_cert, "Dr.Martin@Cabinet.EXAMPLE", tmp_path
    )
    assert files.p12_path.name == "Dr.Martin@cabinet.example.p12"
    assert mode(files.p12_path) == 0o600
    out = openssl("pkcs12", "-info", "-nokeys", "-in", files.p12_path, "-passin", "pass:")
    assert "-----BEGIN CERTIFICATE-----" in out.stdout
    key, cert, _ = pkcs12.load_key_and_certificates(files.p12_path.read_bytes(), None)
    assert cert == files.certificate
    assert key is not None


def test_write_pkcs12_refuses_mismatch_and_empty_password(tmp_path: Path) -> None:
    ca_key, ca_cert = create_dev_ca("test CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, "a@example.test")
    other_key, _ = issue_smime_cert(ca_key, ca_cert, "b@example.test", key_type="ec")
    with pytest.raises(PKIError, match="does not match"):
        write_pkcs12(
            tmp_path / "x.p12", other_key, cert, ca_cert, friendly_name=b"x", password=None
        )
    with pytest.raises(PKIError, match="must not be empty"):
        write_pkcs12(tmp_path / "x.p12", key, cert, ca_cert, friendly_name=b"x", password=b"")
    assert list(tmp_path.iterdir()) == []


def test_smime_files_refuse_to_overwrite(
    dev_pki: DevPKIPaths, smime: SmimeFiles, tmp_path: Path
) -> None:
    before = smime.key_path.read_bytes()
    with pytest.raises(PKIError, match=r"^file exists \(use --force to overwrite\): "):
        issue_smime_files(dev_pki.ca_key, dev_pki.ca_cert, EMAIL, tmp_path / "smime")
    assert smime.key_path.read_bytes() == before
    again = issue_smime_files(
        dev_pki.ca_key, dev_pki.ca_cert, EMAIL, tmp_path / "smime", force=True
    )
    assert smime.key_path.read_bytes() != before
    assert again.certificate != smime.certificate


@needs_openssl
def test_ec_smime_cert(dev_pki: DevPKIPaths, tmp_path: Path) -> None:
    files = issue_smime_files(
        dev_pki.ca_key, dev_pki.ca_cert, "ec@hopital.example", tmp_path, key_type="ec"
    )
    usage = files.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not usage.key_encipherment
    assert usage.key_agreement
    openssl("verify", "-purpose", "smimesign", "-CAfile", dev_pki.ca_cert, files.cert_path)


@pytest.mark.parametrize(
    "address",
    [
        "no-at-sign",
        "@example.org",
        "../../etc/passwd@example.org",
        "a/b@example.org",
        "a@b@c",
        "a@",
    ],
)
def test_smime_rejects_bad_addresses(address: str) -> None:
    ca_key, ca_cert = create_dev_ca("test CA")
    with pytest.raises(PKIError, match="not a valid"):
        issue_smime_cert(ca_key, ca_cert, address)


def test_issuing_needs_a_real_ca() -> None:
    ca_key, ca_cert = create_dev_ca("test CA")
    other_key, _ = create_dev_ca("other CA")
    with pytest.raises(PKIError, match="CA key does not match"):
        issue_server_cert(other_key, ca_cert, "a.example.test")
    leaf_key, leaf = issue_server_cert(ca_key, ca_cert, "a.example.test")
    with pytest.raises(PKIError, match="not a CA"):
        issue_smime_cert(leaf_key, leaf, "x@example.test")


# --- expiry ---------------------------------------------------------------------------------


@needs_openssl
def test_expired_certificate(tmp_path: Path) -> None:
    ca_key, ca_cert = create_dev_ca("test CA")
    now = dt.datetime.now(dt.UTC)
    _, cert = issue_smime_cert(
        ca_key, ca_cert, "old@example.test", not_after=now - dt.timedelta(days=2)
    )
    assert cert.not_valid_before_utc < cert.not_valid_after_utc < now
    path = tmp_path / "old.crt.pem"
    write_certificate(path, cert)
    ca_path = tmp_path / "ca.crt.pem"
    write_certificate(ca_path, ca_cert)

    result = openssl("x509", "-in", path, "-noout", "-checkend", "0", check=False)
    assert result.returncode == 1
    assert "Certificate will expire" in result.stdout
    refused = openssl("verify", "-CAfile", ca_path, path, check=False)
    assert refused.returncode != 0
    assert "certificate has expired" in refused.stdout + refused.stderr
    assert days_left(cert, now) < 0
    assert days_left(cert, cert.not_valid_after_utc + dt.timedelta(days=2)) == -2


def test_explicit_validity_window() -> None:
    ca_key, ca_cert = create_dev_ca("test CA")
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)
    _, cert = issue_smime_cert(ca_key, ca_cert, "f@example.test", not_before=start, not_after=end)
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)
    with pytest.raises(PKIError, match="expire before"):
        issue_smime_cert(ca_key, ca_cert, "f@example.test", not_before=end, not_after=start)
    with pytest.raises(PKIError, match="timezone-aware"):
        issue_smime_cert(ca_key, ca_cert, "f@example.test", not_after=dt.datetime(2030, 1, 1))
    with pytest.raises(PKIError, match="valid_days"):
        issue_smime_cert(ca_key, ca_cert, "f@example.test", valid_days=0)


def test_leaf_lifetime_is_capped_by_the_ca() -> None:
    ca_key, ca_cert = create_dev_ca("short CA", valid_days=30)
    _, cert = issue_server_cert(ca_key, ca_cert, "a.example.test", valid_days=825)
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_days_left() -> None:
    ca_key, ca_cert = create_dev_ca("test CA")
    _, cert = issue_server_cert(ca_key, ca_cert, "a.example.test")
    end = cert.not_valid_after_utc
    assert days_left(cert, end - dt.timedelta(days=1, hours=12)) == 1
    assert days_left(cert, end - dt.timedelta(hours=1)) == 0
    assert days_left(cert, end + dt.timedelta(hours=1)) == -1
    paris = dt.timezone(dt.timedelta(hours=2))
    assert days_left(cert, (end - dt.timedelta(days=10)).astimezone(paris)) == 10
    with pytest.raises(PKIError, match="timezone-aware"):
        days_left(cert, dt.datetime(2030, 1, 1))


# --- inspection -----------------------------------------------------------------------------


@needs_openssl
def test_certificate_info_matches_openssl(smime: SmimeFiles, dev_pki: DevPKIPaths) -> None:
    info = certificate_info(smime.certificate)
    serial = openssl("x509", "-in", smime.cert_path, "-noout", "-serial").stdout
    assert serial.strip() == f"serial={info.serial.upper()}"
    fingerprint = openssl(
        "x509", "-in", smime.cert_path, "-noout", "-fingerprint", "-sha256"
    ).stdout
    assert fingerprint.strip().split("=", 1)[1].replace(":", "").lower() == info.fingerprint_sha256
    assert info.emails == (EMAIL,)
    assert info.key_usage == ("digitalSignature", "nonRepudiation", "keyEncipherment")
    assert info.eku == ("emailProtection", "clientAuth")
    assert not info.is_ca
    assert info.issuer == load_certificate(dev_pki.ca_cert).subject.rfc4514_string()
    assert "CN=Secrétariat cardiologie" in info.subject
    for moment in (info.not_before, info.not_after):
        assert moment.utcoffset() == dt.timedelta(0)
    assert info.not_after == smime.certificate.not_valid_after_utc

    ca_info = certificate_info(load_certificate(dev_pki.ca_cert))
    assert ca_info.is_ca
    assert ca_info.key_usage == ("keyCertSign", "cRLSign")
    assert ca_info.eku == ()


def test_certificate_info_is_frozen(smime: SmimeFiles) -> None:
    info = certificate_info(smime.certificate)
    with pytest.raises(pydantic.ValidationError):
        info.serial = "00"  # type: ignore[misc]
    assert certificate_info(smime.certificate) == info
    assert CertificateInfo.model_validate_json(info.model_dump_json()) == info


def test_is_smime_for(smime: SmimeFiles, dev_pki: DevPKIPaths) -> None:
    cert = smime.certificate
    assert is_smime_for(cert, EMAIL)
    assert is_smime_for(cert, "secretariat.cardio@HOPITAL.Example")
    assert is_smime_for(cert, "Secretariat.Cardio@hopital.example")  # addresses are lower-cased
    assert not is_smime_for(cert, "autre@hopital.example")
    assert not is_smime_for(cert, "not an address")
    # Right address but a TLS certificate: not for S/MIME.
    assert not is_smime_for(load_certificate(dev_pki.server_cert), EMAIL)


# --- DKIM -----------------------------------------------------------------------------------


def test_dkim_key_and_record(dev_pki: DevPKIPaths) -> None:
    key = load_private_key(dev_pki.dkim_key)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    record = dkim_dns_record(key.public_key())
    assert record.startswith("v=DKIM1; k=rsa; p=")
    der = base64.b64decode(record.split("p=", 1)[1], validate=True)
    assert serialization.load_der_public_key(der) == key.public_key()
    assert generate_dkim_key().key_size == 2048


# --- files ----------------------------------------------------------------------------------


def test_load_errors_are_readable(tmp_path: Path, dev_pki: DevPKIPaths) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(PKIError, match=f"^file not found: {re.escape(str(missing))}$"):
        load_certificate(missing)
    with pytest.raises(PKIError, match=r"^file not found: "):
        load_private_key(missing)

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    with pytest.raises(PKIError, match=f"^not a PEM certificate: {re.escape(str(garbage))}$"):
        load_certificate(garbage)
    with pytest.raises(PKIError, match=f"^not a PEM private key: {re.escape(str(garbage))}$"):
        load_private_key(garbage)

    # A key where a certificate is expected, and the other way round: the message must not
    # echo any of the key.
    with pytest.raises(PKIError, match=r"^not a PEM certificate: ") as caught:
        load_certificate(dev_pki.ca_key)
    assert "PRIVATE" not in str(caught.value)
    with pytest.raises(PKIError, match=r"^not a PEM private key: "):
        load_private_key(dev_pki.ca_cert)

    broken = tmp_path / "broken.crt.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(PKIError, match=f"^not a PEM certificate: {re.escape(str(broken))}$"):
        load_certificate(broken)
    with pytest.raises(PKIError, match=r"^is a directory"):
        load_certificate(tmp_path)


def test_load_encrypted_key(tmp_path: Path) -> None:
    key = generate_dkim_key()
    path = tmp_path / "enc.key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(PKIError, match="encrypted, a password is needed"):
        load_private_key(path)
    with pytest.raises(PKIError, match="wrong password"):
        load_private_key(path, password=b"bad")
    assert load_private_key(path, password=b"pw").public_key() == key.public_key()


def test_load_certificates_bundle(dev_pki: DevPKIPaths, tmp_path: Path) -> None:
    bundle = tmp_path / "chain.pem"
    bundle.write_bytes(dev_pki.server_cert.read_bytes() + dev_pki.ca_cert.read_bytes())
    certs = load_certificates(bundle)
    assert certs == [load_certificate(dev_pki.server_cert), load_certificate(dev_pki.ca_cert)]
    assert load_certificate(bundle) == certs[0]


def test_writes_are_atomic_and_modes_ignore_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        write_public_file(tmp_path / "pub.pem", b"public\n")
    finally:
        os.umask(old_umask)
    assert mode(tmp_path / "pub.pem") == 0o644

    target = tmp_path / "k.pem"
    target.write_text("old, world-readable")
    target.chmod(0o644)
    write_private_key(target, generate_dkim_key())
    assert mode(target) == 0o600
    assert isinstance(load_private_key(target), rsa.RSAPrivateKey)

    with pytest.raises(PKIError, match="file exists"):
        write_private_key(target, generate_dkim_key(), overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "pub.pem"]

    with pytest.raises(PKIError, match=r"^cannot write "):
        write_public_file(tmp_path / "no" / "such" / "dir.pem", b"x")
