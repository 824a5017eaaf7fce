"""The HL7 ACK answered to a submission (ACK^<trigger>^ACK), built with python-hl7's tree.

MSA-1 AA/AE/AR, MSA-2 the submitted MSH-10; one ERR per problem: ERR-2 where (segment^1^
field), ERR-3 the code (HL7 table 0357, or the ANS guide's 9xx integration codes), ERR-4
severity E, ERR-8 the reason in words. Values are escaped as the MDM builder does (UTF-8 kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import hl7  # type: ignore[import-untyped]

from mssgate.outbound.hl7in import LABELS, Envelope, Problem
from mssgate.queue.hl7mdm import ENCODING_CHARACTERS, FieldValue, escape, hl7_field, hl7_segment

SENDING_APPLICATION = "MSSGATE"


def _table(code: int) -> str:
    return "HL70357" if code < 900 else "ANS_ERRORCODES"


def build_ack(
    code: str,
    envelope: Envelope,
    *,
    facility: str,
    problems: Sequence[Problem] = (),
    now: datetime | None = None,
) -> str:
    """The ACK, segments separated by CR. `envelope` may be empty (a body that was no HL7):
    MSA-2 is then empty, there being no MSH-10 to echo."""
    moment = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    msh_fields: list[FieldValue] = [
        SENDING_APPLICATION,
        escape(facility),
        escape(envelope.sending_application),
        escape(envelope.sending_facility),
        moment,
        "",
        ["ACK", escape(envelope.trigger), "ACK"],
        escape(f"ACK{envelope.control_id}"[:199]),
        "P",
        "2.6",
        "",
        "",
        "",
        "",
        "FRA",
        "UNICODE UTF-8",
    ]
    msh = hl7.Segment(
        sequence=[
            hl7.Field(sequence=["MSH"]),
            hl7.Field(sequence=["|"]),
            hl7.Field(sequence=[ENCODING_CHARACTERS]),
            *(hl7_field(f) for f in msh_fields),
        ]
    )
    segments = [msh, hl7_segment("MSA", code, escape(envelope.control_id))]
    for problem in problems:
        where: FieldValue = [problem.segment, "1", str(problem.field or "")]
        label = LABELS.get(problem.code, "")
        segments.append(
            hl7_segment(
                "ERR",
                "",
                where,
                [str(problem.code), escape(label), _table(problem.code)],
                "E",
                "",
                "",
                "",
                escape(problem.text[:500]),
            )
        )
    return str(hl7.Message(sequence=segments)) + "\r"
