from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from mssgate.documents import CdaError, DocumentLimits, LimitExceeded, XmlError, parse_cda
from mssgate.documents.cda import format_identifier

from .factory import CORSE, PAT_TROIS, CdaSpec, make_cda, make_pdf

LIMITS = DocumentLimits()


def test_n3_header_traits_sections_and_imaging() -> None:
    spec = CdaSpec(
        replaces="90E1C8EC-F951-4B26-A305-A34848818DD6",
        version=2,
        accessions=(("1.2.250.1.999.27", "ACC-1"), ("1.2.250.1.999.28", "ACC-2")),
        studies=("1.2.250.1.999.27.123.1", "1.2.250.1.999.27.123.2", "1.2.250.1.999.27.123.3"),
    )
    cda = parse_cda(make_cda(spec), LIMITS)
    header = cda.header
    assert cda.level == "N3" and cda.format == "cda-n3"
    assert header.code == "18748-4" and cda.is_imaging_report
    assert format_identifier(header.document_id) == spec.doc_root
    assert header.effective_time == "2021-01-08T11:17:00+01:00"
    assert header.version == 2
    assert [format_identifier(r) for r in header.replaces] == [spec.replaces]
    assert header.author_rpps == ("801234560801",)
    assert [(i.root, i.extension) for i in header.ins_ids] == [(PAT_TROIS.oid, PAT_TROIS.ins)]
    traits = header.traits
    assert traits.birth_family == "PAT-TROIS"
    assert traits.given == "DOMINIQUE MARIE-LOUISE"
    assert traits.first_given == "DOMINIQUE"
    assert (traits.sex, traits.birth_date, traits.birthplace) == ("F", "1979-03-28", "51215")
    assert [s.code for s in cda.sections if s.depth == 0] == [
        "55752-0",
        "55111-9",
        "59776-5",
        "19005-8",
    ]
    assert "121181" in [s.code for s in cda.sections]
    assert [a.extension for a in cda.imaging.accession_numbers] == ["ACC-1", "ACC-2"]
    assert cda.imaging.study_instance_uids == spec.studies
    catalog = cda.imaging.catalog
    assert [s.study_instance_uid for s in catalog] == list(spec.studies)
    series = catalog[0].series[0]
    assert series.series_instance_uid == f"{spec.studies[0]}.1"
    assert series.modality == "CT"
    assert series.instances[0].sop_instance_uid == f"{spec.studies[0]}.1.1"
    assert series.instances[0].wado_url == f"http://wado.example/{spec.studies[0]}"


def test_n1_extracts_pdf() -> None:
    pdf = make_pdf(["Compte rendu"])
    cda = parse_cda(make_cda(CdaSpec(level="N1", pdf=pdf, patient=CORSE)), LIMITS)
    assert cda.level == "N1" and cda.format == "cda-n1"
    assert cda.body == pdf and cda.body_media_type == "application/pdf"
    assert cda.header.traits.birth_family == "CORSE"
    assert cda.header.ins_ids[0].extension == "188102B17295165"


def test_study_uids_only_for_imaging_reports() -> None:
    spec = CdaSpec(code="11502-2", accessions=(), studies=("1.2.250.1.999.9",))
    cda = parse_cda(make_cda(spec), LIMITS)
    assert cda.imaging.study_instance_uids == ()


def test_local_exam_number_is_not_a_study_uid() -> None:
    xml = make_cda(CdaSpec(studies=("1.2.250.1.999.1",), dicom_catalog=False)).replace(
        b'<id root="1.2.250.1.999.1"/>', b'<id root="1.2.250.1.999.1" extension="984375872"/>'
    )
    assert parse_cda(xml, LIMITS).imaging.study_instance_uids == ()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("!!!! not base64 ####", CdaError),
        (base64.b64encode(b"GIF89a not a pdf").decode(), CdaError),
        ("", CdaError),
    ],
)
def test_n1_bad_payloads(payload: str, error: type[Exception]) -> None:
    xml = make_cda(CdaSpec(level="N1", pdf_base64=payload))
    with pytest.raises(error):
        parse_cda(xml, LIMITS)


def test_n1_payload_over_limit() -> None:
    xml = make_cda(CdaSpec(level="N1", pdf=make_pdf(["x"] * 50)))
    with pytest.raises(LimitExceeded):
        parse_cda(xml, DocumentLimits(max_pdf_bytes=100))


def test_not_a_cda_and_missing_parts() -> None:
    with pytest.raises(CdaError):
        parse_cda(b"<root xmlns='urn:hl7-org:v3'/>", LIMITS)
    with pytest.raises(XmlError):
        parse_cda(b"<ClinicalDocument", LIMITS)
    no_code = make_cda(CdaSpec(overrides={'code="18748-4" ': ""}))
    with pytest.raises(CdaError, match="type code"):
        parse_cda(no_code, LIMITS)
    no_body = make_cda(replace(CdaSpec(), sections=())).replace(
        b"<component><structuredBody/></component>", b""
    )
    with pytest.raises(CdaError, match="neither"):
        parse_cda(no_body, LIMITS)
