"""What goes to one recipient: the IHE_XDM.ZIP and the MIME message carrying it.

The archive has the shape our own pipeline accepts (and common producers write): README.TXT
and INDEX.HTM at the root, IHE_XDM/SUBSET01/METADATA.XML (an ebRIM SubmitObjectsRequest built
with lxml) and the documents named 8.3 upper case: DOC0001.XML the CDA, DOC0002.PDF the PDF.
The INS is the patientId (CX `<INS>^^^&<oid>&ISO^NH`), the author comes from TXA or the CDA;
an MDM^T10 adds the replacement association (RPLC) to the document its CDA replaces.

A withdrawal (MDM^T04, ORU^R01 OBX-11 D) carries the withdrawn CDA itself (the guide has the
RIS send its last version), its DocumentEntry `status` Deprecated and an XDS metadata update
(ITI-57) association UpdateAvailabilityStatus, Approved to Deprecated, from the submission set
to that entry: a registry or an integrating LPS reads which document, by its uniqueId, is
withdrawn; the text body and the Subject say it to the practitioner reading the mail. Its PDF,
when the RIS sends it, is a second Deprecated entry (`<uniqueId>.PDF`, as the report sent it)
inside the archive only: no readable copy beside it, which would be taken for a document.
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
from mssgate.documents.hl7values import escape
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
ASSOCIATION_STATUS: Final = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
STATUS_APPROVED: Final = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
STATUS_DEPRECATED: Final = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
WITHDRAWN_PREFIX: Final = "Annulation : "


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
    # Every value is the CDA's, escaped: a `^` or `&` in a name would shift its components
    # (our pipeline then found the names differing from the CDA's and held the document).
    traits = submission.document.header.traits
    family, given = (
        escape(traits.birth_family or ""),
        escape(traits.first_given or traits.given or ""),
    )
    info = [
        f"PID-5|{family}^{given}^^^^^L",
        f"PID-7|{escape((traits.birth_date or '').replace('-', ''))}",
        f"PID-8|{escape(traits.sex or '')}",
    ]
    if traits.birthplace:
        info.append(f"PID-11|^^^^^^BDL^^{escape(traits.birthplace)}")
    return info


def _author_xcn(submission: Submission) -> str | None:
    author = submission.author
    if not author.rpps:
        return None
    # TXA's author is refused with a separator (hl7in); the CDA's RPPS is escaped here.
    rpps, family, given = (escape(v or "") for v in (author.rpps, author.family, author.given))
    return f"{rpps}^{family}^{given}^^^^^^&{OID_RPPS}&ISO^D^^^IDNPS"


def metadata(submission: Submission, entries: list[tuple[str, bytes, str]], now: datetime) -> bytes:
    """METADATA.XML for `entries` (archive name, bytes, MIME type), CDA first."""
    header = submission.document.header
    cx = patient_cx(submission)
    request = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"rim": RIM, "lcm": LCM})
    objects = etree.SubElement(request, _rim("RegistryObjectList"))
    package = etree.SubElement(objects, _rim("RegistryPackage"), id="SubmissionSet01")
    _external(package, _ID_SUBMISSION_PATIENT, cx, "SubmissionSet01", 1)
    unique = submission.unique_id or ""
    withdrawn = submission.action == "delete"
    for index, (name, data, mime) in enumerate(entries, start=1):
        obj = f"Document{index:02d}"
        element = etree.SubElement(
            objects, _rim("ExtrinsicObject"), id=obj, mimeType=mime, objectType=_DOCUMENT_ENTRY
        )
        if withdrawn:
            element.set("status", STATUS_DEPRECATED)
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
    if withdrawn:
        for n in range(1, len(entries) + 1):
            update = etree.SubElement(
                objects, _rim("Association"), id=f"StatusUpdate{n:02d}",
                associationType=ASSOCIATION_STATUS, sourceObject="SubmissionSet01",
                targetObject=f"Document{n:02d}",
            )  # fmt: skip
            _slot(update, "OriginalStatus", [STATUS_APPROVED])
            _slot(update, "NewStatus", [STATUS_DEPRECATED])
        # The document withdrawn may itself have replaced another: that is no news here.
        return etree.tostring(request, xml_declaration=True, encoding="UTF-8")
    for n, replaced in enumerate(header.replaces, start=1):
        # MDM^T10: the new version replaces the one its CDA names (relatedDocument RPLC).
        target = format_identifier(replaced)
        if target:
            etree.SubElement(
                objects, _rim("Association"), id=f"Association{n:02d}",
                associationType=ASSOCIATION_RPLC, sourceObject="Document01", targetObject=target,
            )  # fmt: skip
    return etree.tostring(request, xml_declaration=True, encoding="UTF-8")


def _attached_pdf(submission: Submission) -> bytes | None:
    """The PDF beside the archive, for a reader: none with a withdrawal (a readable copy
    would be taken for the document)."""
    return None if submission.action == "delete" else submission.pdf


def xdm_archive(submission: Submission, now: datetime, *, sender: str) -> bytes:
    entries = [("DOC0001.XML", submission.cda, "text/xml")]
    # A withdrawal's PDF stays inside, Deprecated like the CDA: the report went as two
    # entries (`<id>` and `<id>.PDF`), and a receiver must be told to withdraw both.
    if submission.pdf is not None:
        entries.append(("DOC0002.PDF", submission.pdf, "application/pdf"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        tree = "\n".join(f"  IHE_XDM/{SUBSET}/{name}" for name, _, _ in entries)
        if submission.action == "delete":
            tree = f"Annulation du document {submission.unique_id} (statut Deprecated)\n{tree}"
        archive.writestr("README.TXT", f"Emetteur : {sender}\nLogiciel : mssgate\n\n{tree}\n")
        archive.writestr("INDEX.HTM", "<html><body>IHE XDM</body></html>")
        archive.writestr(f"IHE_XDM/{SUBSET}/METADATA.XML", metadata(submission, entries, now))
        for name, data, _ in entries:
            archive.writestr(f"IHE_XDM/{SUBSET}/{name}", data)
    return buffer.getvalue()


def inert(text: str) -> str:
    """`text` as a header value the email package parses: `=?` opens an RFC 2047 encoded word,
    which it decodes, CRLF included, so that a title or address written by someone else (a
    routing rule forwards any sender's CDA) would add header fields, or a body, to the
    message our mailbox signs. `=_` reads the same to a person and decodes to nothing."""
    return text.replace("=?", "=_")


def subject(submission: Submission) -> str:
    """`XDM/1.0/DDM+<title> <NAME> <first name> <dd/mm/yyyy>` (the form our parser reads)."""
    return inert(_subject(submission))


def _subject(submission: Submission) -> str:
    header = submission.document.header
    traits = header.traits
    title = header.title or "Document"
    if submission.action == "delete":
        # Inside the convention's title: a reader sees it first, and the DDM form still reads.
        title = WITHDRAWN_PREFIX + title
    birth = traits.birth_date or ""
    if len(birth) != 10:
        return f"XDM/1.0/DDM+{' '.join(title.split())}"
    given = traits.first_given or (traits.given or "").split(" ")[0]
    return build_ddm_subject(title, traits.birth_family or "", given, birth)


def _text(submission: Submission, sender: str) -> str:
    if submission.action != "delete":
        return "Veuillez trouver ci-joint le document.\n"
    header = submission.document.header
    title = " ".join((header.title or "Document").split())
    iso = header.effective_time or ""
    when = f"{iso[8:10]}/{iso[5:7]}/{iso[:4]}" if len(iso) >= 10 else "date inconnue"
    return (
        "ANNULATION DE DOCUMENT\n\n"
        f"Le document « {title} » du {when}, identifiant {submission.unique_id},\n"
        f"que {sender} vous a adressé, a été annulé par son émetteur.\n"
        "Il ne doit plus être utilisé ; s'il a été intégré à un dossier, retirez-le.\n\n"
        "L'archive IHE_XDM.ZIP jointe décrit le document retiré (statut Deprecated, mise à\n"
        "jour de métadonnées XDS UpdateAvailabilityStatus) pour les logiciels qui l'intègrent.\n"
    )


def build_message(
    submission: Submission,
    *,
    sender: str,
    recipient: str,
    message_id: str,
    mss_fields: dict[str, str],
    now: datetime,
    xdm: bytes,
    note: str | None = None,
) -> bytes:
    """The unsigned message to `recipient` (signed by the caller with `sender`'s key).
    `note`: a paragraph before the text (what a routing rule's forward is)."""
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
    text = _text(submission, sender)
    message.set_content(f"{note}\n{text}" if note else text)
    message.add_attachment(xdm, maintype="application", subtype="zip",
                           filename=XDM_ATTACHMENT_NAME)  # fmt: skip
    pdf = _attached_pdf(submission)
    if pdf is not None:
        message.add_attachment(pdf, maintype="application", subtype="pdf",
                               filename="DOC0002.PDF")  # fmt: skip
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
