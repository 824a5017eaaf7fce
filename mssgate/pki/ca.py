"""The self-signed development CA."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mssgate.errors import PKIError
from mssgate.pki._build import validity
from mssgate.pki.keys import signature_hash

DEV_CA_ORGANIZATION = "mssgate (development only)"


def create_dev_ca(
    common_name: str, *, valid_days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign leaves only (pathlen 0), for development and tests.

    EC P-256 rather than RSA-3072: key generation is instant (init and the test suite create
    many), signatures are small, and OpenSSL, NSS (Thunderbird) and every TLS stack verify
    ECDSA-signed chains; production trust comes from IGC-Santé anyway, not from this CA.
    """
    if not common_name.strip():
        raise PKIError("the CA needs a common name")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name.strip()),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_CA_ORGANIZATION),
        ]
    )
    not_before, not_after = validity(valid_days)
    public_key = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, signature_hash(key))
    )
    return key, cert
