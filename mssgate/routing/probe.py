"""What the rules read from a CDA beyond the document record: templateIds, serviceEvent
codes, practice setting, the patient's département, the CANCER-D2LM form (the `d2lm`
match), and the rules' XPaths.

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

from mssgate.documents.d2lm import D2lmForm, decide_l2
from mssgate.documents.departement import departement_of, patient_postal_code
from mssgate.documents.limits import DocumentLimits

__all__ = ["CdaFacts", "d2lm_labels", "departement_of", "probe_cda"]

_HEADER_TEMPLATES: Final = "/cda:ClinicalDocument/cda:templateId/@root"
_SERVICE_EVENTS: Final = "/cda:ClinicalDocument/cda:documentationOf/cda:serviceEvent/cda:code/@code"
# CI-SIS: the practice setting is the serviceEvent performer's organisation's class code.
_PRACTICE: Final = (
    "/cda:ClinicalDocument/cda:documentationOf/cda:serviceEvent/cda:performer"
    "/cda:assignedEntity/cda:representedOrganization/cda:standardIndustryClassCode/@code"
)
_MAX_VALUES: Final = 50


class CdaFacts(BaseModel):
    """The answer of one probe: the fields, and each XPath's truth (by expression)."""

    model_config = ConfigDict(frozen=True)

    template_ids: tuple[str, ...] = ()
    service_events: tuple[str, ...] = ()
    practice_settings: tuple[str, ...] = ()
    departement: str | None = None
    # The CANCER-D2LM form (mssgate.documents.d2lm) when the CDA is one.
    d2lm: D2lmForm | None = None
    xpaths: dict[str, bool] = {}
    # Set when the document could not be probed within its bounds: the rules that need it
    # cannot be decided, and the document is held with this reason.
    failure: str | None = None

    @property
    def d2lm_labels(self) -> tuple[str, ...]:
        return d2lm_labels(self.d2lm)


def d2lm_labels(form: D2lmForm | None) -> tuple[str, ...]:
    """The `d2lm` match's values (routing.model.D2LM_VALUES) for a form, so that no rule has
    to tell the forms apart by their LOINC 18748-4, every imaging report's: `fin` or
    `fidd`; `l2-eligible` (decide_l2: ACR 1 or 2 for both breasts, final L1 side) or
    `not-l2`; `l2-read` when the L2 section carries a result. None for any other document."""
    if form is None:
        return ()
    labels = [form.kind.lower(), "l2-eligible" if decide_l2(form).eligible else "not-l2"]
    if form.right.l2 is not None or form.left.l2 is not None:
        labels.append("l2-read")
    return tuple(labels)


def probe_cda(
    data: bytes, *, xpaths: tuple[str, ...], max_nodes: int, limits: DocumentLimits
) -> CdaFacts:
    """The facts of one CDA (bytes the pipeline already accepted), for the rules' matches."""
    from lxml import etree

    from mssgate.documents.d2lm import form_of
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

    postal = patient_postal_code(root)
    try:
        form = form_of(root)
    except DocumentError as exc:
        return CdaFacts(failure=f"the CANCER-D2LM form cannot be read: {exc}")
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
        departement=departement_of(postal),
        d2lm=form,
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
