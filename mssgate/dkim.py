"""DKIM signing and verification (RFC 6376; Ed25519 keys per RFC 8463), on top of dkimpy.

DNS is injected: `dkim_verify` takes a `dns_txt(name) -> bytes | None` lookup so that tests run
without a resolver and production can answer only for the domains it trusts (the MSSanté space
is closed: keys of partner domains come from a configured table, not the open Internet).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, cast

import dkim  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mssgate.errors import MssgateError

DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]
DnsTxtLookup = Callable[[str], bytes | None]

# From is listed twice: the second, unmatched entry "oversigns" it, so a From field added in
# transit breaks the signature instead of being displayed as the sender (RFC 6376 §8.15).
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"from",
)
# dkimpy logs every verification failure at ERROR; a bad signature from a peer is a verdict,
# not an error of ours.
_QUIET = logging.getLogger("mssgate.dkim.dkimpy")
_QUIET.setLevel(logging.CRITICAL)


class DkimError(MssgateError):
    """A message cannot be signed (bad key, bad selector or domain, unparsable message)."""


class DkimStatus(StrEnum):
    """RFC 8601 §2.7.1 result values for the dkim method."""

    PASS = "pass"  # noqa: S105 - a result keyword, not a secret
    FAIL = "fail"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


@dataclass(frozen=True, slots=True)
class DkimSignatureResult:
    """The outcome for one DKIM-Signature field."""

    status: DkimStatus
    domain: str | None
    selector: str | None
    algorithm: str | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DkimResult:
    """Every DKIM-Signature of a message checked; `status` sums them up.

    One passing signature is enough (RFC 6376 §6.1): a message may carry a broken signature
    from a mailing list next to a good one from its author's domain.
    """

    status: DkimStatus
    signatures: tuple[DkimSignatureResult, ...]

    @property
    def passing_domains(self) -> tuple[str, ...]:
        """The d= domains whose signature verified."""
        return tuple(s.domain for s in self.signatures if s.status is DkimStatus.PASS and s.domain)


def dkim_sign(
    message: bytes,
    *,
    selector: str,
    domain: str,
    key_pem: bytes,
    algorithm: DkimAlgorithm = "rsa-sha256",
) -> bytes:
    """`message` with a DKIM-Signature field prepended (relaxed/relaxed canonicalisation).

    `key_pem` is a PEM private key: RSA for rsa-sha256, Ed25519 for ed25519-sha256.
    """
    private = _dkimpy_private_key(key_pem, algorithm)
    try:
        field = dkim.sign(
            message,
            selector.encode("ascii"),
            domain.encode("ascii"),
            private,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=algorithm.encode("ascii"),
            include_headers=list(SIGNED_HEADERS),
            logger=_QUIET,
        )
    except (dkim.DKIMException, UnicodeError) as exc:
        raise DkimError(f"cannot DKIM-sign the message: {exc}") from exc
    return bytes(field) + message


def dkim_verify(message: bytes, *, dns_txt: DnsTxtLookup, min_rsa_bits: int = 1024) -> DkimResult:
    """Check every DKIM-Signature of `message`, looking keys up with `dns_txt`.

    `dns_txt` gets `selector._domainkey.domain` (no trailing dot) and returns the TXT record's
    strings joined, or None when there is no record; an exception from it is a temporary
    error (the message should be retried, RFC 6376 §6.1.2).
    """
    verifier = dkim.DKIM(message, logger=_QUIET, minkey=min_rsa_bits)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    if count == 0:
        return DkimResult(DkimStatus.NONE, ())
    results = tuple(_verify_one(verifier, index, dns_txt) for index in range(count))
    return DkimResult(_overall(results), results)


def _verify_one(verifier: dkim.DKIM, index: int, dns_txt: DnsTxtLookup) -> DkimSignatureResult:
    lookup = _Lookup(dns_txt)
    verifier.domain = verifier.selector = None
    verifier.signature_fields = {}
    try:
        passed = bool(verifier.verify(idx=index, dnsfunc=lookup))
        problem = "" if passed else "signature does not verify"
    except dkim.DKIMException as exc:
        passed, problem = False, str(exc)
    fields = cast(dict[bytes, bytes], verifier.signature_fields or {})
    domain = _text(verifier.domain)
    selector = _text(verifier.selector)
    algorithm = _text(fields.get(b"a"))
    if passed:
        return DkimSignatureResult(DkimStatus.PASS, domain, selector, algorithm)
    if lookup.failed is not None:
        status, problem = DkimStatus.TEMPERROR, f"key lookup failed: {lookup.failed}"
    elif lookup.missing:
        status, problem = DkimStatus.PERMERROR, "no key record"
    elif not fields or "body hash" in problem or problem == "signature does not verify":
        # A signature that cannot even be parsed is a permanent error; one that parses and
        # does not match the content is a failure (RFC 8601 §2.7.1).
        status = DkimStatus.FAIL if fields else DkimStatus.PERMERROR
    else:
        status = DkimStatus.PERMERROR
    return DkimSignatureResult(status, domain, selector, algorithm, problem)


class _Lookup:
    """The dnsfunc dkimpy calls, remembering how the lookup went."""

    def __init__(self, dns_txt: DnsTxtLookup) -> None:
        self._dns_txt = dns_txt
        self.failed: str | None = None
        self.missing = False

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        del timeout  # the injected lookup owns its own deadline
        try:
            record = self._dns_txt(name.decode("ascii").rstrip("."))
        except Exception as exc:  # whatever the resolver raises is "try again later"
            self.failed = type(exc).__name__
            return None
        if not record:
            self.missing = True
            return None
        return record


def _overall(results: tuple[DkimSignatureResult, ...]) -> DkimStatus:
    statuses = {r.status for r in results}
    for status in (DkimStatus.PASS, DkimStatus.TEMPERROR, DkimStatus.FAIL):
        if status in statuses:
            return status
    return DkimStatus.PERMERROR


def _dkimpy_private_key(key_pem: bytes, algorithm: DkimAlgorithm) -> bytes:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimError("the DKIM key is not an unencrypted PEM private key") from exc
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimError("rsa-sha256 needs an RSA key")
        # dkimpy reads PKCS#1 RSA keys only (the "RSA" PEM label), not every PEM flavour.
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    if algorithm == "ed25519-sha256":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise DkimError("ed25519-sha256 needs an Ed25519 key")
        # RFC 8463 keys are the raw 32-byte seed; dkimpy takes it base64-encoded.
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(raw)
    raise DkimError(f"unknown DKIM algorithm {algorithm!r}")


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return None if value is None else str(value)
