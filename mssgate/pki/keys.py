"""Key generation and the DKIM DNS record."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mssgate.errors import PKIError
from mssgate.pki._types import KeyType, PrivateKey, PublicKey

# 2048 bits: what the DKIM verifiers in the wild accept everywhere (RFC 8301 minimum is 1024,
# 4096-bit keys do not fit a single 255-byte TXT string and some DNS hosting panels choke on them).
DKIM_RSA_BITS = 2048
# S/MIME: IGC-Santé and the mail clients all speak RSA-2048; keep dev certificates alike.
SMIME_RSA_BITS = 2048


def generate_key(key_type: KeyType, *, rsa_bits: int = SMIME_RSA_BITS) -> PrivateKey:
    """A fresh key: RSA with `rsa_bits`, or EC on P-256."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise PKIError(f"unknown key type: {key_type!r} (expected 'rsa' or 'ec')")


def generate_dkim_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key to sign outgoing mail with DKIM."""
    return rsa.generate_private_key(public_exponent=65537, key_size=DKIM_RSA_BITS)


def dkim_dns_record(public_key: PublicKey) -> str:
    """The TXT value to publish at `<selector>._domainkey.<domain>`.

    RSA keys give `v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>` (RFC 6376); Ed25519 keys give
    `k=ed25519` with the raw 32-byte key (RFC 8463). Long values must be split into several
    255-byte strings by whoever writes the zone file.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        der = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    raise PKIError("DKIM needs an RSA or Ed25519 key")


def signature_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """The digest to sign certificates with; Ed25519 signs without a separate digest."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    return hashes.SHA256()


def same_key(private_key: PrivateKey, public_key: object) -> bool:
    """Whether `public_key` is the public half of `private_key`."""
    return bool(private_key.public_key() == public_key)
