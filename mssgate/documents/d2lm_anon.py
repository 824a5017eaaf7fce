"""The GP's copy of an L2 result: a CANCER-D2LM interpretation form (FIN) with the second
reader's identity removed.

The screening rules ask that the L2 reader stay anonymous towards the woman and her doctors
(screening.md), while the CRCDC and the L1 radiologist keep the original. The reader is
the form's L2 `author` (mssgate.documents.d2lm); its identity is its RPPS/ADELI id (in every
written form: `8`+RPPS, bare RPPS, `0`+ADELI, bare ADELI), its names and its `mailto:`
addresses. Replaced (docs/security-model.md, "L2 reader anonymity", lists the same):

- every role that is the reader (the L2 `author`, and anywhere outside `recordTarget` an
  assignedAuthor, assignedEntity, associatedEntity, participantRole, relatedEntity or
  intendedRecipient with one of its ids, or with no RPPS and its family name (given name,
  initial or none; or a word of a name written as one string)): ids -> one
  `<id nullFlavor="MSK"/>`, addresses -> `<addr nullFlavor="MSK"/>`, telecoms ->
  `<telecom nullFlavor="MSK"/>`, the person -> name "Lecteur L2 — CRCDC", the organisation
  -> id MSK and name "CRCDC" (its `standardIndustryClassCode` kept); its `code` (the
  profession) kept, anything else dropped;
- any other `id` (or II value) carrying the reader's number, any `telecom` with its
  address -> MSK;
- in text (narrative blocks, titles, ST values, organisation names) and `displayName`/`value`
  attributes outside `recordTarget` and the structured names of other people known by
  their RPPS: the reader's name (family alone, or with the given name or a title; accents,
  case and a compound name's separators either way) -> "Lecteur L2 — CRCDC", the number and
  the address -> "(masqué)". Base64 content (attached images, PDF) is not read.

An altered document is a new document: the copy gets a new id and setId (OIDs `2.25.<uuid>`
derived from the original's, so the same original always gives the same copy, on any node),
the original's versionNumber, and `relatedDocument typeCode="XFRM"` naming the original (CDA
R2: a transformation of its parent). An RPLC/APND of the original names a document the GP
never got from us and is dropped (forwarded in the gateway's name, it would replace a
document at the recipient: mssgate.outbound.forward refuses it), except with `replaces`:
the sender's own earlier document, whose copy the new copy replaces. Comments and
processing instructions are not carried over (the hardened parser drops them).
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from lxml import etree

from mssgate.documents.cda import OID_RPPS
from mssgate.documents.d2lm import Practitioner, form_of
from mssgate.documents.errors import CdaError, LimitExceeded
from mssgate.documents.imaging import HL7_NS
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.xml import local_name, parse_xml

PLACEHOLDER: Final = "Lecteur L2 — CRCDC"
PLACEHOLDER_ORG: Final = "CRCDC"
MASKED_TEXT: Final = "(masqué)"
# HL7 NullFlavor MSK: "there is information on this item available but it has not been
# provided by the sender due to security, privacy or other reasons".
MSK: Final = "MSK"
XFRM: Final = "XFRM"
# Fixed namespace of the copies' ids (uuid5): stable across nodes and releases.
_COPY_NAMESPACE: Final = uuid.UUID("6f0c1e1a-5d2b-4c1e-9a51-0d2c4f6a7b10")
_ROLES: Final = frozenset(
    {
        "assignedAuthor",
        "assignedEntity",
        "associatedEntity",
        "participantRole",
        "relatedEntity",
        "intendedRecipient",
    }
)
_PERSONS: Final = frozenset(
    {"assignedPerson", "associatedPerson", "relatedPerson", "informationRecipient",
     "playingEntity", "guardianPerson"}
)  # fmt: skip
_ORGANISATIONS: Final = frozenset(
    {"representedOrganization", "scopingOrganization", "receivedOrganization"}
)
# Every CDA R2 element that is an organisation (header and entries).
_ALL_ORGS: Final = _ORGANISATIONS | frozenset(
    {"representedCustodianOrganization", "serviceProviderOrganization",
     "providerOrganization", "wholeOrganization", "manufacturerOrganization"}
)  # fmt: skip
_KEPT_IN_ROLE: Final = frozenset({"realmCode", "typeId", "templateId", "code"})
# What separates the parts of a compound name, written one way or another (or not at all).
_SEPARATORS: Final = "-\u2010\u2011\u2012\u2013\u2014'\u2019\u02bc."
_SEPARATED: Final = r"[\s\-\u2010-\u2014'\u2019\u02bc.]*"
_TITLES: Final = r"(?:dr|docteur|pr|professeur|mme|madame|mlle|m|monsieur)\.?"
# The ClinicalDocument children a relatedDocument comes before (CDA R2 sequence).
_AFTER_RELATED: Final = ("authorization", "componentOf", "component")


class AnonymisationError(CdaError):
    """The form cannot be anonymised safely (no L2 reader to tell, or a trace left)."""


@dataclass(frozen=True)
class Anonymised:
    data: bytes
    # XDS uniqueId of the copy, and of the original it transforms.
    document_id: str
    original_id: str
    masked_roles: int
    masked_ids: int
    masked_telecoms: int
    text_replacements: int


@dataclass(frozen=True)
class _Identity:
    numbers: frozenset[str]
    pairs: frozenset[tuple[str, str]]
    emails: frozenset[str]
    family: str | None
    given: str | None


def anonymise_l2_reader(
    data: bytes, limits: DocumentLimits, *, replaces: str | None = None
) -> Anonymised:
    """The bytes of a copy of a FIN form without its L2 reader's identity (module docstring).
    `replaces`: the uniqueId of a document of the same sender this one replaces (as ingest
    checked it): the copy replaces that document's copy (RPLC of `copy_oid(replaces)`).
    Raises `AnonymisationError` when the form is no FIN or names no L2 reader, and the
    parser's `DocumentError`s for what it refuses."""
    root = parse_xml(data, limits, what="CDA")
    if root.tag != f"{{{HL7_NS}}}ClinicalDocument":
        raise AnonymisationError("not a CDA R2 ClinicalDocument")
    form = form_of(root)
    if form is None or form.kind != "FIN":
        raise AnonymisationError("not a CANCER-D2LM interpretation form (FIN)")
    reader = form.l2_reader
    if reader is None or (reader.rpps is None and reader.family is None):
        raise AnonymisationError(
            "the form names no L2 reader distinct from L1: whose identity to remove is unknown"
        )
    authors = [a for a in root.iterfind(_h("author/assignedAuthor")) if _is_l2(a, reader)]
    if not authors:
        raise AnonymisationError("the L2 reader's author entry was not found")
    identity = _identity(reader, authors)
    _check_authors(root, form.l1_reader, authors, identity)
    # The reader's own practice (its author entry's organisation), unless the L1 reader's
    # too: wherever else it is named (the custodian...), it tells the GP where L2 was read.
    l1 = [a for a in root.iterfind(_h("author/assignedAuthor")) if a not in authors]
    practice = _organisation_ids(authors) - _organisation_ids(l1)
    counts = {"roles": 0, "ids": 0, "telecoms": 0, "text": 0}
    patient = root.find(_h("recordTarget"))
    for role in [e for e in _outside(root, patient) if local_name(e) in _ROLES]:
        if role in authors or _is_reader_role(role, identity):
            _mask_role(role)
            counts["roles"] += 1
    for organisation in [e for e in _outside(root, patient) if local_name(e) in _ALL_ORGS]:
        if _pairs(organisation) & practice:
            _mask_organisation(organisation)
            counts["roles"] += 1
    for element in _outside(root, patient):
        name = local_name(element)
        # An id, or an II value (xsi:type="II"), naming the reader by number.
        if element.get("extension") is not None and _carries_number(element, identity):
            _null(element, "root", "extension", "assigningAuthorityName", "displayable")
            counts["ids"] += 1
        elif name == "telecom" and _mailto(element.get("value")) in identity.emails:
            _null(element, "value", "use")
            counts["telecoms"] += 1
    counts["text"] = _scrub_text(root, patient, _pattern(identity))
    original_id = _renumber(root, replaces)
    _check_no_trace(root, patient, identity)
    out = bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    if len(out) > limits.max_xml_bytes:
        raise LimitExceeded(f"the anonymised CDA is larger than {limits.max_xml_bytes} bytes")
    new_id = root.find(_h("id"))
    assert new_id is not None  # _renumber wrote it
    return Anonymised(
        data=out,
        document_id=new_id.get("root") or "",
        original_id=original_id,
        masked_roles=counts["roles"],
        masked_ids=counts["ids"],
        masked_telecoms=counts["telecoms"],
        text_replacements=counts["text"],
    )


