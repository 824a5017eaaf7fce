"""Conformance corpus: the ANS examples under ../shared/fixtures/ansforge (not redistributed).

Expected values were read from the files by hand (see the comments in each row).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import pytest

from mssgate.documents import Accepted, DocumentLimits, parse_cda, process_message, read_pdf
from mssgate.documents.cda import format_identifier
from mssgate.documents.headers import parse_ddm_subject
from mssgate.documents.hl7values import parse_cx, parse_source_patient_info
from mssgate.ins import is_valid_value

from .conftest import ANSFORGE, DRIMBOX, requires_shared
from .factory import make_mail

# Every test here reads ../shared/fixtures, but for the DRIMbox example (MIT): tests/ has a
# copy of it, so its row runs in a clone too.
needs_shared = [pytest.mark.shared, requires_shared]
DRIMBOX_PREFIX = "DRIM-M_DRIMbox/"

INS = "279035121518989"
LIMITS = DocumentLimits()


@dataclass(frozen=True)
class Expected:
    path: str
    format: str
    code: str
    birthplace: str
    given: str
    accessions: tuple[str, ...] = ()
    studies: tuple[str, ...] = ()
    version: int = 1
    replaces: str | None = None
    author: str | None = None


CR_IMG_2024_STUDIES = tuple(f"1.2.250.1.925.994044.27.123.187636{i}" for i in range(3))
CORPUS = [
    Expected(
        "DRIM-M_DRIMbox/CDA/IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml",
        "cda-n1",
        "18748-4",
        "63220",
        "DOMINIQUE",
        ("105234751",),
        tuple(f"1.2.250.1.3.152.235.2.12.18763647{i}" for i in (4, 5, 6)),
        2,
        "90E1C8EC-F951-4B26-A305-A34848818DD6",
        "801234560801",
    ),
    Expected(
        "TestContenuCDA-3-0/BIO-CR-BIO_2024.01_CR-2nde-intention-PDF.xml",
        "cda-n3",
        "11502-2",
        "51215",
        "DOMINIQUE MARIE-LOUISE",
        author="801234534765",
    ),
    Expected(
        "TestContenuCDA-3-0/BIO-CR-BIO_2024.01_TSH_1.xml",
        "cda-n3",
        "11502-2",
        "51215",
        "DOMINIQUE MARIE-LOUISE",
    ),
    Expected(
        "TestContenuCDA-3-0/DOC_NON_STRUCTURE_CDA-R2-N1.xml",
        "cda-n1",
        "11502-2",
        "51215",
        "DOMINIQUE MARIE-LOUISE",
    ),
    # DA-IMG: serviceEvent/id has an extension (a request number), not a Study UID.
    Expected(
        "TestContenuCDA-3-0/IMG-DA-IMG_2024.01_Radiographie_IRM_Genou.xml",
        "cda-n3",
        "55115-0",
        "51215",
        "DOMINIQUE MARIE-LOUISE",
        author="801234567897",
    ),
    Expected(
        "TestContenuCDA-3-0/IMG_CR_IMG_2024.01.xml",
        "cda-n3",
        "18748-4",
        "51215",
        "DOMINIQUE MARIE-LOUISE",
        ("105234751", "105234752"),
        CR_IMG_2024_STUDIES,
        2,
        "90E1C8EC-F951-4B26-A305-A34848818DD6",
        "801234560801",
    ),
    Expected(
        "TestContenuCDA-3-0/IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml",
        "cda-n1",
        "18748-4",
        "51215",
        "DOMINIQUE MARIE-LOUISE",
        ("105234751",),
        tuple(f"1.2.250.1.925.994044.27.123.187635{i}" for i in range(3)),
        2,
        "90E1C8EC-F951-4B26-A305-A34848818DD6",
    ),
    Expected(
        "TestContenuCDA-3-0/LDL-SES_2022.01.xml",
        "cda-n3",
        "11490-0",
        "51215",
        "DOMINIQUE MARIE-LOUISE",
    ),
    Expected(
        "TestContenuCDA-3-0/VSM_1.4_2022.01.xml",
        "cda-n3",
        "SYNTH",
        "51215",
        "DOMINIQUE MARIE-LOUISE",
    ),
    # Odd but real: serviceEvent/id extension="studyInstanceUID" next to the UID.
    Expected(
        "hl7V2-exemples/CR_Radio_CDAN1_v1.XML",
        "cda-n1",
        "18748-4",
        "63220",
        "DOMINIQUE",
        ("7252295367250056",),
        ("1.3.6.1.4.1.5962.99.1.3711725607.829148806.1687338938407.3.0",),
        author="801234564895",
    ),
    Expected(
        "hl7V2-exemples/CR_Radio_CDAN1_v2.XML",
        "cda-n1",
        "18748-4",
        "63220",
        "DOMINIQUE",
        ("7252295367250056",),
        ("1.3.6.1.4.1.5962.99.1.3711725607.829148806.1687338938407.3.0",),
        2,
        "1.2.250.1.71.4.2.2.120456789.71024000081",
    ),
    Expected(
        "hl7V2-exemples/transmission_initiale_cr_imagerie.xml",
        "cda-n1",
        "18748-4",
        "63220",
        "DOMINIQUE",
        ("ACN102",),
        ("1.2.250.1.213.4.5.2.1.102",),
    ),
]


def _example(path: str) -> bytes:
    if path.startswith(DRIMBOX_PREFIX):
        return (DRIMBOX / path.removeprefix(DRIMBOX_PREFIX)).read_bytes()
    return (ANSFORGE / path).read_bytes()


@pytest.mark.parametrize(
    "expected",
    [
        pytest.param(e, marks=[] if e.path.startswith(DRIMBOX_PREFIX) else needs_shared)
        for e in CORPUS
    ],
    ids=lambda e: e.path.rsplit("/", 1)[-1],
)
def test_ans_example_through_the_pipeline(expected: Expected) -> None:
    data = _example(expected.path)
    result = process_message(make_mail([("doc.xml", data, "text/xml")]), allow_test_oids=True)
    [outcome] = result.outcomes
    assert isinstance(outcome, Accepted), getattr(outcome, "reason", None)
    record = outcome.record
    assert record.document.format == expected.format
    assert record.document.type_code == expected.code
    assert (record.ins.value, record.ins.oid, record.ins.test, record.ins.qualified) == (
        INS,
        "1.2.250.1.213.1.4.10",
        True,
        True,
    )
    patient = record.patient
    assert (patient.birth_family, patient.sex, patient.birth_date) == (
        "PAT-TROIS",
        "F",
        "1979-03-28",
    )
    assert patient.given == expected.given
    assert patient.birthplace == expected.birthplace
    assert record.document.version == expected.version
    assert record.document.replaces == expected.replaces
    if expected.author:
        assert record.document.author_rpps == expected.author
    accessions = {i.accession_number for i in record.imaging if i.accession_number}
    studies = tuple(i.study_instance_uid for i in record.imaging if i.study_instance_uid)
    assert accessions == set(expected.accessions)
    assert studies == expected.studies
    cda = parse_cda(data, LIMITS)
    assert format_identifier(cda.header.document_id) == record.document.unique_id
    if cda.level == "N1":
        assert cda.body is not None and read_pdf(cda.body, LIMITS).page_count >= 1


@pytest.mark.shared
@requires_shared
def test_cr_img_n3_sections_and_catalog() -> None:
    cda = parse_cda((ANSFORGE / "TestContenuCDA-3-0/IMG_CR_IMG_2024.01.xml").read_bytes(), LIMITS)
    codes = [s.code for s in cda.sections]
    for code in ("55752-0", "55111-9", "59776-5", "18834-2", "19005-8", "121181"):
        assert code in codes
    conclusion = next(s for s in cda.sections if s.code == "19005-8")
    assert conclusion.title == "Conclusion"
    assert [s.study_instance_uid for s in cda.imaging.catalog] == list(CR_IMG_2024_STUDIES)
    first = cda.imaging.catalog[0].series[0]
    assert first.series_instance_uid == "1.2.250.1.925.994044.27.123.1876360.1"
    assert first.modality == "CT"
    assert first.instances[0].sop_instance_uid == "1.2.250.1.925.994044.27.123.1876360.1.1"
    assert first.instances[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert [(o.root, o.extension) for o in cda.imaging.order_ids] == [
        ("1.2.250.1.748.12345678.12", "984375862"),
        ("1.2.250.1.748.12345678.12", "984375863"),
    ]


@pytest.mark.shared
@requires_shared
def test_every_ins_of_the_ans_patient_list_verifies() -> None:
    info = read_pdf(
        (ANSFORGE / "hl7V2-exemples/Liste des patients DMP-DV9.pdf").read_bytes(), LIMITS
    )
    values = re.findall(r"(?<![0-9A-Z])[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{8}(?![0-9])", info.text)
    assert len(values) >= 55
    assert "188102B17295165" in values and "162018885045327" in values
    assert all(is_valid_value(v) for v in values)
    # A list of patients is not one patient: the header "Matricule INS (NIR)" labels a column.
    assert info.labelled_ins == ()


@pytest.mark.shared
@requires_shared
def test_hl7_mdm_message() -> None:
    text = (ANSFORGE / "hl7V2-exemples/message_MDM__LPS_MSS_CR_Radio_INIT_N1_Base64.er7").read_text(
        encoding="utf-8"
    )
    segments = [line for line in re.split(r"[\r\n]+", text) if line]
    pid = next(line for line in segments if line.startswith("PID|")).split("|")
    cx = parse_cx(pid[3])
    assert cx is not None
    assert (cx.value, cx.authority_oid, cx.authority_name, cx.type_code) == (
        INS,
        "1.2.250.1.213.1.4.10",
        "ASIP-SANTE-INS-NIR",
        "INS",
    )
    traits = parse_source_patient_info(
        [f"PID-5|{pid[5]}", f"PID-7|{pid[7]}", f"PID-8|{pid[8]}", f"PID-11|{pid[11]}"]
    )
    assert (
        traits.birth_family,
        traits.first_given,
        traits.birth_date,
        traits.sex,
        traits.birthplace,
    ) == (
        "PAT-TROIS",
        "DOMINIQUE",
        "1979-03-28",
        "F",
        "63220",
    )
    obx1 = next(line for line in segments if line.startswith("OBX|1|")).split("|")
    encoded = obx1[5].split("^")[4]
    # The ANS sample drops the base64 padding; restore it rather than loosen the CDA reader.
    cda = parse_cda(base64.b64decode(encoded + "=" * (-len(encoded) % 4)), LIMITS)
    assert cda.header.code == "18748-4"
    obx2 = next(line for line in segments if line.startswith("OBX|2|")).split("|")
    subject = parse_ddm_subject(obx2[3].split("^", 1)[1])
    assert subject is not None
    assert (subject.family, subject.given, subject.birth_date) == (
        "PAT-TROIS",
        "DOMINIQUE",
        "2010-08-07",
    )
