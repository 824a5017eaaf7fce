"""Leaf certificates signed by a CA: TLS server/client and S/MIME."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mssgate.errors import PKIError
from mssgate.pki._build import authority_key_identifier, check_issuer, validity
from mssgate.pki._types import KeyType, PrivateKey
from mssgate.pki.keys import generate_key, signature_hash
from mssgate.pki.names import general_names, mail_address


def issue_server_cert(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    hostname: str,
    *,
    extra_names: Sequence[str] = ("localhost", "127.0.0.1"),
    valid_days: int = 825,
    key_type: KeyType = "ec",
) -> tuple[PrivateKey, x509.Certificate]:
    """A TLS certificate for `hostname` (plus `extra_names`), usable as server and client.

    Gateways authenticate each other with mutual TLS and present this same certificate as the
    client side, hence clientAuth next to serverAuth. 825 days is the longest lifetime Apple
    platforms still accept for a TLS server certificate.
    """
    check_issuer(ca_key, ca_cert)
    names = general_names([hostname, *extra_names])
    first = names[0]
    common_name = str(first.value)
    key = generate_key(key_type)
    not_before, not_after = validity(valid_days, issuer=ca_cert)
    builder = _leaf_builder(
        ca_cert,
        key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
        not_before,
        not_after,
    )
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    cert = (
        builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            # TLS 1.2 RSA key exchange encrypts to the key; ECDHE suites only sign with it.
            _key_usage(digital_signature=True, key_encipherment=is_rsa),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, signature_hash(ca_key))
    )
    return key, cert


def issue_smime_cert(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    email: str,
    *,
    common_name: str | None = None,
    key_type: KeyType = "rsa",
    valid_days: int = 825,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """An S/MIME certificate for the mailbox `email`, to sign and to receive encrypted mail.

    RSA by default: it is what IGC-Santé issues and the one key type every mail client can both
    verify and encrypt to. `not_before`/`not_after` override `valid_days` (expired test fixtures).
    """
    check_issuer(ca_key, ca_cert)
    address = mail_address(email)
    cn = (common_name or address).strip()
    if not cn:
        raise PKIError("the common name must not be blank")
    key = generate_key(key_type)
    start, end = validity(valid_days, not_before=not_before, not_after=not_after, issuer=ca_cert)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, address),
        ]
    )
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    cert = (
        _leaf_builder(ca_cert, key, subject, start, end)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), critical=False)
        .add_extension(
            _key_usage(
                digital_signature=True,
                content_commitment=True,
                # Encryption to this mailbox: RSA key transport, or ECDH key agreement (RFC 5753).
                key_encipherment=is_rsa,
                key_agreement=not is_rsa,
            ),
            critical=True,
        )
        .add_extension(
            # clientAuth too: the same certificate opens the mailbox over TLS (SASL EXTERNAL
            # on SMTP and IMAP), as a practitioner's authentication certificate does.
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, signature_hash(ca_key))
    )
    return key, cert


def issue_client_cert(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    valid_days: int = 825,
    key_type: KeyType = "ec",
) -> tuple[PrivateKey, x509.Certificate]:
    """A TLS client certificate (clientAuth only) for a system such as a RIS: it names no
    host and no mailbox, so it opens neither a server role nor a mailbox; what it opens is
    decided by the fingerprint the gateway binds to it (mssgate consumer cert)."""
    check_issuer(ca_key, ca_cert)
    if not common_name.strip():
        raise PKIError("the common name must not be blank")
    key = generate_key(key_type)
    not_before, not_after = validity(valid_days, issuer=ca_cert)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name.strip())])
    cert = (
        _leaf_builder(ca_cert, key, subject, not_before, not_after)
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey)),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, signature_hash(ca_key))
    )
    return key, cert


def _leaf_builder(
    ca_cert: x509.Certificate,
    key: PrivateKey,
    subject: x509.Name,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_identifier(ca_cert), critical=False)
    )


def _key_usage(
    *,
    digital_signature: bool = False,
    content_commitment: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
