"""The département of a French postal code, and the patient's postal code in a CDA (routing
matches and the CANCER-D2LM reader)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from lxml import etree

# Collectivités whose postal codes are within Guadeloupe's 971xx but whose INSEE code is their
# own: a CRCDC configured for 971 is not theirs unless the operator says so (`977=`, `978=`).
_OWN_CODE: Final = {"97133": "977", "97150": "978"}
# Monaco uses French postal codes (98000) and is no French département.
_NOT_FRENCH: Final = frozenset({"980"})


def departement_of(postal_code: str | None) -> str | None:
    """The département of a French postal code: its first two digits; Corsica (20) by range,
    2A below 20200, 2B from it; overseas (97x, 98x) its first three, Saint-Barthélemy
    (97133) 977 and Saint-Martin (97150) 978. None when it is no French postal code."""
    if postal_code is None:
        return None
    code = postal_code.strip().replace(" ", "")
    if len(code) != 5 or not code.isascii() or not code.isdigit():
        return None
    if code in _OWN_CODE:
        return _OWN_CODE[code]
    if code.startswith(("97", "98")):
        return None if code[:3] in _NOT_FRENCH else code[:3]
    if code.startswith("20"):
        return "2A" if int(code) < 20200 else "2B"
    if code.startswith("00"):
        return None
    return code[:2]


# The address kinds (HL7 v3 PostalAddressUse) of her residence: home, primary home.
_HOME: Final = frozenset({"H", "HP"})
_HL7: Final = "{urn:hl7-org:v3}"
# A form lists a few addresses; more than this many are not read (hostile input).
_MAX_ADDRESSES: Final = 20


def patient_postal_code(root: etree._Element) -> str | None:
    """The postal code of the patient's residence in a CDA (recordTarget/patientRole/addr):
    a home address's (`use` H or HP) first, then one without `use`, then any other (a work
    or temporary address says less of where she lives: her CRCDC is her home's). Of each
    kind the first with a postal code; None when none has one. As written (the caller
    bounds it)."""
    role = root.find(f"{_HL7}recordTarget/{_HL7}patientRole")
    if role is None:
        return None
    addresses = role.findall(f"{_HL7}addr")[:_MAX_ADDRESSES]

    def rank(addr: etree._Element) -> int:
        uses = set((addr.get("use") or "").split())
        return 0 if uses & _HOME else 1 if not uses else 2

    # sorted() is stable: document order within each kind.
    for addr in sorted(addresses, key=rank):
        for code in addr.findall(f"{_HL7}postalCode"):
            text = "".join(t for t in code.itertext() if isinstance(t, str)).strip()
            if text:
                return text
    return None
