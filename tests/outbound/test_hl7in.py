"""The HL7 reading and checks of mssgate.outbound without a gateway: the guide's MetaDMPMSS
matrix, the events, ORU^R01's OBX-11, MDM^T10's RPLC, and the ACK's shape."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from mssgate.documents import process_message
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.samples import CdaSpec, make_cda
from mssgate.documents.ziparchive import read_zip
from mssgate.outbound.ack import build_ack
from mssgate.outbound.compose import ASSOCIATION_RPLC, build_message, xdm_archive
from mssgate.outbound.hl7in import (
    MAX_PROBLEMS,
    Rejection,
    Rules,
    matrix_row,
    parse_er7,
    read_submission,
)
from tests.smtp.conftest import ALICE
from tests.smtp.test_outbound_gateway import INS, mdm

RULES = Rules(limits=DocumentLimits(), allow_test_oids=True, patient_domain="patient.test")


@pytest.mark.parametrize(
    ("flags", "row"),
    [
        ({}, (True, False)),
        ({"DESTMSSANTEPS": "Y", "DESTMSSANTEPAT": "Y"}, (True, True)),
        ({"DESTMSSANTEPS": "Y", "DESTMSSANTEPAT": "N", "INVISIBLE_PATIENT": "Y"}, (True, False)),
        ({"DESTMSSANTEPS": "N", "DESTMSSANTEPAT": "Y", "MASQUE_PS": "Y"}, (False, True)),
        # The patient's mailbox while the document is invisible to the patient: no row.
        ({"DESTMSSANTEPAT": "Y", "INVISIBLE_PATIENT": "Y", "DESTMSSANTEPS": "Y"}, None),
        # Professionals only but visible to the patient: not in the guide's matrix either.
        ({"DESTMSSANTEPS": "Y", "DESTMSSANTEPAT": "N"}, None),
        ({"DESTMSSANTEPS": "Y", "DESTMSSANTEPAT": "Y", "CONNEXION_SECRETE": "Y"}, None),
        ({"DESTMSSANTEPS": "N", "DESTMSSANTEPAT": "Y", "DESTDMP": "Y"}, None),
    ],
)
def test_the_guides_matrix(flags: dict[str, str], row: tuple[bool, bool] | None) -> None:
    assert matrix_row(flags) == row


def test_the_patient_mailbox_is_added_when_the_flags_allow_it() -> None:
    body = mdm(flags=(("DESTMSSANTEPS", "Y"), ("DESTMSSANTEPAT", "Y")))
    submission = read_submission(parse_er7(body), RULES)
    assert submission.recipients == (ALICE, f"{INS}@patient.test")
    only = mdm(recipients=(), flags=(("DESTMSSANTEPS", "N"), ("DESTMSSANTEPAT", "Y")))
    assert read_submission(parse_er7(only), RULES).recipients == (f"{INS}@patient.test",)


def test_prt_recipients_with_destmssanteps_n_are_refused() -> None:
    body = mdm(flags=(("DESTMSSANTEPS", "N"), ("DESTMSSANTEPAT", "Y")))
    with pytest.raises(Rejection):
        read_submission(parse_er7(body), RULES)


def test_oru_r01_is_read_and_a_non_final_obx_refused() -> None:
    body = mdm(event="ORU^R01^ORU_R01")
    assert read_submission(parse_er7(body), RULES).event == "ORU^R01"
    preliminary = body.replace(b"||||||F", b"||||||P")
    with pytest.raises(Rejection) as caught:
        read_submission(parse_er7(preliminary), RULES)
    assert caught.value.problems[0].field == 11


def test_t10_needs_a_replacing_cda() -> None:
    with pytest.raises(Rejection):
        read_submission(parse_er7(mdm(event="MDM^T10^MDM_T02")), RULES)
    replacing = make_cda(
        CdaSpec(doc_root="1.2.250.1.999.1.1.45.2", replaces="1.2.250.1.999.1.1.45.1")
    )
    submission = read_submission(parse_er7(mdm(event="MDM^T10^MDM_T02", cda=replacing)), RULES)
    assert (submission.event, submission.action) == ("MDM^T10", "replace")


def test_an_ack_echoes_msh10_and_carries_an_err_per_problem() -> None:
    body = mdm("A-1", recipients=())
    with pytest.raises(Rejection) as caught:
        read_submission(parse_er7(body), RULES)
    ack = build_ack("AE", caught.value.envelope, facility="gw.test", problems=caught.value.problems)
    segments = ack.rstrip("\r").split("\r")
    assert segments[0].startswith("MSH|^~\\&|MSSGATE|gw.test|RIS|CENTRE|")
    assert segments[1] == "MSA|AE|A-1"
    assert segments[2].startswith("ERR||PRT^1^4|101^Required field missing^HL70357|E|")


def test_lines_ending_in_lf_are_read_like_cr() -> None:
    body = mdm().replace(b"\r", b"\n")
    assert read_submission(parse_er7(body), RULES).recipients == (ALICE,)


def test_t10_sends_the_new_version_with_the_rplc_association_and_our_pipeline_reads_it() -> None:
    old_id, new_id = "1.2.250.1.999.1.1.45.1", "1.2.250.1.999.1.1.45.2"
    replacing = make_cda(CdaSpec(doc_root=new_id, version=2, replaces=old_id))
    submission = read_submission(parse_er7(mdm(event="MDM^T10^MDM_T02", cda=replacing)), RULES)
    now = datetime(2026, 12, 4, tzinfo=UTC)
    xdm = xdm_archive(submission, now, sender="ris@hopital-a.test")
    metadata = read_zip(xdm, DocumentLimits()).get("IHE_XDM/SUBSET01/METADATA.XML")
    assert metadata is not None
    [association] = etree.fromstring(metadata.data).iter("{*}Association")
    assert association.get("associationType") == ASSOCIATION_RPLC
    assert association.get("targetObject") == old_id
    raw = build_message(submission, sender="ris@hopital-a.test", recipient=ALICE,
                        message_id="<t10@test>", mss_fields={}, now=now, xdm=xdm)  # fmt: skip
    result = process_message(raw, allow_test_oids=True)
    [accepted] = result.accepted
    assert accepted.record.document.replaces == old_id
    assert accepted.record.document.unique_id == new_id


def test_a_cda_with_an_external_entity_or_a_dtd_is_refused_unread() -> None:
    secret = Path("/etc/hostname")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>'
    ).encode()
    with pytest.raises(Rejection) as caught:
        read_submission(parse_er7(mdm(cda=xxe)), RULES)
    assert [p.code for p in caught.value.problems] == [906]
    assert "CDA refused" in caught.value.problems[0].text


def test_more_than_the_recipient_bound_is_refused_not_truncated() -> None:
    many = tuple(f"dr{n}@hopital-a.test" for n in range(51))
    with pytest.raises(Rejection) as caught:
        read_submission(parse_er7(mdm(recipients=many)), RULES)
    assert "more than 50 recipients" in caught.value.problems[0].text


@pytest.mark.parametrize(
    "flags",
    [
        (),  # no MetaDMPMSS: professionals only
        (("DESTMSSANTEPS", "Y"), ("DESTMSSANTEPAT", "N"), ("INVISIBLE_PATIENT", "Y")),
    ],
)
@pytest.mark.parametrize("mailbox", [INS, "282052B00107734", "1" * 15])
def test_a_prt_at_the_patient_domain_does_not_bypass_the_metadmpmss_gate(
    flags: tuple[tuple[str, str], ...], mailbox: str
) -> None:
    """The patient's mailbox (this patient's or another's) is a recipient only through the
    flags: a PRT naming an address at the patient domain is refused, whatever they say."""
    body = mdm(recipients=(ALICE, f"{mailbox}@patient.test"), flags=flags)
    with pytest.raises(Rejection) as caught:
        read_submission(parse_er7(body), RULES)
    assert [(p.segment, p.field) for p in caught.value.problems] == [("PRT", 15)]


def test_the_patient_mailbox_allowed_by_the_flags_is_not_doubled_by_a_prt() -> None:
    body = mdm(
        recipients=(ALICE, f"{INS}@patient.test"),
        flags=(("DESTMSSANTEPS", "Y"), ("DESTMSSANTEPAT", "Y")),
    )
    with pytest.raises(Rejection):
        read_submission(parse_er7(body), RULES)


@pytest.mark.parametrize(
    "txa5",
    [
        # An escaped ^ and & in TXA-5.2: unescaped, they would shift the XCN of authorPerson
        # in METADATA.XML and name another assigning authority than the RPPS.
        b"801234560801^DOC\\S\\\\S\\\\S\\\\S\\\\S\\\\S\\\\T\\9.9.9\\T\\ISO^KIT",
        b"801234560801\\S\\X^DOC^KIT",
        # A control character (escaped \\X01\\): no XML may carry it (lxml raised, a 500).
        b"801234560801^DOC\\X01\\^KIT",
    ],
)
def test_a_txa_author_with_separators_or_control_characters_is_refused(txa5: bytes) -> None:
    body = mdm().replace(b"|20240116||", b"|20240116|" + txa5 + b"|")
    with pytest.raises(Rejection) as caught:
        submission = read_submission(parse_er7(body), RULES)
        xdm_archive(submission, datetime(2026, 12, 4, tzinfo=UTC), sender="ris@hopital-a.test")
    assert [(p.segment, p.field) for p in caught.value.problems] == [("TXA", 5)]


def test_a_txa_author_is_the_author_person_of_the_metadata() -> None:
    body = mdm().replace(b"|20240116||", b"|20240116|801234560801^DOC^KIT|")
    submission = read_submission(parse_er7(body), RULES)
    assert (submission.author.rpps, submission.author.family) == ("801234560801", "DOC")


def test_the_recipient_bound_stops_the_reading_and_problems_are_bounded() -> None:
    """Thousands of PRT (a body at the cap holds ~400,000): the reading stops at the bound
    (the duplicate check walked a list: quadratic), and a refusal lists a bounded number of
    problems (one ERR per bad segment made an ACK as large as the body)."""
    many = tuple(f"dr{n}@hopital-a.test" for n in range(60)) + ("not an address",) * 5000
    with pytest.raises(Rejection) as caught:
        read_submission(parse_er7(mdm(recipients=many)), RULES)
    assert [p.text for p in caught.value.problems] == ["more than 50 recipients"]
    bad = ("not an address",) * 5000
    with pytest.raises(Rejection) as caught:
        read_submission(parse_er7(mdm(recipients=bad)), RULES)
    assert 1 < len(caught.value.problems) <= MAX_PROBLEMS
    assert "more problems not listed" in caught.value.problems[-1].text
