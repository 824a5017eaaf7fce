from __future__ import annotations

import pytest

from mssgate.documents import DocumentLimits, XdmError, parse_metadata, read_xdm
from mssgate.documents.xdm import is_xdm_attachment

from .factory import PAT_TROIS, EntrySpec, make_cda, make_metadata, make_xdm, zip_tree

LIMITS = DocumentLimits()
REFS = (
    "ACC-9^^^&1.2.250.1.999.27&ISO^urn:ihe:iti:xds:2013:accession",
    "1.2.250.1.999.27.123.9^^^&1.2.3.4.5.6&ISO^urn:ihe:iti:xds:2016:studyInstanceUID",
    "ORD-9^^^&2.16.840.1.113883.6.92&ISO^urn:ihe:iti:xds:2013:order",
)


@pytest.mark.parametrize("name", ["IHE_XDM.ZIP", "ihe_xdm.zip", "IHE_XDM.zip", " IHE_XDM.ZIP "])
def test_attachment_name_any_case(name: str) -> None:
    assert is_xdm_attachment(name)
    assert not is_xdm_attachment("XDM.ZIP")
    assert not is_xdm_attachment(None)


@pytest.mark.parametrize("soap", [False, True])
@pytest.mark.parametrize("relative_to_root", [False, True])
def test_entries_and_document_lookup(soap: bool, relative_to_root: bool) -> None:
    cda = make_cda()
    archive = make_xdm(
        PAT_TROIS,
        [EntrySpec("DOC0001.XML", cda, references=REFS)],
        soap=soap,
        uri_relative_to_root=relative_to_root,
    )
    package = read_xdm(archive, LIMITS)
    [submission] = package.submissions
    assert submission.subset == "IHE_XDM/SUBSET01"
    assert submission.submission_patient_id is not None
    assert submission.submission_patient_id.value == PAT_TROIS.ins
    [entry] = submission.entries
    assert entry.member_name == "IHE_XDM/SUBSET01/DOC0001.XML"
    assert package.document_bytes(entry) == cda
    assert entry.patient_id is not None
    assert (entry.patient_id.value, entry.patient_id.authority_oid, entry.patient_id.type_code) == (
        PAT_TROIS.ins,
        PAT_TROIS.oid,
        "NH",
    )
    traits = entry.source_patient
    assert (traits.birth_family, traits.first_given, traits.sex, traits.birth_date) == (
        "PAT-TROIS",
        "DOMINIQUE",
        "F",
        "1979-03-28",
    )
    assert traits.birthplace == "51215"
    assert entry.type_code is not None and entry.type_code.code == "18748-4"
    assert [c.code for c in entry.confidentiality] == ["N"]
    assert entry.unique_id == "1.2.250.1.999.1"
    assert entry.creation_time == "20240116151112"
    assert entry.authors[0].rpps == "801234560801"
    assert [r.value for r in entry.references("urn:ihe:iti:xds:2013:accession")] == ["ACC-9"]
    assert entry.size == len(cda)


def test_uri_escaping_the_archive_is_not_resolved() -> None:
    metadata = make_metadata(PAT_TROIS, [EntrySpec("../../etc/passwd", b"x")], subset="SUBSET01")
    archive = zip_tree([("IHE_XDM/SUBSET01/METADATA.XML", metadata)])
    [entry] = read_xdm(archive, LIMITS).submissions[0].entries
    assert entry.member_name is None


def test_missing_metadata() -> None:
    with pytest.raises(XdmError, match="METADATA"):
        read_xdm(zip_tree([("README.TXT", b"x")]), LIMITS)
    with pytest.raises(XdmError, match="SubmitObjectsRequest"):
        parse_metadata(b"<a/>", LIMITS)


def test_pid_name_types_prefer_legal_name() -> None:
    from mssgate.documents.hl7values import parse_source_patient_info

    traits = parse_source_patient_info(
        [
            "PID-5|DE VINCI^RUTH^^^^^D~NESSI^RUTH^RUTH ISABELLE^^^^L",
            "PID-7|19770714",
            "PID-8|F",
            "PID-11|^^^^^^H~^^^^^^BDL^^63220",
        ]
    )
    assert traits.birth_family == "NESSI"
    assert traits.first_given == "RUTH"
    assert traits.given == "RUTH ISABELLE"
    assert traits.birthplace == "63220"
