"""Byte-level access to a message's header block, without re-serialising anything.

Signatures (S/MIME, DKIM) cover bytes as transmitted: parsing a message with the stdlib email
package and generating it again can refold headers or re-encode bodies and break them. These
helpers split and edit the raw bytes instead; the stdlib parser is only used to *read* values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_LONE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True, slots=True)
class RawField:
    """One header field as transmitted: its name and every physical line (folding included)."""

    name: str
    raw: bytes

    @property
    def value(self) -> bytes:
        """The field body after the colon, unfolded, without the line end."""
        body = self.raw.split(b":", 1)[1]
        return re.sub(rb"\r?\n(?=[ \t])", b"", body).rstrip(b"\r\n")


def canonical_crlf(data: bytes) -> bytes:
    """Every bare LF turned into CRLF: the MIME canonical form that S/MIME signs (RFC 8551 §3.1.1).

    Messages read from files often carry LF line ends while SMTP carries CRLF; a signature made
    over the canonical form must verify in both.
    """
    return _LONE_LF.sub(b"\r\n", data)


def split_head_body(message: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block, separator, body). The header block keeps its final line end.

    Without a blank line the whole message is taken as headers with an empty body, which is how
    RFC 5322 reads a message that has no body.
    """
    if message.startswith((b"\r\n", b"\n")):
        sep_len = 2 if message.startswith(b"\r\n") else 1
        return b"", message[:sep_len], message[sep_len:]
    match = _BLANK_LINE.search(message)
    if match is None:
        return message, b"", b""
    # The first line end ends the last header line; the second one is the blank separator.
    first_end = message.index(b"\n", match.start()) + 1
    return message[:first_end], message[first_end : match.end()], message[match.end() :]


def header_fields(head: bytes) -> list[RawField]:
    """The header block cut into fields; continuation lines stay with their field.

    A line that is neither a continuation nor `name:` is kept as a field with an empty name so
    that joining every `raw` gives back `head` byte for byte.
    """
    fields: list[RawField] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            last = fields[-1]
            fields[-1] = RawField(last.name, last.raw + line)
            continue
        name, colon, _ = line.partition(b":")
        valid = bool(colon) and re.fullmatch(rb"[!-9;-~]+", name.rstrip(b" \t")) is not None
        field_name = name.rstrip(b" \t").decode("ascii").lower() if valid else ""
        fields.append(RawField(field_name, line))
    return fields


def join_fields(fields: list[RawField]) -> bytes:
    """The header block made of `fields`, in order."""
    return b"".join(field.raw for field in fields)


def ensure_line_end(raw: bytes) -> bytes:
    """`raw` ending with CRLF (or kept as is when it already ends a line)."""
    return raw if raw.endswith(b"\n") else raw + b"\r\n"
