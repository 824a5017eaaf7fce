"""The GP's copy of an L2 result (mssgate.documents.d2lm_anon): the ANS interpretation form
(read from ../shared), variants of it, and generated forms with generated readers and
patients (hypothesis)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from lxml import etree

from mssgate.documents import Accepted, parse_cda, process_message
from mssgate.documents.cda import OID_RPPS, format_identifier
from mssgate.documents.d2lm import read_d2lm
from mssgate.documents.d2lm_anon import (
    MASKED_TEXT,
    PLACEHOLDER,
    PLACEHOLDER_ORG,
    AnonymisationError,
    anonymise_l2_reader,
    copy_oid,
    number_forms,
)
from mssgate.documents.d2lm_samples import GP, L1_READER, D2lmSpec, Reader, make_d2lm
from mssgate.documents.errors import XmlError
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.samples import Patient
from tests.documents.conftest import ANSFORGE, requires_shared
from tests.documents.factory import make_mail

LIMITS = DocumentLimits()
FIN = ANSFORGE / "TestContenuCDA-3-0" / "CANCER-D2LM-FIN_2022.01.xml"
H = "urn:hl7-org:v3"
NS = {"h": H}
ANS_L2 = ("369838578", "ROY", "Alain", "alain.roy@mssante.fr")


def h(path: str) -> str:
    return "/".join(f"{{{H}}}{step}" for step in path.split("/"))


def one(root: etree._Element, path: str) -> etree._Element:
    found = root.xpath(path, namespaces=NS)
    assert isinstance(found, list) and len(found) >= 1, path
    element = found[0]
    assert isinstance(element, etree._Element)
    return element


def tree(data: bytes) -> etree._Element:
    # Comments dropped as the hardened parser drops them (the copy carries none).
    return etree.fromstring(data, etree.XMLParser(remove_comments=True, remove_pis=True))


def c14n(element: etree._Element) -> bytes:
    return etree.tostring(element, method="c14n")


def ans() -> bytes:
    if not FIN.exists():
        pytest.skip("needs ../shared/fixtures")
    return FIN.read_bytes()


def pipeline_record(data: bytes) -> Accepted:
    result = process_message(make_mail([("fin.xml", data, "text/xml")]), allow_test_oids=True)
    [outcome] = result.outcomes
    assert isinstance(outcome, Accepted), getattr(outcome, "reason", None)
    return outcome


# -- the ANS example ---------------------------------------------------------------------


@requires_shared
def test_ans_form_loses_its_l2_reader_and_keeps_everything_else() -> None:
    original = ans()
    copy = anonymise_l2_reader(original, LIMITS)
    rpps, family, given_name, email = ANS_L2
    assert rpps.encode() not in copy.data
    assert email.encode() not in copy.data.lower()
    for name in (family, given_name):
        assert re.search(rf"(?i)\b{name}\b".encode(), copy.data) is None, name
    # The original keeps its reader (the CRCDC's and the L1 radiologist's copy).
    before, after = read_d2lm(original, LIMITS), read_d2lm(copy.data, LIMITS)
    assert before is not None and after is not None
    assert before.l2_reader is not None and before.l2_reader.rpps == rpps
    assert after.l2_reader is not None
    assert (after.l2_reader.rpps, after.l2_reader.family, after.l2_reader.email) == (
        None,
        PLACEHOLDER,
        None,
    )
    for field in ("l1_reader", "gp", "ins", "ins_oid", "postal_code", "departement",
                  "exam_date", "right", "left", "kind"):  # fmt: skip
        assert getattr(after, field) == getattr(before, field), field
    assert after.problems == () and after.result_problems == ()
    # The patient's block is byte for byte the original's (canonical form).
    root_before, root_after = tree(original), tree(copy.data)
    assert c14n(one(root_after, "/h:ClinicalDocument/h:recordTarget")) == c14n(
        one(root_before, "/h:ClinicalDocument/h:recordTarget")
    )
    # Exactly one role masked (the L2 author), its shape as the docs say.
    assert copy.masked_roles == 1
    author = one(root_after, "/h:ClinicalDocument/h:author[2]/h:assignedAuthor")
    assert [etree.QName(c).localname for c in author] == [
        "id", "code", "addr", "telecom", "assignedPerson", "representedOrganization"
    ]  # fmt: skip
    assert author.find(h("id")).get("nullFlavor") == "MSK"  # type: ignore[union-attr]
    assert author.find(h("addr")).get("nullFlavor") == "MSK"  # type: ignore[union-attr]
    assert author.find(h("telecom")).get("nullFlavor") == "MSK"  # type: ignore[union-attr]
    assert author.findtext(h("assignedPerson/name/family")) == PLACEHOLDER
    assert author.findtext(h("representedOrganization/name")) == PLACEHOLDER_ORG
    assert author.find(h("code")).get("code") == "G15_10/SM55"  # type: ignore[union-attr]
    # The L2 reading time stays (the 15-day deadline is counted on dates, not readers).
    assert one(root_after, "/h:ClinicalDocument/h:author[2]/h:time").get("value") == (
        "20210729111700+0100"
    )


@requires_shared
def test_ans_copy_is_a_new_document_that_names_its_original() -> None:
    original = ans()
    copy = anonymise_l2_reader(original, LIMITS)
    assert copy.original_id == "1.2.250.1.213.1.1.1.27.2022.1.1"
    assert copy.document_id == copy_oid(copy.original_id)
    assert re.fullmatch(r"2\.25\.[1-9][0-9]{0,38}", copy.document_id)
    assert len(copy.document_id) <= 64  # an XDS uniqueId's bound
    root = etree.fromstring(copy.data)
    assert one(root, "/h:ClinicalDocument/h:setId").get("root") == copy_oid(
        "set 1.2.250.1.213.1.1.1.27.2022.1"
    )
    assert one(root, "/h:ClinicalDocument/h:versionNumber").get("value") == "1"
    [related] = root.findall(h("relatedDocument"))
    assert related.get("typeCode") == "XFRM"
    assert related.find(h("parentDocument/id")).get("root") == copy.original_id  # type: ignore[union-attr]
    # CDA order: relatedDocument after documentationOf, before componentOf.
    names = [etree.QName(c).localname for c in root]
    assert names.index("documentationOf") < names.index("relatedDocument")
    assert names.index("relatedDocument") == names.index("componentOf") - 1
    # The same original gives the same copy, byte for byte (a retried forward, another node).
    assert anonymise_l2_reader(original, LIMITS).data == copy.data


def test_the_copy_replaces_nothing() -> None:
    """An L2 result replacing the L1 form (RPLC): the copy names its original (XFRM) only; it
    is forwarded in the gateway's name, which replaces no document at the GP."""
    root = tree(make_d2lm(D2lmSpec(l2_right="ACR1", l2_left="ACR1")))
    related = etree.Element(h("relatedDocument"), typeCode="RPLC")
    etree.SubElement(etree.SubElement(related, h("parentDocument")), h("id"), root="1.2.3.4.1")
    one(root, "/h:ClinicalDocument/h:component").addprevious(related)
    data = bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    assert parse_cda(data, LIMITS).header.replaces != ()
    copy = anonymise_l2_reader(data, LIMITS)
    copied = tree(copy.data)
    assert [r.get("typeCode") for r in copied.iterfind(h("relatedDocument"))] == ["XFRM"]
    assert parse_cda(copy.data, LIMITS).header.replaces == ()
    assert b"1.2.3.4.1" not in copy.data


