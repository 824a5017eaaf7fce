"""PKCS#12 bundles for importing an S/MIME identity into a mail client."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from mssgate.errors import PKIError
from mssgate.pki._types import PrivateKey
from mssgate.pki.files import write_private_file
from mssgate.pki.keys import same_key

# Enough to slow down offline guessing of the bundle password, still instant for one import.
PKCS12_KDF_ROUNDS = 200_000


def pkcs12_bytes(
    key: PrivateKey,
    cert: x509.Certificate,
    ca_cert: x509.Certificate | None,
    *,
    friendly_name: bytes,
    password: bytes | None,
) -> bytes:
    """The DER PKCS#12 bundle; see `write_pkcs12`."""
    if not same_key(key, cert.public_key()):
        raise PKIError("the private key does not match the certificate")
    if password is not None and not password:
        raise PKIError("the PKCS#12 password must not be empty (pass None for no password)")
    encryption: serialization.KeySerializationEncryption
    if password is None:
        encryption = serialization.NoEncryption()
    else:
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(PKCS12_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(password)
        )
    try:
        return pkcs12.serialize_key_and_certificates(
            name=friendly_name or None,
            key=key,
            cert=cert,
            cas=[ca_cert] if ca_cert is not None else None,
            encryption_algorithm=encryption,
        )
    except (TypeError, ValueError) as exc:
        raise PKIError("cannot build the PKCS#12 bundle") from exc


def write_pkcs12(
    path: Path,
    key: PrivateKey,
    cert: x509.Certificate,
    ca_cert: x509.Certificate | None,
    *,
    friendly_name: bytes,
    password: bytes | None,
    overwrite: bool = True,
) -> None:
    """Write key, certificate and CA as a PKCS#12 file (mode 0600) for mail clients.

    With a password, key and certificates are encrypted with PBES2 (PBKDF2-HMAC-SHA256,
    200,000 iterations, AES-256-CBC) and the integrity MAC is HMAC-SHA256: OpenSSL 3's own
    default profile, readable without `-legacy` and imported by Thunderbird/NSS, Apple Mail and
    Windows 10+. Without a password nothing is encrypted and the MAC is keyed with the empty
    password (what clients expect when they ask for one and get none): throw-away development
    identities only.
    """
    data = pkcs12_bytes(key, cert, ca_cert, friendly_name=friendly_name, password=password)
    write_private_file(path, data, overwrite=overwrite)
