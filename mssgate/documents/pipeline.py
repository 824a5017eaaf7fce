"""The document pipeline: bytes of a verified, decrypted message in, per-document outcomes out.

What counts as a document:
- each DocumentEntry of an `IHE_XDM.ZIP` (a CDA, a PDF, or anything else such as a DICOM
  KOS, which becomes format `xdm`); XDS signature manifests are skipped;
- each CDA attached directly;
- PDFs attached next to structured documents are their human-readable companions: checked
  (readable, and any labelled INS must be the documents' INS) but not separate documents;
- PDFs are documents of their own only in a message without XDM or CDA.

Every failure is typed and ends as a `Quarantined` outcome keeping the original bytes; no
exception other than programming errors leaves `process_message`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from mssgate.documents.budget import BudgetExceeded, charge_document, message_budget
from mssgate.documents.cda import CdaDocument, format_identifier, is_cda, parse_cda
from mssgate.documents.errors import DocumentError, QuarantineCode
from mssgate.documents.hl7values import CX, hl7_ts_to_iso
from mssgate.documents.imaging import (
    ImagingPointers,
    imaging_from_references,
    imaging_refs,
    merge_pointers,
)
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.mime import Attachment, MimeWalk, walk_message
from mssgate.documents.pdf import PdfInfo, looks_like_pdf, read_pdf
from mssgate.documents.reconcile import (
    IdentityClaim,
    IdentityProblem,
    ResolvedIdentity,
    reconcile,
)
from mssgate.documents.record import (
    Accepted,
    DocumentInfo,
    DocumentRecord,
    InsRecord,
    PatientRecord,
    PipelineResult,
    Quarantined,
    quarantine,
    sha256_hex,
)
from mssgate.documents.xdm import XdmEntry, XdmPackage, XdmSubmission, is_xdm_attachment, read_xdm
from mssgate.ins import INS_OIDS

_XML_TYPES: Final = frozenset({"text/xml", "application/xml", "application/hl7-cda+xml"})
_DEFAULT_LIMITS: Final = DocumentLimits()
# Names of missing XDM documents given in the reason of the one entry that holds them.
_NAMED_MISSING: Final = 5


@dataclass(frozen=True)
class _Policy:
    limits: DocumentLimits
    allow_test_oids: bool
    require_birthplace: bool
    # The PDFs read for this message, by SHA-256: the same PDF embedded in an N1 and
    # attached beside it as its companion (or carried twice) is parsed once.
    pdf_reads: dict[bytes, PdfInfo | DocumentError] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class _Evaluated:
    outcome: Accepted | Quarantined
    # Set for CDA documents found inside an IHE_XDM (X-MSS-CODECDA / X-MSS-INS).
    xdm_cda_code: str | None = None
    xdm_qualified: bool = False


def process_message(
    raw: bytes,
    *,
    limits: DocumentLimits = _DEFAULT_LIMITS,
    allow_test_oids: bool = False,
    require_birthplace: bool = True,
) -> PipelineResult:
    """Extract, check and reconcile every document of one message.

    `allow_test_oids` accepts INS issued under the test/demo OIDs (fictitious patients).
    `require_birthplace` makes the birthplace code a required strict trait (else 905).
    """
    policy = _Policy(limits, allow_test_oids, require_birthplace)
    try:
        walk = walk_message(raw, limits)
    except DocumentError as exc:
        return hold_message(raw, exc.code, str(exc))
    try:
        with message_budget(limits) as budget:
            budget.charge_bytes(sum(len(a.data) for a in walk.attachments), "its MIME parts")
            return _process_walk(walk, policy)
    except BudgetExceeded as exc:
        # Every part is dropped from memory and the message is held as one entry: holding
        # the parts one by one is what let such a message fill the database.
        return hold_message(raw, QuarantineCode.OTHER, str(exc))


def hold_message(raw: bytes, code: QuarantineCode, reason: str) -> PipelineResult:
    """The whole message held as one quarantine entry (it cannot be taken apart safely)."""
    held = quarantine(code, reason, raw, content_type="message/rfc822", origin="message")
    return PipelineResult(outcomes=(held,), defects=(reason,))


def _process_walk(walk: MimeWalk, policy: _Policy) -> PipelineResult:
    evaluated: list[_Evaluated] = []
    companions: list[Attachment] = []
    structured = False
    for attachment in walk.attachments:
        if is_xdm_attachment(attachment.filename):
            structured = True
            evaluated.extend(_process_xdm(attachment, policy))
        elif _is_pdf_attachment(attachment):
            companions.append(attachment)
        elif _is_cda_attachment(attachment):
            structured = True
            charge_document()
            evaluated.append(_process_cda(attachment.data, attachment, policy))
    outcomes = [e.outcome for e in evaluated]
    if structured:
        outcomes = _check_companions(outcomes, companions, policy)
    else:
        for pdf in companions:
            charge_document()
            outcomes.append(_process_pdf(pdf.data, pdf.content_type, pdf.origin, (), policy))
    return PipelineResult(
        outcomes=tuple(outcomes),
        defects=walk.defects,
        message_id=walk.message_id,
        subject=walk.subject,
        xdm_cda_codes=tuple(e.xdm_cda_code for e in evaluated if e.xdm_cda_code),
        xdm_qualified_ins=any(e.xdm_qualified for e in evaluated),
    )


def _is_pdf_attachment(attachment: Attachment) -> bool:
    name = (attachment.filename or "").lower()
    return (
        attachment.content_type == "application/pdf"
        or name.endswith(".pdf")
        or (
            attachment.content_type == "application/octet-stream"
            and looks_like_pdf(attachment.data)
        )
    )


def _is_cda_attachment(attachment: Attachment) -> bool:
    name = (attachment.filename or "").lower()
    xml_like = (
        attachment.content_type in _XML_TYPES
        or name.endswith(".xml")
        or attachment.content_type == "application/octet-stream"
    )
    return xml_like and is_cda(attachment.data)


# -- XDM ---------------------------------------------------------------------------------


def _process_xdm(attachment: Attachment, policy: _Policy) -> list[_Evaluated]:
    try:
        package = read_xdm(attachment.data, policy.limits)
    except DocumentError as exc:
        return [_held_container(exc, attachment)]
    entries = [e for s in package.submissions for e in s.entries if not e.is_signature]
    if len(entries) > policy.limits.max_documents:
        return [
            _Evaluated(
                quarantine(
                    QuarantineCode.OTHER,
                    "archive lists more documents than allowed",
                    attachment.data,
                    content_type=attachment.content_type,
                    origin=attachment.origin,
                )
            )
        ]
    results: list[_Evaluated] = []
    missing: list[XdmEntry] = []
    for submission in package.submissions:
        for entry in submission.entries:
            if entry.is_signature:
                continue
            charge_document()
            if package.document_bytes(entry) is None:
                missing.append(entry)
                continue
            results.append(_process_xdm_entry(package, submission, entry, attachment, policy))
    if missing:
        results.append(_missing_documents(missing, attachment))
    return results


def _missing_documents(missing: list[XdmEntry], attachment: Attachment) -> _Evaluated:
    """The documents an XDM lists and does not carry, held as ONE entry keeping the archive:
    one entry each, each with the whole archive as its content, multiplied the archive in
    the database by the number of names its metadata lists."""
    names = [e.member_name or e.uri or e.entry_id or "?" for e in missing[:_NAMED_MISSING]]
    more = f" and {len(missing) - _NAMED_MISSING} more" if len(missing) > _NAMED_MISSING else ""
    what = (
        "1 document listed in XDM metadata is missing from the archive"
        if len(missing) == 1
        else f"{len(missing)} documents listed in XDM metadata are missing from the archive"
    )
    return _Evaluated(
        quarantine(
            QuarantineCode.OTHER,
            f"{what} ({', '.join(names)}{more})"[:500],
            attachment.data,
            content_type=attachment.content_type,
            origin=attachment.origin,
            document=_xdm_info(missing[0], fmt="xdm") if len(missing) == 1 else None,
        )
    )


def _xdm_claim(submission: XdmSubmission, entry: XdmEntry) -> list[IdentityClaim]:
    """The XDM's word on the patient: entry and submission set patientId, sourcePatientInfo.

    Both patientIds are INS only under an INS OID (an XDM may carry a local id instead);
    two different INS there is already a disagreement.
    """
    traits = entry.source_patient
    ids: list[CX] = [
        cx
        for cx in (entry.patient_id, submission.submission_patient_id, entry.source_patient_id)
        if cx is not None and cx.authority_oid in INS_OIDS
    ]
    if not ids:
        return [IdentityClaim(source="xdm", traits=traits)]
    claims = [
        IdentityClaim(source="xdm", ins_value=ids[0].value, oid=ids[0].authority_oid, traits=traits)
    ]
    claims.extend(
        IdentityClaim(source="xdm", ins_value=cx.value, oid=cx.authority_oid) for cx in ids[1:]
    )
    return claims


def _integrity_problem(entry: XdmEntry, data: bytes) -> str | None:
    if entry.size is not None and entry.size != len(data):
        return "document size differs from XDM metadata"
    if entry.hash:
        digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        if digest != entry.hash.strip().lower():
            return "document hash differs from XDM metadata"
    return None


def _process_xdm_entry(
    package: XdmPackage,
    submission: XdmSubmission,
    entry: XdmEntry,
    attachment: Attachment,
    policy: _Policy,
) -> _Evaluated:
    data = package.document_bytes(entry)
    assert data is not None  # the missing ones are held together by `_process_xdm`
    origin = f"{attachment.origin} > {entry.member_name or entry.uri or entry.entry_id}"
    content_type = entry.mime_type or "application/octet-stream"
    info = _xdm_info(entry, fmt="xdm")
    problem = _integrity_problem(entry, data)
    if problem is not None:
        return _Evaluated(
            quarantine(
                QuarantineCode.OTHER,
                problem,
                data,
                content_type=content_type,
                origin=origin,
                document=info,
            )
        )
    claims = _xdm_claim(submission, entry)
    references = imaging_from_references(entry.reference_ids)
    if is_cda(data):
        return _process_cda(data, attachment, policy, entry=entry, claims=claims, origin=origin)
    if content_type == "application/pdf" or looks_like_pdf(data):
        outcome = _process_pdf(
            data,
            "application/pdf",
            origin,
            claims,
            policy,
            base=_xdm_info(entry, fmt="pdf"),
            imaging=references,
        )
        return _Evaluated(outcome)
    return _Evaluated(_decide(data, content_type, origin, claims, info, references, policy))


def _xdm_info(entry: XdmEntry, *, fmt: str) -> DocumentInfo:
    author = next((a.rpps for a in entry.authors if a.rpps), None)
    return DocumentInfo.model_validate(
        {
            "format": fmt,
            "type_code": entry.type_code.code if entry.type_code else None,
            "type_code_system": entry.type_code.scheme if entry.type_code else None,
            "title": entry.title,
            "effective_time": hl7_ts_to_iso(entry.creation_time),
            "unique_id": entry.unique_id,
            "author_rpps": author,
            "confidentiality": tuple(c.code for c in entry.confidentiality),
            "class_code": entry.class_code.code if entry.class_code else None,
            "format_code": entry.format_code.code if entry.format_code else None,
            "withdrawn": entry.deprecated,
        }
    )


# -- CDA ---------------------------------------------------------------------------------


def _cda_claims(cda: CdaDocument) -> list[IdentityClaim]:
    header = cda.header
    ins_ids = [i for i in header.ins_ids if i.extension]
    if not ins_ids:
        return [IdentityClaim(source="cda", traits=header.traits)]
    claims = [
        IdentityClaim(
            source="cda", ins_value=ins_ids[0].extension, oid=ins_ids[0].root, traits=header.traits
        )
    ]
    claims.extend(
        IdentityClaim(source="cda", ins_value=i.extension, oid=i.root) for i in ins_ids[1:]
    )
    return claims


def _cda_info(cda: CdaDocument, entry: XdmEntry | None) -> DocumentInfo:
    header = cda.header
    confidentiality: tuple[str, ...] = (
        (header.confidentiality_code,) if header.confidentiality_code else ()
    )
    if entry is not None:
        confidentiality += tuple(
            c.code for c in entry.confidentiality if c.code not in confidentiality
        )
    return DocumentInfo(
        format=cda.format,
        type_code=header.code,
        type_code_system=header.code_system,
        title=header.title,
        effective_time=header.effective_time,
        unique_id=format_identifier(header.document_id),
        set_id=format_identifier(header.set_id),
        version=header.version,
        replaces=format_identifier(header.replaces[0]) if header.replaces else None,
        author_rpps=header.author_rpps[0] if header.author_rpps else None,
        custodian=format_identifier(header.custodian_id),
        custodian_name=header.custodian_name,
        confidentiality=confidentiality,
        class_code=entry.class_code.code if entry and entry.class_code else None,
        format_code=entry.format_code.code if entry and entry.format_code else None,
        sections=tuple(s.code for s in cda.sections if s.code),
        withdrawn=entry is not None and entry.deprecated,
    )


def _process_cda(
    data: bytes,
    attachment: Attachment,
    policy: _Policy,
    *,
    entry: XdmEntry | None = None,
    claims: Sequence[IdentityClaim] = (),
    origin: str | None = None,
) -> _Evaluated:
    where = origin or attachment.origin
    content_type = "text/xml"
    try:
        cda = parse_cda(data, policy.limits)
    except DocumentError as exc:
        info = _xdm_info(entry, fmt="xdm") if entry is not None else None
        return _Evaluated(
            quarantine(
                exc.code, str(exc), data, content_type=content_type, origin=where, document=info
            )
        )
    info = _cda_info(cda, entry)
    imaging = cda.imaging
    if entry is not None:
        imaging = merge_pointers(imaging, imaging_from_references(entry.reference_ids))
    all_claims = [*claims, *_cda_claims(cda)]
    notes: tuple[str, ...] = ()
    if cda.level == "N1" and cda.body_media_type == "application/pdf" and cda.body is not None:
        try:
            pdf = _read_pdf(cda.body, policy)
        except DocumentError as exc:
            return _Evaluated(
                quarantine(
                    exc.code,
                    f"embedded {exc}",
                    data,
                    content_type=content_type,
                    origin=where,
                    document=info,
                ),
                xdm_cda_code=info.type_code if entry is not None else None,
            )
        all_claims.extend(IdentityClaim(source="pdf", ins_value=v) for v in pdf.labelled_ins)
        info = info.model_copy(update={"pdf_metadata": pdf.metadata})
        notes = _pdf_notes(pdf, "embedded PDF")
    outcome = _decide(data, content_type, where, all_claims, info, imaging, policy, notes=notes)
    return _Evaluated(
        outcome,
        xdm_cda_code=info.type_code if entry is not None else None,
        xdm_qualified=entry is not None and _mss_qualified(all_claims, policy),
    )


def _mss_qualified(claims: Sequence[IdentityClaim], policy: _Policy) -> bool:
    """ECO.2.4.2's qualified INS: matricule, OID, birth name, first name, birth date, sex.

    Read from the claims, not from the outcome: a document held only for its missing
    birthplace (our stricter rule) still carries an INS qualified in MSSanté's sense, and the
    header describes the message, not our verdict on it.
    """
    verdict = reconcile(claims, allow_test_oids=policy.allow_test_oids, require_birthplace=False)
    return isinstance(verdict, ResolvedIdentity)


# -- PDF ---------------------------------------------------------------------------------


def _process_pdf(
    data: bytes,
    content_type: str,
    origin: str,
    claims: Sequence[IdentityClaim],
    policy: _Policy,
    *,
    base: DocumentInfo | None = None,
    imaging: ImagingPointers | None = None,
) -> Accepted | Quarantined:
    info = base or DocumentInfo(format="pdf")
    try:
        pdf = _read_pdf(data, policy)
    except DocumentError as exc:
        return quarantine(
            exc.code, str(exc), data, content_type=content_type, origin=origin, document=info
        )
    info = info.model_copy(
        update={"title": info.title or pdf.metadata.get("Title"), "pdf_metadata": pdf.metadata}
    )
    all_claims = [*claims, *(IdentityClaim(source="pdf", ins_value=v) for v in pdf.labelled_ins)]
    notes = _pdf_notes(pdf, "PDF")
    return _decide(
        data,
        content_type,
        origin,
        all_claims,
        info,
        imaging or ImagingPointers(),
        policy,
        notes=notes,
    )


def _read_pdf(data: bytes, policy: _Policy) -> PdfInfo:
    if not policy.limits.read_pdfs:
        return PdfInfo(page_count=0, pages_read=0, text="", metadata={}, encrypted=False,
                       labelled_ins=(), rejected_ins_candidates=0, truncated=False)  # fmt: skip
    key = hashlib.sha256(data).digest()
    read = policy.pdf_reads.get(key)
    if read is None:
        try:
            read = read_pdf(data, policy.limits)
        except DocumentError as exc:
            read = exc
        policy.pdf_reads[key] = read
    if isinstance(read, DocumentError):
        raise read
    return read


def _pdf_notes(pdf: PdfInfo, what: str) -> tuple[str, ...]:
    notes: list[str] = []
    if pdf.truncated:
        notes.append(f"{what} text truncated by limits")
    if pdf.ins_page is None and pdf.unread_pages > 0:
        # Its identity was looked for on the first pages only (a report prints it there):
        # a reader should know the rest was not compared with the documents'.
        notes.append(
            f"{what} text: no labelled INS on its first {pdf.pages_read} of"
            f" {pdf.page_count} pages; later pages not read"
        )
    if pdf.rejected_ins_candidates:
        # A labelled number whose key fails is never an identity, but may be a typo in the
        # human-readable copy that a reader should hear about. The value stays out of it.
        notes.append(
            f"{what} text: {pdf.rejected_ins_candidates} labelled INS candidate(s)"
            " ignored for a bad key"
        )
    return tuple(notes)


def _check_companions(
    outcomes: list[Accepted | Quarantined], companions: Sequence[Attachment], policy: _Policy
) -> list[Accepted | Quarantined]:
    """Companion PDFs must be readable and may not name another patient than the documents."""
    known = {o.record.ins.value for o in outcomes if isinstance(o, Accepted)}
    extra: list[Accepted | Quarantined] = []
    conflict = False
    notes: list[str] = []
    for pdf_attachment in companions:
        try:
            pdf = _read_pdf(pdf_attachment.data, policy)
        except DocumentError as exc:
            extra.append(
                quarantine(
                    exc.code,
                    str(exc),
                    pdf_attachment.data,
                    content_type=pdf_attachment.content_type,
                    origin=pdf_attachment.origin,
                )
            )
            continue
        notes.extend(_pdf_notes(pdf, "companion PDF"))
        if known and any(value not in known for value in pdf.labelled_ins):
            conflict = True
            extra.append(
                quarantine(
                    QuarantineCode.INS_MISMATCH,
                    "companion PDF names another INS",
                    pdf_attachment.data,
                    content_type=pdf_attachment.content_type,
                    origin=pdf_attachment.origin,
                )
            )
    if conflict:
        # The human-readable copy contradicts the structured documents: none can be trusted.
        outcomes = [
            quarantine(
                QuarantineCode.INS_MISMATCH,
                "INS differs between documents and companion PDF",
                o.content,
                content_type=o.record.content_type,
                origin=o.record.origin,
                document=o.record.document,
            )
            if isinstance(o, Accepted)
            else o
            for o in outcomes
        ]
    elif notes:
        outcomes = [
            _with_notes(o, tuple(notes)) if isinstance(o, Accepted) else o for o in outcomes
        ]
    return [*outcomes, *extra]


def _with_notes(outcome: Accepted, notes: tuple[str, ...]) -> Accepted:
    record = outcome.record.model_copy(update={"notes": (*outcome.record.notes, *notes)})
    return outcome.model_copy(update={"record": record})


# -- verdict -----------------------------------------------------------------------------


def _decide(
    data: bytes,
    content_type: str,
    origin: str,
    claims: Sequence[IdentityClaim],
    info: DocumentInfo,
    imaging: ImagingPointers,
    policy: _Policy,
    *,
    notes: tuple[str, ...] = (),
) -> Accepted | Quarantined:
    verdict: ResolvedIdentity | IdentityProblem = reconcile(
        claims,
        allow_test_oids=policy.allow_test_oids,
        require_birthplace=policy.require_birthplace,
    )
    if isinstance(verdict, IdentityProblem):
        return quarantine(
            verdict.code,
            verdict.reason,
            data,
            content_type=content_type,
            origin=origin,
            document=info,
        )
    traits = verdict.traits
    record = DocumentRecord(
        ins=InsRecord(
            value=verdict.ins.value,
            oid=verdict.ins.oid,
            kind=verdict.ins.kind,
            test=verdict.ins.test,
            qualified=verdict.qualified,
            source=verdict.source,
        ),
        patient=PatientRecord(**traits.model_dump()),
        document=info,
        imaging=imaging_refs(imaging),
        dicom_catalog=imaging.catalog,
        notes=notes,
        sha256=sha256_hex(data),
        size=len(data),
        content_type=content_type,
        origin=origin,
    )
    return Accepted(record=record, content=data)


def _held_container(exc: DocumentError, attachment: Attachment) -> _Evaluated:
    return _Evaluated(
        quarantine(
            exc.code,
            str(exc),
            attachment.data,
            content_type=attachment.content_type,
            origin=attachment.origin,
        )
    )