@requires_shared
def test_our_pipeline_reads_the_anonymised_copy() -> None:
    original, copy = ans(), anonymise_l2_reader(ans(), LIMITS)
    before, after = pipeline_record(original).record, pipeline_record(copy.data).record
    assert after.ins.value == before.ins.value == "279035121518989"
    assert after.ins.qualified and after.ins.oid == before.ins.oid
    assert after.document.unique_id == copy.document_id
    assert before.document.unique_id == copy.original_id
    assert after.document.replaces is None  # XFRM is no replacement
    assert after.patient == before.patient
    assert after.document.type_code == "18748-4"
    header = parse_cda(copy.data, LIMITS).header
    assert format_identifier(header.document_id) == copy.document_id
    assert header.author_rpps == ("801234567897",)  # L1 only


def _ans_with_l2_everywhere() -> bytes:
    """The ANS FIN where the L2 reader is also the legal authenticator, a section author, a
    participant reached by its address only, an entry's id and II value (0-prefixed ADELI),
    and named in the L2 section's narrative."""
    root = etree.fromstring(ans())
    rpps, family, given_name, email = ANS_L2
    legal = one(root, "/h:ClinicalDocument/h:legalAuthenticator/h:assignedEntity")
    one(legal, "h:id").set("extension", rpps)
    l2 = one(root, "//h:section[h:templateId/@root='1.2.250.1.213.1.1.2.174']")
    text = one(l2, "h:text")
    text.text = f"Deuxième lecture : Dr {given_name}\n {family.title()} (RPPS {rpps}), {email}."
    author = etree.Element(h("author"))
    etree.SubElement(author, h("time"), value="20210729")
    assigned = etree.SubElement(author, h("assignedAuthor"))
    etree.SubElement(assigned, h("id"), root=OID_RPPS, extension="0" + rpps)
    name = etree.SubElement(etree.SubElement(assigned, h("assignedPerson")), h("name"))
    etree.SubElement(name, h("given")).text = given_name
    etree.SubElement(name, h("family")).text = family
    text.addnext(author)
    participant = one(root, "/h:ClinicalDocument/h:participant[2]/h:associatedEntity")
    etree.SubElement(participant, h("telecom"), value=f"MAILTO:{email.upper()}")
    entry = one(l2, ".//h:procedure[h:code/@code='MED-022']")
    etree.SubElement(entry, h("id"), root="1.2.3.4", extension=rpps)
    observation = etree.SubElement(etree.SubElement(l2, h("entry")), h("observation"))
    etree.SubElement(observation, h("code"), code="X-LECTEUR", codeSystem="1.2.3")
    value = etree.SubElement(observation, h("value"), root="1.2.3.5", extension="0" + rpps)
    value.set("{http://www.w3.org/2001/XMLSchema-instance}type", "II")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


