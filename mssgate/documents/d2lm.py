"""The breast-cancer screening forms of CI-SIS volet CANCER-D2LM (2022.01), and whether an
interpretation form goes to the second reading (L2).

Both forms carry LOINC `18748-4`, the code of every imaging report, so they are told apart
by the header templateId only: `.1.1.1.27` the interpretation form (FIN), `.1.1.1.28` the
deferred diagnostic work-up form (FIDD). Inside, sections are found by their templateId
(L1 interpretation `.1.1.2.58`, immediate work-up `.1.1.2.59`, L2 interpretation
`.1.1.2.174`) and results by their local code (code system `1.2.250.1.213.1.1.4.322`) and
laterality qualifier (LOINC `20228-3`: SNOMED CT `24028007` right, `7771000` left).

Pure: bytes or a parsed tree in, a frozen model out; the hardened parser of
`documents/xml.py` reads the bytes. Anything odd in a result (no laterality, a code outside
its value set, two different results for one breast) is listed in `problems` and never
guessed: such a form is not sent to L2. docs/documents.md, "CANCER-D2LM forms".
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

from lxml import etree
from pydantic import BaseModel, ConfigDict

from mssgate.documents.cda import OID_RPPS, format_identifier, read_header
from mssgate.documents.departement import departement_of, patient_postal_code
from mssgate.documents.errors import CdaError
from mssgate.documents.imaging import HL7_NS
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.xml import parse_xml

TEMPLATE_FIN: Final = "1.2.250.1.213.1.1.1.27"
TEMPLATE_FIDD: Final = "1.2.250.1.213.1.1.1.28"
SECTION_L1: Final = "1.2.250.1.213.1.1.2.58"
SECTION_WORKUP: Final = "1.2.250.1.213.1.1.2.59"
SECTION_L2: Final = "1.2.250.1.213.1.1.2.174"
TA_ASIP: Final = "1.2.250.1.213.1.1.4.322"
CODE_L1_RESULT: Final = "MED-1104"
CODE_WORKUP_RESULT: Final = "MED-121"
CODE_L2_RESULT: Final = "MED-043"
CODE_READING: Final = "MED-022"
LOINC_LATERALITY: Final = "20228-3"
SNOMED_RIGHT: Final = "24028007"
SNOMED_LEFT: Final = "7771000"
PCP_FUNCTION: Final = "PCP"

FormKind = Literal["FIN", "FIDD"]
Breast = Literal["right", "left"]
# The L1 result has its own value set (JDV_Classification_ACR_1_CISIS): MED-048 stands for
# "abnormal, ACR 0, 3, 4 or 5" without saying which.
Classification = Literal["ACR1", "ACR2", "ACR3", "ACR4", "ACR5", "abnormal"]
L1_VALUES: Final[dict[str, Classification]] = {
    "MED-129": "ACR1",
    "MED-130": "ACR2",
    "MED-048": "abnormal",
}
# JDV_Classification_ACR_CISIS (1.2.250.1.213.1.1.5.481): work-up and L2 results.
ACR_VALUES: Final[dict[str, Classification]] = {
    "MED-129": "ACR1",
    "MED-130": "ACR2",
    "MED-131": "ACR3",
    "MED-132": "ACR4",
    "MED-133": "ACR5",
}
NEGATIVE: Final = frozenset({"ACR1", "ACR2"})
_KINDS: Final[dict[str, FormKind]] = {TEMPLATE_FIN: "FIN", TEMPLATE_FIDD: "FIDD"}
_SIDES: Final[dict[str, Breast]] = {SNOMED_RIGHT: "right", SNOMED_LEFT: "left"}
_NS: Final = {"h": HL7_NS}
# A form has one result per breast and kind; more than this many entries is no form.
_MAX_RESULTS: Final = 20
# Longest RPPS, name or address kept; a longer one is dropped and said in `problems`.
_MAX_TEXT: Final = 200


class Practitioner(BaseModel):
    """A reader or the GP as the form names them."""

    model_config = ConfigDict(frozen=True)

    rpps: str | None = None
    family: str | None = None
    given: str | None = None
    # The first `mailto:` telecom (an MSSanté address, when the form gives one).
    email: str | None = None


class BreastResults(BaseModel):
    model_config = ConfigDict(frozen=True)

    l1: Classification | None = None
    workup: Classification | None = None
    l2: Classification | None = None

    @property
    def final_l1_side(self) -> Classification | None:
        """The L1-side classification: the immediate work-up's where one was done."""
        return self.workup if self.workup is not None else self.l1


