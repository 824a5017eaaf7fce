"""What goes to one recipient: the IHE_XDM.ZIP and the MIME message carrying it.

The archive has the shape our own pipeline accepts (and common producers write): README.TXT
and INDEX.HTM at the root, IHE_XDM/SUBSET01/METADATA.XML (an ebRIM SubmitObjectsRequest built
with lxml) and the documents named 8.3 upper case: DOC0001.XML the CDA, DOC0002.PDF the PDF.
The INS is the patientId (CX `<INS>^^^&<oid>&ISO^NH`), the author comes from TXA or the CDA;
an MDM^T10 adds the replacement association (RPLC) to the document its CDA replaces.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from lxml import etree

from mssgate.documents.cda import format_identifier
from mssgate.documents.headers import build_ddm_subject
from mssgate.documents.xdm import XDM_ATTACHMENT_NAME
from mssgate.outbound.hl7in import Submission

RIM: Final = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM: Final = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
SUBSET: Final = "SUBSET01"
_ID_SUBMISSION_PATIENT: Final = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
_ID_PATIENT: Final = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
_ID_UNIQUE: Final = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
_SCHEME_AUTHOR: Final = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
_SCHEME_CLASS: Final = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
_SCHEME_TYPE: Final = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
_SCHEME_FORMAT: Final = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
_SCHEME_CONFIDENTIALITY: Final = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
_DOCUMENT_ENTRY: Final = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
OID_RPPS: Final = "1.2.250.1.71.4.2.1"
ASSOCIATION_RPLC: Final = "urn:ihe:iti:2007:AssociationType:RPLC"


def _rim(tag: str) -> str:
    return f"{{{RIM}}}{tag}"


def _slot(parent: etree._Element, name: str, values: list[str]) -> None:
    slot = etree.SubElement(parent, _rim("Slot"), name=name)
    listing = etree.SubElement(slot, _rim("ValueList"))
    for item in values:
        etree.SubElement(listing, _rim("Value")).text = item


def _classified(
    parent: etree._Element, scheme: str, code: str, coding: str, obj: str, n: int
) -> None:
    node = etree.SubElement(
        parent, _rim("Classification"), classificationScheme=scheme, classifiedObject=obj,
        nodeRepresentation=code, id=f"cl{n:02d}-{obj}",
    )  # fmt: skip
    _slot(node, "codingScheme", [coding])


def _external(parent: etree._Element, scheme: str, text: str, obj: str, n: int) -> None:
    etree.SubElement(
        parent, _rim("ExternalIdentifier"), identificationScheme=scheme, value=text,
        registryObject=obj, id=f"ei{n:02d}-{obj}",
    )  # fmt: skip


def patient_cx(submission: Submission) -> str:
    return f"{submission.ins.value}^^^&{submission.ins.oid}&ISO^NH"


def _patient_info(submission: Submission) -> list[str]:
    traits = submission.document.header.traits
    info = [
        f"PID-5|{traits.birth_family or ''}^{traits.first_given or traits.given or ''}^^^^^L",
        f"PID-7|{(traits.birth_date or '').replace('-', '')}",
        f"PID-8|{traits.sex or ''}",
    ]
    if traits.birthplace:
        info.append(f"PID-11|^^^^^^BDL^^{traits.birthplace}")
    return info


def _author_xcn(submission: Submission) -> str | None:
    author = submission.author
    if not author.rpps:
        return None
    family, given = author.family or "", author.given or ""
    return f"{author.rpps}^{family}^{given}^^^^^^&{OID_RPPS}&ISO^D^^^IDNPS"


def metadata(submission: Submission, entries: list[tuple[str, bytes, str]], now: datetime) -> bytes:
    """METADATA.XML for `entries` (archive name, bytes, MIME type), CDA first."""
    header = submission.document.header
    cx = patient_cx(submission)
    request = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"rim": RIM, "lcm": LCM})
    objects = etree.SubElement(request, _rim("RegistryObjectList"))
    package = etree.SubElement(objects, _rim("RegistryPackage"), id="SubmissionSet01")
    _external(package, _ID_SUBMISSION_PATIENT, cx, "SubmissionSet01", 1)
    unique = submission.unique_id or ""
    for index, (name, data, mime) in enumerate(entries, start=1):
        obj = f"Document{index:02d}"
        element = etree.SubElement(
            objects, _rim("ExtrinsicObject"), id=obj, mimeType=mime, objectType=_DOCUMENT_ENTRY
        )
        _slot(element, "creationTime", [now.astimezone(UTC).strftime("%Y%m%d%H%M%S")])
        _slot(element, "hash", [hashlib.sha1(data, usedforsecurity=False).hexdigest()])
        _slot(element, "size", [str(len(data))])
        _slot(element, "sourcePatientId", [cx.replace("^NH", "^PI")])
        _slot(element, "sourcePatientInfo", _patient_info(submission))
        _slot(element, "URI", [name])
        title = etree.SubElement(element, _rim("Name"))
        etree.SubElement(title, _rim("LocalizedString"), value=header.title or name)
        person = _author_xcn(submission)
        if person is not None:
            author = etree.SubElement(
                element, _rim("Classification"), classificationScheme=_SCHEME_AUTHOR,
                classifiedObject=obj, nodeRepresentation="", id=f"author-{obj}",
            )  # fmt: skip
            _slot(author, "authorPerson", [person])
        _classified(element, _SCHEME_CLASS, "REPORTS", "1.2.250.1.213.1.1.4.1", obj, 1)
        code = header.code or ""
        _classified(element, _SCHEME_TYPE, code, header.code_system or "2.16.840.1.113883.6.1",
                    obj, 2)  # fmt: skip
        fmt = "urn:ihe:iti:xds-sd:pdf:2008" if mime == "application/pdf" else (
            "urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013"
            if submission.document.is_imaging_report else "urn:ihe:iti:xds-sd:text:2008"
        )  # fmt: skip
        _classified(element, _SCHEME_FORMAT, fmt, "1.3.6.1.4.1.19376.1.2.3", obj, 3)
        _classified(element, _SCHEME_CONFIDENTIALITY, header.confidentiality_code or "N",
                    "2.16.840.1.113883.5.25", obj, 4)  # fmt: skip
        _external(element, _ID_PATIENT, cx, obj, 2)
        # The CDA keeps its own id (receivers deduplicate on it); the PDF gets one beside it.
        _external(element, _ID_UNIQUE, unique if index == 1 else f"{unique}.PDF", obj, 3)
    for n, replaced in enumerate(header.replaces, start=1):
        # MDM^T10: the new version replaces the one its CDA names (relatedDocument RPLC).
        target = format_identifier(replaced)
        if target:
            etree.SubElement(
                objects, _rim("Association"), id=f"Association{n:02d}",
                associationType=ASSOCIATION_RPLC, sourceObject="Document01", targetObject=target,
            )  # fmt: skip
    return etree.tostring(request, xml_declaration=True, encoding="UTF-8")


def xdm_archive(submission: Submission, now: datetime, *, sender: str) -> bytes:
    entries = [("DOC0001.XML", submission.cda, "text/xml")]
    if submission.pdf is not None:
        entries.append(("DOC0002.PDF", submission.pdf, "application/pdf"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        tree = "\n".join(f"  IHE_XDM/{SUBSET}/{name}" for name, _, _ in entries)
        archive.writestr("README.TXT", f"Emetteur : {sender}\nLogiciel : mssgate\n\n{tree}\n")
        archive.writestr("INDEX.HTM", "<html><body>IHE XDM</body></html>")
        archive.writestr(f"IHE_XDM/{SUBSET}/METADATA.XML", metadata(submission, entries, now))
        for name, data, _ in entries:
            archive.writestr(f"IHE_XDM/{SUBSET}/{name}", data)
    return buffer.getvalue()


def subject(submission: Submission) -> str:
    """`XDM/1.0/DDM+<title> <NAME> <first name> <dd/mm/yyyy>` (the form our parser reads)."""
    header = submission.document.header
    traits = header.traits
    birth = traits.birth_date or ""
    if len(birth) != 10:
        return f"XDM/1.0/DDM+{' '.join((header.title or 'Document').split())}"
    given = traits.first_given or (traits.given or "").split(" ")[0]
    return build_ddm_subject(header.title or "Document", traits.birth_family or "", given, birth)


def build_message(
    submission: Submission,
    *,
    sender: str,
    recipient: str,
    message_id: str,
    mss_fields: dict[str, str],
    now: datetime,
    xdm: bytes,
) -> bytes:
    """The unsigned message to `recipient` (signed by the caller with `sender`'s key)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject(submission)
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = message_id
    message["Disposition-Notification-To"] = sender
    if submission.reply_to:
        message["Reply-To"] = submission.reply_to
    for name, text in mss_fields.items():
        message[name] = text
    message.set_content("Veuillez trouver ci-joint le document.\n")
    message.add_attachment(xdm, maintype="application", subtype="zip",
                           filename=XDM_ATTACHMENT_NAME)  # fmt: skip
    if submission.pdf is not None:
        message.add_attachment(submission.pdf, maintype="application", subtype="pdf",
                               filename="DOC0002.PDF")  # fmt: skip
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
