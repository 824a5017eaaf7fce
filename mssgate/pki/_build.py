"""Pieces shared by the CA and leaf builders: validity windows and issuer checks."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mssgate.errors import PKIError
from mssgate.pki._types import PrivateKey
from mssgate.pki.keys import same_key

# Backdate a little so that a peer whose clock lags does not see a "not yet valid" certificate.
CLOCK_SKEW = dt.timedelta(minutes=5)


def utc(moment: dt.datetime, what: str) -> dt.datetime:
    """`moment` in UTC; naive datetimes are refused rather than guessed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PKIError(f"{what} must be a timezone-aware datetime")
    return moment.astimezone(dt.UTC)


def validity(
    valid_days: int,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    issuer: x509.Certificate | None = None,
) -> tuple[dt.datetime, dt.datetime]:
    """(not_before, not_after) from a lifetime in days or explicit bounds.

    A lifetime computed here is cut at the issuer's own expiry: a leaf outliving its CA only looks
    valid longer than it can be verified. Explicit bounds are taken as given (tests make expired
    or odd certificates on purpose); an explicit `not_after` in the past alone yields a
    certificate that was valid for `valid_days` up to that moment.
    """
    if valid_days <= 0:
        raise PKIError("valid_days must be positive")
    lifetime = dt.timedelta(days=valid_days)
    now = dt.datetime.now(dt.UTC)
    start = utc(not_before, "not_before") if not_before is not None else now - CLOCK_SKEW
    if not_after is not None:
        end = utc(not_after, "not_after")
        if not_before is None and end <= start:
            # Only an end in the past was asked for: an already expired certificate that was
            # valid for `valid_days` before that.
            start = end - lifetime
    else:
        end = start + CLOCK_SKEW + lifetime
        if issuer is not None:
            end = min(end, issuer.not_valid_after_utc)
    if end <= start:
        raise PKIError("certificate would expire before it becomes valid")
    return start, end


def check_issuer(ca_key: PrivateKey, ca_cert: x509.Certificate) -> None:
    """Refuse to sign with a pair that is not a usable CA."""
    if not same_key(ca_key, ca_cert.public_key()):
        raise PKIError("the CA key does not match the CA certificate")
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise PKIError("the CA certificate has no basicConstraints extension") from None
    if not constraints.ca:
        raise PKIError("the CA certificate is not a CA (basicConstraints CA:FALSE)")
    try:
        usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise PKIError("the CA certificate may not sign certificates (no keyCertSign)")


def authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI pointing at the issuer's SKI (or derived from its key when it has none)."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = ca_cert.public_key()
        if not isinstance(
            public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
        ):
            raise PKIError("unsupported CA key type") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