@requires_shared
def test_the_l2_reader_is_found_wherever_the_form_names_it() -> None:
    data = _ans_with_l2_everywhere()
    copy = anonymise_l2_reader(data, LIMITS)
    rpps, family, given_name, email = ANS_L2
    for trace in (rpps, email, family, given_name):
        assert re.search(rf"(?i)(?<![0-9a-z]){re.escape(trace)}", copy.data.decode()) is None
    assert copy.masked_roles == 3  # the author, the legal authenticator, the section author
    assert copy.masked_ids == 2  # the entry's id, the II value
    assert copy.masked_telecoms == 1  # the gynaecologist's extra address
    root = etree.fromstring(copy.data)
    legal = one(root, "/h:ClinicalDocument/h:legalAuthenticator/h:assignedEntity")
    assert legal.findtext(h("assignedPerson/name/family")) == PLACEHOLDER
    narrative = one(root, "//h:section[h:templateId/@root='1.2.250.1.213.1.1.2.174']/h:text")
    text = "".join(t for t in narrative.itertext() if isinstance(t, str))
    assert text == f"Deuxième lecture : {PLACEHOLDER} (RPPS {MASKED_TEXT}), {MASKED_TEXT}."
    # The gynaecologist keeps her name and telephone: only the reader's address went.
    gyn = one(root, "/h:ClinicalDocument/h:participant[2]/h:associatedEntity")
    assert gyn.findtext(h("associatedPerson/name/family")) == "FABERT"
    assert [t.get("value") for t in gyn.iterfind(h("telecom"))] == ["tel:0147459305", None]


