"""Verify an S/MIME signed message: integrity, signature, trust, and who may send it.

The CMS and X.509 work is pyHanko's generic CMS validator (`pyhanko.sign.validation.
generic_cms`) with pyhanko-certvalidator for path building, validity and CRLs; this module
finds the signed bytes in the MIME structure, runs the validator's steps, and turns their
outcome into a `SignatureVerdict` whose reason maps to one SMTP reply. The order of the checks
(integrity, then signature, then certificate, then sender identity) decides which reason a
message that fails several checks gets: see docs/smime.md.

The steps are those of pyHanko's `cms_basic_validation`, called one by one so that the
certificate path validation, the expensive part and the only one that does not depend on the
message, can be answered by `mssgate.smime.pathcache` for a signer validated a moment ago.
Every other check runs on every message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from typing import Any, Literal, TypeVar, cast

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
    DisallowedAlgorithmError,
    SignatureValidationError,
)
from pyhanko.sign.validation.generic_cms import (
    # The algorithm ban cms_basic_validation applies. Private, but pyHanko is pinned to
    # 0.38.x, where it is exactly what the public validator calls.
    _enforce_algorithm_usage,
    extract_certs_for_validation,
    extract_self_reported_ts,
    validate_cert_usage,
    validate_sig_integrity,
)
from pyhanko.sign.validation.settings import (
    KeyUsageConstraints,
)
from pyhanko.sign.validation.status import SignatureStatus
from pyhanko.sign.validation.utils import CMSAlgorithmUsagePolicy
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import (
    ExpiredError,
    InsufficientRevinfoError,
    InvalidCertificateError,
    NotYetValidError,
    PathBuildingError,
    RevokedError,
)
from pyhanko_certvalidator.path import ValidationPath
from pyhanko_certvalidator.policy_decl import DisallowWeakAlgorithmsPolicy
from pyhanko_certvalidator.util import get_pyca_cryptography_hash

from mssgate.smime.extract import MalformedSigned, NotSigned, SignedParts, extract_signed
from mssgate.smime.pathcache import PATH_CACHE, CrlFacts, PathKey, crl_facts
from mssgate.smime.verdict import FailureReason, SignatureVerdict

logger = logging.getLogger(__name__)

RevocationMode = Literal["soft-fail", "hard-fail", "require"]

KEY_USAGE = frozenset({"digital_signature"})
EXTENDED_KEY_USAGE = frozenset({"email_protection"})

# What pyHanko's generic CMS validator applies when given these constraints and a default
# ValidationContext: SignatureStatus's defaults merged in, and the context's algorithm policy
# (weak digests banned) lifted to a CMS policy.
_USAGE = SignatureStatus.default_usage_constraints(
    KeyUsageConstraints(key_usage=set(KEY_USAGE), extd_key_usage=set(EXTENDED_KEY_USAGE))
)
_USAGE_TAG = repr(_USAGE)
_ALGORITHMS = CMSAlgorithmUsagePolicy.lift_policy(
    DisallowWeakAlgorithmsPolicy()  # type: ignore[no-untyped-call]
)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Policy:
    trust_anchors: tuple[x509.Certificate, ...]
    registered: frozenset[str] | None
    crls: tuple[CrlFacts, ...]
    ocsps: tuple[bytes, ...]
    intermediates: tuple[x509.Certificate, ...]
    moment: dt.datetime | None
    revocation_mode: RevocationMode

    def context(self) -> ValidationContext:
        # A fresh context per use: pyhanko-certvalidator caches paths and revocation results
        # in it, and a second pass must not reuse what the first one concluded.
        return ValidationContext(
            trust_roots=[asn1_x509.Certificate.load(_der(cert)) for cert in self.trust_anchors],
            other_certs=[asn1_x509.Certificate.load(_der(cert)) for cert in self.intermediates],
            crls=[crl.der for crl in self.crls],
            ocsps=list(self.ocsps),
            allow_fetching=False,
            moment=self.moment,
            revocation_mode=self.revocation_mode,
        )

    def now(self) -> dt.datetime:
        return self.moment if self.moment is not None else dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class _Intact:
    """A message whose signature verified over its content, its signer's trust still open."""

    parts: SignedParts
    about: _Signer
    signer_asn1: asn1_x509.Certificate
    cert_info: SignedDataCerts
    content: bytes
    # The AdES indication when pyHanko's algorithm policy bans the digest or signature
    # algorithm: the certificate is still checked first, as pyHanko's own validator does.
    algorithm_problem: AdESIndeterminate | None


