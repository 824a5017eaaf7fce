"""Deletion and correction (issue 15): MDM^T04 and ORU^R01 with OBX-11 D withdraw a document,
ORU^R01 with OBX-11 C replaces one as MDM^T10 does; an OBX-11 that contradicts the event is
refused. What a withdrawal sends passes our own pipeline as a withdrawn document, which the
receiving RIS gets as MDM^T04. CDA-sourced values holding HL7 separators travel escaped in
the XDM metadata and come back whole."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import UTC, datetime

import hl7  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from mssgate.documents import process_message
from mssgate.documents.hl7values import escape, parse_source_patient_info, parse_xcn, unescape
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.samples import PAT_TROIS, CdaSpec, make_cda
from mssgate.documents.xdm import XdmEntry, parse_metadata
from mssgate.documents.ziparchive import read_zip
from mssgate.outbound.compose import (
    ASSOCIATION_STATUS,
    STATUS_DEPRECATED,
    build_message,
    subject,
    xdm_archive,
)
from mssgate.outbound.hl7in import Rejection, Rules, Submission, parse_er7, read_submission
from mssgate.queue.hl7mdm import MdmEnvelope, build_mdm
from tests.smtp.conftest import ALICE
from tests.smtp.test_outbound_gateway import mdm

RULES = Rules(limits=DocumentLimits(), allow_test_oids=True, patient_domain="patient.test")
NOW = datetime(2026, 12, 4, tzinfo=UTC)
SENDER = "ris@hopital-a.test"
OLD_ID, NEW_ID = "1.2.250.1.999.1.1.45.1", "1.2.250.1.999.1.1.45.2"


def with_status(body: bytes, status: str) -> bytes:
    """The document OBX's OBX-11 set to `status` (the helper writes the event's own)."""
    segments = body.split(b"\r")
    for n, segment in enumerate(segments):
        if segment.startswith(b"OBX|1|ED|"):
            fields = segment.split(b"|")
            fields[11] = status.encode()
            segments[n] = b"|".join(fields)
    return b"\r".join(segments)


def read(body: bytes) -> Submission:
    return read_submission(parse_er7(body), RULES)


def refusal(body: bytes) -> Rejection:
    with pytest.raises(Rejection) as caught:
        read(body)
    return caught.value


# -- the events and OBX-11 -------------------------------------------------------------------


def test_mdm_t04_with_obx11_d_is_a_deletion() -> None:
    submission = read(mdm(event="MDM^T04^MDM_T02"))
    assert (submission.event, submission.action) == ("MDM^T04", "delete")
    assert submission.unique_id == OLD_ID


def test_oru_r01_says_by_obx11_whether_it_sends_replaces_or_withdraws() -> None:
    oru = "ORU^R01^ORU_R01"
    assert read(mdm(event=oru)).action == "new"
    assert read(with_status(mdm(event=oru), "D")).action == "delete"
    replacing = make_cda(CdaSpec(doc_root=NEW_ID, version=2, replaces=OLD_ID))
    assert read(with_status(mdm(event=oru, cda=replacing), "C")).action == "replace"
    # A correction whose CDA names no replaced document is refused as a T10 is.
    problem = refusal(with_status(mdm(event=oru), "C")).problems[0]
    assert (problem.segment, problem.field) == ("OBX", 5) and "RPLC" in problem.text


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("MDM^T02^MDM_T02", "D"),
        ("MDM^T02^MDM_T02", "C"),
        ("MDM^T04^MDM_T02", "F"),
        ("MDM^T04^MDM_T02", ""),
        ("MDM^T10^MDM_T02", "D"),
        ("MDM^T10^MDM_T02", "F"),
        ("ORU^R01^ORU_R01", "P"),
    ],
)
def test_an_obx11_contradicting_the_event_is_refused_naming_obx11(event: str, status: str) -> None:
    cda = make_cda(CdaSpec(doc_root=NEW_ID, version=2, replaces=OLD_ID))
    rejection = refusal(with_status(mdm(event=event, cda=cda), status))
    assert rejection.ack_code == "AE"
    [problem] = rejection.problems
    assert (problem.code, problem.segment, problem.field) == (103, "OBX", 11)


def test_an_oru_whose_documents_disagree_on_obx11_is_refused() -> None:
    body = mdm(event="ORU^R01^ORU_R01", pdf=b"%PDF-1.4\n%%EOF\n")
    # The CDA's OBX says D, the PDF's F.
    problem = refusal(with_status(body, "D")).problems[0]
    assert (problem.segment, problem.field) == ("OBX", 11)


# -- what a withdrawal sends ------------------------------------------------------------------


def cancellation(submission: Submission) -> tuple[bytes, bytes]:
    xdm = xdm_archive(submission, NOW, sender=SENDER)
    raw = build_message(submission, sender=SENDER, recipient=ALICE, message_id="<t04@test>",
                        mss_fields={}, now=NOW, xdm=xdm)  # fmt: skip
    return xdm, raw


def test_a_withdrawal_sends_the_deprecated_entry_and_its_status_update() -> None:
    submission = read(mdm(event="MDM^T04^MDM_T02", pdf=b"%PDF-1.4\n%%EOF\n"))
    xdm, raw = cancellation(submission)
    contents = read_zip(xdm, DocumentLimits())
    metadata = contents.get("IHE_XDM/SUBSET01/METADATA.XML")
    assert metadata is not None
    root = etree.fromstring(metadata.data)
    # The CDA and its PDF, each Deprecated with its status update: the report went as both.
    entries = list(root.iter("{*}ExtrinsicObject"))
    associations = list(root.iter("{*}Association"))
    assert len(entries) == len(associations) == 2
    uniques = (OLD_ID, f"{OLD_ID}.PDF")
    for entry, association, unique in zip(entries, associations, uniques, strict=True):
        assert entry.get("status") == STATUS_DEPRECATED
        ids = {e.get("value") for e in entry.iter("{*}ExternalIdentifier")}
        assert unique in ids
        assert association.get("associationType") == ASSOCIATION_STATUS
        assert association.get("targetObject") == entry.get("id")
        slots = {s.get("name"): s.findtext("{*}ValueList/{*}Value") for s in association}
        assert slots["NewStatus"] == STATUS_DEPRECATED
        assert str(slots["OriginalStatus"]).endswith(":Approved")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(message["Subject"]).startswith("XDM/1.0/DDM+Annulation : ")
    # No readable copy beside the archive: it would be taken for a document.
    names = [p.get_filename() for p in message.iter_attachments()]
    assert names == ["IHE_XDM.ZIP"]
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "annulé" in text and OLD_ID in text


def test_our_pipeline_reads_a_withdrawal_and_the_ris_gets_mdm_t04() -> None:
    _, raw = cancellation(read(mdm(event="MDM^T04^MDM_T02")))
    result = process_message(raw, allow_test_oids=True)
    [accepted] = result.accepted
    document = accepted.record.document
    assert document.withdrawn and document.unique_id == OLD_ID
    # A replacement is not a withdrawal; T02 is neither.
    replacing = make_cda(CdaSpec(doc_root=NEW_ID, version=2, replaces=OLD_ID))
    _, sent = cancellation(read(mdm(event="MDM^T10^MDM_T02", cda=replacing)))
    [new] = process_message(sent, allow_test_oids=True).accepted
    assert not new.record.document.withdrawn and new.record.document.replaces == OLD_ID
    record = accepted.record.model_copy(
        update={"mailbox": ALICE, "sender": SENDER, "received_at": NOW}
    )
    envelope = MdmEnvelope(
        control_id="Q1", created_at=NOW, sending_facility="gw.test", receiving_application="ris",
        receiving_facility="gw.test", message_id="<t04@test>", subject="s", sender=SENDER,
        mailbox=ALICE, email=raw,
    )  # fmt: skip
    message = hl7.parse(build_mdm(record, accepted.content, envelope))
    assert str(message.segment("MSH")[9]) == "MDM^T04^MDM_T02"
    [document_obx] = [o for o in message.segments("OBX") if str(o[1]) == "1"]
    assert str(document_obx[11]) == "D"
    assert str(message.segment("TXA")[12]) == f"^^{OLD_ID}^ISO" or OLD_ID in str(
        message.segment("TXA")[12]
    )


def test_either_the_status_or_the_status_update_marks_an_entry_withdrawn() -> None:
    xdm, _ = cancellation(read(mdm(event="MDM^T04^MDM_T02")))
    member = read_zip(xdm, DocumentLimits()).get("IHE_XDM/SUBSET01/METADATA.XML")
    assert member is not None
    root = etree.fromstring(member.data)
    [entry] = root.iter("{*}ExtrinsicObject")
    [association] = root.iter("{*}Association")
    del entry.attrib["status"]
    assert metadata_entry(root).deprecated  # the association alone
    parent = association.getparent()
    assert parent is not None
    parent.remove(association)
    assert not metadata_entry(root).deprecated  # neither: a document like any other
    entry.set("status", STATUS_DEPRECATED)
    assert metadata_entry(root).deprecated  # the status alone


def metadata_entry(root: etree._Element) -> XdmEntry:
    _, [entry] = parse_metadata(etree.tostring(root), DocumentLimits())
    return entry


# -- HL7 separators in CDA-sourced values -----------------------------------------------------

AWKWARD = replace(PAT_TROIS, family="PAT^TROIS|&~\\", first_given="DOMI&NIQUE",
                  given_list="DOMI&NIQUE MARIE~LOUISE", birthplace="51215")  # fmt: skip


def test_patient_names_with_separators_pass_our_own_pipeline_unchanged() -> None:
    submission = read(mdm(cda=make_cda(CdaSpec(patient=AWKWARD))))
    _, raw = cancellation(submission)
    [accepted] = process_message(raw, allow_test_oids=True).accepted
    assert accepted.record.patient.birth_family == AWKWARD.family
    assert accepted.record.patient.first_given == AWKWARD.first_given
    assert subject(submission).startswith("XDM/1.0/DDM+")


# Names as a CDA gives them: no control character, no space at either end (the parsers strip).
_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(str.strip)


@settings(max_examples=300, deadline=None)
@given(family=_TEXT, given_name=_TEXT)
def test_escaped_values_come_back_whole(family: str, given_name: str) -> None:
    assert unescape(escape(family)) == family
    info = parse_source_patient_info([f"PID-5|{escape(family)}^{escape(given_name)}^^^^^L"])
    assert info.birth_family == (family or None)
    assert info.first_given == (given_name or None)
    xcn = parse_xcn(f"{escape(family)}^{escape(given_name)}^^^^^^^&1.2.250.1.71.4.2.1&ISO")
    assert (xcn.id, xcn.family) == (family or None, given_name or None)
    assert xcn.authority_oid == "1.2.250.1.71.4.2.1"


# Letters, the separators, the escape character and inner spaces: what a CDA name may hold.
_NAME = (
    st.text(st.sampled_from("AÉZ az-'^&|~\\"), min_size=1, max_size=20).map(str.strip).filter(bool)
)


@settings(max_examples=60, deadline=None)
@given(family=_NAME, given_name=_NAME)
def test_the_xdm_metadata_carries_the_cdas_names_whatever_they_hold(
    family: str, given_name: str
) -> None:
    patient = replace(PAT_TROIS, family=family, first_given=given_name, given_list=given_name)
    submission = read(mdm(cda=make_cda(CdaSpec(patient=patient))))
    xdm = xdm_archive(submission, NOW, sender=SENDER)
    member = read_zip(xdm, DocumentLimits()).get("IHE_XDM/SUBSET01/METADATA.XML")
    assert member is not None
    _, [entry] = parse_metadata(member.data, DocumentLimits())
    traits = submission.document.header.traits
    assert entry.source_patient.birth_family == traits.birth_family
    assert entry.source_patient.first_given == traits.first_given
