"""Generated CANCER-D2LM forms (tests, and the L2 flow's demos), written by this project.

The ANS examples state no licence that lets the project copy them (tests/fixtures/README
and ../shared/fixtures/README.md), so a clone without ../shared reads these instead: the
same header and the same sections, templateIds, codes and laterality qualifiers as the
volet's 2022.01 examples, with only what `mssgate.documents.d2lm` reads and a title per
section. Fictitious identities only (the ANS test patient PAT-TROIS, test RPPS numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from mssgate.documents import d2lm
from mssgate.documents.cda import OID_RPPS
from mssgate.documents.samples import HL7, PAT_TROIS, Patient, _h, _sub

XSI = "http://www.w3.org/2001/XMLSchema-instance"
_CODES = {
    "ACR1": "MED-129",
    "ACR2": "MED-130",
    "ACR3": "MED-131",
    "ACR4": "MED-132",
    "ACR5": "MED-133",
    "abnormal": "MED-048",
}


@dataclass(frozen=True)
class Reader:
    rpps: str
    family: str
    given: str
    email: str | None = None


L1_READER = Reader("801234567897", "BOILEAU", "Charles", "charles.boileau@mssante.fr")
L2_READER = Reader("810000000123", "ROY", "Alain", "alain.roy@mssante.fr")
GP = Reader("810000000456", "PARISI", "Stéphane", "stephane.parisi@mssante.fr")


@dataclass(frozen=True)
class D2lmSpec:
    """One form. A result is a Classification name (`ACR1`..`ACR5`, `abnormal`) or None for
    no entry; a value outside the volet's value sets is written as a raw code (`MED-999`)."""

    kind: d2lm.FormKind = "FIN"
    patient: Patient = PAT_TROIS
    postal_code: str | None = "75007"
    exam_date: str = "20210729"
    l1_reader: Reader | None = L1_READER
    l2_reader: Reader | None = L2_READER
    gp: Reader | None = GP
    l1_right: str | None = "ACR1"
    l1_left: str | None = "ACR2"
    # The immediate work-up section is written when either side has a result.
    workup_right: str | None = None
    workup_left: str | None = None
    l2_right: str | None = None
    l2_left: str | None = None
    doc_root: str = "1.2.250.1.999.1.1.27.1"


def _person(entity: etree._Element, person: str, reader: Reader) -> None:
    _sub(entity, "id", root=OID_RPPS, extension=reader.rpps)
    if reader.email:
        _sub(entity, "telecom", value=f"mailto:{reader.email}")
    name = _sub(_sub(entity, person), "name")
    _sub(name, "given", reader.given)
    _sub(name, "family", reader.family)


