"""Just enough IMAP syntax for the pre-authentication phase (RFC 9051 / 3501), pure.

A command arrives as lines, each possibly ending in a literal announcement `{N}` or
`{N+}`; the session reads the literal and the next line. Here: finding that announcement,
and splitting a line into tokens (atoms, quoted strings, parentheses).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LITERAL = re.compile(rb"\{([0-9]+)(\+?)\}$")
# RFC 9051's number64 tops out at 2**63 - 1. A longer count still announces a literal (the
# client sends its bytes next, and they must not be read as commands), one too big for anyone;
# it is not converted, since int() of thousands of digits is slow and refused past 4300.
_MAX_COUNT_DIGITS = 19
_BEYOND_ANY_LIMIT = 2**63
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')
_TAG_FORBIDDEN = frozenset(b'(){ %*"\\+')


class ParseError(ValueError):
    """The line is not valid IMAP syntax."""


@dataclass(frozen=True)
class Literal:
    size: int
    synchronizing: bool


def literal_at_end(line: bytes) -> tuple[bytes, Literal | None]:
    """(the line before the announcement, the announced literal) or (line, None)."""
    match = _LITERAL.search(line)
    if match is None:
        return line, None
    digits = match.group(1).lstrip(b"0") or b"0"
    size = int(digits) if len(digits) <= _MAX_COUNT_DIGITS else _BEYOND_ANY_LIMIT
    return line[: match.start()], Literal(size, match.group(2) != b"+")


def tokens(text: bytes) -> list[bytes | None]:
    """Atoms and quoted strings as bytes; `(` and `)` as themselves; NIL as None."""
    out: list[bytes | None] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == 0x20:
            i += 1
        elif c == 0x22:  # quoted string
            buf = bytearray()
            i += 1
            while True:
                if i >= n:
                    raise ParseError("unterminated quoted string")
                c = text[i]
                if c == 0x5C:
                    if i + 1 >= n or text[i + 1] not in b'\\"':
                        raise ParseError("bad escape in quoted string")
                    buf.append(text[i + 1])
                    i += 2
                elif c == 0x22:
                    i += 1
                    break
                elif c in (0x0D, 0x0A, 0x00):
                    raise ParseError("control character in quoted string")
                else:
                    buf.append(c)
                    i += 1
            out.append(bytes(buf))
        elif c in b"()":
            out.append(bytes([c]))
            i += 1
        else:
            start = i
            while i < n and text[i] not in _ATOM_SPECIALS and text[i] > 0x20 and text[i] != 0x7F:
                i += 1
            if i == start:
                raise ParseError(f"unexpected character {chr(c)!r}")
            atom = text[start:i]
            out.append(None if atom.upper() == b"NIL" else atom)
    return out


@dataclass
class Command:
    tag: str
    name: str
    args: list[bytes | None] = field(default_factory=list)


def valid_tag(tag: bytes) -> bool:
    return bool(tag) and all(0x20 < c < 0x7F and c not in _TAG_FORBIDDEN for c in tag)


def start_command(first_line: bytes) -> tuple[str, str, bytes]:
    """(tag, upper-case command name, the rest of the line) of a command's first line."""
    parts = first_line.split(b" ", 2)
    if len(parts) < 2 or not valid_tag(parts[0]) or not parts[1].isalpha():
        raise ParseError("expected: tag SP command")
    rest = parts[2] if len(parts) == 3 else b""
    return parts[0].decode("ascii"), parts[1].decode("ascii").upper(), rest
