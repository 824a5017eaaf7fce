"""Read receipts (MDN, RFC 8098) for copies a RIS sent: found in what its application mailbox
receives, matched by Original-Message-ID, and counted only from the recipient itself.

Every copy's Message-ID is random (unguessable) and a receipt counts only when its `From` is
the very recipient the copy went to, so a third party cannot mark a copy read. The walk is
bounded in depth and parts: what arrives is hostile like any mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Final

from mssgate.errors import ValidationFailed
from mssgate.identifiers import normalize_address

_MAX_DEPTH: Final = 6
_MAX_PARTS: Final = 50


@dataclass(frozen=True)
class ReadReceipt:
    original_message_id: str
    reader: str
    disposition: str

    @property
    def read(self) -> bool:
        """displayed (a person opened it) or processed (software integrated it)."""
        kind = self.disposition.split(";")[-1].strip().lower()
        return kind.startswith(("displayed", "processed"))


def _report(part: Message, depth: int, budget: list[int]) -> Message | None:
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_DEPTH:
        return None
    if part.get_content_type() == "message/disposition-notification":
        payload = part.get_payload()
        if isinstance(payload, list):
            return payload[0] if payload and isinstance(payload[0], Message) else None
        text = part.get_payload(decode=True)
        if not isinstance(text, bytes):
            return None
        return HeaderParser(policy=compat32).parsestr(text.decode("utf-8", "replace"))
    if part.get_content_maintype() != "multipart":
        return None
    payload = part.get_payload()
    if not isinstance(payload, list):
        return None
    for sub in payload:
        if isinstance(sub, Message):
            found = _report(sub, depth + 1, budget)
            if found is not None:
                return found
    return None


# Our copies' Message-IDs are printable ASCII without spaces: anything else (a NUL, which
# PostgreSQL's text refuses, 8-bit bytes) can match none of them and is no receipt.
_MESSAGE_ID: Final = re.compile(r"<[\x21-\x7e]{1,298}>")
_NOT_PRINTABLE: Final = re.compile(r"[^\x20-\x7e]")


def _text(value: object) -> str:
    """A header value as text: compat32 hands a Header object for raw 8-bit bytes."""
    if value is None:
        return ""
    return str(value) if not isinstance(value, str) else value


def _address(value: str | None) -> str | None:
    found = getaddresses([value or ""])
    if len(found) != 1:
        return None
    try:
        return normalize_address(found[0][1])
    except ValidationFailed:
        return None


# A receipt is a multipart/report (RFC 8098), bare or inside a multipart/signed: only those
# are parsed whole. Any other message delivered to the mailbox (a nested-multipart bomb
# included: the stdlib parser recurses once per level) is no receipt and costs a header read.
_RECEIPT_TOPS: Final = frozenset({"multipart/report", "multipart/signed"})
_MDN_MARK: Final = re.compile(rb"disposition-notification", re.IGNORECASE)


def read_receipt(raw: bytes) -> ReadReceipt | None:
    """The MDN `raw` carries (signed or not), or None when it is none."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    top = HeaderParser(policy=compat32).parsestr(head.decode("ascii", "replace"))
    if top.get_content_type() not in _RECEIPT_TOPS or not _MDN_MARK.search(raw):
        return None
    try:
        message = message_from_bytes(raw, policy=compat32)
        fields = _report(message, 0, [_MAX_PARTS])
    except (RecursionError, ValueError, LookupError, TypeError):
        return None
    if fields is None:
        return None
    original = _text(fields.get("Original-Message-ID")).strip()
    reader = _address(_text(message.get("From")))
    # The disposition is only recorded and shown: what is not printable ASCII is dropped.
    disposition = " ".join(_NOT_PRINTABLE.sub("", _text(fields.get("Disposition"))).split())
    if not _MESSAGE_ID.fullmatch(original) or reader is None or not disposition:
        return None
    return ReadReceipt(original[:300], reader, disposition[:200])
