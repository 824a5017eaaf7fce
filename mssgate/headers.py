"""A message's header fields, read without touching its body.

The stdlib's header parser decodes the whole message to a str before it stops at the blank
line: for a 25 MB message that was 180 MB of peak memory to read a From field.
"""

from __future__ import annotations

from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import SMTP


def header_block(message: bytes) -> bytes:
    """The bytes up to and including the last header line's CRLF (all of them if no body)."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def read_headers(message: bytes) -> Message:
    """The header fields of `message`, parsed with the SMTP policy (defects recorded)."""
    return BytesHeaderParser(policy=SMTP).parsebytes(header_block(message))
