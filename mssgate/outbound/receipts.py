"""Read receipts (MDN, RFC 8098) and delivery status notifications (DSN, RFC 3464) for copies
a RIS sent: found in what its application mailbox receives (one parser for the
multipart/report of both), matched by Original-Message-ID (MDN) or by ENVID, else the
returned headers' Message-ID (DSN).

Every copy's Message-ID is random (unguessable) and a receipt counts only when its `From` is
the very recipient the copy went to, so a third party cannot mark a copy read. A DSN counts
only from mailer-daemon@ or postmaster@ the reported recipient's own domain (the store
checks the pairing): the SMTP listener has already bound a From: domain to that operator's
certificate and signature, so only the recipient's operator can claim its delivery. The walk
is bounded in depth and parts: what arrives is hostile like any mail.
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
from mssgate.smtp.dsnparams import DsnSyntaxError, decode_xtext

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


_MDN_TYPE: Final = "message/disposition-notification"
_DSN_TYPE: Final = "message/delivery-status"
_HEADERS_TYPES: Final = frozenset({"text/rfc822-headers", "message/rfc822-headers"})
_MAX_BLOCKS: Final = 51  # the per-message fields, and 50 recipients (our copies have one)


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a report part: compat32 parses message/delivery-status as a
    list of blocks already; otherwise the text is split on blank lines here."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload[:_MAX_BLOCKS] if isinstance(b, Message)]
    text = part.get_payload(decode=True)
    if not isinstance(text, bytes):
        return []
    chunks = re.split(r"\r?\n\r?\n", text.decode("utf-8", "replace"))
    parser = HeaderParser(policy=compat32)
    return [parser.parsestr(c) for c in chunks[:_MAX_BLOCKS] if c.strip()]


def _report(
    part: Message, kinds: frozenset[str], depth: int, budget: list[int]
) -> dict[str, Message | list[Message]]:
    """The report parts of `kinds` (content type: the part's header blocks; for the
    returned headers, the parsed header block), first of each, within the bounds."""
    found: dict[str, Message | list[Message]] = {}
    _walk(part, kinds, depth, budget, found)
    return found


def _walk(
    part: Message,
    kinds: frozenset[str],
    depth: int,
    budget: list[int],
    found: dict[str, Message | list[Message]],
) -> None:
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_DEPTH:
        return
    kind = part.get_content_type()
    if kind in kinds and kind not in found:
        if kind in _HEADERS_TYPES:
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                found[kind] = HeaderParser(policy=compat32).parsestr(
                    text.decode("ascii", "replace")
                )
            return
        found[kind] = _blocks(part)
        return
    if part.get_content_maintype() != "multipart":
        return
    payload = part.get_payload()
    if not isinstance(payload, list):
        return
    for sub in payload:
        if isinstance(sub, Message):
            _walk(sub, kinds, depth + 1, budget, found)


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


# A receipt or a DSN is a multipart/report (RFC 8098, RFC 3464), bare or inside a
# multipart/signed: only those are parsed whole. Any other message delivered to the mailbox
# (a nested-multipart bomb included: the stdlib parser recurses once per level) is neither
# and costs a header read.
_RECEIPT_TOPS: Final = frozenset({"multipart/report", "multipart/signed"})
_MDN_MARK: Final = re.compile(rb"disposition-notification", re.IGNORECASE)
_DSN_MARK: Final = re.compile(rb"delivery-status", re.IGNORECASE)


def _parsed_report(
    raw: bytes, mark: re.Pattern[bytes], kinds: frozenset[str]
) -> tuple[Message, dict[str, Message | list[Message]]] | None:
    """The message and its report parts of `kinds`, or None when it is no such report."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    top = HeaderParser(policy=compat32).parsestr(head.decode("ascii", "replace"))
    if top.get_content_type() not in _RECEIPT_TOPS or not mark.search(raw):
        return None
    try:
        message = message_from_bytes(raw, policy=compat32)
        return message, _report(message, kinds, 0, [_MAX_PARTS])
    except (RecursionError, ValueError, LookupError, TypeError):
        return None