TrustProblem = tuple[FailureReason, str] | None


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
    loop (a path validation then runs on a private loop in a worker thread). When the signer's
    certificate path is in the path cache no event loop is involved at all.
    """
    policy = _policy(
        trust_anchors, registered, crls, moment, ocsp_responses, intermediates, revocation_mode
    )
    intact = _check_signature(raw, policy)
    if isinstance(intact, SignatureVerdict):
        return intact
    key, known = _cache_lookup(intact, policy)
    if known:
        problem: TrustProblem = None
    else:
        try:
            problem = _run_coroutine(lambda: _trust_problem(intact, key, policy))
        except Exception as exc:  # asn1crypto parses lazily: a broken field may raise anywhere
            return _unreadable(exc)
    return _conclude(intact, problem, policy)


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

    A successful path validation is remembered for a few minutes (`mssgate.smime.pathcache`,
    docs/smime.md): the signature, signing time, sender and registration are checked on every
    message, the certificate path only when its inputs or the time call for it.
    """
    policy = _policy(
        trust_anchors, registered, crls, moment, ocsp_responses, intermediates, revocation_mode
    )
    intact = _check_signature(raw, policy)
    if isinstance(intact, SignatureVerdict):
        return intact
    key, known = _cache_lookup(intact, policy)
    if known:
        problem: TrustProblem = None
    else:
        try:
            problem = await _trust_problem(intact, key, policy)
        except Exception as exc:  # asn1crypto parses lazily: a broken field may raise anywhere
            return _unreadable(exc)
    return _conclude(intact, problem, policy)


def _policy(
    trust_anchors: Sequence[x509.Certificate],
    registered: Sequence[x509.Certificate] | None,
    crls: Sequence[bytes],
    moment: dt.datetime | None,
    ocsp_responses: Sequence[bytes],
    intermediates: Sequence[x509.Certificate],
    revocation_mode: RevocationMode | None,
) -> _Policy:
    if moment is not None and moment.utcoffset() is None:
        raise ValueError("moment must be timezone-aware")
    return _Policy(
        trust_anchors=tuple(trust_anchors),
        registered=(None if registered is None else frozenset(_fingerprint(c) for c in registered)),
        crls=tuple(crl_facts(crl) for crl in crls),
        ocsps=tuple(ocsp_responses),
        intermediates=tuple(intermediates),
        moment=moment,
        revocation_mode=revocation_mode or ("require" if crls or ocsp_responses else "hard-fail"),
    )


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    # asyncio.run refuses to nest in a running loop, and blocking that loop's thread on it
    # would deadlock: a private loop in a worker thread does the work instead.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _unreadable(exc: Exception) -> SignatureVerdict:
    logger.info("S/MIME verification failed on malformed input", exc_info=exc)
    return _fail(FailureReason.MALFORMED, f"unreadable CMS structure: {exc!r}")


def _check_signature(raw: bytes, policy: _Policy) -> SignatureVerdict | _Intact:
    """Steps 1-5 of docs/smime.md, for every message: shape, CMS, digest, signature value."""
    try:
        parts = extract_signed(raw)
    except NotSigned as exc:
        return _fail(FailureReason.UNSIGNED, str(exc))
    except MalformedSigned as exc:
        return _fail(FailureReason.MALFORMED, str(exc))
    except Exception as exc:  # the stdlib parser on hostile input: nothing may escape
        return _fail(FailureReason.MALFORMED, f"unreadable MIME structure: {exc!r}")
    try:
        return _check_cms(parts, policy)
    except Exception as exc:  # asn1crypto parses lazily: a broken field may raise anywhere
        return _unreadable(exc)