class D2lmForm(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: FormKind
    document_id: str | None = None
    set_id: str | None = None
    version: int | None = None
    l1_reader: Practitioner | None = None
    l2_reader: Practitioner | None = None
    gp: Practitioner | None = None
    exam_date: dt.date | None = None
    postal_code: str | None = None
    departement: str | None = None
    ins: str | None = None
    ins_oid: str | None = None
    right: BreastResults = BreastResults()
    left: BreastResults = BreastResults()
    # What could not be read as the volet says (names places and codes, never patient data):
    # in the results (which keeps the form out of L2), and elsewhere.
    result_problems: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def breast(self, side: Breast) -> BreastResults:
        return self.right if side == "right" else self.left


class L2Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    eligible: bool
    right: Classification | None = None
    left: Classification | None = None
    reasons: tuple[str, ...] = ()


def form_kind(template_ids: tuple[str, ...]) -> FormKind | None:
    """FIN or FIDD from the header's templateIds; None for any other document."""
    for template in template_ids:
        if template in _KINDS:
            return _KINDS[template]
    return None


def read_d2lm(data: bytes, limits: DocumentLimits) -> D2lmForm | None:
    """The form in a CDA's bytes, or None when it is no D2LM form. Raises `DocumentError`
    (`XmlError`, `CdaError`, `LimitExceeded`) for what the hardened parser refuses."""
    root = parse_xml(data, limits, what="CDA")
    if root.tag != f"{{{HL7_NS}}}ClinicalDocument":
        raise CdaError("not a CDA R2 ClinicalDocument")
    return form_of(root)


def form_of(root: etree._Element) -> D2lmForm | None:
    """The form of a parsed ClinicalDocument, or None when it is no D2LM form."""
    templates = tuple(t.get("root") or "" for t in root.iterfind("h:templateId", _NS))
    kind = form_kind(templates)
    if kind is None:
        return None
    header = read_header(root)
    problems: list[str] = []
    result_problems: list[str] = []
    authors = [_practitioner(a, "assignedPerson", problems) for a in _authors(root)]
    performer = _first(root, "h:documentationOf/h:serviceEvent/h:performer/h:assignedEntity")
    performer_rpps = _rpps(performer, problems) if performer is not None else None
    l1, l2 = _readers(authors, performer_rpps, kind)
    sides: dict[Breast, dict[str, Classification | None]] = {
        "right": {"l1": None, "workup": None, "l2": None},
        "left": {"l1": None, "workup": None, "l2": None},
    }
    body = _first(root, "h:component/h:structuredBody")
    if body is not None:
        if kind == "FIN":
            wanted = (
                ("l1", SECTION_L1, CODE_L1_RESULT, L1_VALUES),
                ("workup", SECTION_WORKUP, CODE_WORKUP_RESULT, ACR_VALUES),
                ("l2", SECTION_L2, CODE_L2_RESULT, ACR_VALUES),
            )
            for slot, section, code, values in wanted:
                for scope in _sections(body, section):
                    _results(scope, code, values, slot, sides, result_problems)
        else:
            # The FIDD's one result section is the deferred work-up itself.
            _results(body, CODE_WORKUP_RESULT, ACR_VALUES, "workup", sides, result_problems)
    ins = header.ins_ids[0] if header.ins_ids else None
    postal = _postal_code(root, problems)
    return D2lmForm(
        kind=kind,
        document_id=format_identifier(header.document_id),
        set_id=format_identifier(header.set_id),
        version=header.version,
        l1_reader=l1,
        l2_reader=l2,
        gp=_gp(root, problems),
        exam_date=_exam_date(root, body, problems),
        postal_code=postal,
        departement=departement_of(postal),
        ins=ins.extension if ins is not None else None,
        ins_oid=ins.root if ins is not None else None,
        right=BreastResults.model_validate(sides["right"]),
        left=BreastResults.model_validate(sides["left"]),
        result_problems=tuple(result_problems),
        problems=tuple(problems),
    )


def decide_l2(form: D2lmForm) -> L2Decision:
    """Whether an interpretation form goes to L2: the final L1-side classification (the L1
    result, or the immediate work-up's where one was done) is ACR 1 or 2 for BOTH breasts
    (arrêté du 29 septembre 2006, annexe III B; docs/documents.md). Anything the reader
    could not read cleanly keeps the form out of L2: a negative is never assumed."""
    right, left = form.right.final_l1_side, form.left.final_l1_side
    if form.kind != "FIN":
        return L2Decision(
            eligible=False,
            right=right,
            left=left,
            reasons=("a deferred work-up form (FIDD) is not sent to L2",),
        )
    reasons: list[str] = []
    for side, results in (("right", form.right), ("left", form.left)):
        final = results.final_l1_side
        if final is None:
            reasons.append(f"{side} breast: no L1 result")
        elif final not in NEGATIVE:
            where = "immediate work-up" if results.workup is not None else "L1"
            shown = "abnormal (ACR 0, 3, 4 or 5)" if final == "abnormal" else final
            reasons.append(f"{side} breast: {where} {shown}")
    reasons.extend(f"unreadable: {p}" for p in form.result_problems)
    return L2Decision(eligible=not reasons, right=right, left=left, reasons=tuple(reasons))


# -- reading ---------------------------------------------------------------------------


def _first(element: etree._Element, path: str) -> etree._Element | None:
    return element.find(path, _NS)


def _bounded(value: str | None, what: str, problems: list[str]) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())
    if not value:
        return None
    if len(value) > _MAX_TEXT or not value.isprintable():
        problems.append(f"{what} longer than {_MAX_TEXT} characters or not printable")
        return None
    return value


