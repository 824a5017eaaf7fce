"""ZAM business acknowledgements from a status: Z02 Y once taken, Z02 N with the
SMTPERRORCODE in ERR-5 on a failure, Z03 once read; stable control ids."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7  # type: ignore[import-untyped]

from mssgate.outbound.store import OutboundStatus, RecipientStatus
from mssgate.outbound.zam import smtp_error_code, zam_items

AT = datetime(2026, 12, 4, 16, 0, tzinfo=UTC)


def test_failure_read_and_reception() -> None:
    status = OutboundStatus(
        id="OUT1",
        event="MDM^T02",
        recipients=[
            RecipientStatus(address="a@peer.test", status="failed", code="5.1.1",
                            detail="550 5.1.1 no such user", reply_code=550, changed_at=AT),
            RecipientStatus(address="b@local.test", status="read", changed_at=AT),
            RecipientStatus(address="c@peer.test", status="queued"),
        ],
    )  # fmt: skip
    made = zam_items(status, original_control_id="CTL-9", facility="gw.test", ris=("RIS", "C"))
    assert [(z.trigger, z.position, z.accepted) for z in made] == [
        ("Z02", 1, False), ("Z02", 2, True), ("Z03", 2, True)
    ]  # fmt: skip
    zams = [hl7.parse(z.er7) for z in made]
    assert [str(z.segment("MSH")[9]) for z in zams] == [
        "ZAM^Z02^ZAM_Z01", "ZAM^Z02^ZAM_Z01", "ZAM^Z03^ZAM_Z01"
    ]  # fmt: skip
    assert [str(z.segment("MSH")[10]) for z in zams] == ["OUT1-1-Z02N", "OUT1-2-Z02", "OUT1-2-Z03"]
    failed = zams[0]
    assert str(failed.segments("OBX")[0][5]) == "N^^expandedYes-NoIndicator"
    err = failed.segment("ERR")
    assert str(err[3]) == "207^Application error^messageErrorCondition"
    # 5.1.1 is not in the table: the basic reply code is.
    assert str(err[5]).startswith("550^550 5.1.1 no such user^SMTPERRORCODE")
    read = zams[2]
    assert str(read.segments("OBX")[0][3]).startswith("ACK_LECTURE_MSS^")
    assert str(read.segments("OBX")[1][5]) == "^^X.400^b@local.test"


def test_smtp_error_code_folds_the_enhanced_status_when_the_table_has_it() -> None:
    def failed(code: str | None, reply: int | None) -> RecipientStatus:
        return RecipientStatus(address="x@y.test", status="failed", code=code, reply_code=reply)

    assert smtp_error_code(failed("5.1.0", 550)) == 510
    assert smtp_error_code(failed("5.2.3", 552)) == 523
    assert smtp_error_code(failed("5.7.1", 554)) == 554
    assert smtp_error_code(failed(None, None)) == 554
    assert smtp_error_code(failed("4.2.1", 421)) == 421


def test_a_peers_failure_text_cannot_add_a_segment_or_break_a_frame() -> None:
    """ERR-5.2 is the peer's words: separators, line ends and control characters (MLLP's
    VT and FS frame bytes among them) are escaped or dropped, never a segment or field."""
    text = "550 no\r\nPID|1||X\\E\\~&^|\x0b\x1c\x00\u2028end"
    status = OutboundStatus(
        id="OUT2", event="MDM^T02",
        recipients=[RecipientStatus(address="a@peer.test", status="failed", code="5.1.1",
                                    detail=text, reply_code=550, changed_at=AT)],
    )  # fmt: skip
    [item] = zam_items(status, original_control_id="C", facility="gw", ris=("R", "C"))
    zam = item.er7
    body = zam.rstrip("\r")
    assert not any(ord(c) < 32 and c != "\r" for c in body)
    assert "\u2028" not in body
    parsed = hl7.parse(zam)
    assert [str(s[0]) for s in parsed] == ["MSH", "OBX", "OBX", "ERR"]
    err = parsed.segment("ERR")
    assert len(err) == 6 and str(err[5][0][2]) == "SMTPERRORCODE"
