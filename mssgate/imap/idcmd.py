"""RFC 2971 `ID` before login: what the RFC allows, and nothing more.

A client may send at most 30 field-value pairs, fields of at most 30 octets and values of
at most 1,024 (as quoted strings or literals): about 32 KB, four times the pre-auth command
cap, so a connection's first ID gets a budget of its own, sized for the longest conforming
list.
"""

from __future__ import annotations

MAX_PAIRS = 30
MAX_FIELD = 30
MAX_VALUE = 1024
# The longest wire form of a conforming list: every octet of every string escaped ("\\" or
# "\""), each string quoted, a space after each. Literals are shorter than that.
MAX_WIRE = 2 + MAX_PAIRS * ((2 * MAX_FIELD + 2) + 1 + (2 * MAX_VALUE + 2) + 1)
LITERAL_TOO_BIG = f"ID strings are at most {MAX_VALUE} octets (RFC 2971)."


def opens_id(line: bytes) -> bool:
    """Whether a command's first line, as far as it was read, is `tag ID ...`."""
    parts = line.split(b" ", 2)
    return len(parts) == 3 and parts[1].upper() == b"ID"


def id_problem(args: list[bytes | None]) -> str | None:
    """Why these ID arguments break RFC 2971, or None when they are fine.

    `args` are the tokens of the pre-auth parser: `(` and `)` as themselves, strings
    (quoted or literal) as bytes, NIL as None.
    """
    if args == [None]:
        return None
    if len(args) < 2 or args[0] != b"(" or args[-1] != b")":
        return "ID takes NIL or a parenthesized list (RFC 2971)."
    inner = args[1:-1]
    if len(inner) % 2:
        return "ID takes field-value pairs (RFC 2971)."
    if len(inner) // 2 > MAX_PAIRS:
        return f"ID takes at most {MAX_PAIRS} field-value pairs (RFC 2971)."
    for field, value in zip(inner[::2], inner[1::2], strict=True):
        if field is None:
            return "ID field names must be strings, not NIL (RFC 2971)."
        if len(field) > MAX_FIELD:
            return f"ID field names are at most {MAX_FIELD} octets (RFC 2971)."
        if value is not None and len(value) > MAX_VALUE:
            return f"ID values are at most {MAX_VALUE} octets (RFC 2971)."
    return None