def read_receipt(raw: bytes) -> ReadReceipt | None:
    """The MDN `raw` carries (signed or not), or None when it is none."""
    parsed = _parsed_report(raw, _MDN_MARK, frozenset({_MDN_TYPE}))
    if parsed is None:
        return None
    message, parts = parsed
    blocks = parts.get(_MDN_TYPE)
    if not isinstance(blocks, list) or not blocks:
        return None
    fields = blocks[0]
    original = _text(fields.get("Original-Message-ID")).strip()
    reader = _address(_text(message.get("From")))
    # The disposition is only recorded and shown: what is not printable ASCII is dropped.
    disposition = " ".join(_NOT_PRINTABLE.sub("", _text(fields.get("Disposition"))).split())
    if not _MESSAGE_ID.fullmatch(original) or reader is None or not disposition:
        return None
    return ReadReceipt(original[:300], reader, disposition[:200])


@dataclass(frozen=True)
class RecipientDelivery:
    """One recipient block of a DSN that reports an outcome (Action delivered or failed)."""

    recipient: str  # Original-Recipient (rfc822) when given, else Final-Recipient
    action: str
    status: str
    diagnostic: str | None


@dataclass(frozen=True)
class DeliveryReport:
    reporter: str  # the DSN's From
    envid: str | None  # Original-Envelope-Id, xtext-decoded
    original_message_id: str | None  # the returned headers' Message-ID
    recipients: tuple[RecipientDelivery, ...]


_STATUS: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_OUTCOMES: Final = frozenset({"delivered", "failed"})


def _rfc822(value: str) -> str | None:
    """The address of an `rfc822; addr` field (RFC 3464 2.3.1, 2.3.2), normalised."""
    kind, semi, address = value.partition(";")
    if not semi or kind.strip().lower() != "rfc822":
        return None
    try:
        decoded = decode_xtext(address.strip(), what="address")
    except DsnSyntaxError:
        decoded = address.strip()
    try:
        return normalize_address(decoded)
    except ValidationFailed:
        return None


def _printable(value: object, limit: int) -> str:
    return " ".join(_NOT_PRINTABLE.sub("", _text(value)).split())[:limit]


def delivery_report(raw: bytes) -> DeliveryReport | None:
    """The DSN `raw` carries (signed or not), or None when it is none; only the recipient
    blocks that report an outcome, with a well-formed status, are kept."""
    kinds = frozenset({_DSN_TYPE, *_HEADERS_TYPES})
    parsed = _parsed_report(raw, _DSN_MARK, kinds)
    if parsed is None:
        return None
    message, parts = parsed
    blocks = parts.get(_DSN_TYPE)
    reporter = _address(_text(message.get("From")))
    if not isinstance(blocks, list) or len(blocks) < 2 or reporter is None:
        return None
    envid: str | None = None
    raw_envid = _text(blocks[0].get("Original-Envelope-Id")).strip()
    if raw_envid:
        try:
            envid = decode_xtext(raw_envid, what="ENVID")[:100]
        except DsnSyntaxError:
            envid = None
    returned = next((p for k, p in parts.items() if k in _HEADERS_TYPES), None)
    message_id = _text(returned.get("Message-ID")).strip() if isinstance(returned, Message) else ""
    recipients = []
    for block in blocks[1:]:
        action = _text(block.get("Action")).strip().lower()
        status = _text(block.get("Status")).strip().split(" ")[0]
        address = _rfc822(_text(block.get("Original-Recipient"))) or _rfc822(
            _text(block.get("Final-Recipient"))
        )
        if action not in _OUTCOMES or not _STATUS.fullmatch(status) or address is None:
            continue
        if (action == "delivered") != status.startswith("2"):
            continue  # a success with a failure's status, or the reverse: says nothing sure
        diagnostic = _printable(block.get("Diagnostic-Code"), 400)
        _kind, semi, text = diagnostic.partition(";")
        recipients.append(
            RecipientDelivery(
                address, action, status, (text.strip() if semi else diagnostic) or None
            )
        )
    if not recipients:
        return None
    return DeliveryReport(
        reporter=reporter,
        envid=envid,
        original_message_id=message_id[:300] if _MESSAGE_ID.fullmatch(message_id) else None,
        recipients=tuple(recipients),
    )


def may_report(reporter: str, recipient: str) -> bool:
    """Who may claim a delivery: the recipient's own domain's mail system (RFC 3464's
    DSNs come from mailer-daemon or postmaster), never a third party or the recipient."""
    local, _, domain = reporter.rpartition("@")
    return local in ("mailer-daemon", "postmaster") and domain == recipient.rpartition("@")[2]
