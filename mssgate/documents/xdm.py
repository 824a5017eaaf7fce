"""IHE XDM (ITI-32) archives: `IHE_XDM/<subset>/METADATA.XML` and the documents it lists.

METADATA.XML is an ebRIM 3.0 `SubmitObjectsRequest`, bare or wrapped in a SOAP envelope (the
DRIMbox example wraps a whole ProvideAndRegister request). Elements are matched by local name
so that the wrapper and namespace prefixes do not matter. Each `ExtrinsicObject` is a
DocumentEntry; its metadata is keyed by the fixed XDS classification/identification UUIDs.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from typing import Final

from lxml import etree
from pydantic import BaseModel, ConfigDict

from mssgate.documents.errors import XdmError
from mssgate.documents.hl7values import CX, XCN, parse_cx, parse_source_patient_info, parse_xcn
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.xml import local_name, parse_xml
from mssgate.documents.ziparchive import ZipContents, read_zip
from mssgate.ins import PatientTraits

XDM_ATTACHMENT_NAME: Final = "IHE_XDM.ZIP"

# XDS metadata UUIDs (ITI TF-3 4.2.5): DocumentEntry classifications and identifiers.
_SCHEME_CLASS_CODE: Final = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
_SCHEME_TYPE_CODE: Final = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
_SCHEME_FORMAT_CODE: Final = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
_SCHEME_CONFIDENTIALITY: Final = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
_SCHEME_AUTHOR: Final = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
_SCHEME_FACILITY_TYPE: Final = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
_SCHEME_PRACTICE_SETTING: Final = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
_SCHEME_EVENT_CODE: Final = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
_ID_PATIENT: Final = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
_ID_UNIQUE: Final = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
_ID_SUBMISSION_PATIENT: Final = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
# classCode of the XDS "Digital Signature" document (DSG), a manifest, not a clinical document.
SIGNATURE_CLASS_CODE: Final = "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1"
# A withdrawn document (ebRIM status; XDS metadata update, ITI-57, for the association).
_STATUS_DEPRECATED: Final = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
_ASSOCIATION_STATUS: Final = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"


_METADATA_RE: Final = re.compile(r"^(?:[^/]+/)?IHE_XDM/([^/]+)/METADATA\.XML$", re.IGNORECASE)


class CodedValue(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    scheme: str | None = None
    display: str | None = None


class XdmAuthor(BaseModel):
    model_config = ConfigDict(frozen=True)

    person: XCN | None = None
    institutions: tuple[str, ...] = ()

    @property
    def rpps(self) -> str | None:
        """The IDNPS (8 + RPPS) when the author is identified under the RPPS OID."""
        if self.person is not None and self.person.authority_oid == "1.2.250.1.71.4.2.1":
            return self.person.id
        return None


class XdmEntry(BaseModel):
    """One DocumentEntry of METADATA.XML."""

    model_config = ConfigDict(frozen=True)

    entry_id: str
    mime_type: str | None = None
    title: str | None = None
    patient_id: CX | None = None
    source_patient_id: CX | None = None
    source_patient: PatientTraits = PatientTraits()
    class_code: CodedValue | None = None
    type_code: CodedValue | None = None
    format_code: CodedValue | None = None
    confidentiality: tuple[CodedValue, ...] = ()
    event_codes: tuple[CodedValue, ...] = ()
    healthcare_facility_type: CodedValue | None = None
    practice_setting: CodedValue | None = None
    unique_id: str | None = None
    creation_time: str | None = None
    authors: tuple[XdmAuthor, ...] = ()
    reference_ids: tuple[CX, ...] = ()
    uri: str | None = None
    hash: str | None = None
    size: int | None = None
    # Resolved name of the document inside the archive (None when the URI points nowhere).
    member_name: str | None = None
    # The sender withdraws this document: its status Deprecated, or an availability status
    # update to Deprecated naming it.
    deprecated: bool = False

    @property
    def is_signature(self) -> bool:
        return self.class_code is not None and self.class_code.code == SIGNATURE_CLASS_CODE

    def references(self, kind: str) -> tuple[CX, ...]:
        return tuple(ref for ref in self.reference_ids if ref.type_code == kind)


class XdmSubmission(BaseModel):
    model_config = ConfigDict(frozen=True)

    subset: str
    metadata_member: str
    submission_patient_id: CX | None
    entries: tuple[XdmEntry, ...]


class XdmPackage(BaseModel):
    model_config = ConfigDict(frozen=True)

    submissions: tuple[XdmSubmission, ...]
    contents: ZipContents

    def document_bytes(self, entry: XdmEntry) -> bytes | None:
        if entry.member_name is None:
            return None
        member = self.contents.get(entry.member_name)
        return None if member is None else member.data


def is_xdm_attachment(filename: str | None) -> bool:
    return filename is not None and filename.strip().upper() == XDM_ATTACHMENT_NAME


def _children(element: etree._Element, name: str) -> Iterator[etree._Element]:
    for child in element:
        if local_name(child) == name:
            yield child


def _descendants(element: etree._Element, name: str) -> Iterator[etree._Element]:
    for node in element.iter():
        if local_name(node) == name:
            yield node


def _slot_values(element: etree._Element, slot_name: str) -> list[str]:
    values: list[str] = []
    for slot in _children(element, "Slot"):
        if slot.get("name") != slot_name:
            continue
        for value_list in _children(slot, "ValueList"):
            for value in _children(value_list, "Value"):
                values.append((value.text or "").strip())
    return values


def _first_slot(element: etree._Element, slot_name: str) -> str | None:
    values = _slot_values(element, slot_name)
    return values[0] if values and values[0] else None


def _localized(element: etree._Element, name: str) -> str | None:
    for holder in _children(element, name):
        for string in _descendants(holder, "LocalizedString"):
            value = string.get("value")
            if value:
                return value
    return None


def _classifications(element: etree._Element, scheme: str) -> list[etree._Element]:
    return [
        c for c in _children(element, "Classification") if c.get("classificationScheme") == scheme
    ]


def _coded(classification: etree._Element) -> CodedValue | None:
    code = classification.get("nodeRepresentation")
    if not code:
        return None
    return CodedValue(
        code=code,
        scheme=_first_slot(classification, "codingScheme"),
        display=_localized(classification, "Name"),
    )


def _first_coded(element: etree._Element, scheme: str) -> CodedValue | None:
    for classification in _classifications(element, scheme):
        coded = _coded(classification)
        if coded is not None:
            return coded
    return None


def _all_coded(element: etree._Element, scheme: str) -> tuple[CodedValue, ...]:
    coded = (_coded(c) for c in _classifications(element, scheme))
    return tuple(c for c in coded if c is not None)


def _external_id(element: etree._Element, scheme: str) -> str | None:
    for identifier in _children(element, "ExternalIdentifier"):
        if identifier.get("identificationScheme") == scheme:
            value = (identifier.get("value") or "").strip()
            if value:
                return value
    return None


def _int_or_none(text: str | None) -> int | None:
    if text is None or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def _parse_entry(element: etree._Element) -> XdmEntry:
    patient = _external_id(element, _ID_PATIENT)
    source_patient = _first_slot(element, "sourcePatientId")
    authors = tuple(
        XdmAuthor(
            person=parse_xcn(person) if (person := _first_slot(c, "authorPerson")) else None,
            institutions=tuple(v for v in _slot_values(c, "authorInstitution") if v),
        )
        for c in _classifications(element, _SCHEME_AUTHOR)
    )
    references = tuple(
        cx
        for cx in (
            parse_cx(v) for v in _slot_values(element, "urn:ihe:iti:xds:2013:referenceIdList")
        )
        if cx is not None
    )
    return XdmEntry(
        entry_id=element.get("id") or "",
        mime_type=element.get("mimeType"),
        title=_localized(element, "Name"),
        patient_id=parse_cx(patient) if patient else None,
        source_patient_id=parse_cx(source_patient) if source_patient else None,
        source_patient=parse_source_patient_info(_slot_values(element, "sourcePatientInfo")),
        class_code=_first_coded(element, _SCHEME_CLASS_CODE),
        type_code=_first_coded(element, _SCHEME_TYPE_CODE),
        format_code=_first_coded(element, _SCHEME_FORMAT_CODE),
        confidentiality=_all_coded(element, _SCHEME_CONFIDENTIALITY),
        event_codes=_all_coded(element, _SCHEME_EVENT_CODE),
        healthcare_facility_type=_first_coded(element, _SCHEME_FACILITY_TYPE),
        practice_setting=_first_coded(element, _SCHEME_PRACTICE_SETTING),
        unique_id=_external_id(element, _ID_UNIQUE),
        creation_time=_first_slot(element, "creationTime"),
        authors=authors,
        reference_ids=references,
        uri=_first_slot(element, "URI"),
        hash=_first_slot(element, "hash"),
        size=_int_or_none(_first_slot(element, "size")),
        deprecated=(element.get("status") or "").strip() == _STATUS_DEPRECATED,
    )


def _deprecated_ids(request: etree._Element) -> set[str]:
    """Entries an UpdateAvailabilityStatus association of this request moves to Deprecated."""
    return {
        target
        for association in _descendants(request, "Association")
        if association.get("associationType") == _ASSOCIATION_STATUS
        and _first_slot(association, "NewStatus") == _STATUS_DEPRECATED
        and (target := association.get("targetObject"))
    }


def parse_metadata(data: bytes, limits: DocumentLimits) -> tuple[CX | None, tuple[XdmEntry, ...]]:
    """(submission set patientId, DocumentEntries) of a METADATA.XML."""
    root = parse_xml(data, limits, what="XDM metadata")
    requests = list(_descendants(root, "SubmitObjectsRequest"))
    if not requests:
        raise XdmError("XDM metadata has no SubmitObjectsRequest")
    submission_patient: CX | None = None
    entries: list[XdmEntry] = []
    for request in requests:
        for package in _descendants(request, "RegistryPackage"):
            value = _external_id(package, _ID_SUBMISSION_PATIENT)
            if value and submission_patient is None:
                submission_patient = parse_cx(value)
        withdrawn = _deprecated_ids(request)
        for element in _descendants(request, "ExtrinsicObject"):
            entry = _parse_entry(element)
            if entry.entry_id in withdrawn and not entry.deprecated:
                entry = entry.model_copy(update={"deprecated": True})
            entries.append(entry)
    return submission_patient, tuple(entries)


def _resolve_uri(uri: str | None, subset_dir: str, contents: ZipContents) -> str | None:
    """The archive member an entry's URI names, looked up (never opened as a path).

    IHE places the URI relative to the submission set folder (`DOC0001.XML`); DRIMbox writes
    it relative to `IHE_XDM/` (`SS000001/KOS_1_1.DCM`). Anything escaping the archive or
    carrying a scheme is refused.
    """
    if not uri or "\\" in uri or ":" in uri or uri.startswith("/"):
        return None
    if any(part == ".." for part in uri.split("/")):
        return None
    xdm_root = posixpath.dirname(subset_dir)
    for candidate in (posixpath.join(subset_dir, uri), posixpath.join(xdm_root, uri)):
        member = contents.get(candidate)
        if member is not None:
            return member.name
    return None


def read_xdm(data: bytes, limits: DocumentLimits) -> XdmPackage:
    """Unpack an IHE_XDM.ZIP in memory and parse every submission set it holds.

    Raises `ZipError`/`LimitExceeded` for an unsafe archive, `XdmError`/`XmlError` for
    missing or malformed metadata.
    """
    contents = read_zip(data, limits)
    submissions: list[XdmSubmission] = []
    for member in contents.members:
        match = _METADATA_RE.match(member.name)
        if match is None:
            continue
        subset_dir = posixpath.dirname(member.name)
        patient, entries = parse_metadata(member.data, limits)
        resolved = tuple(
            entry.model_copy(update={"member_name": _resolve_uri(entry.uri, subset_dir, contents)})
            for entry in entries
        )
        submissions.append(
            XdmSubmission(
                subset=subset_dir,
                metadata_member=member.name,
                submission_patient_id=patient,
                entries=resolved,
            )
        )
    if not submissions:
        raise XdmError("archive has no IHE_XDM/<subset>/METADATA.XML")
    return XdmPackage(submissions=tuple(submissions), contents=contents)
