from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from mssgate.documents import (
    Accepted,
    DocumentLimits,
    PipelineResult,
    QuarantineCode,
    Quarantined,
    mss_headers,
    process_message,
)

from .factory import (
    CORSE,
    NESSI,
    OID_NIR,
    PAT_TROIS,
    CdaSpec,
    EntrySpec,
    cx,
    make_cda,
    make_mail,
    make_metadata,
    make_pdf,
    make_xdm,
    pid_info,
    zip_tree,
)

XDM = "application/zip"
REFS = (
    "ACC-0001^^^&1.2.250.1.999.27&ISO^urn:ihe:iti:xds:2013:accession",
    "1.2.250.1.999.27.123.1^^^&1.2.3.4.5.6&ISO^urn:ihe:iti:xds:2016:studyInstanceUID",
)


def run(raw: bytes, **kwargs: object) -> PipelineResult:
    options: dict[str, object] = {"allow_test_oids": True}
    options.update(kwargs)
    return process_message(raw, **options)  # type: ignore[arg-type]


def only(result: PipelineResult) -> Accepted | Quarantined:
    assert len(result.outcomes) == 1, result.outcomes
    return result.outcomes[0]


def accepted(result: PipelineResult) -> Accepted:
    outcome = only(result)
    assert isinstance(outcome, Accepted), getattr(outcome, "reason", outcome)
    return outcome


def held(result: PipelineResult, code: QuarantineCode) -> Quarantined:
    outcome = only(result)
    assert isinstance(outcome, Quarantined), outcome
    assert outcome.code == code, outcome.reason
    return outcome


def xdm_mail(entries: list[EntrySpec], patient: object = PAT_TROIS, **kwargs: object) -> bytes:
    archive = make_xdm(patient, entries, **kwargs)  # type: ignore[arg-type]
    return make_mail([("IHE_XDM.ZIP", archive, XDM)])


def test_xdm_with_n3_cr_img() -> None:
    cda = make_cda(CdaSpec(version=2, replaces="1.2.250.1.999.1.1.45.0"))
    result = run(xdm_mail([EntrySpec("DOC0001.XML", cda, references=REFS)]))
    outcome = accepted(result)
    record = outcome.record
    assert outcome.content == cda
    assert record.sha256 == hashlib.sha256(cda).hexdigest() and record.size == len(cda)
    assert record.content_type == "text/xml"
    assert record.ins.model_dump() == {
        "value": PAT_TROIS.ins,
        "oid": PAT_TROIS.oid,
        "kind": "NIR",
        "test": True,
        "qualified": True,
        "source": "cda",
    }
    assert record.patient.birth_family == "PAT-TROIS"
    assert record.patient.birth_date == "1979-03-28"
    assert record.patient.birthplace == "51215"
    document = record.document
    assert document.format == "cda-n3"
    assert document.type_code == "18748-4"
    assert document.unique_id == "1.2.250.1.999.1.1.45.1"
    assert document.set_id == "1.2.250.1.999.1.1.45"
    assert (document.version, document.replaces) == (2, "1.2.250.1.999.1.1.45.0")
    assert document.author_rpps == "801234560801"
    assert document.sections[:4] == ("55752-0", "55111-9", "121181", "59776-5")
    assert [(i.study_instance_uid, i.accession_number) for i in record.imaging] == [
        ("1.2.250.1.999.27.123.1", "ACC-0001")
    ]
    assert "IHE_XDM/SUBSET01/DOC0001.XML" in record.origin
    assert result.xdm_cda_codes == ("18748-4",)
    assert mss_headers(result) == {"X-MSS-CODECDA": "18748-4", "X-MSS-INS": "O"}
    assert result.message_id == "<test-0001@hopital.mssante.fr>"


def test_xdm_with_n1_and_matching_pdf_ins() -> None:
    pdf = make_pdf(["Compte rendu", f"INS : {PAT_TROIS.ins}"])
    cda = make_cda(CdaSpec(level="N1", pdf=pdf))
    record = accepted(run(xdm_mail([EntrySpec("DOC0001.XML", cda)]))).record
    assert record.document.format == "cda-n1"
    assert record.ins.value == PAT_TROIS.ins


def test_n1_pdf_naming_another_patient_is_904() -> None:
    pdf = make_pdf([f"N° INS : {NESSI.ins}"])
    cda = make_cda(CdaSpec(level="N1", pdf=pdf))
    outcome = held(run(xdm_mail([EntrySpec("DOC0001.XML", cda)])), QuarantineCode.INS_MISMATCH)
    assert "pdf" in outcome.reason
    assert NESSI.ins not in outcome.reason and PAT_TROIS.ins not in outcome.reason
    assert outcome.content == cda


def test_cda_and_xdm_ins_disagree_is_904() -> None:
    cda = make_cda()
    raw = xdm_mail([EntrySpec("DOC0001.XML", cda, patient_id=cx(NESSI))])
    outcome = held(run(raw), QuarantineCode.INS_MISMATCH)
    assert "cda" in outcome.reason and "xdm" in outcome.reason


