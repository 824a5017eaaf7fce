"""The DRIMbox example (MIT, copied under tests/fixtures/drimbox with its NOTICE)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from mssgate.documents import (
    Accepted,
    DocumentLimits,
    QuarantineCode,
    parse_cda,
    process_message,
    read_pdf,
    read_xdm,
)

from .conftest import DRIMBOX
from .factory import make_mail

XDM_TREE = DRIMBOX / "XDM" / "KA202401"
CDA_N1 = DRIMBOX / "CDA" / "IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml"
PDF = DRIMBOX / "CDA" / "IMG_CR_IMG_2023.11_Doc_metier.pdf"
ACCESSION = "725229536725002"
STUDY_UID = "1.3.6.1.4.1.5962.99.1.3711725607.829148806.1687338938407.3.12"


def zip_tree(root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def test_drimbox_xdm_metadata() -> None:
    package = read_xdm(zip_tree(XDM_TREE), DocumentLimits())
    [submission] = package.submissions
    assert submission.subset == "IHE_XDM/SS000001"
    assert submission.submission_patient_id is not None
    assert submission.submission_patient_id.value == "162018885045327"
    kos, signature = submission.entries
    assert kos.member_name == "IHE_XDM/SS000001/KOS_1_1.DCM"
    assert kos.mime_type == "application/dicom"
    assert kos.patient_id is not None
    assert (kos.patient_id.value, kos.patient_id.authority_oid) == (
        "162018885045327",
        "1.2.250.1.213.1.4.10",
    )
    assert kos.source_patient.birth_family == "PAT-SIX"
    assert kos.source_patient.first_given == "Alain"
    assert (kos.source_patient.sex, kos.source_patient.birth_date) == ("M", "1996-01-24")
    assert kos.class_code is not None and kos.class_code.code == "31"
    assert kos.type_code is not None and kos.type_code.code == "IMG-KOS"
    assert kos.format_code is not None and kos.format_code.code == "1.2.840.10008.5.1.4.1.1.88.59"
    assert kos.unique_id == "1.3.2.751468943.3.1234.99352.240116151112.1.1.1"
    assert kos.creation_time == "20240116151112"
    assert kos.authors[0].rpps == "899700367909"
    assert [r.value for r in kos.references("urn:ihe:iti:xds:2013:accession")] == [ACCESSION]
    assert [r.value for r in kos.references("urn:ihe:iti:xds:2016:studyInstanceUID")] == [STUDY_UID]
    assert [r.value for r in kos.references("urn:ihe:iti:xds:2013:order")] == ["12989855962"]
    assert [c.code for c in kos.confidentiality] == ["N"]
    assert signature.is_signature
    assert {c.code for c in signature.confidentiality} == {"N", "MASQUE_PS", "INVISIBLE_PATIENT"}


def test_drimbox_xdm_through_the_pipeline() -> None:
    raw = make_mail([("IHE_XDM.ZIP", zip_tree(XDM_TREE), "application/zip")])
    # XDS sourcePatientInfo carries no birthplace: by default the INS is incomplete (905).
    strict = process_message(raw, allow_test_oids=True)
    [held] = strict.quarantined
    assert held.code == QuarantineCode.INS_INCOMPLETE and "birthplace" in held.reason
    assert held.content == (XDM_TREE / "IHE_XDM" / "SS000001" / "KOS_1_1.DCM").read_bytes()
    relaxed = process_message(raw, allow_test_oids=True, require_birthplace=False)
    [outcome] = relaxed.outcomes
    assert isinstance(outcome, Accepted)
    record = outcome.record
    assert (record.ins.value, record.ins.oid, record.ins.test, record.ins.source) == (
        "162018885045327",
        "1.2.250.1.213.1.4.10",
        True,
        "xdm",
    )
    assert record.ins.qualified is False
    assert record.document.format == "xdm"
    assert [(i.study_instance_uid, i.accession_number) for i in record.imaging] == [
        (STUDY_UID, ACCESSION)
    ]
    # Test OID refused in production mode.
    production = process_message(raw, require_birthplace=False)
    assert production.quarantined[0].code == QuarantineCode.OTHER


def test_drimbox_cda_n1() -> None:
    data = CDA_N1.read_bytes()
    cda = parse_cda(data, DocumentLimits())
    assert cda.level == "N1" and cda.header.code == "18748-4"
    assert cda.body == PDF.read_bytes()
    assert [a.extension for a in cda.imaging.accession_numbers] == ["105234751"]
    assert cda.imaging.study_instance_uids == (
        "1.2.250.1.3.152.235.2.12.187636474",
        "1.2.250.1.3.152.235.2.12.187636475",
        "1.2.250.1.3.152.235.2.12.187636476",
    )
    info = read_pdf(PDF.read_bytes(), DocumentLimits())
    assert info.page_count == 1 and "PAT-TROIS" in info.text and info.labelled_ins == ()
    result = process_message(make_mail([(CDA_N1.name, data, "text/xml")]), allow_test_oids=True)
    [outcome] = result.outcomes
    assert isinstance(outcome, Accepted)
    assert outcome.record.patient.birthplace == "63220"
    assert outcome.record.document.replaces == "90E1C8EC-F951-4B26-A305-A34848818DD6"
    assert {i.accession_number for i in outcome.record.imaging} == {"105234751"}


def test_drimbox_cda_inside_an_xdm_with_its_pdf_alongside() -> None:
    """The MSSanté shape: IHE_XDM.ZIP with the CDA, plus the PDF next to it."""
    cda = CDA_N1.read_bytes()
    from .factory import PAT_TROIS, EntrySpec, make_xdm, pid_info

    patient = PAT_TROIS.__class__(**{**PAT_TROIS.__dict__, "birthplace": "63220"})
    archive = make_xdm(
        patient, [EntrySpec("DOC0001.XML", cda, source_patient_info=pid_info(patient))]
    )
    raw = make_mail(
        [
            ("IHE_XDM.ZIP", archive, "application/zip"),
            (PDF.name, PDF.read_bytes(), "application/pdf"),
        ]
    )
    result = process_message(raw, allow_test_oids=True)
    [outcome] = result.outcomes
    assert isinstance(outcome, Accepted)
    assert result.xdm_cda_codes == ("18748-4",) and result.xdm_qualified_ins