# -- who the reader is ---------------------------------------------------------------


def _h(path: str) -> str:
    return "/".join(f"{{{HL7_NS}}}{step}" for step in path.split("/"))


def number_forms(value: str) -> frozenset[str]:
    """An RPPS/ADELI as documents write it: `8`+RPPS (IdNat) or the bare 11 digits, `0`+ADELI
    or the bare 9 digits; anything else as written."""
    value = value.strip()
    forms = {value}
    if value.isascii() and value.isdigit():
        if (len(value) == 12 and value[0] == "8") or (len(value) == 10 and value[0] == "0"):
            forms.add(value[1:])
        elif len(value) == 11:
            forms.add("8" + value)
        elif len(value) == 9:
            forms.add("0" + value)
    return frozenset(f for f in forms if f)


def _fold(value: str) -> str:
    return " ".join(value.split()).casefold()


def _name_of(role: etree._Element) -> etree._Element | None:
    for child in role:
        if local_name(child) in _PERSONS:
            return child.find(_h("name"))
    return None


def _person_name(role: etree._Element) -> tuple[str | None, str | None]:
    name = _name_of(role)
    if name is None:
        return None, None
    family = name.find(_h("family"))
    given = name.find(_h("given"))
    return (
        _fold(_text(family)) if family is not None else None,
        _fold(_text(given)) if given is not None else None,
    )