def test_traits_disagree_is_904() -> None:
    info = tuple(v.replace("19790328", "19790329") for v in pid_info(PAT_TROIS))
    raw = xdm_mail([EntrySpec("DOC0001.XML", make_cda(), source_patient_info=info)])
    outcome = held(run(raw), QuarantineCode.INS_MISMATCH)
    assert "birth date" in outcome.reason


def test_no_ins_anywhere_is_903() -> None:
    cda = make_cda(CdaSpec(include_ins=False))
    local = "IPP-0001^^^&1.2.3.4.567.8.9.10&ISO^PI"
    raw = xdm_mail([EntrySpec("DOC0001.XML", cda, patient_id=local)], submission_patient=local)
    held(run(raw), QuarantineCode.INS_ABSENT)


@pytest.mark.parametrize("trait", ["family", "given", "sex", "birth_date", "birthplace"])
def test_ins_without_a_trait_is_905(trait: str) -> None:
    raw = make_mail([("cr.xml", make_cda(CdaSpec(omit_traits=frozenset({trait}))), "text/xml")])
    held(run(raw), QuarantineCode.INS_INCOMPLETE)


def test_birthplace_can_be_optional() -> None:
    raw = make_mail(
        [("cr.xml", make_cda(CdaSpec(omit_traits=frozenset({"birthplace"}))), "text/xml")]
    )
    record = accepted(run(raw, require_birthplace=False)).record
    assert record.ins.qualified is False


def test_bad_key_is_906() -> None:
    spec = CdaSpec(patient=replace(PAT_TROIS, ins="279035121518988"))
    outcome = held(run(make_mail([("cr.xml", make_cda(spec), "text/xml")])), QuarantineCode.OTHER)
    assert outcome.reason == "INS from cda: key mismatch"


def test_test_oid_refused_in_production() -> None:
    raw = make_mail([("cr.xml", make_cda(), "text/xml")])
    outcome = held(process_message(raw), QuarantineCode.OTHER)
    assert "test OID not allowed" in outcome.reason


def test_production_oid_and_corsica() -> None:
    patient = replace(CORSE, oid=OID_NIR)
    raw = make_mail([("cr.xml", make_cda(CdaSpec(patient=patient)), "application/xml")])
    record = accepted(process_message(raw)).record
    assert (record.ins.value, record.ins.test, record.ins.kind) == ("188102B17295165", False, "NIR")


def test_two_different_ins_in_record_target_is_904() -> None:
    spec = CdaSpec(extra_patient_ids=((PAT_TROIS.oid, NESSI.ins),))
    held(run(make_mail([("cr.xml", make_cda(spec), "text/xml")])), QuarantineCode.INS_MISMATCH)


def test_unknown_extra_oid_with_same_value_is_ignored() -> None:
    spec = CdaSpec(extra_patient_ids=(("1.2.250.1.213.1.4.13", PAT_TROIS.ins),))
    accepted(run(make_mail([("cr.xml", make_cda(spec), "text/xml")])))


def test_direct_cda_sets_no_xdm_headers() -> None:
    result = run(make_mail([("cr.xml", make_cda(), "text/xml")]))
    accepted(result)
    assert result.xdm_cda_codes == () and mss_headers(result) == {}


def test_pdf_only_messages() -> None:
    no_ins = run(make_mail([("cr.pdf", make_pdf(["Compte rendu"]), "application/pdf")]))
    assert held(no_ins, QuarantineCode.INS_ABSENT).document is not None
    labelled = run(make_mail([("cr.pdf", make_pdf([f"INS : {PAT_TROIS.ins}"]), "application/pdf")]))
    outcome = held(labelled, QuarantineCode.INS_INCOMPLETE)
    assert "OID" in outcome.reason


def test_companion_pdf_naming_another_patient_holds_everything() -> None:
    archive = make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", make_cda())])
    companion = make_pdf([f"INS : {NESSI.ins}"])
    result = run(
        make_mail([("IHE_XDM.ZIP", archive, XDM), ("cr.pdf", companion, "application/pdf")])
    )
    assert [type(o) for o in result.outcomes] == [Quarantined, Quarantined]
    assert {o.code for o in result.quarantined} == {QuarantineCode.INS_MISMATCH}
    assert result.outcomes[1].content == companion


def test_consistent_companion_pdf_is_not_a_document() -> None:
    archive = make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", make_cda())])
    companion = make_pdf([f"INS : {PAT_TROIS.ins}"])
    result = run(
        make_mail([("IHE_XDM.ZIP", archive, XDM), ("cr.pdf", companion, "application/pdf")])
    )
    assert accepted(result).record.document.format == "cda-n3"


def test_unreadable_companion_is_held_alone() -> None:
    archive = make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", make_cda())])
    result = run(
        make_mail([("IHE_XDM.ZIP", archive, XDM), ("cr.pdf", b"%PDF-1.4 junk", "application/pdf")])
    )
    assert len(result.accepted) == 1
    assert [q.code for q in result.quarantined] == [QuarantineCode.OTHER]


def test_xdm_size_mismatch_is_906() -> None:
    entry = EntrySpec("DOC0001.XML", make_cda(), size_override=5)
    outcome = held(run(xdm_mail([entry])), QuarantineCode.OTHER)
    assert "size" in outcome.reason