def _text(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    return "".join(t for t in element.itertext() if isinstance(t, str))


def _authors(root: etree._Element) -> list[etree._Element]:
    return root.findall("h:author/h:assignedAuthor", _NS)[:_MAX_RESULTS]


def _rpps(entity: etree._Element, problems: list[str]) -> str | None:
    for ident in entity.iterfind("h:id", _NS):
        if ident.get("root") == OID_RPPS:
            return _bounded(ident.get("extension"), "an RPPS", problems)
    return None


def _practitioner(entity: etree._Element, person: str, problems: list[str]) -> Practitioner:
    name = _first(entity, f"h:{person}/h:name")
    email = None
    for telecom in entity.iterfind("h:telecom", _NS):
        value = (telecom.get("value") or "").strip()
        if value.lower().startswith("mailto:"):
            email = _bounded(value[len("mailto:") :], "an e-mail address", problems)
            break
    return Practitioner(
        rpps=_rpps(entity, problems),
        family=_bounded(_text(_first(name, "h:family")) if name is not None else None,
                        "a family name", problems),
        given=_bounded(_text(_first(name, "h:given")) if name is not None else None,
                       "a given name", problems),
        email=email,
    )  # fmt: skip


def _readers(
    authors: list[Practitioner], performer_rpps: str | None, kind: FormKind
) -> tuple[Practitioner | None, Practitioner | None]:
    """L1 and L2 among the authors. The volet lists L1 first and L2 second, and names no
    role; the serviceEvent performer (who did the mammogram) is L1 when one author is it.
    A FIDD has one author, the L1 radiologist doing the deferred work-up."""
    if not authors:
        return None, None
    l1 = next((a for a in authors if performer_rpps and a.rpps == performer_rpps), authors[0])
    if kind == "FIDD":
        return l1, None
    l2 = next((a for a in authors if a is not l1 and a.rpps != l1.rpps), None)
    return l1, l2


def _gp(root: etree._Element, problems: list[str]) -> Practitioner | None:
    for participant in root.iterfind("h:participant", _NS):
        function = _first(participant, "h:functionCode")
        entity = _first(participant, "h:associatedEntity")
        if function is not None and function.get("code") == PCP_FUNCTION and entity is not None:
            return _practitioner(entity, "associatedPerson", problems)
    return None


def _sections(body: etree._Element, template: str) -> list[etree._Element]:
    found = body.xpath(
        ".//h:section[h:templateId/@root=$t]", namespaces=_NS, t=template, smart_strings=False
    )
    assert isinstance(found, list)
    return [e for e in found if isinstance(e, etree._Element)][:_MAX_RESULTS]


def _results(
    scope: etree._Element,
    code: str,
    values: dict[str, Classification],
    slot: str,
    sides: dict[Breast, dict[str, Classification | None]],
    problems: list[str],
) -> None:
    found = scope.xpath(
        ".//h:observation[h:code/@code=$c and h:code/@codeSystem=$s]",
        namespaces=_NS,
        c=code,
        s=TA_ASIP,
        smart_strings=False,
    )
    assert isinstance(found, list)
    observations = [e for e in found if isinstance(e, etree._Element)]
    if len(observations) > _MAX_RESULTS:
        problems.append(f"{code}: {len(observations)} results, more than one per breast")
        return
    for observation in observations:
        if observation.get("negationInd") == "true":
            continue
        side = _laterality(observation)
        if side is None:
            problems.append(f"{code}: a result without a right/left laterality")
            continue
        value = _first(observation, "h:value")
        value_code = value.get("code") if value is not None else None
        system = value.get("codeSystem") if value is not None else None
        if value_code is None or system != TA_ASIP or value_code not in values:
            shown = (value_code or "no code")[:20]
            problems.append(f"{code} {side}: {shown!r} is not in its value set")
            continue
        current = sides[side][slot]
        if current is not None and current != values[value_code]:
            problems.append(f"{code} {side}: two different results")
            continue
        sides[side][slot] = values[value_code]


def _laterality(observation: etree._Element) -> Breast | None:
    side: Breast | None = None
    for qualifier in observation.iterfind("h:code/h:qualifier", _NS):
        name = _first(qualifier, "h:name")
        value = _first(qualifier, "h:value")
        if name is None or value is None or name.get("code") != LOINC_LATERALITY:
            continue
        found = _SIDES.get(value.get("code") or "")
        if found is None or (side is not None and found != side):
            return None
        side = found
    return side


def _postal_code(root: etree._Element, problems: list[str]) -> str | None:
    return _bounded(patient_postal_code(root), "the patient's postal code", problems)


def _exam_date(
    root: etree._Element, body: etree._Element | None, problems: list[str]
) -> dt.date | None:
    """The mammogram's date: the serviceEvent's (the documented act, QEQK004), else the
    date of the L1 reading entry (MED-022, "Date de l'examen")."""
    candidates = [
        _first(root, "h:documentationOf/h:serviceEvent/h:effectiveTime/h:low"),
        _first(root, "h:documentationOf/h:serviceEvent/h:effectiveTime"),
    ]
    if body is not None:
        for section in _sections(body, SECTION_L1)[:1]:
            found = section.xpath(
                ".//h:procedure[h:code/@code=$c]/h:effectiveTime",
                namespaces=_NS,
                c=CODE_READING,
                smart_strings=False,
            )
            assert isinstance(found, list)
            candidates.extend(e for e in found[:1] if isinstance(e, etree._Element))
    for element in candidates:
        value = element.get("value") if element is not None else None
        if not value:
            continue
        digits = value.strip()[:8]
        if len(digits) != 8 or not digits.isascii() or not digits.isdigit():
            problems.append("the exam date is not a date")
            return None
        try:
            return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
        except ValueError:
            problems.append("the exam date is not a date")
            return None
    return None