def _check_cms(parts: SignedParts, policy: _Policy) -> SignatureVerdict | _Intact:
    try:
        content_info = cms.ContentInfo.load(parts.cms_der, strict=True)
        if content_info["content_type"].native != "signed_data":
            return _fail(FailureReason.UNSIGNED, "the CMS object is not SignedData")
        signed_data = content_info["content"]
        signer_info = extract_signer_info(signed_data)
        # Also checks the ESS signingCertificate(V2) attribute against the certificate.
        cert_info: SignedDataCerts = extract_certs_for_validation(signed_data)
    except (ValueError, SignatureValidationError) as exc:
        return _fail(FailureReason.MALFORMED, f"CMS SignedData unusable: {exc}")

    signer_asn1: asn1_x509.Certificate = cert_info.signer_cert
    signer = x509.load_der_x509_certificate(signer_asn1.dump())
    signing_time = extract_self_reported_ts(signer_info)
    about = _Signer(signer, signing_time)

    # From here on this is pyHanko's cms_basic_validation up to (not including) the trust
    # check, which _trust_problem does, or the path cache answers for.
    encap = signed_data["encap_content_info"]
    encapsulated = encap["content"].native
    md_algorithm = signer_info["digest_algorithm"]["algorithm"].native
    if parts.detached_content is not None:
        if encapsulated is not None:
            return about.fail(FailureReason.MALFORMED, "detached signature with content inside")
        content = parts.detached_content
        to_digest = content
    else:
        if not isinstance(encapsulated, bytes):
            return about.fail(FailureReason.MALFORMED, "opaque signature without content")
        content = encapsulated
        to_digest = bytes(encap["content"])
    digest = hashes.Hash(get_pyca_cryptography_hash(md_algorithm))
    digest.update(to_digest)
    raw_digest = digest.finalize()

    algorithm_problem: AdESIndeterminate | None = None
    try:
        _enforce_algorithm_usage(
            signer_info, signer_asn1, algorithm_usage_policy=_ALGORITHMS, time_indic=policy.now()
        )
    except DisallowedAlgorithmError as exc:
        logger.info("S/MIME signature uses a disallowed algorithm: %s", exc)
        algorithm_problem = cast(AdESIndeterminate, exc.ades_subindication)
    # Digest against messageDigest, contentType, CMSAlgorithmProtection, ESS signing
    # certificate, and the signature value over the signed attributes: all pyHanko's.
    intact, valid = validate_sig_integrity(
        signer_info,
        signer_asn1,
        expected_content_type=encap["content_type"].native,
        actual_digest=raw_digest,
    )
    if not intact:
        return about.fail(FailureReason.TAMPERED, "content digest differs from messageDigest")
    if not valid:
        return about.fail(FailureReason.BAD_SIGNATURE, "signature value does not verify")
    return _Intact(parts, about, signer_asn1, cert_info, content, algorithm_problem)


def _cache_lookup(intact: _Intact, policy: _Policy) -> tuple[PathKey | None, bool]:
    """(the cache key, or None when this validation must not be cached; whether the cache
    says the path is valid now)."""
    try:
        key = _path_key(intact, policy)
        known = (
            key is not None
            and intact.algorithm_problem is None
            and _known_valid(intact, key, policy)
        )
    except Exception as exc:  # on doubt, no cache: the full validation decides
        logger.info("S/MIME path cache not usable for this message", exc_info=exc)
        return None, False
    return key, known


def _path_key(intact: _Intact, policy: _Policy) -> PathKey | None:
    """The cache key of this message's path validation; None when it must not be cached."""
    if policy.ocsps or not all(crl.parsed and crl.next_update for crl in policy.crls):
        # OCSP responses and CRLs without nextUpdate have freshness rules this cache does not
        # model: such validations always run in full.
        return None
    return PathKey(
        signer=_sha256(intact.signer_asn1.dump()),
        supplied=tuple(_sha256(cert.dump()) for cert in intact.cert_info.other_certs),
        intermediates=tuple(cert.fingerprint(hashes.SHA256()) for cert in policy.intermediates),
        anchors=tuple(cert.fingerprint(hashes.SHA256()) for cert in policy.trust_anchors),
        crls=tuple(crl.digest for crl in policy.crls),
        revocation_mode=policy.revocation_mode,
        point_in_time=policy.moment is not None,
        usage=_USAGE_TAG,
    )


def _known_valid(intact: _Intact, key: PathKey, policy: _Policy) -> bool:
    now = policy.now()
    signer = intact.about.certificate
    # The cache's window already ends at the certificate's notAfter; checking the signer's
    # validity at this moment again costs nothing and does not depend on that reasoning.
    if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
        return False
    return PATH_CACHE.valid_at(key, now)


