"""Verify an S/MIME signed message: integrity, signature, trust, and who may send it.

The CMS and X.509 work is pyHanko's generic CMS validator (`pyhanko.sign.validation.
generic_cms`) with pyhanko-certvalidator for path building, validity and CRLs; this module
finds the signed bytes in the MIME structure, runs the validator, and turns its outcome into a
`SignatureVerdict` whose reason maps to one SMTP reply. The order of the checks (integrity,
then signature, then certificate, then sender identity) decides which reason a message that
fails several checks gets: see docs/smime.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from typing import Literal, cast

from asn1crypto import cms  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pyhanko.sign.ades.report import (
    AdESIndeterminate,
)
from pyhanko.sign.general import (
    SignedDataCerts,
    extract_signer_info,
)
from pyhanko.sign.validation.errors import (
    SignatureValidationError,
)
from pyhanko.sign.validation.generic_cms import (
    async_validate_cms_signature,
    extract_certs_for_validation,
    extract_self_reported_ts,
)
from pyhanko.sign.validation.settings import (
    KeyUsageConstraints,
)
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import (
    ExpiredError,
    InsufficientRevinfoError,
    InvalidCertificateError,
    NotYetValidError,
    PathBuildingError,
    RevokedError,
)
from pyhanko_certvalidator.util import get_pyca_cryptography_hash

from mssgate.smime.extract import MalformedSigned, NotSigned, SignedParts, extract_signed
from mssgate.smime.verdict import FailureReason, SignatureVerdict

logger = logging.getLogger(__name__)

RevocationMode = Literal["soft-fail", "hard-fail", "require"]

KEY_USAGE = frozenset({"digital_signature"})
EXTENDED_KEY_USAGE = frozenset({"email_protection"})


@dataclass(frozen=True, slots=True)
class _Policy:
    trust_anchors: tuple[bytes, ...]
    registered: frozenset[str] | None
    crls: tuple[bytes, ...]
    ocsps: tuple[bytes, ...]
    intermediates: tuple[bytes, ...]
    moment: dt.datetime | None
    revocation_mode: RevocationMode

    def context(self) -> ValidationContext:
        # A fresh context per use: pyhanko-certvalidator caches paths and revocation results
        # in it, and a second pass must not reuse what the first one concluded.
        return ValidationContext(
            trust_roots=[asn1_x509.Certificate.load(der) for der in self.trust_anchors],
            other_certs=[asn1_x509.Certificate.load(der) for der in self.intermediates],
            crls=list(self.crls),
            ocsps=list(self.ocsps),
            allow_fetching=False,
            moment=self.moment,
            revocation_mode=self.revocation_mode,
        )


def verify_signed_message(
    raw: bytes,
    *,
    trust_anchors: Sequence[x509.Certificate],
    registered: Sequence[x509.Certificate] | None,
    crls: Sequence[bytes] = (),
    moment: dt.datetime | None = None,
    ocsp_responses: Sequence[bytes] = (),
    intermediates: Sequence[x509.Certificate] = (),
    revocation_mode: RevocationMode | None = None,
) -> SignatureVerdict:
    """Verify `raw` (a whole message as received) and say whether it may be accepted.

    Synchronous front of `averify_signed_message`; safe to call from inside a running event
    loop (the validation then runs on a private loop in a worker thread).
    """

    def run() -> SignatureVerdict:
        return asyncio.run(
            averify_signed_message(
                raw,
                trust_anchors=trust_anchors,
                registered=registered,
                crls=crls,
                moment=moment,
                ocsp_responses=ocsp_responses,
                intermediates=intermediates,
                revocation_mode=revocation_mode,
            )
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    # asyncio.run refuses to nest in a running loop, and blocking that loop's thread on it
    # would deadlock: a private loop in a worker thread does the work instead.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


async def averify_signed_message(
    raw: bytes,
    *,
    trust_anchors: Sequence[x509.Certificate],
    registered: Sequence[x509.Certificate] | None,
    crls: Sequence[bytes] = (),
    moment: dt.datetime | None = None,
    ocsp_responses: Sequence[bytes] = (),
    intermediates: Sequence[x509.Certificate] = (),
    revocation_mode: RevocationMode | None = None,
) -> SignatureVerdict:
    """Verify `raw` and return a verdict; never raises on anything the sender controls.

    `trust_anchors` are the CA certificates a signer must chain to (IGC-Santé in production);
    `intermediates` helps build paths when signers omit them. `registered` is the sender's
    certificates known to the directory: None skips that check (outgoing mail signed by
    ourselves, tests). `crls` are DER or PEM CRLs; `ocsp_responses` pre-fetched DER OCSP
    responses (nothing is fetched from the network). `moment` is "now" (UTC-aware), for tests
    and for re-checking an archived message.

    `revocation_mode` defaults to "require" when revocation data is given (every certificate
    below the trust anchor must be covered by it: the gateway holds the CRLs of the CAs it
    trusts) and to "hard-fail" otherwise (a certificate that names a CRL or OCSP location is
    refused, since nothing is fetched; one that names none passes). pyhanko-certvalidator
    ignores given CRLs for certificates without a distribution point in the other modes.
    """
    if moment is not None and moment.utcoffset() is None:
        raise ValueError("moment must be timezone-aware")
    policy = _Policy(
        trust_anchors=tuple(_der(cert) for cert in trust_anchors),
        registered=(None if registered is None else frozenset(_fingerprint(c) for c in registered)),
        crls=tuple(_crl_der(crl) for crl in crls),
        ocsps=tuple(ocsp_responses),
        intermediates=tuple(_der(cert) for cert in intermediates),
        moment=moment,
        revocation_mode=revocation_mode or ("require" if crls or ocsp_responses else "hard-fail"),
    )
    try:
        parts = extract_signed(raw)
    except NotSigned as exc:
        return _fail(FailureReason.UNSIGNED, str(exc))
    except MalformedSigned as exc:
        return _fail(FailureReason.MALFORMED, str(exc))
    except Exception as exc:  # the stdlib parser on hostile input: nothing may escape
        return _fail(FailureReason.MALFORMED, f"unreadable MIME structure: {exc!r}")
    try:
        return await _verify_parts(parts, policy)
    except Exception as exc:  # asn1crypto parses lazily: a broken field may raise anywhere
        logger.info("S/MIME verification failed on malformed input", exc_info=exc)
        return _fail(FailureReason.MALFORMED, f"unreadable CMS structure: {exc!r}")


async def _verify_parts(parts: SignedParts, policy: _Policy) -> SignatureVerdict:
    try:
        content_info = cms.ContentInfo.load(parts.cms_der, strict=True)
        if content_info["content_type"].native != "signed_data":
            return _fail(FailureReason.UNSIGNED, "the CMS object is not SignedData")
        signed_data = content_info["content"]
        signer_info = extract_signer_info(signed_data)
        cert_info: SignedDataCerts = extract_certs_for_validation(signed_data)
    except (ValueError, SignatureValidationError) as exc:
        return _fail(FailureReason.MALFORMED, f"CMS SignedData unusable: {exc}")

    signer_asn1: asn1_x509.Certificate = cert_info.signer_cert
    signer = x509.load_der_x509_certificate(signer_asn1.dump())
    signing_time = extract_self_reported_ts(signer_info)
    about = _Signer(signer, signing_time)

    encapsulated = signed_data["encap_content_info"]["content"].native
    if parts.detached_content is not None:
        if encapsulated is not None:
            return about.fail(FailureReason.MALFORMED, "detached signature with content inside")
        content = parts.detached_content
        md_algorithm = signer_info["digest_algorithm"]["algorithm"].native
        digest = hashes.Hash(get_pyca_cryptography_hash(md_algorithm))
        digest.update(content)
        raw_digest: bytes | None = digest.finalize()
    else:
        if not isinstance(encapsulated, bytes):
            return about.fail(FailureReason.MALFORMED, "opaque signature without content")
        content = encapsulated
        raw_digest = None

    status = await async_validate_cms_signature(
        signed_data,
        raw_digest=raw_digest,
        validation_context=policy.context(),
        key_usage_settings=KeyUsageConstraints(
            key_usage=set(KEY_USAGE), extd_key_usage=set(EXTENDED_KEY_USAGE)
        ),
    )
    if not status.intact:
        return about.fail(FailureReason.TAMPERED, "content digest differs from messageDigest")
    if not status.valid:
        return about.fail(FailureReason.BAD_SIGNATURE, "signature value does not verify")
    indication = status.trust_problem_indic
    if indication is not None:
        reason, detail = await _classify_trust_failure(signer_asn1, cert_info, policy, indication)
        return about.fail(reason, detail)

    time_problem = _signing_time_problem(signer, signing_time)
    if time_problem is not None:
        return about.fail(*time_problem)

    address_problem = _address_problem(parts, signer)
    if address_problem is not None:
        return about.fail(FailureReason.ADDRESS_MISMATCH, address_problem)

    if policy.registered is not None and _fingerprint(signer) not in policy.registered:
        return about.fail(FailureReason.NOT_REGISTERED, "certificate not in the directory")

    return about.passed(content)


@dataclass(frozen=True, slots=True)
class _Signer:
    certificate: x509.Certificate
    signing_time: dt.datetime | None

    def fail(self, reason: FailureReason, detail: str) -> SignatureVerdict:
        return SignatureVerdict(
            ok=False,
            reason=reason,
            detail=detail,
            signer_subject=self.certificate.subject.rfc4514_string(),
            signer_fingerprint=_fingerprint(self.certificate),
            signer_certificate=self.certificate,
            signing_time=self.signing_time,
        )

    def passed(self, content: bytes) -> SignatureVerdict:
        return SignatureVerdict(
            ok=True,
            signer_subject=self.certificate.subject.rfc4514_string(),
            signer_fingerprint=_fingerprint(self.certificate),
            signer_certificate=self.certificate,
            signing_time=self.signing_time,
            content=content,
        )


async def _classify_trust_failure(
    signer: asn1_x509.Certificate,
    cert_info: SignedDataCerts,
    policy: _Policy,
    indication: object,
) -> tuple[FailureReason, str]:
    # pyHanko folds certvalidator's exceptions into AdES indications, which lose the
    # difference between (say) "not yet valid" and any other chain failure. Re-running the
    # path validation alone, on a fresh context, gives back the precise exception.
    validator = CertificateValidator(
        signer,
        intermediate_certs=list(cert_info.other_certs),
        validation_context=policy.context(),
    )
    # The method has no annotations; its contract is "raise on any failure".
    validate_usage = cast(Callable[..., Awaitable[object]], validator.async_validate_usage)
    try:
        await validate_usage(key_usage=set(KEY_USAGE), extended_key_usage=set(EXTENDED_KEY_USAGE))
    except RevokedError as exc:
        return FailureReason.REVOKED, f"revoked: {exc.failure_msg}"
    except ExpiredError as exc:
        reason = FailureReason.EXPIRED if exc.is_ee_cert else FailureReason.UNTRUSTED_CHAIN
        return reason, f"expired: {exc.failure_msg}"
    except NotYetValidError as exc:
        reason = FailureReason.NOT_YET_VALID if exc.is_ee_cert else FailureReason.UNTRUSTED_CHAIN
        return reason, f"not yet valid: {exc.failure_msg}"
    except InvalidCertificateError as exc:
        return FailureReason.BAD_KEY_USAGE, f"certificate usage: {exc.failure_msg}"
    except PathBuildingError as exc:
        return FailureReason.UNTRUSTED_CHAIN, f"no path to a trust anchor: {exc}"
    except InsufficientRevinfoError as exc:
        return FailureReason.UNTRUSTED_CHAIN, f"revocation status unknown: {exc.failure_msg}"
    except Exception as exc:  # any other path validation error: the chain cannot be trusted
        return FailureReason.UNTRUSTED_CHAIN, f"path validation: {exc!r}"
    return _from_indication(indication)


def _from_indication(indication: object) -> tuple[FailureReason, str]:
    # Only reached when the second pass found nothing wrong with the certificate, so the
    # problem lies in the signature itself (a banned algorithm) or is one pyHanko alone sees.
    mapping = {
        AdESIndeterminate.REVOKED_NO_POE: FailureReason.REVOKED,
        AdESIndeterminate.REVOKED_CA_NO_POE: FailureReason.REVOKED,
        AdESIndeterminate.OUT_OF_BOUNDS_NO_POE: FailureReason.EXPIRED,
        AdESIndeterminate.CHAIN_CONSTRAINTS_FAILURE: FailureReason.BAD_KEY_USAGE,
        AdESIndeterminate.CRYPTO_CONSTRAINTS_FAILURE: FailureReason.BAD_SIGNATURE,
        AdESIndeterminate.CRYPTO_CONSTRAINTS_FAILURE_NO_POE: FailureReason.BAD_SIGNATURE,
    }
    reason = mapping.get(indication, FailureReason.UNTRUSTED_CHAIN)  # type: ignore[call-overload]
    return reason, f"pyHanko trust indication {indication}"


def _signing_time_problem(
    signer: x509.Certificate, signing_time: dt.datetime | None
) -> tuple[FailureReason, str] | None:
    # The signingTime attribute is self-reported, so it cannot make a signature valid; it can
    # only expose one that claims to predate or outlive its certificate.
    if signing_time is None:
        return None
    if signing_time < signer.not_valid_before_utc:
        return FailureReason.NOT_YET_VALID, f"signed at {signing_time}, before the certificate"
    if signing_time > signer.not_valid_after_utc:
        return FailureReason.EXPIRED, f"signed at {signing_time}, after the certificate expired"
    return None


def _address_problem(parts: SignedParts, signer: x509.Certificate) -> str | None:
    from_fields = parts.headers.get_all("from") or []
    if len(from_fields) != 1:
        return f"{len(from_fields)} From fields"
    addresses: Sequence[Address] = getattr(from_fields[0], "addresses", ())
    if len(addresses) != 1 or not addresses[0].addr_spec or "@" not in addresses[0].addr_spec:
        return "From must hold exactly one address"
    sender = str(addresses[0].addr_spec).lower()
    names = _certificate_addresses(signer)
    if sender not in names:
        return f"From <{sender}> is not among the certificate's addresses {sorted(names)}"
    return None


def _certificate_addresses(cert: x509.Certificate) -> set[str]:
    # RFC 8550 §3: the address lives in subjectAltName rfc822Name; the legacy emailAddress
    # attribute of the subject is not consulted, since a CA does not vouch for it the same way.
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {name.lower() for name in san.get_values_for_type(x509.RFC822Name)}


def _fail(reason: FailureReason, detail: str) -> SignatureVerdict:
    return SignatureVerdict(ok=False, reason=reason, detail=detail)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _crl_der(crl: bytes) -> bytes:
    if crl.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(crl).public_bytes(serialization.Encoding.DER)
    return crl
