"""The MDM^T02/T10 built for a document parses back with python-hl7 and matches the ANS
example message field by field where the profile fixes the content."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import hl7
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.documents import Accepted, process_message
from mssgate.documents.record import DocumentRecord
from mssgate.queue.hl7mdm import MdmEnvelope, build_mdm, escape, hl7_timestamp, parse_mdm
from tests.conftest import shared_fixture
from tests.documents.factory import make_mail
from tests.queue.helpers import cda

EXAMPLES = ("ansforge", "hl7V2-exemples")


def accepted(document: bytes) -> Accepted:
    result = process_message(make_mail([("doc.xml", document, "text/xml")]), allow_test_oids=True)
    [outcome] = result.outcomes
    assert isinstance(outcome, Accepted), getattr(outcome, "reason", None)
    return outcome


def envelope(record: DocumentRecord, *, email: bytes = b"mail") -> MdmEnvelope:
    return MdmEnvelope(
        control_id="0123456789abcdef0123456789abcdef",
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        sending_facility="hopital-a.test",
        receiving_application="ris-a",
        receiving_facility="hopital-a.test",
        message_id="<test-0001@hopital.mssante.fr>",
        subject="XDM/1.0/DDM+CR d'imagerie PAT-TROIS DOMINIQUE 28/03/1979",
        sender="radiologue@hopital.mssante.fr",
        mailbox="ris-a@hopital-a.test",
        email=email,
    )


def get(message: hl7.Message, segment: str, *path: int, n: int = 1) -> str:
    return str(message.extract_field(segment, n, *path))


def obx_count(message: hl7.Message) -> int:
    return len(message.segments("OBX"))


def test_mdm_parses_back_with_the_document_and_the_mail() -> None:
    document = cda(1)
    outcome = accepted(document)
    text = build_mdm(outcome.record, outcome.content, envelope(outcome.record, email=b"RAW"))
    assert "\n" not in text and text.endswith("\r")
    message = parse_mdm(text)
    assert [str(s[0]) for s in message] == [
        "MSH", "EVN", "PID", "PV1", "ORC", "OBR", "TXA", "OBX", "PRT", "PRT",
        "OBX", "OBX", "OBX", "OBX", "OBX",
    ]  # fmt: skip
    assert get(message, "MSH", 9, 1, 1) == "MDM" and get(message, "MSH", 9, 1, 2) == "T02"
    assert get(message, "MSH", 10) == "0123456789abcdef0123456789abcdef"
    assert str(message.segment("PID")[3]) == (
        "279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
    )
    assert get(message, "PID", 5, 1, 1) == "PAT-TROIS"
    assert get(message, "PID", 5, 1, 2) == "DOMINIQUE"
    assert get(message, "PID", 5, 1, 3) == "DOMINIQUE MARIE-LOUISE"
    assert get(message, "PID", 7) == "19790328" and get(message, "PID", 8) == "F"
    assert get(message, "PID", 11, 1, 7) == "BDL" and get(message, "PID", 11, 1, 9) == "51215"
    assert get(message, "PID", 32) == "VALI"
    assert get(message, "TXA", 2) == "18748-4"
    assert get(message, "TXA", 12) == outcome.record.document.unique_id
    assert get(message, "TXA", 13) == ""
    assert get(message, "TXA", 17) == "AU"
    assert get(message, "TXA", 22) == "801234560801"
    assert get(message, "OBX", 2) == "ED" and get(message, "OBX", 3, 1, 1) == "18748-4"
    assert [get(message, "OBX", 5, 1, c) for c in (2, 3, 4)] == ["text", "XML", "Base64"]
    assert base64.b64decode(get(message, "OBX", 5, 1, 5)) == document
    assert get(message, "OBX", 3, 1, 1, n=2) == "<test-0001@hopital.mssante.fr>"
    assert get(message, "OBX", 3, 1, 2, n=2).startswith("XDM/1.0/DDM+CR d'imagerie")
    assert base64.b64decode(get(message, "OBX", 5, 1, 5, n=2)) == b"RAW"
    codes = [get(message, "OBX", 3, 1, 1, n=i) for i in range(3, obx_count(message) + 1)]
    assert codes == ["MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "MODIF_CONF_CODE"]


def test_a_replacement_is_t10_with_the_parent_document() -> None:
    outcome = accepted(cda(2, replaces="1.2.250.1.999.1.1.45.1", version=2))
    assert outcome.record.document.replaces == "1.2.250.1.999.1.1.45.1"
    message = parse_mdm(build_mdm(outcome.record, outcome.content, envelope(outcome.record)))
    assert get(message, "MSH", 9, 1, 2) == "T10"
    assert get(message, "TXA", 13) == "1.2.250.1.999.1.1.45.1"


def test_separators_in_values_are_escaped() -> None:
    outcome = accepted(cda(3))
    env = envelope(outcome.record).model_copy(update={"subject": "a|b^c&d~e\\f\r\ng"})
    message = parse_mdm(build_mdm(outcome.record, outcome.content, env))
    assert get(message, "OBX", 3, 1, 2, n=2) == "a|b^c&d~e\\f\rg"
    assert len(message.segments("OBX")) == 6


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=50))
def test_escape_round_trips_through_the_parser(value: str) -> None:
    # Not the last field: python-hl7 strips trailing white space off a segment.
    segment = hl7.parse(f"MSH|^~\\&|A\rNTE|1||{escape(value)}|end\r").segment("NTE")
    assert segment.extract_field(1, 3) == value


def test_timestamps() -> None:
    assert hl7_timestamp("2005-04-11T10:33:28") == "20050411103328"
    assert hl7_timestamp("2022-12-16T09:32:00+01:00") == "20221216093200+0100"
    assert hl7_timestamp("2022-12-16") == "20221216"
    assert hl7_timestamp("garbage") == "" and hl7_timestamp(None) == ""


def _example() -> hl7.Message:
    path = shared_fixture(*EXAMPLES, "message_MDM__LPS_MSS_CR_Radio_INIT_N1_Base64.er7")
    return hl7.parse(re.sub(r"\r\n|\n|\r", "\r", path.read_text(encoding="utf-8")))


@pytest.mark.shared
@pytest.mark.parametrize("name", ["CR_Radio_CDAN1_v1.XML", "transmission_initiale_cr_imagerie.xml"])
def test_matches_the_ans_example_message(name: str) -> None:
    """Field by field against the ANS MDM^T02 for the same kind of document (CR-IMG N1)."""
    example = _example()
    document = shared_fixture(*EXAMPLES, name).read_bytes()
    outcome = accepted(document)
    ours = parse_mdm(build_mdm(outcome.record, outcome.content, envelope(outcome.record)))
    same = [
        ("MSH", (9,)),
        ("MSH", (11,)),
        ("MSH", (12,)),
        ("MSH", (17,)),
        ("MSH", (18,)),
        ("MSH", (21,)),
        ("PID", (3, 1, 1)),
        ("PID", (3, 1, 4)),
        ("PID", (3, 1, 5)),
        ("PID", (5,)),
        ("PID", (7,)),
        ("PID", (8,)),
        ("PID", (32,)),
        ("PV1", (2,)),
        ("OBR", (4, 1, 1)),
        ("TXA", (2,)),
        ("TXA", (3,)),
        ("TXA", (17,)),
        ("OBX", (2,)),
        ("OBX", (3, 1, 1)),
        ("OBX", (5, 1, 2)),
        ("OBX", (5, 1, 3)),
        ("OBX", (5, 1, 4)),
        ("OBX", (11,)),
    ]
    for segment, path in same:
        mine = ours.segment(segment)
        theirs = example.segment(segment)
        if len(path) == 1:
            assert str(mine[path[0]]) == str(theirs[path[0]]), f"{segment}-{path[0]}"
        else:
            assert mine.extract_field(1, *path) == theirs.extract_field(1, *path), (
                f"{segment}-{'.'.join(map(str, path))}"
            )
    if name == "CR_Radio_CDAN1_v1.XML":
        for segment, field in (("TXA", 12), ("TXA", 22)):
            assert get(ours, segment, field, 1, 1) == get(example, segment, field, 1, 1)
    # Birthplace: the example's second PID-11 repetition, our only one.
    assert example.segment("PID")[11][1][6:9] == ours.segment("PID")[11][0][6:9]
    # OBX-1 carries the CDA itself; OBX-2 the mail under Message-ID^Subject.
    assert base64.b64decode(get(ours, "OBX", 5, 1, 5)) == document
    assert get(ours, "OBX", 2, n=2) == get(example, "OBX", 2, n=2) == "ED"
    assert get(ours, "OBX", 5, 1, 4, n=2) == get(example, "OBX", 5, 1, 4, n=2) == "Base64"
    # The MetaDMP/MSS lines: same codes, labels and value type, in the same order.
    for n in range(3, 7):
        for path in ((2,), (3, 1, 1), (3, 1, 2), (3, 1, 3), (5, 1, 3)):
            assert get(ours, "OBX", *path, n=n) == get(example, "OBX", *path, n=n)


@pytest.mark.shared
def test_the_ans_replacement_example_is_t10_naming_the_replaced_document() -> None:
    """CR_Radio_CDAN1_v2 replaces v1 (relatedDocument RPLC): MDM^T10, TXA-13 = v1's id."""
    document = shared_fixture(*EXAMPLES, "CR_Radio_CDAN1_v2.XML").read_bytes()
    outcome = accepted(document)
    ours = parse_mdm(build_mdm(outcome.record, outcome.content, envelope(outcome.record)))
    assert [get(ours, "MSH", 9, 1, c) for c in (1, 2, 3)] == ["MDM", "T10", "MDM_T02"]
    assert get(ours, "MSH", 12) == "2.6"
    # HL7 v2.6 TXA-12 unique document number, TXA-13 parent document number (EI, root first).
    assert get(ours, "TXA", 12, 1, 1) == "1.2.250.1.71.4.2.2.120456789.71024000082"
    assert get(ours, "TXA", 13, 1, 1) == "1.2.250.1.71.4.2.2.120456789.71024000081"
    assert str(ours.segment("PID")[3]).startswith("279035121518989^^^ASIP-SANTE-INS-NIR&")
    assert base64.b64decode(get(ours, "OBX", 5, 1, 5)) == document
