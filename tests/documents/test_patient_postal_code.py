"""The woman's postal code, hence her département and CRCDC, is her home's (issue 16 section
2): a form giving a work or temporary address first must not send her second reading to the
CRCDC of where she works. Read in one place for the D2LM reader and the routing probe."""

from __future__ import annotations

import pytest
from lxml import etree

from mssgate.documents.d2lm import read_d2lm
from mssgate.documents.d2lm_samples import D2lmSpec, make_d2lm
from mssgate.documents.limits import DocumentLimits
from mssgate.routing.probe import probe_cda

HL7 = "urn:hl7-org:v3"


def with_addresses(*addresses: tuple[str | None, str | None]) -> bytes:
    """A D2LM form whose patientRole lists these (use, postal code) addresses, in order."""
    root = etree.fromstring(make_d2lm(D2lmSpec(postal_code=None)))
    role = root.find(f"{{{HL7}}}recordTarget/{{{HL7}}}patientRole")
    assert role is not None
    patient = role.find(f"{{{HL7}}}patient")
    assert patient is not None
    for use, postal in addresses:
        addr = etree.Element(f"{{{HL7}}}addr", **({"use": use} if use else {}))
        etree.SubElement(addr, f"{{{HL7}}}city").text = "Ville"
        if postal is not None:
            etree.SubElement(addr, f"{{{HL7}}}postalCode").text = postal
        patient.addprevious(addr)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@pytest.mark.parametrize(
    ("addresses", "departement"),
    [
        # Her home first whatever the order: H, or HP (primary home), or both codes.
        ([("WP", "69001"), ("H", "13001")], "13"),
        ([("TMP", "69001"), ("HP", "33000")], "33"),
        ([("WP", "69001"), ("H HP", "97300")], "973"),
        # No home: one without use, before a work or temporary one.
        ([("WP", "69001"), (None, "44000")], "44"),
        # A home address without postal code says nothing: the next in preference does.
        ([("H", None), ("WP", "69001"), (None, "35000")], "35"),
        # Only other kinds: the first.
        ([("WP", "69001"), ("TMP", "13001")], "69"),
        ([(None, "75007")], "75"),
        ([("H", None)], None),
    ],
)  # fmt: skip
def test_the_home_address_gives_her_departement(
    addresses: list[tuple[str | None, str | None]], departement: str | None
) -> None:
    data = with_addresses(*addresses)
    form = read_d2lm(data, DocumentLimits())
    assert form is not None and form.departement == departement
    facts = probe_cda(data, xpaths=(), max_nodes=200_000, limits=DocumentLimits())
    assert facts.failure is None and facts.departement == departement
