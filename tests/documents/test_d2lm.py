"""The CANCER-D2LM reader and the L2 decision: the ANS examples (read from ../shared, whose
licence forbids a copy), variants of them built with lxml, and generated forms."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from mssgate.documents.d2lm import (
    TA_ASIP,
    D2lmForm,
    Practitioner,
    decide_l2,
    form_kind,
    read_d2lm,
)
from mssgate.documents.d2lm_samples import (
    GP,
    L1_READER,
    L2_READER,
    D2lmSpec,
    Reader,
    make_d2lm,
)
from mssgate.documents.errors import DocumentError, XmlError
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.samples import CORSE, make_cda
from mssgate.routing.probe import departement_of
from tests.documents.conftest import ANSFORGE, requires_shared

LIMITS = DocumentLimits()
EXAMPLES = ANSFORGE / "TestContenuCDA-3-0"
NS = {"h": "urn:hl7-org:v3"}
L1_CODES = {"ACR1": "MED-129", "ACR2": "MED-130", "abnormal": "MED-048"}
ACR_CODES = {f"ACR{n}": f"MED-{128 + n}" for n in range(1, 6)}  # MED-129 is ACR 1


def read(data: bytes) -> D2lmForm:
    form = read_d2lm(data, LIMITS)
    assert form is not None
    return form


# -- the ANS examples ------------------------------------------------------------------


@requires_shared
def test_ans_interpretation_form_is_read_and_is_not_an_l2_case() -> None:
    form = read((EXAMPLES / "CANCER-D2LM-FIN_2022.01.xml").read_bytes())
    assert form.kind == "FIN"
    assert form.l1_reader == Practitioner(
        rpps="801234567897", family="BOILEAU", given="Charles", email="charles.boileau@mssante.fr"
    )
    assert form.l2_reader == Practitioner(
        rpps="369838578", family="ROY", given="Alain", email="alain.roy@mssante.fr"
    )
    assert form.gp == Practitioner(rpps="648238527", family="PARISI", given="Stéphane")
    assert form.exam_date == dt.date(2021, 7, 29)
    assert (form.postal_code, form.departement) == ("75007", "75")
    assert (form.ins, form.ins_oid) == ("279035121518989", "1.2.250.1.213.1.4.10")
    # Left breast MED-048 at L1, then ACR 3 for both at the immediate work-up.
    assert (form.right.l1, form.right.workup, form.right.l2) == ("ACR1", "ACR3", "ACR1")
    assert (form.left.l1, form.left.workup, form.left.l2) == ("abnormal", "ACR3", "ACR3")
    assert form.result_problems == () and form.problems == ()
    decision = decide_l2(form)
    assert not decision.eligible
    assert (decision.right, decision.left) == ("ACR3", "ACR3")
    assert decision.reasons == (
        "right breast: immediate work-up ACR3",
        "left breast: immediate work-up ACR3",
    )


@requires_shared
def test_ans_deferred_workup_form_is_read_and_never_goes_to_l2() -> None:
    form = read((EXAMPLES / "CANCER-D2LM-FIDD_2022.01.xml").read_bytes())
    assert form.kind == "FIDD"
    assert form.l1_reader is not None and form.l1_reader.rpps == "801234567897"
    assert form.l2_reader is None
    assert (form.right.workup, form.left.workup) == ("ACR1", "ACR3")
    assert form.right.l1 is None and form.left.l1 is None
    decision = decide_l2(form)
    assert not decision.eligible
    assert decision.reasons == ("a deferred work-up form (FIDD) is not sent to L2",)


@requires_shared
def test_other_ans_imaging_reports_are_no_d2lm_form() -> None:
    # Same LOINC 18748-4 as the forms: the templateId tells them apart.
    assert read_d2lm((EXAMPLES / "IMG_CR_IMG_2024.01.xml").read_bytes(), LIMITS) is None


# -- variants of the ANS example ---------------------------------------------------------


def elements(root: etree._Element, path: str) -> list[etree._Element]:
    found = root.xpath(path, namespaces=NS)
    assert isinstance(found, list)
    return [e for e in found if isinstance(e, etree._Element)]


def _ans_variant(
    *,
    l1: tuple[str, str] | None = None,
    workup: tuple[str, str] | str | None = "keep",
    postal: str | None = None,
    drop_template: bool = False,
) -> bytes:
    """The ANS FIN with its L1 results, immediate work-up results (None: the section
    removed) or the patient's postal code changed."""
    path = EXAMPLES / "CANCER-D2LM-FIN_2022.01.xml"
    if not path.exists():
        pytest.skip("needs ../shared/fixtures")
    root = etree.fromstring(path.read_bytes())

    def results(section: str, code: str) -> list[etree._Element]:
        found = elements(
            root,
            f"//h:section[h:templateId/@root='{section}']//h:observation[h:code/@code='{code}']"
            "/h:value",
        )
        assert len(found) == 2  # right, then left
        return found

    if l1 is not None:
        for value, code in zip(results("1.2.250.1.213.1.1.2.58", "MED-1104"), l1, strict=True):
            value.set("code", L1_CODES[code])
    if workup is None:
        (section,) = elements(root, "//h:section[h:templateId/@root='1.2.250.1.213.1.1.2.59']")
        component = section.getparent()
        assert component is not None and component.getparent() is not None
        component.getparent().remove(component)  # type: ignore[union-attr]
    elif isinstance(workup, tuple):
        for value, code in zip(results("1.2.250.1.213.1.1.2.59", "MED-121"), workup, strict=True):
            value.set("code", ACR_CODES[code])
    if postal is not None:
        (element,) = elements(root, "/h:ClinicalDocument/h:recordTarget/h:patientRole/h:addr"
                                    "/h:postalCode")  # fmt: skip
        element.text = postal
    if drop_template:
        for template in elements(root, "/h:ClinicalDocument/h:templateId[@root="
                                 "'1.2.250.1.213.1.1.1.27']"):  # fmt: skip
            root.remove(template)
    return bytes(etree.tostring(root))