def _header(root: etree._Element, spec: D2lmSpec) -> None:
    template = d2lm.TEMPLATE_FIN if spec.kind == "FIN" else d2lm.TEMPLATE_FIDD
    _sub(root, "realmCode", code="FR")
    _sub(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_HD000040")
    _sub(root, "templateId", root="2.16.840.1.113883.2.8.2.1")
    _sub(root, "templateId", root="1.2.250.1.213.1.1.1.1")
    _sub(root, "templateId", root=template, extension="2022.01")
    _sub(root, "id", root=spec.doc_root)
    _sub(root, "code", code="18748-4", codeSystem="2.16.840.1.113883.6.1")
    _sub(root, "title", "DÉPISTAGE DU CANCER DU SEIN")
    _sub(root, "effectiveTime", value=f"{spec.exam_date}121700+0100")
    _sub(root, "confidentialityCode", code="N", codeSystem="2.16.840.1.113883.5.25")
    _sub(root, "setId", root=spec.doc_root + ".0")
    _sub(root, "versionNumber", value="1")
    role = _sub(_sub(root, "recordTarget"), "patientRole")
    _sub(role, "id", root=spec.patient.oid, extension=spec.patient.ins)
    if spec.postal_code is not None:
        _sub(_sub(role, "addr"), "postalCode", spec.postal_code)
    patient = _sub(role, "patient")
    name = _sub(patient, "name")
    _sub(name, "family", spec.patient.family, qualifier="BR")
    _sub(name, "given", spec.patient.given_list)
    _sub(name, "given", spec.patient.first_given, qualifier="BR")
    _sub(patient, "administrativeGenderCode", code=spec.patient.sex)
    _sub(patient, "birthTime", value=spec.patient.birth_time)
    if spec.patient.birthplace:
        _sub(_sub(_sub(_sub(patient, "birthplace"), "place"), "addr"), "county",
             spec.patient.birthplace)  # fmt: skip
    for reader in (spec.l1_reader, spec.l2_reader if spec.kind == "FIN" else None):
        if reader is not None:
            author = _sub(root, "author")
            _sub(author, "time", value=f"{spec.exam_date}093500+0100")
            _person(_sub(author, "assignedAuthor"), "assignedPerson", reader)
    custodian = _sub(_sub(_sub(root, "custodian"), "assignedCustodian"),
                     "representedCustodianOrganization")  # fmt: skip
    _sub(custodian, "id", root="1.2.250.1.71.4.2.2", extension="1750803447")
    if spec.gp is not None:
        participant = _sub(root, "participant", typeCode="INF")
        _sub(participant, "functionCode", code="PCP", codeSystem="2.16.840.1.113883.5.88")
        _person(
            _sub(participant, "associatedEntity", classCode="PROV"), "associatedPerson", spec.gp
        )
    event = _sub(_sub(root, "documentationOf"), "serviceEvent")
    _sub(event, "code", code="QEQK004", codeSystem="1.2.250.1.215.300.1")
    _sub(_sub(event, "effectiveTime"), "low", value=f"{spec.exam_date}111700+0100")
    if spec.l1_reader is not None:
        entity = _sub(_sub(event, "performer", typeCode="PRF"), "assignedEntity")
        _sub(entity, "id", root=OID_RPPS, extension=spec.l1_reader.rpps)
        organisation = _sub(entity, "representedOrganization")
        _sub(organisation, "standardIndustryClassCode", code="DEPISTAGE",
             codeSystem="1.2.250.1.213.1.1.4.9")  # fmt: skip


def _result(section: etree._Element, code: str, side: d2lm.Breast, value: str) -> None:
    observation = _sub(_sub(section, "entry"), "observation", classCode="OBS", moodCode="EVN")
    _sub(observation, "templateId", root="1.2.250.1.213.1.1.3.48")
    coded = _sub(observation, "code", code=code, codeSystem=d2lm.TA_ASIP)
    qualifier = _sub(coded, "qualifier")
    _sub(qualifier, "name", code=d2lm.LOINC_LATERALITY, codeSystem="2.16.840.1.113883.6.1")
    snomed = d2lm.SNOMED_RIGHT if side == "right" else d2lm.SNOMED_LEFT
    _sub(qualifier, "value", code=snomed, codeSystem="2.16.840.1.113883.6.96")
    _sub(observation, "statusCode", code="completed")
    value_element = _sub(observation, "value", code=_CODES.get(value, value),
                         codeSystem=d2lm.TA_ASIP)  # fmt: skip
    value_element.set(f"{{{XSI}}}type", "CD")


def _section(
    body: etree._Element, template: str, title: str, code: str, results: tuple[str | None, ...]
) -> etree._Element:
    outer = _sub(_sub(body, "component"), "section")
    _sub(outer, "templateId", root=template)
    _sub(outer, "code", code="22030-1", codeSystem="2.16.840.1.113883.6.1")
    _sub(outer, "title", title)
    inner = _sub(_sub(outer, "component"), "section")
    _sub(inner, "templateId", root="1.3.6.1.4.1.19376.1.5.3.1.3.28")
    _sub(inner, "code", code="30954-2", codeSystem="2.16.840.1.113883.6.1")
    _sub(inner, "title", "Résultats d'examens")
    _sub(inner, "text", "Résultats")
    right, left = results
    if right is not None:
        _result(inner, code, "right", right)
    if left is not None:
        _result(inner, code, "left", left)
    return inner


def make_d2lm(spec: D2lmSpec = D2lmSpec()) -> bytes:
    """A CANCER-D2LM interpretation (FIN) or deferred work-up (FIDD) form, as UTF-8 bytes."""
    root = etree.Element(_h("ClinicalDocument"), nsmap={None: HL7, "xsi": XSI})  # type: ignore[dict-item]
    _header(root, spec)
    body = _sub(_sub(root, "component"), "structuredBody")
    if spec.kind == "FIDD":
        section = _sub(_sub(body, "component"), "section")
        _sub(section, "templateId", root="1.2.250.1.213.1.1.2.151")
        _sub(section, "title", "Bilan de diagnostic différé")
        for side, value in (("right", spec.workup_right), ("left", spec.workup_left)):
            if value is not None:
                _result(section, d2lm.CODE_WORKUP_RESULT, side, value)  # type: ignore[arg-type]
        return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    l1 = _section(body, d2lm.SECTION_L1, "INTERPRÉTATION DU PREMIER LECTEUR",
                  d2lm.CODE_L1_RESULT, (spec.l1_right, spec.l1_left))  # fmt: skip
    reading = _sub(_sub(l1, "entry"), "procedure", classCode="PROC", moodCode="EVN")
    _sub(reading, "code", code=d2lm.CODE_READING, codeSystem=d2lm.TA_ASIP)
    _sub(reading, "effectiveTime", value=spec.exam_date)
    if spec.workup_right is not None or spec.workup_left is not None:
        _section(body, d2lm.SECTION_WORKUP, "BILAN DE DIAGNOSTIC IMMEDIAT",
                 d2lm.CODE_WORKUP_RESULT, (spec.workup_right, spec.workup_left))  # fmt: skip
    if spec.l2_right is not None or spec.l2_left is not None:
        _section(body, d2lm.SECTION_L2, "INTERPRÉTATION DU DEUXIÈME LECTEUR",
                 d2lm.CODE_L2_RESULT, (spec.l2_right, spec.l2_left))  # fmt: skip
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
