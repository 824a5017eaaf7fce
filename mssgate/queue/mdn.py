"""RFC 8098 message disposition notifications, as the ANS guide wants them (pure).

Three parts (multipart/report; report-type=disposition-notification): a human text carrying
the code and label, the machine-readable `message/disposition-notification`, then the
original header block (`text/rfc822-headers`, which RFC 8098 allows as the third part; the
gateway keeps headers, not whole messages, once the documents are queued).
Success: `processed`; failure: `processed/Error: <code>^<label>`, and the subject gets the
prefix `[KO Intégration système !][<code>] `.
"""

from __future__ import annotations

import base64
import secrets
import textwrap
import unicodedata
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.header import Header, decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import format_datetime, getaddresses, make_msgid
from typing import Final, Literal

from mssgate.smime.rawmime import ensure_line_end, header_fields

Outcome = Literal["processed", "error"]

ERROR_PREFIX: Final = "[KO Intégration système !]"

# ANS integration error codes (error-codes.md); the label travels as `<code>^<label>`.
ERROR_LABELS: Final[dict[int, str]] = {
    900: "Version du document incorrecte",
    901: "Auteur non autorisé à remplacer ou supprimer le document",
    902: "Identifiant patient inconnu",
    903: "INS absent du CDA",
    904: "INS ou traits d'identité incohérents avec le dossier local",
    905: "INS incomplet",
    906: "Autre erreur",
}


def label_for(code: int) -> str:
    return ERROR_LABELS.get(code, ERROR_LABELS[906])