def _text(element: etree._Element) -> str:
    return "".join(t for t in element.itertext() if isinstance(t, str))


def _elements(root: etree._Element) -> Iterator[etree._Element]:
    # The hardened parser drops comments and PIs; checked all the same, as their tag is no str.
    for element in root.iter():
        tag: object = element.tag
        if isinstance(tag, str):
            yield element


def _rpps_ids(role: etree._Element) -> list[str]:
    return [
        (i.get("extension") or "").strip()
        for i in role.iterfind(_h("id"))
        if i.get("root") == OID_RPPS and (i.get("extension") or "").strip()
    ]


def _is_l2(author: etree._Element, reader: Practitioner) -> bool:
    ids = _rpps_ids(author)
    if reader.rpps is not None:
        return reader.rpps in ids
    family, given = _person_name(author)
    return not ids and family == _fold(reader.family or "") and given == _fold(reader.given or "")


def _identity(reader: Practitioner, authors: list[etree._Element]) -> _Identity:
    numbers: set[str] = set(number_forms(reader.rpps)) if reader.rpps else set()
    pairs: set[tuple[str, str]] = set()
    emails: set[str] = {reader.email.casefold()} if reader.email else set()
    for author in authors:
        for ident in author.iterfind(_h("id")):
            root, extension = ident.get("root") or "", (ident.get("extension") or "").strip()
            if extension:
                pairs.add((root, extension))
                if root == OID_RPPS:
                    numbers |= number_forms(extension)
        for telecom in author.iterfind(_h("telecom")):
            if (address := _mailto(telecom.get("value"))) is not None:
                emails.add(address)
    return _Identity(
        numbers=frozenset(numbers),
        pairs=frozenset(pairs),
        emails=frozenset(emails),
        family=_fold(reader.family) if reader.family else None,
        given=_fold(reader.given) if reader.given else None,
    )