async def _trust_problem(intact: _Intact, key: PathKey | None, policy: _Policy) -> TrustProblem:
    """Step 6: path validation, revocation, key usage, by pyHanko's own routine."""
    if intact.algorithm_problem is not None:
        # pyHanko skips the path validation then; the classification below runs it.
        return await _classify_trust_failure(
            intact.signer_asn1, intact.cert_info, policy, intact.algorithm_problem
        )
    context = policy.context()
    indication: AdESIndeterminate | None
    path: ValidationPath | None = None
    try:
        context.certificate_registry.register_multiple(intact.cert_info.other_certs)
        result = await validate_cert_usage(
            intact.signer_asn1,
            context,
            key_usage_settings=_USAGE,
            paths=context.path_builder.async_build_paths_lazy(intact.signer_asn1),
        )
        indication, path = result.error_subindic, result.success_result
    except ValueError as exc:  # what pyHanko's cms_basic_validation does with these
        logger.error("Processing error in validation process", exc_info=exc)
        indication = AdESIndeterminate.CERTIFICATE_CHAIN_GENERAL_FAILURE
    if indication is None and path is not None:
        if key is not None:
            _remember(key, path, policy)
        return None
    return await _classify_trust_failure(
        intact.signer_asn1,
        intact.cert_info,
        policy,
        indication or AdESIndeterminate.CERTIFICATE_CHAIN_GENERAL_FAILURE,
    )


def _remember(key: PathKey, path: ValidationPath, policy: _Policy) -> None:
    # Taken after the validation: with moment=None pyhanko-certvalidator read the clock during
    # it, and a cached answer must not serve a time earlier than the one it was computed for.
    validated_at = policy.now()
    bounds = [cert.not_valid_after for cert in path.iter_certs(include_root=True)]
    for crl in policy.crls:
        bound = crl.valid_until(validated_at)
        if bound is None:
            return
        bounds.append(bound)
    PATH_CACHE.remember(
        key, validated_at=validated_at, valid_until=min(bounds, default=validated_at)
    )


def _conclude(intact: _Intact, problem: TrustProblem, policy: _Policy) -> SignatureVerdict:
    """Steps 6 (outcome) to 9, for every message: signing time, sender, registration."""
    try:
        return _sender_checks(intact, problem, policy)
    except Exception as exc:  # cryptography parses names lazily, the stdlib parses headers
        return _unreadable(exc)


def _sender_checks(intact: _Intact, problem: TrustProblem, policy: _Policy) -> SignatureVerdict:
    about = intact.about
    if problem is not None:
        return about.fail(*problem)
    signer = about.certificate
    time_problem = _signing_time_problem(signer, about.signing_time)
    if time_problem is not None:
        return about.fail(*time_problem)

    address_problem = _address_problem(intact.parts, signer)
    if address_problem is not None:
        return about.fail(FailureReason.ADDRESS_MISMATCH, address_problem)

    if policy.registered is not None and _fingerprint(signer) not in policy.registered:
        return about.fail(FailureReason.NOT_REGISTERED, "certificate not in the directory")

    return about.passed(intact.content)


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
        if _stale_crl_on_path(signer, cert_info, policy):
            return FailureReason.REVOCATION_STALE, f"CRL past its nextUpdate: {exc.failure_msg}"
        return FailureReason.UNTRUSTED_CHAIN, f"revocation status unknown: {exc.failure_msg}"
    except Exception as exc:  # any other path validation error: the chain cannot be trusted
        return FailureReason.UNTRUSTED_CHAIN, f"path validation: {exc!r}"
    return _from_indication(indication)


def _stale_crl_on_path(
    signer: asn1_x509.Certificate, cert_info: SignedDataCerts, policy: _Policy
) -> bool:
    """Whether a CRL we hold for an authority the signer's path may run through (the issuer
    of the signer, of a certificate it supplied, or of a known intermediate) is past its
    nextUpdate: then the status is unknown for want of a fresh list, which is temporary."""
    issuers = {signer.issuer.dump()}
    issuers.update(cert.issuer.dump() for cert in cert_info.other_certs)
    issuers.update(cert.issuer.public_bytes() for cert in policy.intermediates)
    now = policy.now()
    return any(crl.issuer in issuers and crl.stale_at(now) for crl in policy.crls)


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


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
