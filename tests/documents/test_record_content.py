"""What the pipeline reads reaches the record: custodian, the DICOM catalog (series, SOP
instances, WADO links), PDF metadata, labelled INS rejected for their key, and the subject."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from mssgate.documents import Accepted, DocumentRecord, PipelineResult, process_message
from mssgate.documents.headers import build_ddm_subject, with_ddm_subject
from mssgate.documents.limits import DocumentLimits
from mssgate.ins import is_valid_value
from mssgate.queue import DocumentQueue, ingest_message
from tests.queue.helpers import RIS_A, SENDER, add_mailboxes, cda, mail

from .factory import PAT_TROIS, CdaSpec, EntrySpec, make_cda, make_mail, make_pdf, make_xdm

STUDY = "1.2.250.1.999.27.123.1"
BAD_KEY = PAT_TROIS.ins[:-2] + f"{(int(PAT_TROIS.ins[-2:]) + 1) % 97:02d}"


def _record(result: PipelineResult) -> DocumentRecord:
    [outcome] = result.outcomes
    assert isinstance(outcome, Accepted), outcome
    return outcome.record


def _xdm(cda_bytes: bytes, *extra: tuple[str, bytes, str]) -> PipelineResult:
    archive = make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", cda_bytes)])
    raw = make_mail([("IHE_XDM.ZIP", archive, "application/zip"), *extra])
    return process_message(raw, allow_test_oids=True)


def test_custodian_and_dicom_catalog_reach_the_record() -> None:
    record = _record(_xdm(make_cda()))
    assert record.document.custodian == "1.2.250.1.71.4.2.2^1920008059"
    assert record.document.custodian_name == "Centre de radiologie"
    [study] = record.dicom_catalog
    assert study.study_instance_uid == STUDY
    [series] = study.series
    assert (series.series_instance_uid, series.modality) == (f"{STUDY}.1", "CT")
    [instance] = series.instances
    assert instance.sop_instance_uid == f"{STUDY}.1.1"
    assert instance.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert instance.wado_url == f"http://wado.example/{STUDY}"
    # And the record's JSON, what consumers get, carries them.
    dumped = record.model_dump(mode="json")
    assert dumped["dicom_catalog"][0]["series"][0]["instances"][0]["wado_url"].endswith(STUDY)
    assert record.notes == ()


def test_pdf_metadata_beyond_the_title() -> None:
    info = {"Author": "Dr Martin", "Producer": "RIS 4.2", "CreationDate": "D:20260301083000"}
    pdf = make_pdf(["Compte rendu", f"INS : {PAT_TROIS.ins}"], title="CR scanner", info=info)
    record = _record(_xdm(make_cda(CdaSpec(level="N1", pdf=pdf, dicom_catalog=False))))
    assert record.document.pdf_metadata == {"Title": "CR scanner", **info}
    assert record.dicom_catalog == ()


def test_pdf_ins_with_a_bad_key_is_a_note() -> None:
    assert not is_valid_value(BAD_KEY)
    pdf = make_pdf(["Compte rendu", f"INS : {BAD_KEY}"])
    result = _xdm(make_cda(CdaSpec(level="N1", pdf=pdf)))
    record = _record(result)
    [note] = record.notes
    assert "1 labelled INS candidate(s) ignored for a bad key" in note
    assert BAD_KEY not in note  # values stay out of notes


def test_companion_pdf_with_a_bad_key_is_a_note_on_the_documents() -> None:
    companion = make_pdf([f"N° INS : {BAD_KEY}"])
    record = _record(_xdm(make_cda(), ("cr.pdf", companion, "application/pdf")))
    assert record.notes == (
        "companion PDF text: 1 labelled INS candidate(s) ignored for a bad key",
    )


def test_ddm_subject_is_read_or_noted() -> None:
    record = _record(_xdm(make_cda()))
    subject = build_ddm_subject("CR d'imagerie", "PAT-TROIS", "Dominique", "1979-03-28")
    read = with_ddm_subject(record.model_copy(update={"subject": subject}))
    assert read.ddm_subject is not None
    assert (read.ddm_subject.family, read.ddm_subject.given) == ("PAT-TROIS", "DOMINIQUE")
    assert read.ddm_subject.birth_date == "1979-03-28" and read.notes == ()
    for off in ("CR scanner", None, "XDM/1.0/DDM+CR PAT-TROIS DOMINIQUE 19790328"):
        noted = with_ddm_subject(record.model_copy(update={"subject": off}))
        assert noted.ddm_subject is None
        assert [n for n in noted.notes if "subject does not follow" in n], off


def test_ingest_records_the_subject_fields(sqlite_engine: Engine, tmp_path: Path) -> None:
    add_mailboxes(sqlite_engine, RIS_A)
    queue = DocumentQueue(sqlite_engine, data_dir=tmp_path)

    def ingest(raw: bytes) -> DocumentRecord:
        [doc_id] = ingest_message(
            queue,
            raw,
            mailbox=RIS_A,
            sender=SENDER,
            message_id=None,
            subject=None,
            received_at=datetime.now(UTC),
            limits=DocumentLimits(),
            allow_test_oids=True,
        )
        return queue.entry(doc_id).record

    # helpers.mail writes "XDM/1.0/DDM+CR d'imagerie médicale PAT-TROIS DOMINIQUE 28/03/1979".
    record = ingest(mail([cda(1)], n=1))
    assert record.ddm_subject is not None
    assert record.ddm_subject.title == "CR d'imagerie médicale"
    assert record.ddm_subject.birth_date == "1979-03-28"
    assert record.notes == ()
    # Off the convention: still queued, with a note saying so.
    off = mail([cda(2)], n=2).replace(b"28/03/1979", b"19790328")
    record = ingest(off)
    assert record.ddm_subject is None
    assert any("subject does not follow" in n for n in record.notes)