@requires_shared
@pytest.mark.parametrize(
    ("l1", "workup", "eligible"),
    [
        (("ACR1", "ACR2"), None, True),
        (("ACR2", "ACR2"), None, True),
        (("ACR1", "abnormal"), None, False),
        # The work-up's result replaces the L1 one, either way.
        (None, ("ACR1", "ACR2"), True),
        (None, ("ACR2", "ACR4"), False),
        (("ACR1", "ACR1"), ("ACR1", "ACR5"), False),
    ],
)
def test_ans_variants_decide_l2(
    l1: tuple[str, str] | None, workup: tuple[str, str] | None, eligible: bool
) -> None:
    decision = decide_l2(read(_ans_variant(l1=l1, workup=workup)))
    assert decision.eligible is eligible, decision.reasons


@requires_shared
@pytest.mark.parametrize(
    ("postal", "departement"),
    [("20000", "2A"), ("20167", "2A"), ("20200", "2B"), ("20600", "2B"), ("97110", "971"),
     ("97600", "976"), ("01000", "01"), ("7500", None), ("ABCDE", None)],
)  # fmt: skip
def test_ans_variant_departement(postal: str, departement: str | None) -> None:
    assert read(_ans_variant(postal=postal)).departement == departement


@requires_shared
def test_ans_variant_without_its_template_id_is_no_form_despite_its_loinc() -> None:
    assert read_d2lm(_ans_variant(drop_template=True), LIMITS) is None


# -- generated forms (no ../shared needed) -----------------------------------------------

L1_VALUES = st.sampled_from([None, "ACR1", "ACR2", "abnormal"])
ACR_VALUES = st.sampled_from([None, "ACR1", "ACR2", "ACR3", "ACR4", "ACR5"])


def _oracle(l1: str | None, workup: str | None) -> bool:
    final = workup if workup is not None else l1
    return final in ("ACR1", "ACR2")