def header_block(raw: bytes) -> bytes:
    """The header section of a message, without the blank line that ends it."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(separator)
        if end != -1:
            return raw[:end]
    return raw


# What a queued document keeps of its message's header block for its receipt (RFC 8098's
# text/rfc822-headers): the block whole up to this size; past it, the fields a receipt
# reads. The sender writes the block, and it was kept once per document and sent back in
# every receipt.
MAX_KEPT_HEADERS: Final = 64 * 1024
_RECEIPT_FIELDS: Final = frozenset(
    {
        "from",
        "to",
        "cc",
        "date",
        "subject",
        "message-id",
        "disposition-notification-to",
        "original-recipient",
    }
)


def receipt_headers(raw: bytes) -> bytes:
    """The header block of `raw` to keep with each of its documents, at most
    `MAX_KEPT_HEADERS` bytes."""
    block = header_block(raw)
    if len(block) <= MAX_KEPT_HEADERS:
        return block
    kept: list[bytes] = []
    size = 0
    for field in header_fields(block):
        line = ensure_line_end(field.raw)
        if field.name in _RECEIPT_FIELDS and size + len(line) <= MAX_KEPT_HEADERS:
            kept.append(line)
            size += len(line)
    return b"".join(kept).rstrip(b"\r\n")


def _headers(original: bytes | str) -> tuple[bytes, dict[str, str]]:
    data = original.encode("utf-8", "surrogateescape") if isinstance(original, str) else original
    block = header_block(data)
    parsed = BytesHeaderParser(policy=compat32).parsebytes(block + b"\r\n\r\n")
    values = {k.lower(): str(v) for k, v in parsed.items()}
    return block, values


def _address(value: str | None) -> str | None:
    if not value:
        return None
    pairs = [addr for _, addr in getaddresses([value]) if addr]
    return pairs[0].strip().lower() if pairs else None


def receipt_recipient(original: bytes | str, envelope_sender: str) -> str | None:
    """Where an MDN may go automatically, or None.

    Only when `Disposition-Notification-To` names the envelope sender (MAIL FROM, as the
    spool kept it): anything else is the loop or forgery case where the ANS guide wants a
    human to confirm. A `Return-Path` field in the message is never read: the receiving
    side writes it (RFC 5321 §4.4), and one that came with the message is the sender's word.
    A null sender (a DSN, an MDN) gets no receipt.
    """
    _, headers = _headers(original)
    wanted = _address(headers.get("disposition-notification-to"))
    if wanted is None:
        return None
    return wanted if wanted == _address(envelope_sender) else None


def _subject(block: bytes) -> str:
    """The original Subject as its reader saw it: RFC 2047 decoded once, unfolded.

    Read from the raw field (8-bit bytes taken as UTF-8) so that `build_mdn` encodes it
    exactly once; an encoded word that does not decode (bad base64, unknown charset, bytes
    foreign to its charset) is kept as written rather than failing the receipt.
    """
    values = [f.value for f in header_fields(ensure_line_end(block)) if f.name == "subject"]
    if not values:
        return ""
    text = values[0].decode("utf-8", "replace")
    try:
        decoded = str(make_header(decode_header(text)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        decoded = text
    return _fold(decoded)


def _fold(text: str) -> str:
    return " ".join(text.split())


def _ascii(text: str) -> str:
    # The machine-readable part is 7-bit (message/disposition-notification): accents are
    # dropped there and kept in the human-readable part.
    decomposed = unicodedata.normalize("NFKD", text)
    return decomposed.encode("ascii", "ignore").decode("ascii")


def build_mdn(
    original_headers: bytes | str,
    *,
    outcome: Outcome,
    code: int | None = None,
    label: str | None = None,
    reporting_ua: str,
    our_address: str,
    reason: str | None = None,
    now: datetime | None = None,
    mss_nil: str | None = None,
) -> bytes:
    """The MDN, as bytes with CRLF line ends, ready for signing and the outgoing spool.

    `mss_nil`: the gateway's X-MSS-NIL (ECO.2.4.3), which goes on every message it sends,
    receipts included.
    """
    block, headers = _headers(original_headers)
    # The queue builds a receipt only when this names the envelope sender (receipt_recipient).
    recipient = _address(headers.get("disposition-notification-to"))
    if recipient is None:
        raise ValueError("the original message names no one to send a receipt to")
    subject = _subject(block)
    disposition = "automatic-action/MDN-sent-automatically; processed"
    error_line: str | None = None
    if outcome == "error":
        code = 906 if code is None else code
        label = _fold(label or label_for(code))
        error_line = f"{code}^{label}"
        disposition += f"/Error: {_ascii(error_line)}"
        subject = f"{ERROR_PREFIX}[{code}] {subject}".rstrip()
    original_id = headers.get("message-id", "").strip()
    original_recipient = _address(headers.get("original-recipient")) or _address(headers.get("to"))
    moment = now or datetime.now(UTC)
    boundary = "=_mdn_" + secrets.token_hex(12)
    domain = our_address.rsplit("@", 1)[-1]

    top = [
        f"From: {our_address}",
        f"To: {recipient}",
        f"Subject: {Header(subject, 'utf-8').encode() if subject else ''}",
        f"Date: {format_datetime(moment)}",
        f"Message-ID: {make_msgid(domain=domain)}",
        "MIME-Version: 1.0",
        "Auto-Submitted: auto-replied",
    ]
    if mss_nil is not None and (nil := _ascii(_fold(mss_nil))):
        top.append(f"X-MSS-NIL: {nil}")
    if original_id:
        top += [f"In-Reply-To: {original_id}", f"References: {original_id}"]
    top.append(
        "Content-Type: multipart/report; report-type=disposition-notification;"
        f' boundary="{boundary}"'
    )

    if outcome == "processed":
        human = [f"Le message {original_id} a été intégré par {our_address}."]
    else:
        human = [
            f"Le message {original_id} n'a pas pu être intégré par {our_address}.",
            f"Erreur : {error_line}",
        ]
        if reason:
            human.append(f"Détail : {_fold(reason)}")

    report = [f"Reporting-UA: {_fold(reporting_ua)}"]
    if original_recipient:
        report.append(f"Original-Recipient: rfc822;{original_recipient}")
    report.append(f"Final-Recipient: rfc822;{our_address}")
    if original_id:
        report.append(f"Original-Message-ID: {original_id}")
    report.append(f"Disposition: {disposition}")
    if error_line:
        report.append(f"Error: {_ascii(error_line)}")

    crlf = "\r\n"
    parts = [
        crlf.join(top),
        "",
        "This is a message disposition notification (RFC 8098).",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        # base64 keeps the report 7-bit clean, which S/MIME signing wants.
        "Content-Transfer-Encoding: base64",
        "",
        crlf.join(textwrap.wrap(base64.b64encode(crlf.join(human).encode()).decode(), 76)),
        "",
        f"--{boundary}",
        "Content-Type: message/disposition-notification",
        "",
        crlf.join(report),
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = crlf.join(parts).encode("utf-8") + crlf.encode()
    original = b"\r\n".join(block.splitlines())
    tail = f"{crlf}{crlf}--{boundary}--{crlf}".encode()
    return head + original + tail
