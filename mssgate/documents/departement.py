"""The département of a French postal code (routing matches and the CANCER-D2LM reader)."""

from __future__ import annotations

from typing import Final

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
