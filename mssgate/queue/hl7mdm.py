"""HL7 v2.6 MDM^T02 / T10 / T04 for one queued document (pure: record and bytes in, text out).

The shape follows the ANS profile "transmission au LPS de documents CDA reçus par courriel
MSSanté" and its example message: MSH, EVN, PID (INS in PID-3), PV1, ORC, OBR, TXA, the
document base64 in OBX-1, PRT for the sender and the recipient mailbox, the e-mail base64 in
OBX-2 (OBX-3 = Message-ID^Subject), then the MetaDMP/MSS restriction flags.

python-hl7 builds the tree and renders it; values are escaped here because its own escaper
turns every non-ASCII character into a \\X..\\ code point, whereas the profile declares
MSH-18 = UNICODE UTF-8 and sends accented names as they are.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import hl7  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict

from mssgate.documents.hl7values import escape as escape  # re-exported: ack, zam
from mssgate.documents.record import DocumentRecord
from mssgate.ins import OID_INS_NIA

ENCODING_CHARACTERS: Final = "^~\\&"
PROFILE: Final = ("1.1", "CISIS_CDA_HL7_LPS")
AUTHORITY_RPPS: Final = "1.2.250.1.71.4.2.1"

# MetaDMP/MSS OBX lines of the profile, with the labels of its example message. The flag is
# Y when the document's confidentiality codes carry the code.
META_DMP_MSS: Final = (
    ("MASQUE_PS", "Masqué aux professionnels de Santé"),
    ("INVISIBLE_PATIENT", "Document Non Visible par le patient"),
    ("INVISIBLE_REP_LEGAUX", "Non visible par les représentants Légaux du patient"),
    ("MODIF_CONF_CODE", "Modification Confidentiality Code"),
)

# A field is a leaf (str) or a list of components, each a leaf or a list of sub-components.
Component = str | Sequence[str]
FieldValue = str | Sequence[Component]


class MdmEnvelope(BaseModel):
    """What the message around the document says: who sends, who receives, when."""

    model_config = ConfigDict(frozen=True)

    control_id: str
    created_at: datetime
    sending_application: str = "MSSGATE"
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_id: str | None
    subject: str | None
    sender: str
    mailbox: str
    email: bytes


def hl7_timestamp(iso: str | None) -> str:
    """An ISO 8601 date or date-time (source precision) as an HL7 DTM; '' when absent."""
    if not iso:
        return ""
    match = re.fullmatch(
        r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?)?)?)?"
        r"(Z|[+-]\d{2}:?\d{2})?",
        iso.strip(),
    )
    if match is None:
        return ""
    digits = "".join(part for part in match.groups()[:6] if part)
    zone = match.group(7)
    if zone is None or not match.group(4):
        return digits
    return digits + ("+0000" if zone == "Z" else zone.replace(":", ""))


def _dtm(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _ei(identifier: str | None) -> FieldValue:
    """CI-SIS `root^extension` (or a bare root) as an EI: extension^^root^ISO."""
    if not identifier:
        return ""
    root, _, extension = identifier.partition("^")
    if not extension:
        return escape(root)
    return [escape(extension), "", escape(root), "ISO"]


def hl7_field(value: FieldValue) -> hl7.Field:
    if isinstance(value, str):
        return hl7.Field(sequence=[value])
    components: list[object] = []
    for component in value:
        if isinstance(component, str):
            components.append(component)
        else:
            components.append(hl7.Component(sequence=list(component)))
    return hl7.Field(sequence=[hl7.Repetition(sequence=components)])


def hl7_segment(name: str, *fields: FieldValue) -> hl7.Segment:
    return hl7.Segment(sequence=[hl7.Field(sequence=[name]), *(hl7_field(f) for f in fields)])


def _msh(env: MdmEnvelope, trigger: str) -> hl7.Segment:
    fields: list[FieldValue] = [
        escape(env.sending_application),
        escape(env.sending_facility),
        escape(env.receiving_application),
        escape(env.receiving_facility),
        _dtm(env.created_at),
        "",
        ["MDM", trigger, "MDM_T02"],
        escape(env.control_id),
        "P",
        "2.6",
        "",
        "",
        "",
        "",
        "FRA",
        "UNICODE UTF-8",
        "",
        "",
        list(PROFILE),
    ]
    return hl7.Segment(
        sequence=[
            hl7.Field(sequence=["MSH"]),
            hl7.Field(sequence=["|"]),
            hl7.Field(sequence=[ENCODING_CHARACTERS]),
            *(hl7_field(f) for f in fields),
        ]
    )


def ins_cx(record: DocumentRecord) -> FieldValue:
    """PID-3: `<INS>^^^ASIP-SANTE-INS-NIR&<oid>&ISO^INS` (NIA under its own authority)."""
    ins = record.ins
    authority = "ASIP-SANTE-INS-NIA" if ins.oid == OID_INS_NIA else "ASIP-SANTE-INS-NIR"
    return [escape(ins.value), "", "", [authority, escape(ins.oid or ""), "ISO"], "INS"]


def _pid(record: DocumentRecord) -> hl7.Segment:
    patient = record.patient
    name: FieldValue = [
        escape(patient.birth_family or ""),
        escape(patient.first_given or ""),
        escape(patient.given or ""),
        "",
        "",
        "",
        "L",
    ]
    birthplace: FieldValue = ""
    if patient.birthplace:
        birthplace = ["", "", "", "", "", "", "BDL", "", escape(patient.birthplace)]
    fields: list[FieldValue] = [""] * 32
    fields[2] = ins_cx(record)
    fields[4] = name
    fields[6] = (patient.birth_date or "").replace("-", "")
    fields[7] = patient.sex or ""
    fields[10] = birthplace
    fields[30] = "N"  # PID-31, identity unknown indicator: the INS identifies the patient
    # PID-32, identity reliability: the INS identity was received qualified (VALI) or not.
    fields[31] = "VALI" if record.ins.qualified else "PROV"
    return hl7_segment("PID", *fields)


def _txa(record: DocumentRecord) -> hl7.Segment:
    doc = record.document
    fields: list[FieldValue] = [""] * 22
    fields[0] = "1"
    fields[1] = escape(doc.type_code or "")
    fields[2] = "TEXT"
    fields[3] = hl7_timestamp(doc.effective_time)
    fields[11] = _ei(doc.unique_id)
    fields[12] = _ei(doc.replaces)
    fields[16] = "AU"
    fields[21] = escape(doc.author_rpps or "")
    return hl7_segment("TXA", *fields)


def _document_type(record: DocumentRecord) -> FieldValue:
    doc = record.document
    return [escape(doc.type_code or ""), escape(doc.title or ""), "LN"]


def _ed_type(record: DocumentRecord) -> tuple[str, str]:
    if record.document.format in ("cda-n1", "cda-n3"):
        return "text", "XML"
    major, _, minor = record.content_type.partition("/")
    return escape(major or "application"), escape(minor.upper() or "OCTET-STREAM")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _prt(role: str, address: str, person: FieldValue = "") -> hl7.Segment:
    fields: list[FieldValue] = [""] * 15
    fields[1] = "UC"
    fields[3] = [role, "", "participation"]
    fields[4] = person
    fields[14] = ["", "", "X.400", escape(address)]
    return hl7_segment("PRT", *fields)


def _obx(
    set_id: int, kind: str, code: FieldValue, value: FieldValue, status: str = "F"
) -> hl7.Segment:
    return hl7_segment("OBX", str(set_id), kind, code, "", value, "", "", "", "", "", status, "")


def build_mdm(record: DocumentRecord, content: bytes, envelope: MdmEnvelope) -> str:
    """The MDM message, segments separated by CR as HL7 v2 requires."""
    # A withdrawn document (its sender's MDM^T04) is withdrawn here too: T04, OBX-11 D.
    withdrawn = record.document.withdrawn
    trigger = "T04" if withdrawn else "T10" if record.document.replaces else "T02"
    major, minor = _ed_type(record)
    author: FieldValue = ""
    if record.document.author_rpps:
        author = [
            escape(record.document.author_rpps),
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            ["ASIP-SANTE-PS", AUTHORITY_RPPS, "ISO"],
            "D",
            "",
            "",
            "IDNPS",
        ]
    confidentiality = set(record.document.confidentiality)
    segments = [
        _msh(envelope, trigger),
        hl7_segment("EVN", "", _dtm(envelope.created_at), "", "", "", _dtm(envelope.created_at)),
        _pid(record),
        hl7_segment("PV1", "1", "N"),
        hl7_segment("ORC", "NW"),
        hl7_segment("OBR", "1", "", "", _document_type(record)),
        _txa(record),
        _obx(
            1,
            "ED",
            _document_type(record),
            ["", major, minor, "Base64", _b64(content)],
            "D" if withdrawn else "F",
        ),
        _prt("SB", envelope.sender, author),
        _prt("RCT", envelope.mailbox),
        _obx(
            2,
            "ED",
            [escape(envelope.message_id or ""), escape(envelope.subject or "")],
            ["", "text", "", "Base64", _b64(envelope.email)],
        ),
    ]
    for offset, (code, label) in enumerate(META_DMP_MSS, start=3):
        flag = "Y" if code in confidentiality else "N"
        segments.append(
            _obx(
                offset,
                "CWE",
                [code, escape(label), "MetaDMPMSS"],
                [flag, "", "expandedYes-NoIndicator"],
            )
        )
    return str(hl7.Message(sequence=segments))


def parse_mdm(text: str) -> hl7.Message:
    """Parses an MDM back (python-hl7); for tests and for consumers' sanity checks."""
    return hl7.parse(text)
