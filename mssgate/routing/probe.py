"""What the rules read from a CDA beyond the document record: templateIds, serviceEvent
codes, practice setting, the patient's département, and the rules' XPaths.

`probe_cda` runs where a hostile document can be cut short: in a document worker process
under `[routing] xpath_seconds` (mssgate.documents.isolation), killed past it. An XPath is
written by an operator but runs over a document anyone may send, and libxml2 evaluates it in
C that no in-process check interrupts (`//*[count(//*) > 0]` is quadratic in the nodes). The
node budget bounds the document an XPath may run over and the nodes it may return; over
either bound, or over the time, the document is held with the reason, never routed by guess.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict

from mssgate.documents.limits import DocumentLimits

_HEADER_TEMPLATES: Final = "/cda:ClinicalDocument/cda:templateId/@root"
_SERVICE_EVENTS: Final = "/cda:ClinicalDocument/cda:documentationOf/cda:serviceEvent/cda:code/@code"
# CI-SIS: the practice setting is the serviceEvent performer's organisation's class code.
_PRACTICE: Final = (
    "/cda:ClinicalDocument/cda:documentationOf/cda:serviceEvent/cda:performer"
    "/cda:assignedEntity/cda:representedOrganization/cda:standardIndustryClassCode/@code"
)
_POSTAL: Final = (
    "/cda:ClinicalDocument/cda:recordTarget/cda:patientRole/cda:addr/cda:postalCode/text()"
)
_MAX_VALUES: Final = 50


class CdaFacts(BaseModel):
    """The answer of one probe: the fields, and each XPath's truth (by expression)."""

    model_config = ConfigDict(frozen=True)

    template_ids: tuple[str, ...] = ()
    service_events: tuple[str, ...] = ()
    practice_settings: tuple[str, ...] = ()
    departement: str | None = None
    xpaths: dict[str, bool] = {}
    # Set when the document could not be probed within its bounds: the rules that need it
    # cannot be decided, and the document is held with this reason.
    failure: str | None = None


def departement_of(postal_code: str | None) -> str | None:
    """The département of a French postal code: its first two digits; Corsica (20) by range,
    2A below 20200, 2B from it; overseas (97x, 98x) its first three. None when it is no
    French postal code."""
    if postal_code is None:
        return None
    code = postal_code.strip().replace(" ", "")
    if len(code) != 5 or not code.isascii() or not code.isdigit():
        return None
    if code.startswith(("97", "98")):
        return code[:3]
    if code.startswith("20"):
        return "2A" if int(code) < 20200 else "2B"
    if code.startswith("00"):
        return None
    return code[:2]


def probe_cda(
    data: bytes, *, xpaths: tuple[str, ...], max_nodes: int, limits: DocumentLimits
) -> CdaFacts:
    """The facts of one CDA (bytes the pipeline already accepted), for the rules' matches."""
    from lxml import etree

    from mssgate.documents.errors import DocumentError
    from mssgate.documents.xml import parse_xml
    from mssgate.routing.model import XPATH_NAMESPACES, compile_xpath

    try:
        root = parse_xml(data, limits, what="CDA")
    except DocumentError as exc:
        return CdaFacts(failure=f"the CDA cannot be read again: {exc}")
    nodes = 0
    for element in root.iter():
        nodes += 1 + len(element.attrib)
        if nodes > max_nodes:
            return CdaFacts(
                failure=f"the CDA has more than {max_nodes} nodes, the routing XPath budget"
            )

    def strings(path: str) -> tuple[str, ...]:
        found = root.xpath(path, namespaces=XPATH_NAMESPACES, smart_strings=False)
        assert isinstance(found, list)
        values = (str(v).strip() for v in found[:_MAX_VALUES])
        return tuple(v for v in values if v)

    postal = strings(_POSTAL)
    results: dict[str, bool] = {}
    for expression in xpaths:
        try:
            compiled = compile_xpath(expression)
            assert isinstance(compiled, etree.XPath)
            value = compiled(root)
        except (ValueError, etree.XPathError) as exc:
            return CdaFacts(failure=f"XPath {expression[:80]!r} failed: {exc}")
        if isinstance(value, list) and len(value) > max_nodes:
            return CdaFacts(
                failure=f"XPath {expression[:80]!r} selected more than {max_nodes} nodes"
            )
        results[expression] = _truth(value)
    return CdaFacts(
        template_ids=strings(_HEADER_TEMPLATES),
        service_events=strings(_SERVICE_EVENTS),
        practice_settings=strings(_PRACTICE),
        departement=departement_of(postal[0]) if postal else None,
        xpaths=results,
    )


def _truth(value: object) -> bool:
    """XPath 1.0's boolean() of a result (a node set is true when not empty)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float | int):
        return value != 0 and value == value  # NaN is false
    if isinstance(value, str | bytes | list):
        return len(value) > 0
    return value is not None