@requires_shared
def test_a_namesake_keeps_their_name() -> None:
    """The GP called ROY too (another RPPS) and the patient called ROY keep their names;
    the reader's own entry goes."""
    root = etree.fromstring(ans())
    gp = one(root, "/h:ClinicalDocument/h:participant[1]/h:associatedEntity")
    one(gp, "h:associatedPerson/h:name/h:family").text = "ROY"
    one(gp, "h:associatedPerson/h:name/h:given").text = "Alain"
    patient = one(root, "/h:ClinicalDocument/h:recordTarget/h:patientRole/h:patient/h:name")
    for family in patient.iterfind(h("family")):
        family.text = "ROY"
    data = bytes(etree.tostring(root, encoding="UTF-8"))
    copy = anonymise_l2_reader(data, LIMITS)
    after = read_d2lm(copy.data, LIMITS)
    assert after is not None and after.gp is not None
    assert (after.gp.rpps, after.gp.family, after.gp.given) == ("648238527", "ROY", "Alain")
    assert parse_cda(copy.data, LIMITS).header.traits == parse_cda(data, LIMITS).header.traits
    assert b"369838578" not in copy.data
    assert copy.masked_roles == 1


@requires_shared
def test_forms_that_cannot_be_anonymised_are_refused() -> None:
    fidd = (ANSFORGE / "TestContenuCDA-3-0" / "CANCER-D2LM-FIDD_2022.01.xml").read_bytes()
    with pytest.raises(AnonymisationError, match="interpretation form"):
        anonymise_l2_reader(fidd, LIMITS)
    cr = (ANSFORGE / "TestContenuCDA-3-0" / "IMG_CR_IMG_2024.01.xml").read_bytes()
    with pytest.raises(AnonymisationError, match="interpretation form"):
        anonymise_l2_reader(cr, LIMITS)


def test_a_form_without_an_l2_reader_is_refused() -> None:
    with pytest.raises(AnonymisationError, match="no L2 reader"):
        anonymise_l2_reader(make_d2lm(D2lmSpec(l2_reader=None)), LIMITS)


def test_hostile_input_is_refused_by_the_hardened_parser() -> None:
    data = make_d2lm()
    doctype = data.replace(
        b"<ClinicalDocument", b'<!DOCTYPE x [<!ENTITY e "x">]><ClinicalDocument', 1
    )
    with pytest.raises(XmlError):
        anonymise_l2_reader(doctype, LIMITS)
    with pytest.raises(Exception, match="larger than"):
        anonymise_l2_reader(data, DocumentLimits(max_xml_bytes=len(data) - 1))


def test_a_reader_in_a_place_not_known_is_not_sent_out() -> None:
    """Fail closed: the number left in an attribute this module does not rewrite (an XML ID)
    stops the copy instead of sending it."""
    reader = Reader("81000000012", "ROY", "Alain")
    root = etree.fromstring(make_d2lm(D2lmSpec(l2_reader=reader)))
    one(root, "//h:section/h:title").set("ID", "lu-par-81000000012")
    with pytest.raises(AnonymisationError, match="still in <title>"):
        anonymise_l2_reader(bytes(etree.tostring(root)), LIMITS)


def test_number_forms() -> None:
    assert number_forms("810000000123") == {"810000000123", "10000000123"}
    assert number_forms("10000000123") == {"810000000123", "10000000123"}
    assert number_forms("0369838578") == {"0369838578", "369838578"}
    assert number_forms("369838578") == {"0369838578", "369838578"}
    assert number_forms("ABC") == {"ABC"}


# -- generated forms, generated readers --------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZÉÈÊÀÇÏÔabcdefghijklmnopqrstuvwxyzéèêàçïô"
names = st.builds(
    lambda a, b: f"{a}-{b}" if b else a,
    st.text(_LETTERS, min_size=3, max_size=12),
    st.one_of(st.just(""), st.text(_LETTERS, min_size=2, max_size=8)),
)
numbers = st.one_of(st.from_regex(r"8[0-9]{11}", fullmatch=True),
                    st.from_regex(r"[0-9]{9}", fullmatch=True))  # fmt: skip
patients = st.builds(
    Patient,
    ins=st.from_regex(r"[12][0-9]{14}", fullmatch=True),
    family=names,
    given_list=names,
    first_given=names,
)


