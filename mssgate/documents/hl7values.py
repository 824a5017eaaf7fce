"""HL7 v2 data types as XDS metadata carries them: CX, XCN, XON and PID-n strings.

Only the pieces the pipeline needs; components are `^`, sub-components `&`. The XML layer has
already turned `&amp;` back into `&`. A value holding a separator travels escaped (`\\S\\` for
`^`...): split first, then unescape each piece, or a `^` in a name shifts the components.
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import BaseModel, ConfigDict

from mssgate.ins import PatientTraits, hl7_date_to_iso, parse_sex

# Types of XDS referenceIdList values (CXi.5).
REF_ACCESSION: Final = "urn:ihe:iti:xds:2013:accession"
REF_STUDY_UID: Final = "urn:ihe:iti:xds:2016:studyInstanceUID"
REF_ORDER: Final = "urn:ihe:iti:xds:2013:order"


class CX(BaseModel):
    """An identifier with its assigning authority: `id^^^name&oid&ISO^type`."""

    model_config = ConfigDict(frozen=True)

    value: str
    authority_oid: str | None = None
    authority_name: str | None = None
    type_code: str | None = None


_ESCAPES: Final = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\", ".br": "\n"}
_ESCAPED: Final = re.compile(r"\\(F|S|T|R|E|\.br)\\")


def escape(value: str) -> str:
    """HL7 escape sequences for the separators; line ends become \\.br\\."""
    out = value.replace("\\", "\\E\\")
    for char, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
        out = out.replace(char, f"\\{code}\\")
    return re.sub(r"\r\n|\r|\n", r"\\.br\\", out)


def unescape(value: str) -> str:
    """The separators' escape sequences (and \\.br\\) back; any other left as sent."""
    if "\\" not in value:
        return value
    return _ESCAPED.sub(lambda m: _ESCAPES[m.group(1)], value)


def _component(parts: list[str], index: int) -> str:
    return unescape(parts[index]) if index < len(parts) else ""


def _subcomponent(component: str, index: int) -> str:
    """Sub-component `index` of a component split raw (its `&` not yet unescaped)."""
    pieces = component.split("&")
    return unescape(pieces[index]) if index < len(pieces) else ""


def parse_cx(text: str) -> CX | None:
    parts = text.strip().split("^")
    value = _component(parts, 0).strip()
    if not value:
        return None
    authority = parts[3] if len(parts) > 3 else ""
    name = _subcomponent(authority, 0) or None
    oid = _subcomponent(authority, 1) or None
    type_code = _component(parts, 4) or None
    return CX(value=value, authority_oid=oid, authority_name=name, type_code=type_code)


class XCN(BaseModel):
    """A person: `id^family^given^^^^^^&oid&ISO^...`."""

    model_config = ConfigDict(frozen=True)

    id: str | None
    family: str | None
    given: str | None
    authority_oid: str | None


def parse_xcn(text: str) -> XCN:
    parts = text.strip().split("^")
    authority = parts[8] if len(parts) > 8 else ""
    return XCN(
        id=_component(parts, 0) or None,
        family=_component(parts, 1) or None,
        given=_component(parts, 2) or None,
        authority_oid=_subcomponent(authority, 1) or None,
    )


def parse_source_patient_info(values: list[str]) -> PatientTraits:
    """Traits from XDS `sourcePatientInfo` (`PID-5|family^given^others^^^^L`, PID-7, PID-8, PID-11).

    PID-5 may repeat; in France name type `L` is the birth (legal) name and `D` the used
    name, so an `L` name wins. PID-5.3 carries further birth first names. The birthplace is
    the INSEE code in PID-11.9 of the `BDL` (birth delivery location) address.
    """
    names: list[list[str]] = []
    birth_date: str | None = None
    sex: str | None = None
    birthplace: str | None = None
    for raw in values:
        field, sep, content = raw.partition("|")
        if not sep:
            continue
        field = field.strip().upper()
        for repetition in content.split("~"):
            parts = repetition.split("^")
            if field == "PID-5":
                names.append(parts)
            elif field == "PID-7":
                birth_date = hl7_date_to_iso(_component(parts, 0))
            elif field == "PID-8":
                sex = _component(parts, 0)
            elif field == "PID-11" and _component(parts, 6).upper() == "BDL":
                birthplace = _component(parts, 8).strip() or None
    chosen = next((n for n in names if _component(n, 6).upper() == "L"), None)
    if chosen is None and names:
        chosen = names[0]
    family = given = others = None
    if chosen is not None:
        family = _component(chosen, 0).strip() or None
        given = _component(chosen, 1).strip() or None
        others = _component(chosen, 2).strip() or None
    # Some senders put the whole list of birth first names in PID-5.3, others only the rest.
    if given and others and others.split()[0].upper() == given.upper():
        all_given: str | None = others
    else:
        all_given = " ".join(g for g in (given, others) if g) or None
    return PatientTraits(
        birth_family=family,
        given=all_given,
        first_given=given,
        sex=parse_sex(sex),
        birth_date=birth_date,
        birthplace=birthplace,
    )


def hl7_ts_to_iso(value: str | None) -> str | None:
    """HL7 TS/DTM (`YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]`) to ISO 8601 at the same precision.

    Returns the input unchanged when it does not have that shape, so nothing is invented.
    """
    if not value:
        return None
    text = value.strip()
    match = _TS_RE.fullmatch(text)
    if match is None:
        return text
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    iso = year
    if month:
        iso += f"-{month}"
    if day:
        iso += f"-{day}"
    if hour:
        iso += f"T{hour}:{minute or '00'}"
        if second:
            iso += f":{second}"
            if fraction:
                iso += fraction
    if zone and hour:
        iso += f"{zone[:3]}:{zone[3:]}"
    return iso


_TS_RE: Final = re.compile(
    r"([0-9]{4})([0-9]{2})?([0-9]{2})?([0-9]{2})?([0-9]{2})?([0-9]{2})?(\.[0-9]{1,6})?([+-][0-9]{4})?"
)
