"""A practitioner's own S/MIME identity (a .p12 from their CA) checked before the gateway
keeps its key to sign for them (`mssgate cert import`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from mssgate.config import Config
from mssgate.errors import PKIError
from mssgate.pki import is_smime_for
from mssgate.pki.keys import same_key
from mssgate.smime.escrow import SigningKey
from mssgate.smime.mailbox_keys import check_chain


@dataclass(frozen=True)
class Identity:
    key: SigningKey
    cert: x509.Certificate
    others: list[x509.Certificate]


def read_p12(data: bytes, passphrase: bytes | None, name: str) -> Identity:
    """The key, certificate and extra certificates of a PKCS#12 file; one readable line
    when it does not open (the passphrase is never part of it)."""
    tries = [passphrase] if passphrase else [None, b""]
    bundle = None
    for attempt in tries:
        try:
            bundle = pkcs12.load_pkcs12(data, attempt)
            break
        except (ValueError, TypeError):
            continue
    if bundle is None:
        raise PKIError(f"{name}: wrong passphrase, or not a PKCS#12 file")
    if bundle.key is None or bundle.cert is None:
        raise PKIError(f"{name} holds no private key with its certificate")
    key = bundle.key
    cert = bundle.cert.certificate
    if not isinstance(key, SigningKey):
        raise PKIError(f"{name}: only RSA and EC keys can sign here")
    if not same_key(key, cert.public_key()):
        raise PKIError(f"{name}: the private key does not match the certificate")
    return Identity(key, cert, [c.certificate for c in bundle.additional_certs])


def check_identity(config: Config, address: str, identity: Identity, name: str) -> None:
    """What peers will check on every message signed with it, checked once here: the
    address, the validity now, the chain to the installation's trust anchors (`tls.ca`)."""
    cert = identity.cert
    if not is_smime_for(cert, address):
        raise PKIError(
            f"{name} is not an S/MIME certificate for {address}"
            " (needs EKU emailProtection and the address in subjectAltName)"
        )
    moment = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= moment:
        raise PKIError(f"{name}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > moment:
        raise PKIError(
            f"{name}: the certificate is not valid before"
            f" {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    check_chain(config, name, cert, identity.others)
