"""One submitted HL7 v2 message (ER7) read into what the gateway sends, or refused.

The profile is the ANS guide "Transmission de documents CDA R2 en HL7 v2": MDM^T02 (new),
MDM^T10 (replacement), MDM^T04 (deletion), ORU^R01 whose document OBX-11 says which of the
three (F, C, D: evenements-declenchants); the CDA base64 in an OBX of type ED, an N1
document's PDF likewise; recipients in PRT (PRT-4 RCT, address in PRT-15); the MetaDMPMSS
OBX flags deciding whether the patient's own mailbox is a recipient (the guide's matrix,
regles-gestion-mssante: any other combination is an error). Every refusal names the HL7
error code (table 0357, or the guide's 9xx integration codes) and where it was found.

Hostile input is normal here: python-hl7 only splits on separators; every value read is
bounded by the body cap, the CDA goes through our own parser (XXE and bomb protections,
mssgate.documents.xml), and base64 is decoded strictly.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Final, Literal

import hl7  # type: ignore[import-untyped]

from mssgate.documents.cda import CdaDocument, format_identifier, parse_cda
from mssgate.documents.errors import DocumentError
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.pdf import looks_like_pdf
from mssgate.errors import ValidationFailed
from mssgate.identifiers import normalize_address
from mssgate.ins import INS, INS_OIDS, InvalidINS, parse_ins

Event = Literal["MDM^T02", "MDM^T10", "MDM^T04", "ORU^R01"]
EVENTS: Final[frozenset[str]] = frozenset({"MDM^T02", "MDM^T10", "MDM^T04", "ORU^R01"})
# What the RIS asks for the document it carries: send it, send it as the replacement of
# the one its CDA names (relatedDocument RPLC), or withdraw it (the guide: the last version
# of the document to delete travels in the message, with its own id).
Action = Literal["new", "replace", "delete"]
# OBX-11 of the document's OBX (HL7 table 0085) per action; an MDM's event already says
# which, and an OBX-11 saying otherwise is refused rather than guessed from.
ACTION_STATUS: Final[dict[str, Action]] = {"F": "new", "C": "replace", "D": "delete"}
MDM_STATUS: Final[dict[str, str]] = {"MDM^T02": "F", "MDM^T10": "C", "MDM^T04": "D"}
CDA_SUBTYPES: Final = frozenset({"HL7CDA", "XML"})
META_SYSTEM: Final = "MetaDMPMSS"
# The guide's MetaDMP/MSS table (meta-dmp-mss).
META_FLAGS: Final = frozenset(
    {
        "MASQUE_PS",
        "INVISIBLE_PATIENT",
        "INVISIBLE_REP_LEGAUX",
        "CONNEXION_SECRETE",
        "MODIF_CONF_CODE",
        "DESTDMP",
        "DESTMSSANTEPS",
        "DESTMSSANTEPAT",
        "ACK_RECEPTION",
        "ACK_LECTURE_MSS",
        "CORPSMAIL_PS",
        "CORPSMAIL_PATIENT",
    }
)
# Recipients per message: PRT segments beyond this are refused, not truncated.
MAX_RECIPIENTS: Final = 50
# ERR segments in a refusal's ACK.
MAX_PROBLEMS: Final = 20
_SEGMENT_SPLIT: Final = re.compile(r"\r\n|\n|\r")
# Control characters ER7 never carries raw (HL7 escapes them, \Xhh\): a NUL reached the
# MSH-10 lookup, which PostgreSQL's text refuses (a 500), and would be echoed in the ACK.
_RAW_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# HL7 table 0357 and the guide's integration codes (error-codes).
SEGMENT_SEQUENCE = 100
REQUIRED_MISSING = 101
DATA_TYPE = 102
TABLE_VALUE = 103
UNSUPPORTED_TYPE = 200
UNSUPPORTED_EVENT = 201
UNSUPPORTED_VERSION = 203
INS_ABSENT = 903
INS_MISMATCH = 904
OTHER = 906

LABELS: Final[dict[int, str]] = {
    SEGMENT_SEQUENCE: "Segment sequence error",
    REQUIRED_MISSING: "Required field missing",
    DATA_TYPE: "Data type error",
    TABLE_VALUE: "Table value not found",
    UNSUPPORTED_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT: "Unsupported event code",
    UNSUPPORTED_VERSION: "Unsupported version id",
    INS_ABSENT: "INS absent du CDA",
    INS_MISMATCH: "INS ou traits incohérents",
    OTHER: "Autre erreur",
}


@dataclass(frozen=True)
class Problem:
    """One ERR segment: the code, where (segment, field) and a client-safe text."""

    code: int
    segment: str
    field: int | None
    text: str


@dataclass(frozen=True)
class Envelope:
    """MSH fields the ACK echoes: read even from a message refused later."""

    control_id: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    trigger: str = ""


class Rejection(ValidationFailed):
    """Nothing is sent. `ack_code` AR: the message itself is refused (not HL7, an event or
    version not handled); AE: it was read and a rule failed. `status`: the HTTP answer."""

    def __init__(
        self,
        problems: list[Problem],
        *,
        envelope: Envelope,
        ack_code: Literal["AE", "AR"] = "AE",
        status: int = 422,
    ) -> None:
        if len(problems) > MAX_PROBLEMS:
            # One ERR per bad segment would make an ACK as large as the body.
            more = len(problems) - MAX_PROBLEMS + 1
            last = Problem(OTHER, "MSH", None, f"{more} more problems not listed")
            problems = [*problems[: MAX_PROBLEMS - 1], last]
        super().__init__("; ".join(p.text for p in problems))
        self.problems = problems
        self.envelope = envelope
        self.ack_code = ack_code
        self.status = status


@dataclass(frozen=True)
class Author:
    rpps: str | None
    family: str | None
    given: str | None


@dataclass(frozen=True)
class Submission:
    event: Event
    envelope: Envelope
    ins: INS
    cda: bytes
    document: CdaDocument
    pdf: bytes | None
    recipients: tuple[str, ...]
    reply_to: str | None
    flags: dict[str, str] = field(default_factory=dict)
    author: Author = Author(None, None, None)
    action: Action = "new"

    @property
    def unique_id(self) -> str | None:
        return format_identifier(self.document.header.document_id)


# -- reading values out of python-hl7's tree ---------------------------------------------


def _part(node: object, index: int) -> object:
    """The index-th (1-based) child of a python-hl7 container, '' when absent."""
    if isinstance(node, str):
        return node if index == 1 else ""
    if isinstance(node, list):
        return node[index - 1] if 0 < index <= len(node) else ""
    return ""


def value(segment: hl7.Segment, number: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
    """Field `number` of `segment` (MSH counted as HL7 counts it), component, subcomponent,
    repetition; '' when absent. Escapes are left as sent."""
    node: object = _part(segment, number + 1)
    if isinstance(node, hl7.Field) and node and isinstance(node[0], hl7.Repetition):
        node = _part(node, rep)
    elif rep != 1:
        return ""
    node = _part(node, comp) if isinstance(node, list) else (node if comp == 1 else "")
    node = _part(node, sub) if isinstance(node, list) else (node if sub == 1 else "")
    while isinstance(node, list):  # a leaf wrapped in one-element containers
        node = _part(node, 1)
    return str(node)


def repetitions(segment: hl7.Segment, number: int) -> int:
    node = _part(segment, number + 1)
    if isinstance(node, hl7.Field) and node and isinstance(node[0], hl7.Repetition):
        return len(node)
    return 1


def unescape(message: hl7.Message, text: str) -> str:
    return str(message.unescape(text)) if "\\" in text else text


# -- the message ---------------------------------------------------------------------------


def parse_er7(body: bytes) -> hl7.Message:
    """The body as python-hl7's tree; AR when it is not an HL7 v2 message."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_hl7("the body is not UTF-8 (MSH-18 UNICODE UTF-8)") from None
    if _RAW_CONTROL.search(text):
        raise _not_hl7("the body holds a control character (escape it: \\Xhh\\)")
    segments = [s for s in _SEGMENT_SPLIT.split(text.strip("\r\n")) if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise _not_hl7("the body does not start with an MSH segment")
    try:
        return hl7.parse("\r".join(segments))
    except (hl7.ParseException, ValueError, IndexError) as exc:
        raise _not_hl7(f"not an HL7 v2 message ({type(exc).__name__})") from None


def _not_hl7(text: str) -> Rejection:
    return refuse(SEGMENT_SEQUENCE, "MSH", None, text, Envelope(), ack="AR", status=400)


def refuse(
    code: int,
    segment: str,
    number: int | None,
    text: str,
    env: Envelope,
    *,
    ack: Literal["AE", "AR"] = "AE",
    status: int = 422,
) -> Rejection:
    return Rejection(
        [Problem(code, segment, number, text)], envelope=env, ack_code=ack, status=status
    )


def envelope_of(message: hl7.Message) -> Envelope:
    msh = message.segment("MSH")
    return Envelope(
        control_id=value(msh, 10),
        sending_application=value(msh, 3),
        sending_facility=value(msh, 4),
        receiving_application=value(msh, 5),
        receiving_facility=value(msh, 6),
        trigger=value(msh, 9, 2),
    )


def _segments(message: hl7.Message, name: str) -> list[hl7.Segment]:
    return [s for s in message if str(_part(s, 1)) == name]


@dataclass(frozen=True)
class Rules:
    limits: DocumentLimits
    allow_test_oids: bool
    patient_domain: str


def read_submission(message: hl7.Message, rules: Rules) -> Submission:
    """The checks of the contract in order; the first failing family refuses the message
    with every problem of that family found."""
    env = envelope_of(message)
    msh = message.segment("MSH")
    if not env.control_id:
        raise refuse(
            REQUIRED_MISSING, "MSH", 10, "MSH-10 (control id) is empty", env, ack="AR", status=400
        )
    if len(env.control_id) > 64:
        raise refuse(
            DATA_TYPE, "MSH", 10, "MSH-10 is longer than 64 characters", env, ack="AR", status=400
        )
    event = f"{value(msh, 9, 1)}^{value(msh, 9, 2)}"
    if event not in EVENTS:
        code = UNSUPPORTED_TYPE if value(msh, 9, 1) not in ("MDM", "ORU") else UNSUPPORTED_EVENT
        raise refuse(
            code,
            "MSH",
            9,
            f"event {event[:20]!r} is not accepted: MDM^T02, MDM^T10, MDM^T04, ORU^R01",
            env,
            ack="AR",
        )
    if not value(msh, 12).startswith("2."):
        raise refuse(
            UNSUPPORTED_VERSION, "MSH", 12, "MSH-12 must be an HL7 v2 version", env, ack="AR"
        )
    ins = _patient_ins(message, env, rules)
    cda, pdf, flags, action = _observations(message, env, event)
    document = _document(cda, env, rules)
    _same_patient(document, ins, env)
    if action == "replace" and not document.header.replaces:
        raise refuse(
            OTHER,
            "OBX",
            5,
            f'{event} (OBX-11 C) needs a CDA with relatedDocument typeCode="RPLC" naming '
            "the replaced document",
            env,
        )
    professionals, reply_to = _participants(message, env)
    recipients = _recipients(professionals, flags, ins, env, rules)
    return Submission(
        event=event,  # type: ignore[arg-type]
        envelope=env,
        ins=ins,
        cda=cda,
        document=document,
        pdf=pdf,
        recipients=recipients,
        reply_to=reply_to,
        flags=flags,
        author=_author(message, env, document),
        action=action,
    )


def _patient_ins(message: hl7.Message, env: Envelope, rules: Rules) -> INS:
    pids = _segments(message, "PID")
    if len(pids) != 1:
        raise refuse(SEGMENT_SEQUENCE, "PID", None, "exactly one PID segment is needed", env)
    pid = pids[0]
    for rep in range(1, repetitions(pid, 3) + 1):
        oid = value(pid, 3, 4, 2, rep=rep)
        if value(pid, 3, 5, rep=rep) == "INS" or oid in INS_OIDS:
            matricule = value(pid, 3, 1, rep=rep)
            try:
                return parse_ins(matricule, oid, allow_test_oids=rules.allow_test_oids)
            except InvalidINS as exc:
                raise refuse(DATA_TYPE, "PID", 3, f"PID-3 INS refused: {exc}", env) from None
    raise refuse(INS_ABSENT, "PID", 3, "PID-3 carries no INS (identifier type INS)", env)


def _decode(data: str, env: Envelope, what: str) -> bytes:
    try:
        return base64.b64decode(data.replace("\\.br\\", ""), validate=True)
    except (binascii.Error, ValueError):
        raise refuse(DATA_TYPE, "OBX", 5, f"OBX-5 {what}: broken base64", env) from None


def _observations(
    message: hl7.Message, env: Envelope, event: str
) -> tuple[bytes, bytes | None, dict[str, str], Action]:
    cdas: list[bytes] = []
    pdfs: list[bytes] = []
    flags: dict[str, str] = {}
    statuses: list[str] = []  # OBX-11 of each OBX carrying a document
    problems: list[Problem] = []
    for obx in _segments(message, "OBX"):
        kind = value(obx, 2)
        status = value(obx, 11)
        if status not in ("F", "C", "D", ""):
            text = f"{event}: OBX-11 must be F (new), C (replacement) or D (deletion)"
            problems.append(Problem(TABLE_VALUE, "OBX", 11, text))
            continue
        if value(obx, 3, 3) == META_SYSTEM:
            code, flag = value(obx, 3, 1), value(obx, 5, 1)
            if code not in META_FLAGS:
                text = f"unknown MetaDMPMSS code {code[:30]!r}"
                problems.append(Problem(TABLE_VALUE, "OBX", 3, text))
            elif flag not in ("Y", "N"):
                problems.append(Problem(TABLE_VALUE, "OBX", 5, f"{code} must be Y or N"))
            elif flags.get(code, flag) != flag:
                problems.append(Problem(TABLE_VALUE, "OBX", 5, f"{code} given twice, differently"))
            else:
                flags[code] = flag
            continue
        if kind != "ED":
            continue
        subtype, encoding = value(obx, 5, 3).upper(), value(obx, 5, 4)
        if encoding.lower() != "base64":
            problems.append(Problem(DATA_TYPE, "OBX", 5, "OBX-5 ED data must be Base64"))
            continue
        data = value(obx, 5, 5)
        if subtype in CDA_SUBTYPES or subtype == "PDF":
            statuses.append(status or "F")
        if subtype in CDA_SUBTYPES:
            cdas.append(_decode(data, env, "CDA"))
        elif subtype == "PDF":
            pdf = _decode(data, env, "PDF")
            if not looks_like_pdf(pdf):
                problems.append(Problem(DATA_TYPE, "OBX", 5, "OBX-5 PDF is not a PDF"))
            pdfs.append(pdf)
    problems.extend(_status_problems(event, statuses))
    if problems:
        raise Rejection(problems, envelope=env)
    if len(cdas) != 1:
        text = "no OBX of type ED carries a CDA" if not cdas else "more than one CDA"
        raise refuse(REQUIRED_MISSING, "OBX", 5, text, env)
    if len(pdfs) > 1:
        raise refuse(OTHER, "OBX", 5, "more than one PDF", env)
    return cdas[0], (pdfs[0] if pdfs else None), flags, ACTION_STATUS[statuses[0]]


def _status_problems(event: str, statuses: list[str]) -> list[Problem]:
    """The documents' OBX-11 against the event: an MDM's event fixes it (a T02 whose OBX
    says D would send as new what the RIS means to withdraw); an ORU takes it from there,
    the same for every document it carries (N1 and N3 of one document)."""
    expected = MDM_STATUS.get(event)
    if expected is not None:
        return [
            Problem(
                TABLE_VALUE,
                "OBX",
                11,
                f"{event} needs OBX-11 {expected} on the document's OBX, not {status}",
            )
            for status in dict.fromkeys(statuses)
            if status != expected
        ]
    if len(set(statuses)) > 1:
        shown = ", ".join(sorted(set(statuses)))
        text = f"{event}: the documents' OBX carry different OBX-11 ({shown})"
        return [Problem(TABLE_VALUE, "OBX", 11, text)]
    return []


def _document(cda: bytes, env: Envelope, rules: Rules) -> CdaDocument:
    try:
        document = parse_cda(cda, rules.limits)
    except DocumentError as exc:
        raise refuse(OTHER, "OBX", 5, f"CDA refused: {exc}", env) from None
    header = document.header
    if "1.2.250.1.213.1.1.1.1" not in header.template_ids or not header.code:
        raise refuse(
            OTHER,
            "OBX",
            5,
            "the CDA is not a CI-SIS document "
            "(templateId 1.2.250.1.213.1.1.1.1 and a code are required)",
            env,
        )
    return document


def _same_patient(document: CdaDocument, ins: INS, env: Envelope) -> None:
    ids = document.header.ins_ids
    if not ids:
        raise refuse(INS_ABSENT, "OBX", 5, "the CDA's recordTarget carries no INS", env)
    if all(i.extension != ins.value or i.root != ins.oid for i in ids):
        raise refuse(INS_MISMATCH, "PID", 3, "the INS of the CDA is not PID-3's", env)


def _participants(message: hl7.Message, env: Envelope) -> tuple[list[str], str | None]:
    recipients: list[str] = []
    reply_to: str | None = None
    problems: list[Problem] = []
    for prt in _segments(message, "PRT"):
        role = value(prt, 4, 1)
        if role not in ("RCT", "REPLY"):
            continue
        address = ""
        for rep in range(1, repetitions(prt, 15) + 1):
            candidate = value(prt, 15, 4, rep=rep)
            # The use code X.400 (the guide's) or Internet; else the first address given.
            if candidate and value(prt, 15, 3, rep=rep) in ("X.400", "Internet"):
                address = candidate
                break
            address = address or candidate
        try:
            normal = normalize_address(unescape(message, address))
        except ValidationFailed:
            problems.append(Problem(DATA_TYPE, "PRT", 15, "PRT-15.4 is not a mail address"))
            continue
        if role == "REPLY":
            reply_to = normal
        elif normal not in recipients:
            if len(recipients) == MAX_RECIPIENTS:
                # Refused at once: a body at the cap holds ~400,000 PRT segments.
                raise refuse(OTHER, "PRT", None, f"more than {MAX_RECIPIENTS} recipients", env)
            recipients.append(normal)
    if problems:
        raise Rejection(problems, envelope=env)
    return recipients, reply_to


# The guide's matrix (regles-gestion-mssante): each row lists, per flag, the values it allows;
# a flag not listed in a row may take any value; a flag absent from the message counts as N.
_MATRIX: Final[tuple[dict[str, frozenset[str]], ...]] = (
    {  # professionals and the patient
        "MASQUE_PS": frozenset("N"), "INVISIBLE_PATIENT": frozenset("N"),
        "INVISIBLE_REP_LEGAUX": frozenset("N"), "CONNEXION_SECRETE": frozenset("N"),
        "DESTMSSANTEPS": frozenset("Y"), "DESTMSSANTEPAT": frozenset("Y"),
    },
    {  # professionals only
        "INVISIBLE_PATIENT": frozenset("Y"), "INVISIBLE_REP_LEGAUX": frozenset("N"),
        "CONNEXION_SECRETE": frozenset("N"), "DESTMSSANTEPS": frozenset("Y"),
        "DESTMSSANTEPAT": frozenset("N"),
    },
    {  # the patient only
        "INVISIBLE_PATIENT": frozenset("N"), "CONNEXION_SECRETE": frozenset("N"),
        "DESTDMP": frozenset("N"), "DESTMSSANTEPS": frozenset("N"),
        "DESTMSSANTEPAT": frozenset("Y"),
    },
)  # fmt: skip


def matrix_row(flags: dict[str, str]) -> tuple[bool, bool] | None:
    """(to professionals, to the patient) for these MetaDMPMSS flags, None when the guide's
    matrix has no row for them. No flag at all: professionals only."""
    if not flags:
        return True, False
    for row in _MATRIX:
        if all(flags.get(name, "N") in allowed for name, allowed in row.items()):
            return row["DESTMSSANTEPS"] == frozenset("Y"), row["DESTMSSANTEPAT"] == frozenset("Y")
    return None


def _recipients(
    professionals: list[str], flags: dict[str, str], ins: INS, env: Envelope, rules: Rules
) -> tuple[str, ...]:
    row = matrix_row(flags)
    if row is None:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(flags.items()))
        raise refuse(
            TABLE_VALUE, "OBX", 5, f"MetaDMPMSS flags outside the guide's matrix: {shown}", env
        )
    to_professionals, to_patient = row
    patient_domain = rules.patient_domain.lower()
    if any(a.rsplit("@", 1)[1] == patient_domain for a in professionals):
        # The flags alone decide whether the patient receives (INVISIBLE_PATIENT): a PRT at
        # the patient domain would bypass them, or send this patient's document to another.
        raise refuse(
            OTHER,
            "PRT",
            15,
            f"an address at {patient_domain} is not a PRT recipient: the patient's mailbox "
            "is named by the MetaDMPMSS flags (DESTMSSANTEPAT)",
            env,
        )
    if professionals and not to_professionals:
        raise refuse(OTHER, "PRT", 4, "PRT recipients given with DESTMSSANTEPS=N", env)
    recipients = list(professionals)
    if to_patient:
        # Lower case as every address the gateway routes (an INS of Corsica holds 2A/2B).
        recipients.append(f"{ins.value}@{patient_domain}".lower())
    if not recipients:
        raise refuse(
            REQUIRED_MISSING,
            "PRT",
            4,
            "no recipient: a PRT with PRT-4 RCT and an address in PRT-15 is needed",
            env,
        )
    return tuple(recipients)


# What an author's id or name may not hold once unescaped: HL7 separators (it is written
# into the XCN of METADATA.XML's authorPerson, where a `^` or `&` would shift its components
# and name another assigning authority) and control characters (no XML carries them).
_NOT_IN_XCN: Final = re.compile(r"[|^~\\&\x00-\x1f\x7f]")


def _author(message: hl7.Message, env: Envelope, document: CdaDocument) -> Author:
    """The author: TXA-5 (or TXA-22), else the CDA's first author RPPS."""
    for txa in _segments(message, "TXA"):
        for number in (5, 22):
            rpps = value(txa, number, 1)
            if rpps:
                parts = [unescape(message, value(txa, number, c)) for c in (1, 2, 3)]
                if any(_NOT_IN_XCN.search(p) for p in parts):
                    text = f"TXA-{number}: the author holds an HL7 separator or control character"
                    raise refuse(DATA_TYPE, "TXA", number, text, env)
                return Author(rpps=parts[0], family=parts[1] or None, given=parts[2] or None)
    first = document.header.author_rpps[0] if document.header.author_rpps else None
    return Author(rpps=first, family=None, given=None)