def _mailto(value: str | None) -> str | None:
    value = (value or "").strip()
    if value[:7].lower() != "mailto:" or len(value) == 7:
        return None
    return value[7:].strip().casefold()


def _is_reader_role(role: etree._Element, identity: _Identity) -> bool:
    ids = _rpps_ids(role)
    if any(number in identity.numbers for number in ids):
        return True
    for ident in role.iterfind(_h("id")):
        pair = (ident.get("root") or "", (ident.get("extension") or "").strip())
        if pair in identity.pairs:
            return True
    if ids or identity.family is None:
        return False  # another practitioner's RPPS: a namesake, not the reader
    family, given = _person_name(role)
    if family is None:
        # A name written as one string ("Dr Alain ROY"): the family name as a word of it.
        name = _name_of(role)
        words = _fold(_text(name)) if name is not None else ""
        return re.search(rf"(?<!\w){_letters(identity.family)}(?!\w)", words) is not None
    # Without an RPPS nothing tells a namesake: a given name left out, or an initial, is not
    # another person (anonymity first).
    return family == identity.family and (
        identity.given is None
        or given is None
        or given == identity.given
        or (given.rstrip(".") == identity.given[:1] and len(given.rstrip(".")) == 1)
    )


def _check_authors(
    root: etree._Element,
    l1: Practitioner | None,
    authors: list[etree._Element],
    identity: _Identity,
) -> None:
    """The form's authors are told apart by the serviceEvent performer (the L1 reader), not
    by their order, and are the two readers only: else which one the GP may see is a guess
    (the L1 reader masked and the L2 one named), and no copy goes."""
    l1_numbers = number_forms(l1.rpps) if l1 is not None and l1.rpps else frozenset()
    performer = root.find(_h("documentationOf/serviceEvent/performer/assignedEntity"))
    told = performer is not None and any(n in l1_numbers for n in _rpps_ids(performer))
    if not told:
        raise AnonymisationError(
            "the serviceEvent performer does not name the L1 reader among the authors:"
            " which author is L2 is unknown"
        )
    for author in root.iterfind(_h("author/assignedAuthor")):
        if author in authors or _is_reader_role(author, identity):
            continue
        if any(n in l1_numbers for n in _rpps_ids(author)):
            continue
        if any(local_name(c) in _PERSONS for c in author):
            raise AnonymisationError(
                "an author other than the L1 and L2 readers: what the GP may see of it is unknown"
            )


def _carries_number(ident: etree._Element, identity: _Identity) -> bool:
    extension = (ident.get("extension") or "").strip()
    return bool(extension) and (
        extension in identity.numbers or (ident.get("root") or "", extension) in identity.pairs
    )


# -- replacing -------------------------------------------------------------------------


def _outside(root: etree._Element, excluded: etree._Element | None) -> Iterator[etree._Element]:
    """Every element but those of `excluded`'s subtree (the patient's, kept as it is)."""
    skip = set(excluded.iter()) if excluded is not None else set()
    for element in _elements(root):
        if element not in skip:
            yield element


def _null(element: etree._Element, *attributes: str) -> None:
    for attribute in attributes:
        if attribute in element.attrib:
            del element.attrib[attribute]
    _empty(element)
    element.set("nullFlavor", MSK)