@given(L1_VALUES, L1_VALUES, ACR_VALUES, ACR_VALUES, ACR_VALUES, ACR_VALUES)
def test_generated_forms_go_to_l2_only_when_both_breasts_end_acr_1_or_2(
    l1_right: str | None,
    l1_left: str | None,
    workup_right: str | None,
    workup_left: str | None,
    l2_right: str | None,
    l2_left: str | None,
) -> None:
    spec = D2lmSpec(
        l1_right=l1_right,
        l1_left=l1_left,
        workup_right=workup_right,
        workup_left=workup_left,
        l2_right=l2_right,
        l2_left=l2_left,
    )
    form = read(make_d2lm(spec))
    assert (form.right.l1, form.right.workup, form.right.l2) == (l1_right, workup_right, l2_right)
    assert (form.left.l1, form.left.workup, form.left.l2) == (l1_left, workup_left, l2_left)
    decision = decide_l2(form)
    expected = _oracle(l1_right, workup_right) and _oracle(l1_left, workup_left)
    assert decision.eligible is expected
    # The L2 reader's own result never decides whether L2 happens.
    assert decide_l2(read(make_d2lm(replace(spec, l2_right=None, l2_left=None)))) == decision


def test_generated_form_header_fields() -> None:
    form = read(make_d2lm(D2lmSpec(patient=CORSE, postal_code="20200", exam_date="20260301")))
    assert form.l1_reader == Practitioner(**vars(L1_READER))
    assert form.l2_reader == Practitioner(**vars(L2_READER))
    assert form.gp == Practitioner(**vars(GP))
    assert form.exam_date == dt.date(2026, 3, 1)
    assert (form.departement, form.ins) == ("2B", CORSE.ins)
    assert decide_l2(form).eligible


def test_l1_is_the_author_who_performed_the_exam_whatever_the_order() -> None:
    root = etree.fromstring(make_d2lm())
    authors = root.findall("h:author", NS)
    root.remove(authors[0])
    authors[1].addnext(authors[0])  # L2 first, L1 second
    form = read(etree.tostring(root))
    assert form.l1_reader is not None and form.l1_reader.rpps == L1_READER.rpps
    assert form.l2_reader is not None and form.l2_reader.rpps == L2_READER.rpps


def test_an_l1_submission_has_no_l2_reader_yet() -> None:
    form = read(make_d2lm(D2lmSpec(l2_reader=None)))
    assert form.l2_reader is None and form.l1_reader is not None


def test_exam_date_falls_back_to_the_l1_reading_entry() -> None:
    root = etree.fromstring(make_d2lm(D2lmSpec(exam_date="20250102")))
    (time,) = root.findall("h:documentationOf/h:serviceEvent/h:effectiveTime", NS)
    time.getparent().remove(time)  # type: ignore[union-attr]
    assert read(etree.tostring(root)).exam_date == dt.date(2025, 1, 2)


def test_deferred_workup_form_generated() -> None:
    form = read(make_d2lm(D2lmSpec(kind="FIDD", workup_right="ACR1", workup_left="ACR2")))
    assert form.kind == "FIDD" and form.l2_reader is None
    assert not decide_l2(form).eligible


@pytest.mark.parametrize("postal", [None, "75"])
def test_no_departement_without_a_postal_code(postal: str | None) -> None:
    form = read(make_d2lm(D2lmSpec(postal_code=postal)))
    assert form.departement is None
    assert decide_l2(form).eligible  # where it goes is the routing's question, not this one


def test_form_kind_is_by_template_id_only() -> None:
    assert form_kind(("1.2.250.1.213.1.1.1.27",)) == "FIN"
    assert form_kind(("2.16.840.1.113883.2.8.2.1", "1.2.250.1.213.1.1.1.28")) == "FIDD"
    assert form_kind(("1.2.250.1.213.1.1.1.45",)) is None
    assert read_d2lm(make_cda(), LIMITS) is None  # a CR-IMG, LOINC 18748-4 too


# -- what is not read cleanly keeps a form out of L2 --------------------------------------


def _edit(spec: D2lmSpec, path: str, **attrib: str) -> bytes:
    root = etree.fromstring(make_d2lm(spec))
    found = elements(root, path)
    assert found
    for element in found:
        for key, value in attrib.items():
            element.set(key, value)
    return bytes(etree.tostring(root))


