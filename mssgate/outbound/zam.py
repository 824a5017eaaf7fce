"""Business acknowledgements (ANS guide, volume 2): ZAM^Z02^ZAM_Z01 "accusé de réception
MSSanté" per recipient once its operator took the message (or refused it), ZAM^Z03^ZAM_Z01
"accusé de lecture" once it was read. Built with python-hl7's tree, from the status.

OBX 1 `ACK_RECEPTION_MSS` (or `ACK_LECTURE_MSS`) ^AckMetierZAM, OBX-4 the MSH-10 of the
message that carried the document, OBX-5 `Y` or `N` ^expandedYes-NoIndicator; OBX 2
`DESTINATAIRE_MSS` (or `LECTEUR_MSS`), XTN `^^X.400^<address>`; on `N` an ERR with ERR-3
`207^Application error^messageErrorCondition`, ERR-4 `E` and ERR-5 `<code>^<label>^SMTPERRORCODE`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import hl7  # type: ignore[import-untyped]

from mssgate.outbound.ack import SENDING_APPLICATION
from mssgate.outbound.store import OutboundStatus, RecipientStatus
from mssgate.queue.hl7mdm import ENCODING_CHARACTERS, FieldValue, escape, hl7_field, hl7_segment

PROFILE: Final = ("2.1", "CISIS_CDA_HL7_V2")
# The guide's SMTPERRORCODE table (error-codes): basic reply codes, or an enhanced status
# x.y.z folded into xyz (5.1.0 -> 510).
SMTP_ERROR_CODES: Final = frozenset(
    {101, 111, 251, 252, 420, 421, 422, 431, 432, 441, 442, 450, 451, 452, 500, 501, 502, 503,
     504, 510, 512, 513, 523, 530, 541, 550, 551, 552, 553, 554}
)  # fmt: skip


# The peer's words go into ERR-5.2: escape() takes the separators and line ends; any other
# control character (MLLP frames with VT and FS) or Unicode line break becomes a space.
_CONTROL: Final = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")


def smtp_error_code(status: RecipientStatus) -> int:
    """The SMTPERRORCODE of a failure: the enhanced status folded when the table has it,
    else the basic reply code, else 554 (transaction failed)."""
    if status.code:
        parts = status.code.split(".")
        if len(parts) == 3 and all(p.isdigit() and len(p) == 1 for p in parts):
            folded = int("".join(parts))
            if folded in SMTP_ERROR_CODES:
                return folded
    if status.reply_code in SMTP_ERROR_CODES:
        assert status.reply_code is not None
        return status.reply_code
    return 554


def _msh(
    trigger: str, control_id: str, moment: datetime, facility: str, ris: tuple[str, str]
) -> hl7.Segment:
    fields: list[FieldValue] = [
        SENDING_APPLICATION, escape(facility), escape(ris[0]), escape(ris[1]),
        moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000"), "", ["ZAM", trigger, "ZAM_Z01"],
        escape(control_id), "P", "2.6", "", "", "", "", "FRA", "UNICODE UTF-8", "", "",
        list(PROFILE),
    ]  # fmt: skip
    return hl7.Segment(
        sequence=[
            hl7.Field(sequence=["MSH"]),
            hl7.Field(sequence=["|"]),
            hl7.Field(sequence=[ENCODING_CHARACTERS]),
            *(hl7_field(f) for f in fields),
        ]
    )


def _zam(
    *, trigger: str, code: str, label: str, who: str, who_label: str, ok: bool,
    control_id: str, original: str, address: str, moment: datetime, facility: str,
    ris: tuple[str, str], error: RecipientStatus | None = None,
) -> str:  # fmt: skip
    segments = [
        _msh(trigger, control_id, moment, facility, ris),
        hl7_segment("OBX", "1", "CWE", [code, escape(label), "AckMetierZAM"], escape(original),
                 ["Y" if ok else "N", "", "expandedYes-NoIndicator"], "", "", "", "", "", "F"),
        hl7_segment("OBX", "2", "XTN", [who, escape(who_label), "AckMetierZAM"], "",
                 ["", "", "X.400", escape(address)], "", "", "", "", "", "F"),
    ]  # fmt: skip
    if error is not None:
        smtp = smtp_error_code(error)
        detail = escape(_CONTROL.sub(" ", (error.detail or "delivery failed")[:200]))
        segments.append(
            hl7_segment("ERR", "", "", ["207", "Application error", "messageErrorCondition"], "E",
                     [str(smtp), detail, "SMTPERRORCODE"])
        )  # fmt: skip
    return str(hl7.Message(sequence=segments)) + "\r"


@dataclass(frozen=True)
class Zam:
    """One business acknowledgement with what the queue keeps beside its ER7."""

    control_id: str  # MSH-10, stable: `<outbound id>-<n>-Z02` (Z02N a failure, Z03)
    trigger: str  # Z02 (reception) or Z03 (reading)
    position: int  # n, the recipient's place in the status
    recipient: str
    accepted: bool  # OBX-5: Y, or N with an ERR
    er7: str


def zam_items(
    status: OutboundStatus, *, original_control_id: str, facility: str, ris: tuple[str, str]
) -> list[Zam]:
    """Every ZAM the status warrants so far, in recipient order, reception before reading.
    Their MSH-10 is stable (`<id>-<n>-Z02`, `-Z02N` for a failure, `-Z03`), so a RIS that
    polls twice sees the same ones."""
    out: list[Zam] = []
    for n, r in enumerate(status.recipients, start=1):
        moment = r.changed_at or datetime.now(UTC)
        common = {"original": original_control_id, "address": r.address, "moment": moment,
                  "facility": facility, "ris": ris}  # fmt: skip
        if r.status in ("sent", "delivered", "read", "failed"):
            failed = r.status == "failed"
            # A failure has its own MSH-10: one reported after the peer's 250 (a DSN) is a
            # new ZAM beside the Y already given, not the same one made again.
            control_id = f"{status.id}-{n}-Z02" + ("N" if failed else "")
            er7 = _zam(trigger="Z02", code="ACK_RECEPTION_MSS", label="Accusé de réception MSSanté",
                       who="DESTINATAIRE_MSS", who_label="Destinataire MSSanté", ok=not failed,
                       control_id=control_id, error=r if failed else None, **common)  # type: ignore[arg-type]  # fmt: skip
            out.append(Zam(control_id, "Z02", n, r.address, not failed, er7))
        if r.status == "read":
            control_id = f"{status.id}-{n}-Z03"
            er7 = _zam(trigger="Z03", code="ACK_LECTURE_MSS", label="Accusé de lecture",
                       who="LECTEUR_MSS", who_label="Lecteur du courriel MSSanté", ok=True,
                       control_id=control_id, **common)  # type: ignore[arg-type]  # fmt: skip
            out.append(Zam(control_id, "Z03", n, r.address, True, er7))
    return out
