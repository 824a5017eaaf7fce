"""Types and helpers shared by the S/MIME tests (a module name no other test folder uses)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

OPENSSL = "/usr/bin/openssl"

RunOpenssl = Callable[..., subprocess.CompletedProcess[bytes]]


@dataclass(frozen=True)
class Identity:
    """A practitioner (or a CA): key, certificate, and the same written as PEM files."""

    email: str
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class Pki:
    ca: Identity
    other_ca: Identity
    alice: Identity  # RSA, the usual sender
    bob: Identity  # RSA, another registered practitioner
    carol_ec: Identity  # EC P-256 signer
    make: Callable[..., Identity]


def write_identity(
    directory: Path, name: str, key: object, cert: x509.Certificate
) -> tuple[Path, Path]:
    cert_path = directory / f"{name}.crt.pem"
    key_path = directory / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