RIGHT_L1 = (
    "//h:section[h:templateId/@root='1.2.250.1.213.1.1.2.58']"
    "//h:observation[h:code/h:qualifier/h:value/@code='24028007']"
)


@pytest.mark.parametrize(
    ("path", "attrib", "problem"),
    [
        (RIGHT_L1 + "/h:value", {"code": "MED-131"}, "MED-1104 right: 'MED-131' is not in"),
        (RIGHT_L1 + "/h:value", {"codeSystem": "2.16.840.1.113883.6.96"}, "is not in its value"),
        (RIGHT_L1 + "/h:code/h:qualifier/h:value", {"code": "7771000"}, "two different"),
        (RIGHT_L1 + "/h:code/h:qualifier/h:value", {"code": "1"}, "without a right/left"),
    ],
)
def test_unreadable_results_keep_the_form_out_of_l2(
    path: str, attrib: dict[str, str], problem: str
) -> None:
    form = read(_edit(D2lmSpec(l1_right="ACR1", l1_left="ACR2"), path, **attrib))
    decision = decide_l2(form)
    assert not decision.eligible
    assert any(problem in p for p in form.result_problems), form.result_problems


def test_a_result_of_another_code_system_is_not_read() -> None:
    form = read(_edit(D2lmSpec(), RIGHT_L1 + "/h:code", codeSystem="2.16.840.1.113883.6.1"))
    assert form.right.l1 is None
    assert decide_l2(form).reasons == ("right breast: no L1 result",)


def test_a_negated_result_is_no_result() -> None:
    form = read(_edit(D2lmSpec(), RIGHT_L1, negationInd="true"))
    assert form.right.l1 is None and not decide_l2(form).eligible


def test_overlong_names_are_dropped_and_said() -> None:
    gp = replace(GP, family="X" * 500)
    form = read(make_d2lm(D2lmSpec(gp=gp)))
    assert form.gp is not None and form.gp.family is None
    assert form.problems == ("a family name longer than 200 characters or not printable",)
    assert decide_l2(form).eligible  # a GP's name does not decide L2


def test_hostile_xml_is_refused_by_the_hardened_parser() -> None:
    doctype = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]>' + make_d2lm()[38:]
    with pytest.raises(XmlError):
        read_d2lm(doctype, LIMITS)
    with pytest.raises(DocumentError):
        read_d2lm(make_d2lm(), DocumentLimits(max_xml_bytes=100))


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=4000))
def test_any_bytes_give_a_form_none_or_a_document_error(noise: bytes, at: int) -> None:
    data = make_d2lm()
    mutated = data[:at] + noise + data[at + len(noise) :]
    try:
        form = read_d2lm(mutated, LIMITS)
    except DocumentError:
        return
    if form is not None:
        decide_l2(form)


def test_ta_asip_is_the_code_system_of_every_result() -> None:
    assert TA_ASIP == "1.2.250.1.213.1.1.4.322"


NAMES = st.text(
    st.characters(codec="utf-8", categories=("L", "Nd", "Zs", "Pd")), min_size=1, max_size=40
).filter(lambda s: s.strip())
READERS: st.SearchStrategy[Reader] = st.builds(
    lambda rpps, family, given: replace(L1_READER, rpps=rpps, family=family, given=given),
    st.from_regex(r"[0-9]{9,12}", fullmatch=True),
    NAMES,
    NAMES,
)


@given(READERS, READERS, st.from_regex(r"[0-9]{5}", fullmatch=True))
def test_generated_header_round_trip(l1: Reader, gp: Reader, postal: str) -> None:
    form = read(make_d2lm(D2lmSpec(l1_reader=l1, gp=gp, postal_code=postal)))
    for read_back, written in ((form.l1_reader, l1), (form.gp, gp)):
        assert read_back is not None
        assert read_back.rpps == written.rpps
        # Whitespace is folded as CDA text is (runs of blanks to one space, ends trimmed).
        assert read_back.family == " ".join(written.family.split())
        assert read_back.given == " ".join(written.given.split())
    assert (form.postal_code, form.departement) == (postal, departement_of(postal))