def _new(tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    element = etree.Element(_h(tag), attrib)
    element.text = text
    return element


def _mask_role(role: etree._Element) -> None:
    """The role rebuilt in CDA order: kept infrastructure and code, then one masked id,
    address and telecom (as many as it had, at most one), the placeholder person and
    organisation. Whatever else it carried is dropped: nothing unread goes out."""
    children = list(role)
    kept = [c for c in children if local_name(c) in _KEPT_IN_ROLE and local_name(c) != "code"]
    code = next((c for c in children if local_name(c) == "code"), None)
    had = {local_name(c) for c in children}
    person = next((c for c in children if local_name(c) in _PERSONS), None)
    organisation = next((c for c in children if local_name(c) in _ORGANISATIONS), None)
    for child in children:
        role.remove(child)
    for child in kept:
        role.append(child)
    role.append(_new("id", nullFlavor=MSK))
    if code is not None:
        role.append(code)
    if "addr" in had:
        role.append(_new("addr", nullFlavor=MSK))
    if "telecom" in had:
        role.append(_new("telecom", nullFlavor=MSK))
    if person is not None:
        _empty(person)  # its attributes (classCode, determinerCode) name no one
        name = etree.SubElement(person, _h("name"))
        etree.SubElement(name, _h("family")).text = PLACEHOLDER
        role.append(person)
    if organisation is not None:
        _mask_organisation(organisation)
        role.append(organisation)


def _mask_organisation(organisation: etree._Element) -> None:
    setting = organisation.find(_h("standardIndustryClassCode"))
    _empty(organisation)
    organisation.append(_new("id", nullFlavor=MSK))
    organisation.append(_new("name", PLACEHOLDER_ORG))
    if setting is not None:
        organisation.append(setting)  # the practice setting (DEPISTAGE) names no one


def _pairs(organisation: etree._Element) -> set[tuple[str, str]]:
    return {
        (i.get("root") or "", (i.get("extension") or "").strip())
        for i in organisation.iterfind(_h("id"))
        if i.get("root") and (i.get("extension") or "").strip()
    }


def _organisation_ids(roles: list[etree._Element]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for role in roles:
        for child in role:
            if local_name(child) in _ORGANISATIONS:
                found |= _pairs(child)
    return found


def _empty(element: etree._Element) -> None:
    for child in list(element):
        element.remove(child)
    element.text = None


def _letters(value: str) -> str:
    """A regex for `value` matching it with or without accents and case, and any run of
    white space for its spaces (narrative wraps lines)."""
    parts: list[str] = []
    for char in unicodedata.normalize("NFC", value):
        if char.isspace() or char in _SEPARATORS:
            # "ROY-MARTIN", "Roy Martin", "D'Artagnan" (or with U+2019), "DARTAGNAN": one name.
            if not parts or parts[-1] != _SEPARATED:
                parts.append(_SEPARATED)
            continue
        base = unicodedata.normalize("NFKD", char)[0]
        variants = {char, base} | _ACCENTED.get(base.casefold(), set())
        parts.append("[" + "".join(re.escape(v) for v in sorted(variants)) + "]")
    return "".join(parts)


def _accented() -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for code in range(0xC0, 0x250):
        char = chr(code)
        base = unicodedata.normalize("NFKD", char)[0]
        if base != char and base.isascii() and base.isalpha():
            table.setdefault(base.casefold(), set()).update({char, char.upper(), char.lower()})
    return table


_ACCENTED: Final = _accented()


def _pattern(identity: _Identity) -> re.Pattern[str] | None:
    names: list[str] = []
    if identity.family:
        family = _letters(identity.family)
        if identity.given:
            given = _letters(identity.given)
            names += [rf"{given}\s+{family}", rf"{family}\s+{given}"]
        names.append(family)
    alternatives: list[str] = []
    if names:
        alternatives.append(rf"(?P<name>(?<!\w)(?:{_TITLES}\s+)?(?:{'|'.join(names)})(?!\w))")
    numbers = sorted(identity.numbers, key=len, reverse=True)
    if numbers:
        alternatives.append(rf"(?<![0-9])(?:{'|'.join(re.escape(n) for n in numbers)})(?![0-9])")
    alternatives += [re.escape(e) for e in sorted(identity.emails)]
    if not alternatives:
        return None
    return re.compile("|".join(alternatives), re.IGNORECASE)


def _scrub_text(
    root: etree._Element, patient: etree._Element | None, pattern: re.Pattern[str] | None
) -> int:
    if pattern is None:
        return 0
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return PLACEHOLDER if match.lastgroup == "name" else MASKED_TEXT

    def scrub(value: str) -> str:
        # Read composed (NFC): a name typed with combining accents is the same name. Text
        # without the reader is kept as it was written.
        composed = unicodedata.normalize("NFC", value)
        done = pattern.sub(replace, composed)
        return done if done != composed else value

    for element in _readable(root, patient):
        if element.text:
            element.text = scrub(element.text)
        for attribute in ("displayName", "value"):
            value = element.get(attribute)
            if value and not _is_pointer(element, attribute):
                element.set(attribute, scrub(value))
    for element in _outside(root, patient):
        if element.tail and element.getparent() is not None:
            element.tail = scrub(element.tail)
    return count


def _is_pointer(element: etree._Element, attribute: str) -> bool:
    # `reference/@value` points at a narrative ID; `telecom/@value` and `id` are handled
    # whole above (a partial rewrite would leave a broken address).
    return attribute == "value" and local_name(element) in ("reference", "telecom", "id")


def _readable(
    root: etree._Element, patient: etree._Element | None, *, names: bool = False
) -> Iterator[etree._Element]:
    """Elements whose own text is free text: not the patient's, not base64 content, and
    not another person's structured name (a namesake keeps it) unless `names`."""
    skip: set[etree._Element] = set(patient.iter()) if patient is not None else set()
    for element in _elements(root):
        if element in skip:
            continue
        parent = element.getparent()
        role = parent.getparent() if parent is not None else None
        # Another person's name is theirs when their RPPS says who they are (a namesake);
        # without one, the reader's name in it goes like any text.
        named = (
            not names
            and local_name(element) == "name"
            and parent is not None
            and local_name(parent) in _PERSONS
            and role is not None
            and bool(_rpps_ids(role))
        )
        if named or (element.get("representation") or "").upper() == "B64":
            skip.update(element.iter())
            continue
        yield element


def _check_no_trace(
    root: etree._Element, patient: etree._Element | None, identity: _Identity
) -> None:
    """Fail closed: the reader's number or address anywhere outside the patient's and
    base64 content means a place this module does not know: no copy goes out."""
    numbers = [n for n in identity.numbers if len(n) >= 5]
    probes = [re.compile(rf"(?<![0-9]){re.escape(n)}(?![0-9])") for n in numbers]
    emails = list(identity.emails)
    # The family name in an attribute no step rewrites (an XML ID, a reference to one,
    # a styleCode): an underscore or a hyphen separates words there too.
    family = identity.family if identity.family and len(identity.family) >= 3 else None
    named = (
        re.compile(rf"(?<![^\W_]){_letters(family)}(?![^\W_])", re.IGNORECASE)
        if family is not None
        else None
    )
    for element in _readable(root, patient, names=True):
        values = [element.text or "", element.tail or "", *element.attrib.values()]
        for value in values:
            folded = value.casefold()
            if any(p.search(value) for p in probes) or any(e in folded for e in emails):
                raise AnonymisationError(
                    f"the L2 reader's identifier is still in <{local_name(element)}>"
                )
        if named is not None and any(
            named.search(unicodedata.normalize("NFC", str(value)))
            for attribute, value in element.attrib.items()
            if not _is_whole(element, str(attribute))
        ):
            raise AnonymisationError(f"the L2 reader's name is still in <{local_name(element)}>")
    _check_narrative(root, patient, identity)


def _check_narrative(
    root: etree._Element, patient: etree._Element | None, identity: _Identity
) -> None:
    """A narrative block as a person reads it, its elements' texts joined: a name no one
    text held whole ("R<content>OY</content>", "<content>Dr Alain</content> ROY") was not
    replaced, and is there. Every family name of the narrative was replaced, namesakes'
    too, so any left is such a split."""
    if identity.family is None:
        return
    family = _letters(identity.family)
    probes = [rf"(?<!\w){family}(?!\w)"]
    if identity.given:
        given = _letters(identity.given)
        placeholder = re.escape(PLACEHOLDER)
        probes.append(rf"(?<!\w){given}\s*{placeholder}|{placeholder}\s*{given}(?!\w)")
    found = re.compile("|".join(probes), re.IGNORECASE)
    for element in _readable(root, patient):
        parent = element.getparent()
        if local_name(element) != "text" or parent is None or local_name(parent) != "section":
            continue
        joined = unicodedata.normalize("NFC", "".join(_strings(element)))
        if found.search(joined):
            raise AnonymisationError(
                "the L2 reader's name is split across the narrative's elements"
            )


def _strings(element: etree._Element) -> Iterator[str]:
    for text in element.itertext():
        if isinstance(text, str):
            yield text


def _is_whole(element: etree._Element, attribute: str) -> bool:
    # Values handled whole by their own step, or a namesake's: an address (a namesake's
    # mailto may hold the name; the reader's is masked), an identifier (numbers checked).
    name = local_name(element)
    return (name == "telecom" and attribute == "value") or attribute in ("root", "extension")


# -- the copy's identity ---------------------------------------------------------------


def copy_oid(original: str) -> str:
    """The copy's id for an original id (`root^extension`): an OID under 2.25 (ITU-T X.667,
    a UUID as an OID), uuid5 of the original's, so every node derives the same one."""
    return f"2.25.{uuid.uuid5(_COPY_NAMESPACE, 'd2lm-anon ' + original).int}"


def _ii(element: etree._Element | None) -> str | None:
    if element is None or not element.get("root"):
        return None
    extension = (element.get("extension") or "").strip()
    root = element.get("root") or ""
    return f"{root}^{extension}" if extension else root


def _set_ii(element: etree._Element, root: str) -> None:
    for attribute in ("extension", "assigningAuthorityName", "displayable", "nullFlavor"):
        if attribute in element.attrib:
            del element.attrib[attribute]
    element.set("root", root)


def _renumber(root: etree._Element, replaces: str | None = None) -> str:
    """New id and setId, one relatedDocument XFRM naming the original, and an RPLC of the
    copy of `replaces` when given (any other one dropped); the original's id returned."""
    id_element = root.find(_h("id"))
    original = _ii(id_element)
    if id_element is None or original is None:
        raise AnonymisationError("the form has no document id")
    set_element = root.find(_h("setId"))
    version = root.find(_h("versionNumber"))
    parent = _new("parentDocument")
    parent.append(_copy_of(id_element, "id"))
    if set_element is not None and _ii(set_element) is not None:
        parent.append(_copy_of(set_element, "setId"))
    if version is not None and version.get("value"):
        parent.append(_new("versionNumber", value=version.get("value") or ""))
    for old in root.findall(_h("relatedDocument")):
        root.remove(old)
    xfrm = _new("relatedDocument", typeCode=XFRM)
    xfrm.append(parent)
    _set_ii(id_element, copy_oid(original))
    if set_element is not None and (set_value := _ii(set_element)) is not None:
        _set_ii(set_element, copy_oid("set " + set_value))
    anchor = next(
        (c for c in root if local_name(c) in _AFTER_RELATED),
        None,
    )
    related = [xfrm]
    if replaces:
        rplc = _new("relatedDocument", typeCode="RPLC")
        etree.SubElement(etree.SubElement(rplc, _h("parentDocument")), _h("id"),
                         root=copy_oid(replaces))  # fmt: skip
        related.append(rplc)
    for element in related:
        if anchor is not None:
            anchor.addprevious(element)
        else:
            root.append(element)
    return original


def _copy_of(element: etree._Element, tag: str) -> etree._Element:
    copy = _new(tag)
    for attribute in ("root", "extension"):
        if element.get(attribute):
            copy.set(attribute, element.get(attribute) or "")
    return copy
