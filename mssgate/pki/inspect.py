"""Read-only views of a certificate: what `mssgate certs show` and health checks report."""

from __future__ import annotations

import datetime as dt
import math
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator

from mssgate.errors import PKIError
from mssgate.pki._build import utc
from mssgate.pki.names import split_address

ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


class CertificateInfo(BaseModel):
    """The facts of a certificate worth showing; names follow RFC 5280 spelling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str
    issuer: str
    serial: str
    not_before: AwareDatetime
    not_after: AwareDatetime
    fingerprint_sha256: str
    emails: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    key_usage: tuple[str, ...] = ()
    eku: tuple[str, ...] = ()
    is_ca: bool = False

    @field_validator("not_before", "not_after")
    @classmethod
    def _in_utc(cls, value: dt.datetime) -> dt.datetime:
        return value.astimezone(dt.UTC)


def certificate_info(cert: x509.Certificate) -> CertificateInfo:
    """Summarise `cert`; serial and fingerprint are lower-case hex without separators."""
    san = _extension(cert, x509.SubjectAlternativeName)
    constraints = _extension(cert, x509.BasicConstraints)
    serial = format(cert.serial_number, "x")
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=serial.zfill(len(serial) + len(serial) % 2),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        emails=tuple(san.get_values_for_type(x509.RFC822Name)) if san else (),
        dns_names=tuple(san.get_values_for_type(x509.DNSName)) if san else (),
        ip_addresses=tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        if san
        else (),
        key_usage=_key_usage_names(cert),
        eku=_eku_names(cert),
        is_ca=bool(constraints and constraints.ca),
    )


def is_smime_for(cert: x509.Certificate, email: str) -> bool:
    """Whether `cert` is meant for S/MIME (EKU emailProtection) and names `email` in its SAN.

    The whole address is compared case-insensitively: the directory keys mailboxes in lower
    case (mssgate.identifiers), so `Prenom.Nom@` in a certificate is the same mailbox.
    """
    wanted = split_address(email.lower())
    if wanted is None:
        return False
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is None or ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku:
        return False
    san = _extension(cert, x509.SubjectAlternativeName)
    if san is None:
        return False
    names = san.get_values_for_type(x509.RFC822Name)
    return any(split_address(value.lower()) == wanted for value in names)


def days_left(cert: x509.Certificate, now: dt.datetime) -> int:
    """Whole days until expiry, rounded down: 0 on the last day, negative once expired."""
    remaining = cert.not_valid_after_utc - utc(now, "now")
    return math.floor(remaining.total_seconds() / 86400)


def _extension(cert: x509.Certificate, kind: type[ExtensionT]) -> ExtensionT | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        # Duplicate or undecodable extensions: the certificate is broken, not merely unusual.
        raise PKIError("the certificate has malformed extensions") from exc


def _key_usage_names(cert: x509.Certificate) -> tuple[str, ...]:
    usage = _extension(cert, x509.KeyUsage)
    if usage is None:
        return ()
    names = [
        name
        for name, present in (
            ("digitalSignature", usage.digital_signature),
            ("nonRepudiation", usage.content_commitment),
            ("keyEncipherment", usage.key_encipherment),
            ("dataEncipherment", usage.data_encipherment),
            ("keyAgreement", usage.key_agreement),
            ("keyCertSign", usage.key_cert_sign),
            ("cRLSign", usage.crl_sign),
        )
        if present
    ]
    # encipher_only/decipher_only raise unless keyAgreement is set.
    if usage.key_agreement:
        names += [
            name
            for name, present in (
                ("encipherOnly", usage.encipher_only),
                ("decipherOnly", usage.decipher_only),
            )
            if present
        ]
    return tuple(names)


def _eku_names(cert: x509.Certificate) -> tuple[str, ...]:
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is None:
        return ()
    return tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)
