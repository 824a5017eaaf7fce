"""CDA R2 documents of the French CI-SIS: header, patient identity, body level, sections.

N1 documents (non-structured) carry a base64 PDF in `component/nonXMLBody/text` and, by rule,
no profile templateId, so documents are classified by their LOINC `code`, never by templateId.
N3 documents have a `structuredBody` whose sections are listed with their codes and titles.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Final, Literal

from lxml import etree
from pydantic import BaseModel, ConfigDict

from mssgate.documents import budget
from mssgate.documents.errors import CdaError, LimitExceeded, TwoPatientsError
from mssgate.documents.hl7values import hl7_ts_to_iso
from mssgate.documents.imaging import HL7_NS, Identifier, ImagingPointers, imaging_from_cda
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.pdf import looks_like_pdf
from mssgate.documents.xml import local_name, parse_xml
from mssgate.ins import INS_OIDS, PatientTraits, hl7_date_to_iso, parse_sex

OID_RPPS: Final = "1.2.250.1.71.4.2.1"
LOINC_CR_IMG: Final = "18748-4"
TEMPLATE_DICOM_IMAGING_REPORT: Final = "1.2.840.10008.9.1"
# CR-IMG N3 sections with a role in imaging workflows (LOINC).
CR_IMG_SECTIONS: Final = {
    "55752-0": "clinical information",
    "55111-9": "procedure description",
    "59776-5": "findings",
    "18834-2": "comparison",
    "19005-8": "conclusions",
}
_NS: Final = {"h": HL7_NS}
_MAX_SECTIONS: Final = 500
# recordTarget elements described in the reason of a CDA held for naming several patients.
_NAMED_PATIENTS: Final = 4

CdaLevel = Literal["N1", "N3"]


class CdaSection(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str | None
    code_system: str | None
    title: str | None
    depth: int


class CdaHeader(BaseModel):
    model_config = ConfigDict(frozen=True)

    document_id: Identifier
    code: str | None
    code_system: str | None = None
    code_display: str | None = None
    title: str | None = None
    effective_time: str | None = None
    confidentiality_code: str | None = None
    set_id: Identifier | None = None
    version: int | None = None
    replaces: tuple[Identifier, ...] = ()
    template_ids: tuple[str, ...] = ()
    author_rpps: tuple[str, ...] = ()
    custodian_id: Identifier | None = None
    custodian_name: str | None = None
    patient_ids: tuple[Identifier, ...] = ()
    traits: PatientTraits = PatientTraits()

    @property
    def ins_ids(self) -> tuple[Identifier, ...]:
        """Patient ids issued under an INS OID (the INS, whatever else sits next to it)."""
        return tuple(i for i in self.patient_ids if i.root in INS_OIDS)


class CdaDocument(BaseModel):
    model_config = ConfigDict(frozen=True)

    header: CdaHeader
    level: CdaLevel
    body_media_type: str | None = None
    # Decoded nonXMLBody of an N1 document.
    body: bytes | None = None
    sections: tuple[CdaSection, ...] = ()
    imaging: ImagingPointers = ImagingPointers()

    @property
    def format(self) -> Literal["cda-n1", "cda-n3"]:
        return "cda-n1" if self.level == "N1" else "cda-n3"

    @property
    def is_imaging_report(self) -> bool:
        return is_imaging_report(self.header)


def is_imaging_report(header: CdaHeader) -> bool:
    return header.code == LOINC_CR_IMG or TEMPLATE_DICOM_IMAGING_REPORT in header.template_ids


def format_identifier(identifier: Identifier | None) -> str | None:
    """XDS uniqueId convention for a CDA II: `root^extension`, or `root` alone."""
    if identifier is None or not identifier.root:
        return None
    if identifier.extension:
        return f"{identifier.root}^{identifier.extension}"
    return identifier.root


def _h(path: str) -> str:
    return "/".join(f"{{{HL7_NS}}}{step}" for step in path.split("/"))


def _text(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    text = " ".join("".join(t for t in element.itertext() if isinstance(t, str)).split())
    return text or None


def _identifier(element: etree._Element | None) -> Identifier | None:
    if element is None:
        return None
    root, extension = element.get("root"), element.get("extension")
    if not root and not extension:
        return None
    return Identifier(root=root or None, extension=(extension or "").strip() or None)


def _qualifiers(element: etree._Element) -> set[str]:
    return set((element.get("qualifier") or "").split())


def _traits(patient: etree._Element | None) -> PatientTraits:
    if patient is None:
        return PatientTraits()
    birth_family = given_list = first_given = None
    for name in patient.iterfind(_h("name")):
        for part in name:
            local = local_name(part)
            qualifiers = _qualifiers(part)
            value = _text(part)
            if value is None:
                continue
            # BR = birth (naissance); CL = used (utilisé). Given without qualifier = the list
            # of birth first names, given BR = the first birth first name.
            if local == "family" and "BR" in qualifiers and birth_family is None:
                birth_family = value
            elif local == "given" and not qualifiers and given_list is None:
                given_list = value
            elif local == "given" and "BR" in qualifiers and first_given is None:
                first_given = value
    gender = patient.find(_h("administrativeGenderCode"))
    birth_time = patient.find(_h("birthTime"))
    county = patient.find(_h("birthplace/place/addr/county"))
    return PatientTraits(
        birth_family=birth_family,
        given=given_list or first_given,
        first_given=first_given,
        sex=parse_sex(gender.get("code") if gender is not None else None),
        birth_date=hl7_date_to_iso(birth_time.get("value") if birth_time is not None else None),
        birthplace=_text(county),
    )


def _version(element: etree._Element | None) -> int | None:
    value = element.get("value") if element is not None else None
    if value is None or not value.isdigit() or len(value) > 9:
        return None
    return int(value)


def _header(root: etree._Element) -> CdaHeader:
    document_id = _identifier(root.find(_h("id")))
    if document_id is None or not document_id.root:
        raise CdaError("CDA has no document id")
    code = root.find(_h("code"))
    if code is None or not code.get("code"):
        raise CdaError("CDA has no document type code")
    confidentiality = root.find(_h("confidentialityCode"))
    effective = root.find(_h("effectiveTime"))
    replaces: list[Identifier] = []
    for related in root.iterfind(_h("relatedDocument")):
        if related.get("typeCode") == "RPLC":
            for parent_id in related.iterfind(_h("parentDocument/id")):
                if (ident := _identifier(parent_id)) is not None:
                    replaces.append(ident)
    rpps: list[str] = []
    for author_id in root.iterfind(_h("author/assignedAuthor/id")):
        extension = author_id.get("extension")
        if author_id.get("root") == OID_RPPS and extension and extension not in rpps:
            rpps.append(extension)
    custodian = root.find(_h("custodian/assignedCustodian/representedCustodianOrganization"))
    targets = root.findall(_h("recordTarget"))
    if len(targets) > 1:
        # CI-SIS allows one recordTarget; reading the first would file the document under
        # one patient while it also names another.
        raise TwoPatientsError(_patients_reason(targets))
    roles = root.findall(_h("recordTarget/patientRole"))
    if len(roles) > 1 or any(len(role.findall(_h("patient"))) > 1 for role in roles):
        # The same mix-up inside one recordTarget (the schema allows one patientRole of one
        # patient): the first would be read and the other ignored.
        raise TwoPatientsError(_roles_reason(roles))
    patient_role = root.find(_h("recordTarget/patientRole"))
    patient_ids: tuple[Identifier, ...] = ()
    patient = None
    if patient_role is not None:
        patient_ids = tuple(
            i for i in (_identifier(e) for e in patient_role.iterfind(_h("id"))) if i
        )
        patient = patient_role.find(_h("patient"))
    return CdaHeader(
        document_id=document_id,
        code=code.get("code"),
        code_system=code.get("codeSystem"),
        code_display=code.get("displayName"),
        title=_text(root.find(_h("title"))),
        effective_time=hl7_ts_to_iso(effective.get("value") if effective is not None else None),
        confidentiality_code=confidentiality.get("code") if confidentiality is not None else None,
        set_id=_identifier(root.find(_h("setId"))),
        version=_version(root.find(_h("versionNumber"))),
        replaces=tuple(replaces),
        template_ids=tuple(
            t.get("root") or "" for t in root.iterfind(_h("templateId")) if t.get("root")
        ),
        author_rpps=tuple(rpps),
        custodian_id=_identifier(custodian.find(_h("id"))) if custodian is not None else None,
        custodian_name=_text(custodian.find(_h("name"))) if custodian is not None else None,
        patient_ids=patient_ids,
        traits=_traits(patient),
    )


def read_header(root: etree._Element) -> CdaHeader:
    """The header of a parsed ClinicalDocument, for the readers of one volet (D2LM) that
    walk its body themselves: the same checks as `parse_cda` (one patient, an id, a code)."""
    return _header(root)


def _roles_reason(roles: list[etree._Element]) -> str:
    """A recordTarget of several patientRole, or a patientRole of several patient: counted
    and described by issuer like `_patients_reason`, never by value."""
    patients = sum(max(1, len(role.findall(_h("patient")))) for role in roles)
    described = "; ".join(
        f"patientRole {index}: {_ins_kind(role.iterfind(_h('id')))}"
        for index, role in enumerate(roles[:_NAMED_PATIENTS], start=1)
    )
    return (
        f"CDA names {patients} patients in one recordTarget ({described}):"
        " a document has one patient"
    )


def _ins_kind(ids: Iterable[etree._Element]) -> str:
    found = [i for i in (_identifier(e) for e in ids) if i is not None]
    ins = [i for i in found if i.root in INS_OIDS and i.extension]
    if not ins:
        return "no INS"
    kind, test = INS_OIDS[ins[0].root or ""]
    return f"INS-{kind}{' (test)' if test else ''} under {ins[0].root}"


def _patients_reason(targets: list[etree._Element]) -> str:
    """The patients of a CDA named by place and issuer, never by value: the reason is shown
    in `quarantine list` and stored in clear even when the document is sealed for its RIS.
    Whether two of them carry the same INS is said, since it tells a copy from a mix-up."""
    described: list[str] = []
    first_seen: dict[str, int] = {}
    for index, target in enumerate(targets[:_NAMED_PATIENTS], start=1):
        ids = (_identifier(e) for e in target.iterfind(_h("patientRole/id")))
        ins = [i for i in ids if i is not None and i.root in INS_OIDS and i.extension]
        if not ins:
            described.append(f"recordTarget {index}: no INS")
            continue
        root, value = ins[0].root or "", ins[0].extension or ""
        kind, test = INS_OIDS[root]
        same = first_seen.setdefault(value, index)
        described.append(
            f"recordTarget {index}: INS-{kind}{' (test)' if test else ''} under {root}"
            + (f", the same INS as recordTarget {same}" if same != index else "")
        )
    more = len(targets) - _NAMED_PATIENTS
    listed = "; ".join(described) + (f"; and {more} more" if more > 0 else "")
    return f"CDA names {len(targets)} patients ({listed}): a document has one patient"


def _sections(body: etree._Element) -> tuple[CdaSection, ...]:
    found: list[CdaSection] = []

    def walk(container: etree._Element, depth: int) -> None:
        for section in container.iterfind(_h("component/section")):
            if len(found) >= _MAX_SECTIONS:
                return
            code = section.find(_h("code"))
            found.append(
                CdaSection(
                    code=code.get("code") if code is not None else None,
                    code_system=code.get("codeSystem") if code is not None else None,
                    title=_text(section.find(_h("title"))),
                    depth=depth,
                )
            )
            walk(section, depth + 1)

    walk(body, 0)
    return tuple(found)


def _decode_body(text: etree._Element, limits: DocumentLimits) -> bytes:
    representation = (text.get("representation") or "TXT").upper()
    if text.find(_h("reference")) is not None and not (text.text or "").strip():
        raise CdaError("nonXMLBody refers to an external file")
    if representation != "B64":
        return (text.text or "").encode("utf-8")
    compact = "".join((text.text or "").split())
    if not compact:
        raise CdaError("nonXMLBody is empty")
    if len(compact) // 4 * 3 > limits.max_pdf_bytes:
        raise LimitExceeded("nonXMLBody larger than allowed")
    budget.charge_bytes(len(compact) // 4 * 3, "a CDA nonXMLBody")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CdaError("nonXMLBody is not valid base64") from exc


def parse_cda(data: bytes, limits: DocumentLimits) -> CdaDocument:
    """Parse a CDA R2 document. Raises `CdaError`, `XmlError` or `LimitExceeded`."""
    root = parse_xml(data, limits, what="CDA")
    if root.tag != f"{{{HL7_NS}}}ClinicalDocument":
        raise CdaError("not a CDA R2 ClinicalDocument")
    header = _header(root)
    imaging = imaging_from_cda(root, is_imaging_report=is_imaging_report(header))
    non_xml = root.find(_h("component/nonXMLBody"))
    structured = root.find(_h("component/structuredBody"))
    if non_xml is not None:
        text = non_xml.find(_h("text"))
        if text is None:
            raise CdaError("nonXMLBody has no text")
        media_type = (text.get("mediaType") or "").strip().lower() or None
        body = _decode_body(text, limits)
        if media_type == "application/pdf" and not looks_like_pdf(body):
            raise CdaError("nonXMLBody announced as PDF is not a PDF")
        return CdaDocument(
            header=header, level="N1", body_media_type=media_type, body=body, imaging=imaging
        )
    if structured is not None:
        return CdaDocument(
            header=header, level="N3", sections=_sections(structured), imaging=imaging
        )
    raise CdaError("CDA has neither structuredBody nor nonXMLBody")


def is_cda(data: bytes) -> bool:
    """Cheap sniff before a full parse: an XML whose root is probably a ClinicalDocument."""
    # CI-SIS examples open with processing instructions and long comment blocks.
    head = data[:65536]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        # UTF-16 is legal XML; sniff it decoded so that it reaches the parser (and its checks).
        head = head.decode("utf-16", errors="ignore").encode("utf-8")
    return b"ClinicalDocument" in head and b"urn:hl7-org:v3" in head