def test_xdm_hash_mismatch_is_906() -> None:
    cda = make_cda()
    entry = EntrySpec("DOC0001.XML", cda)
    # Same length, different bytes: only the SHA-1 of the metadata can tell.
    tampered = cda.replace(b"Conclusion", b"Conclusiom")
    archive = zip_tree(
        [
            ("IHE_XDM/SUBSET01/METADATA.XML", make_metadata(PAT_TROIS, [entry], subset="SUBSET01")),
            ("IHE_XDM/SUBSET01/DOC0001.XML", tampered),
        ]
    )
    outcome = held(run(make_mail([("IHE_XDM.ZIP", archive, XDM)])), QuarantineCode.OTHER)
    assert "hash" in outcome.reason
    assert outcome.content == tampered


def test_missing_xdm_document_keeps_the_archive() -> None:
    metadata = make_metadata(PAT_TROIS, [EntrySpec("DOC0001.XML", b"x")], subset="SUBSET01")
    archive = zip_tree([("IHE_XDM/SUBSET01/METADATA.XML", metadata)])
    outcome = held(run(make_mail([("IHE_XDM.ZIP", archive, XDM)])), QuarantineCode.OTHER)
    assert "missing" in outcome.reason
    assert outcome.content == archive
    assert outcome.sha256 == hashlib.sha256(archive).hexdigest()


def test_non_cda_xdm_entry_uses_metadata_identity() -> None:
    kos = b"\x00" * 128 + b"DICM" + b"\x01" * 64
    entry = EntrySpec(
        "KOS.DCM", kos, mime_type="application/dicom", type_code="IMG-KOS", references=REFS
    )
    record = accepted(run(xdm_mail([entry]))).record
    assert record.document.format == "xdm"
    assert record.ins.source == "xdm"
    assert record.document.type_code == "IMG-KOS"
    assert record.imaging[0].accession_number == "ACC-0001"


def test_pdf_inside_xdm() -> None:
    pdf = make_pdf([f"INS {PAT_TROIS.ins}"])
    entry = EntrySpec("DOC0001.PDF", pdf, mime_type="application/pdf", type_code="11502-2")
    record = accepted(run(xdm_mail([entry]))).record
    assert record.document.format == "pdf"
    assert record.ins.source == "xdm"


def test_signature_entries_are_skipped() -> None:
    entries = [
        EntrySpec("DOC0001.XML", make_cda()),
        EntrySpec("SIGN.XML", b"<Signature/>", class_code="urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1"),
    ]
    assert len(run(xdm_mail(entries)).outcomes) == 1


def test_several_documents_and_codecda() -> None:
    entries = [
        EntrySpec("DOC0001.XML", make_cda()),
        EntrySpec("DOC0002.XML", make_cda(CdaSpec(code="11502-2", doc_root="1.2.3.9"))),
    ]
    result = run(xdm_mail(entries))
    assert len(result.accepted) == 2
    assert mss_headers(result)["X-MSS-CODECDA"] == "18748-4,11502-2"


def test_unqualified_ins_gives_x_mss_ins_n() -> None:
    cda = make_cda(CdaSpec(omit_traits=frozenset({"sex"})))
    result = run(xdm_mail([EntrySpec("DOC0001.XML", cda, source_patient_info=("PID-7|19790328",))]))
    held(result, QuarantineCode.INS_INCOMPLETE)
    assert mss_headers(result) == {"X-MSS-CODECDA": "18748-4", "X-MSS-INS": "N"}


def test_x_mss_ins_ignores_the_birthplace_even_when_the_document_is_held() -> None:
    # ECO.2.4.2 names four traits; our 905 for a missing birthplace is a stricter, local rule.
    no_birthplace = replace(PAT_TROIS, birthplace=None)
    cda = make_cda(CdaSpec(omit_traits=frozenset({"birthplace"})))
    entry = EntrySpec("DOC0001.XML", cda, source_patient_info=pid_info(no_birthplace))
    result = run(xdm_mail([entry]))
    held(result, QuarantineCode.INS_INCOMPLETE)
    assert mss_headers(result) == {"X-MSS-CODECDA": "18748-4", "X-MSS-INS": "O"}


def test_x_mss_ins_is_n_for_a_test_oid_in_production() -> None:
    result = process_message(xdm_mail([EntrySpec("DOC0001.XML", make_cda())]))
    held(result, QuarantineCode.OTHER)
    assert mss_headers(result)["X-MSS-INS"] == "N"
    assert mss_headers(run(xdm_mail([EntrySpec("DOC0001.XML", make_cda())])))["X-MSS-INS"] == "O"


def test_plain_mail_has_no_documents() -> None:
    result = process_message(make_mail([]))
    assert result.outcomes == () and result.defects == ()


def test_too_many_documents() -> None:
    entries = [EntrySpec(f"DOC{i:04d}.XML", make_cda()) for i in range(3)]
    held(run(xdm_mail(entries), limits=DocumentLimits(max_documents=2)), QuarantineCode.OTHER)