def _with_reader_everywhere(spec: D2lmSpec, reader: Reader) -> bytes:
    """A generated form where the reader is also legal authenticator, the L2 section's
    author, named in that section's narrative, and a participant's second address."""
    root = etree.fromstring(make_d2lm(spec))
    legal = etree.Element(h("legalAuthenticator"))
    etree.SubElement(legal, h("time"), value="20210729")
    etree.SubElement(legal, h("signatureCode"), code="S")
    entity = etree.SubElement(legal, h("assignedEntity"))
    etree.SubElement(entity, h("id"), root=OID_RPPS, extension=reader.rpps)
    name = etree.SubElement(etree.SubElement(entity, h("assignedPerson")), h("name"))
    etree.SubElement(name, h("given")).text = reader.given
    etree.SubElement(name, h("family")).text = reader.family
    one(root, "/h:ClinicalDocument/h:custodian").addnext(legal)
    section = one(root, "//h:section[h:templateId/@root='1.2.250.1.213.1.1.2.174']")
    text = one(section, ".//h:text")
    text.text = (
        f"Lu par Dr {reader.given} {reader.family.upper()} le 29/07/2021 ; RPPS {reader.rpps} ;"
        f" {reader.email} ; {reader.family.lower()}"
    )
    author = etree.Element(h("author"))
    etree.SubElement(author, h("time"), value="20210729")
    assigned = etree.SubElement(author, h("assignedAuthor"))
    etree.SubElement(assigned, h("id"), root=OID_RPPS, extension=reader.rpps)
    one(section, "h:title").addnext(author)
    gp = one(root, "/h:ClinicalDocument/h:participant/h:associatedEntity")
    etree.SubElement(gp, h("telecom"), value=f"mailto:{reader.email}")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _base_text(spec: D2lmSpec) -> str:
    """Everything the form says without the reader, and what the copy writes in its place."""
    stand_in = Reader("899999999999", "ZZZ", "ZZZ", "zzz@example.org")
    data = _with_reader_everywhere(replace(spec, l2_reader=stand_in), stand_in)
    copy = anonymise_l2_reader(data, LIMITS).data
    return (data.decode() + copy.decode()).casefold()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(number=numbers, family=names, given_name=names, patient=patients)
def test_generated_reader_appears_nowhere_in_the_copy(
    number: str, family: str, given_name: str, patient: Patient
) -> None:
    reader = Reader(number, family, given_name, f"l2.{number}@crcdc.mssante.fr")
    spec = D2lmSpec(patient=patient, l2_reader=reader, l2_right="ACR1", l2_left="ACR2")
    base = _base_text(spec)
    assume(all(n not in base for n in number_forms(number)))
    assume(family.casefold() not in base and given_name.casefold() not in base)
    data = _with_reader_everywhere(spec, reader)
    copy = anonymise_l2_reader(data, LIMITS)
    out = copy.data.decode().casefold()
    for trace in (*number_forms(number), family, given_name, reader.email or ""):
        assert trace.casefold() not in out, trace
    assert copy.masked_roles == 3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(number=numbers, family=names, given_name=names, patient=patients, same=st.booleans())
def test_everything_about_the_patient_survives(
    number: str, family: str, given_name: str, patient: Patient, same: bool
) -> None:
    """Whatever the names, even a reader who shares the patient's names."""
    if same:
        family, given_name = patient.family, patient.first_given
    reader = Reader(number, family, given_name, "l2@crcdc.mssante.fr")
    assume(reader.rpps not in (L1_READER.rpps, GP.rpps))
    spec = D2lmSpec(patient=patient, l2_reader=reader, l2_right="ACR1", l2_left="ACR2")
    data = _with_reader_everywhere(spec, reader)
    copy = anonymise_l2_reader(data, LIMITS)
    root_before, root_after = tree(data), tree(copy.data)
    target = "/h:ClinicalDocument/h:recordTarget"
    assert c14n(one(root_after, target)) == c14n(one(root_before, target))
    before, after = read_d2lm(data, LIMITS), read_d2lm(copy.data, LIMITS)
    assert before is not None and after is not None
    for field in ("ins", "ins_oid", "postal_code", "departement", "exam_date", "right", "left",
                  "l1_reader", "gp"):  # fmt: skip
        assert getattr(after, field) == getattr(before, field), field
    header_before = parse_cda(data, LIMITS).header
    header_after = parse_cda(copy.data, LIMITS).header
    assert header_after.patient_ids == header_before.patient_ids
    assert header_after.traits == header_before.traits
