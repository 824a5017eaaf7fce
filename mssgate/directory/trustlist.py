"""The national MSSanté trust list ("liste blanche"): read it, check its signature, apply it.

What is known of the format (no official schema could be read; see docs/operator-guide.md):
the ANS publishes one XML file, elements in the namespace `https://listeblanche.mssante.fr/schema`,
a `DateDeGeneration`, then one `Domaine` per operator domain holding `Nom` (the mail domain),
`Description`, `DNCertificatOperateur` (subject DN of the operator's gateway certificate),
`ResponsableContact`, `SupportContact` and `DateMAJ`; the file is signed with an enveloped
XML-DSig signature by an IGC-Santé certificate. Elements are matched by local name, so the
same list without a namespace reads the same.

Safety: the bytes go through `parse_xml` first (no DOCTYPE, no entities, no network, size
cap); the signature is then checked by signxml against our CA bundle, and the domains are
read from the XML that signxml returns as signed ("see what is signed"), never from the
file as parsed before the check, so nothing outside the signature's reach is believed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from lxml import etree
from pydantic import BaseModel
from signxml.exceptions import (
    InvalidCertificate,
    InvalidDigest,
    InvalidInput,
    InvalidSignature,
    SignXMLException,
)
from signxml.verifier import SignatureConfiguration, XMLVerifier
from sqlalchemy import Engine

from mssgate import audit
from mssgate.db.tx import write
from mssgate.directory.domains import Domains, parse_relay
from mssgate.directory.models import DomainKind
from mssgate.documents.errors import DocumentError
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.xml import local_name, parse_xml
from mssgate.errors import MssgateError, UsageFailed, ValidationFailed
from mssgate.identifiers import normalize_domain

NAMESPACE: Final = "https://listeblanche.mssante.fr/schema"
DSIG_NS: Final = "http://www.w3.org/2000/09/xmldsig#"
DEFAULT_RELAY: Final = "mx.{domain}:25"
# The national list holds some ten thousand domains; a hundred times that is still a list.
MAX_LIST_BYTES: Final = 64 * 1024 * 1024


class TrustListRefused(MssgateError):
    """The trust list is unsigned, badly signed, malformed or empty: nothing was changed."""


@dataclass(frozen=True)
class TrustListEntry:
    name: str
    operator_dn: str | None = None
    description: str | None = None
    responsible_contact: str | None = None
    support_contact: str | None = None
    updated: str | None = None


@dataclass(frozen=True)
class TrustList:
    entries: tuple[TrustListEntry, ...]
    generated: str | None = None
    signer: str | None = None  # subject DN of the signing certificate; None if unsigned
    rejected: tuple[tuple[str, str], ...] = ()  # (Nom as written, reason)


class Skipped(BaseModel):
    name: str
    reason: str


class ImportReport(BaseModel):
    """What `mssgate domain import-trust-list --json` prints."""

    signed: bool
    signer: str | None
    generated: str | None
    added: list[str]
    removed: list[str]
    updated: list[str]
    unchanged: list[str]
    skipped: list[Skipped]


def _text(parent: etree._Element, name: str) -> str | None:
    for child in parent:
        if local_name(child) == name:
            value = (child.text or "").strip()
            return value or None
    return None


def _signatures(root: etree._Element) -> list[etree._Element]:
    return list(root.iter(f"{{{DSIG_NS}}}Signature"))


def _hardened_parser() -> etree.XMLParser:
    # Comments and PIs are kept (unlike parse_xml's parser): canonicalization must see the
    # document exactly as it was signed.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _signer_subject(signature: etree._Element, key_pem: bytes) -> str | None:
    for element in signature.iter(f"{{{DSIG_NS}}}X509Certificate"):
        der = base64.b64decode("".join((element.text or "").split()))
        cert = x509.load_der_x509_certificate(der)
        pem = cert.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        if pem.strip() == key_pem.strip():
            return cert.subject.rfc4514_string()
    return None


def _verify(data: bytes, ca_file: Path, signer_cn: str | None) -> tuple[etree._Element, str]:
    try:
        result = XMLVerifier().verify(
            data,
            ca_pem_file=str(ca_file),
            cert_subject_name=signer_cn,
            parser=_hardened_parser(),
            # Enveloped, as a child of the root, over the whole document (one reference).
            expect_config=SignatureConfiguration(location="./", expect_references=1),
        )
    except InvalidCertificate as exc:
        raise TrustListRefused(
            f"the trust list's signing certificate is not trusted by {ca_file.name}: {exc}"
        ) from None
    except (InvalidSignature, InvalidDigest) as exc:
        raise TrustListRefused(f"the trust list's signature does not verify: {exc}") from None
    except InvalidInput as exc:
        raise TrustListRefused(f"the trust list's signature cannot be checked: {exc}") from None
    except (SignXMLException, ValueError, etree.LxmlError) as exc:
        raise TrustListRefused(f"the trust list's signature cannot be checked: {exc}") from None
    assert not isinstance(result, list)  # expect_references=1
    references = result.signature_xml.findall(f"{{{DSIG_NS}}}SignedInfo/{{{DSIG_NS}}}Reference")
    signed = result.signed_xml
    if len(references) != 1 or references[0].get("URI") != "" or signed is None:
        # Only URI="" covers the whole document (minus the signature); a reference to one
        # element would leave the rest of the file unauthenticated.
        raise TrustListRefused("the trust list's signature does not cover the whole list")
    signer = _signer_subject(result.signature_xml, result.signature_key) or "(unknown)"
    return signed, signer


def read_trust_list(
    data: bytes,
    *,
    ca_file: Path | None,
    allow_unsigned: bool = False,
    signer_cn: str | None = None,
) -> TrustList:
    """Parses and authenticates a trust list; raises TrustListRefused when it cannot be used.

    A list without a signature is refused unless `allow_unsigned`; a list with a signature
    that does not verify is always refused (it was altered, or signed by someone else).
    """
    limits = DocumentLimits(max_xml_bytes=MAX_LIST_BYTES)
    try:
        root = parse_xml(data, limits, what="the trust list")
    except DocumentError as exc:
        raise TrustListRefused(str(exc)) from None
    signatures = _signatures(root)
    signer: str | None = None
    if len(signatures) > 1:
        raise TrustListRefused("the trust list carries more than one signature")
    if signatures:
        if ca_file is None or not ca_file.is_file():
            raise TrustListRefused(f"no CA bundle to check the trust list's signature: {ca_file}")
        root, signer = _verify(data, ca_file, signer_cn)
    elif not allow_unsigned:
        raise TrustListRefused("the trust list is not signed (use --allow-unsigned to accept it)")

    entries: dict[str, TrustListEntry] = {}
    rejected: list[tuple[str, str]] = []
    for element in root.iter():
        if local_name(element) != "Domaine":
            continue
        raw_name = _text(element, "Nom") or ""
        try:
            name = normalize_domain(raw_name)
        except ValidationFailed as exc:
            rejected.append((raw_name[:253], str(exc)))
            continue
        entries.setdefault(
            name,
            TrustListEntry(
                name=name,
                operator_dn=_text(element, "DNCertificatOperateur"),
                description=_text(element, "Description"),
                responsible_contact=_text(element, "ResponsableContact"),
                support_contact=_text(element, "SupportContact"),
                updated=_text(element, "DateMAJ"),
            ),
        )
    if not entries:
        # Applying an empty list would untrust every peer at once.
        raise TrustListRefused("the trust list names no valid domain")
    return TrustList(
        entries=tuple(sorted(entries.values(), key=lambda e: e.name)),
        generated=_text(root, "DateDeGeneration"),
        signer=signer,
        rejected=tuple(rejected),
    )


@dataclass
class _Plan:
    add: list[TrustListEntry] = field(default_factory=list)
    update: list[TrustListEntry] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _plan(domains: Domains, trust_list: TrustList) -> _Plan:
    plan = _Plan()
    current = {d.name: d for d in domains.list()}
    listed = {e.name for e in trust_list.entries}
    for entry in trust_list.entries:
        known = current.get(entry.name)
        if known is None:
            plan.add.append(entry)
        elif known.kind is DomainKind.LOCAL:
            # Our own domains are on the national list too; they stay local.
            plan.skipped.append(Skipped(name=entry.name, reason="local domain"))
        elif known.operator_dn != entry.operator_dn:
            plan.update.append(entry)
        else:
            plan.unchanged.append(entry.name)
    plan.remove = sorted(
        name for name, d in current.items() if d.kind is DomainKind.TRUSTED and name not in listed
    )
    plan.skipped += [Skipped(name=n, reason=r) for n, r in trust_list.rejected]
    return plan


def apply_trust_list(
    engine: Engine,
    trust_list: TrustList,
    *,
    actor: str,
    relay_template: str = DEFAULT_RELAY,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Makes the trusted domains equal to the list's; each change is audited on its own.

    New domains get the relay `relay_template` (the list carries none); a domain already
    trusted keeps its relay and CA, and only its operator DN follows the list. Re-running
    with the same list changes nothing.
    """
    domains = Domains(engine, actor=actor)
    plan = _plan(domains, trust_list)
    total = len(plan.add) + len(plan.update) + len(plan.remove)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    added: list[str] = []
    for entry in plan.add:
        relay = relay_template.format(domain=entry.name)
        domains.trust(entry.name, relay=relay, ca=None, operator_dn=entry.operator_dn)
        added.append(entry.name)
        step()
    updated: list[str] = []
    for entry in plan.update:
        existing = domains.get(entry.name)
        ca_pem = domains.peer_ca_pem(entry.name)
        # The whole stored bundle: the first certificate alone would drop its intermediates.
        ca = x509.load_pem_x509_certificates(ca_pem.encode()) if ca_pem else None
        domains.trust(
            entry.name,
            relay=f"{existing.relay_host}:{existing.relay_port}",
            ca=ca,
            operator_dn=entry.operator_dn,
        )
        updated.append(entry.name)
        step()
    for name in plan.remove:
        domains.untrust(name)
        step()
    report = ImportReport(
        signed=trust_list.signer is not None,
        signer=trust_list.signer,
        generated=trust_list.generated,
        added=added,
        removed=plan.remove,
        updated=updated,
        unchanged=plan.unchanged,
        skipped=plan.skipped,
    )
    detail: dict[str, Any] = {
        "signer": report.signer,
        "generated": report.generated,
        "added": len(added),
        "removed": len(plan.remove),
        "updated": len(updated),
        "unchanged": len(plan.unchanged),
    }
    with write(engine) as conn:
        audit.append(
            conn,
            actor=actor,
            action="domain.import_trust_list",
            subject="trust-list",
            detail=detail,
        )
    return report


def check_relay_template(template: str) -> str:
    """Refuses a --relay template that would not give HOST:PORT for a domain."""
    try:
        parse_relay(template.format(domain="example.test"))
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageFailed(
            f"--relay: invalid relay template {template!r}: expected e.g. {DEFAULT_RELAY!r} ({exc})"
        ) from None
    return template
