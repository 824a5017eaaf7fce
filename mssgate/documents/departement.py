"""The département of a French postal code (routing matches and the CANCER-D2LM reader)."""

from __future__ import annotations


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
