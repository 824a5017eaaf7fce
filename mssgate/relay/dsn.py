"""Delivery status notifications (RFC 3464): for messages the relay or local delivery gives
up on, and (RFC 3461 NOTIFY=SUCCESS) for those delivered to a mailbox here or relayed to a
peer that does not offer DSN.

Built as bytes by hand rather than with `email.message`: the stdlib models message/delivery-status
as a list of header blocks and re-folds or re-encodes on output, while a DSN is small and fixed
enough to write exactly, and every value in it that came from outside (a peer's reply text, an
address) goes through one sanitiser so that nothing can open a new header or MIME part.
"""

from __future__ import annotations

import quopri
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from mssgate.smtp.dsnparams import encode_xtext

_STATUS = {
    "failed": re.compile(r"5\.\d{1,3}\.\d{1,3}"),
    "delivered": re.compile(r"2\.\d{1,3}\.\d{1,3}"),
    "relayed": re.compile(r"2\.\d{1,3}\.\d{1,3}"),
}
_NOT_FIELD_SAFE = re.compile(r"[^\x20-\x7e]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_DIAGNOSTIC_MAX = 400


@dataclass(frozen=True)
class RecipientFailure:
    recipient: str
    # RFC 3463, class 5: a DSN with Action: failed reports a permanent status.
    status: str
    # The peer's SMTP reply ("550 5.1.1 no such user"), when a peer's reply decided.
    diagnostic: str | None = None
    # The peer's relay host, when we reached (or tried to reach) one.
    remote_mta: str | None = None
    # In words, for the human part, when the status alone says too little.
    explanation: str | None = None
    last_attempt: datetime | None = None
    # RFC 3464 Action: failed, or (a success report) delivered or relayed.
    action: str = "failed"
    # ORCPT as the client gave it (RFC 3461 "addr-type;xtext"), for Original-Recipient.
    original_recipient: str | None = None

    def __post_init__(self) -> None:
        pattern = _STATUS.get(self.action)
        if pattern is None:
            raise ValueError(f"a DSN action is failed, delivered or relayed, not {self.action!r}")
        if not pattern.fullmatch(self.status):
            wanted = "5.x.x" if self.action == "failed" else "2.x.x"
            raise ValueError(f"a {self.action} status must be {wanted}, not {self.status!r}")


# A success report is a RecipientFailure with another action: one shape, one builder.
RecipientReport = RecipientFailure


def _field(value: str, limit: int = 254) -> str:
    return _NOT_FIELD_SAFE.sub("?", value)[:limit]


def _original_headers(original: bytes) -> bytes:
    found = _HEADER_END.search(original)
    block = original[: found.start()] if found is not None else original
    block = _LINE_END.sub(b"\r\n", block).rstrip(b"\r\n")
    return block + b"\r\n" if block else b""


def _human(failures: Sequence[RecipientFailure], reporting_mta: str) -> bytes:
    if all(f.action != "failed" for f in failures):
        return _human_success(failures, reporting_mta)
    lines = [
        f"Ceci est le service de messagerie de {reporting_mta}.",
        "Votre message n'a pas pu être remis au(x) destinataire(s) ci-dessous ; "
        "cet échec est définitif.",
        "",
        f"This is the mail system at {reporting_mta}.",
        "Your message could not be delivered to the recipient(s) below; this is a "
        "permanent failure.",
        "",
    ]
    for f in failures:
        reason = f.explanation or f.diagnostic or f"status {f.status}"
        lines.append(f"<{_field(f.recipient)}>: {_field(reason, _DIAGNOSTIC_MAX)}")
    # quopri knows LF lines only (a CR would come out as =0D): encode first, then CRLF.
    text = "\n".join(lines) + "\n"
    return quopri.encodestring(text.encode("utf-8")).replace(b"\n", b"\r\n")


def _human_success(reports: Sequence[RecipientFailure], reporting_mta: str) -> bytes:
    lines = [
        f"Ceci est le service de messagerie de {reporting_mta}.",
        "Votre message a été remis au(x) destinataire(s) ci-dessous (ou transmis à un",
        "serveur qui ne confirme pas la remise).",
        "",
        f"This is the mail system at {reporting_mta}.",
        "Your message was delivered to the recipient(s) below (or relayed to a server",
        "that gives no delivery notifications).",
        "",
    ]
    lines += [f"<{_field(r.recipient)}>: {r.action}" for r in reports]
    text = "\n".join(lines) + "\n"
    return quopri.encodestring(text.encode("utf-8")).replace(b"\n", b"\r\n")


def _status_part(
    failures: Sequence[RecipientFailure],
    reporting_mta: str,
    arrival: datetime,
    envid: str | None = None,
) -> bytes:
    head = [f"Reporting-MTA: dns; {_field(reporting_mta)}"]
    if envid:
        # RFC 3464 2.2.1: the ENVID as the client gave it, xtext-encoded.
        head.append(f"Original-Envelope-Id: {encode_xtext(envid)[:300]}")
    head.append(f"Arrival-Date: {format_datetime(arrival)}")
    blocks = [head]
    for f in failures:
        block = []
        if f.original_recipient:
            block.append(f"Original-Recipient: {_field(f.original_recipient, 600)}")
        block += [
            f"Final-Recipient: rfc822; {_field(f.recipient)}",
            f"Action: {f.action}",
            f"Status: {f.status}",
        ]
        if f.remote_mta:
            block.append(f"Remote-MTA: dns; {_field(f.remote_mta)}")
        if f.diagnostic:
            block.append(f"Diagnostic-Code: smtp; {_field(f.diagnostic, _DIAGNOSTIC_MAX)}")
        if f.last_attempt is not None:
            block.append(f"Last-Attempt-Date: {format_datetime(f.last_attempt)}")
        blocks.append(block)
    return "".join("\r\n".join(b) + "\r\n\r\n" for b in blocks).encode("ascii")


def build_dsn(
    original: bytes,
    *,
    reporting_mta: str,
    failures: list[RecipientFailure],
    postmaster: str,
    arrival: datetime,
    envelope_sender: str,
    date: datetime | None = None,
    mss_nil: str | None = None,
    envid: str | None = None,
) -> bytes:
    """An RFC 3464 multipart/report for `failures` (or success reports), addressed to
    `envelope_sender`. `envid`: the message's RFC 3461 ENVID, echoed. The original goes back
    as its header block (RET=FULL is honoured as HDRS: copies carry health documents, and a
    DSN is no place to send one back).

    `mss_nil`: the gateway's X-MSS-NIL (ECO.2.4.3), which goes on every message it sends,
    bounces included.

    The caller spools it with the null reverse path (MAIL FROM:<>), so that a DSN is never
    answered by another one (RFC 5321 4.5.5).
    """
    if not failures:
        raise ValueError("a DSN needs at least one recipient to report")
    if not envelope_sender:
        raise ValueError("a message with a null sender is never bounced (RFC 5321 4.5.5)")
    when = date if date is not None else datetime.now(UTC)
    boundary = f"=_mssgate_dsn_{secrets.token_hex(12)}"
    headers = _original_headers(original)
    headers_cte = "8bit" if any(b >= 0x80 for b in headers) else "7bit"
    top = [
        f"From: Mail Delivery System <{_field(postmaster)}>",
        f"To: <{_field(envelope_sender)}>",
        "Subject: Undelivered Mail Returned to Sender (message non remis)"
        if any(f.action == "failed" for f in failures)
        else "Subject: Successful Mail Delivery Report (message remis)",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <{secrets.token_hex(16)}@{_field(reporting_mta)}>",
        "Auto-Submitted: auto-replied",
        *([f"X-MSS-NIL: {_field(mss_nil, 64)}"] if mss_nil else []),
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification (RFC 3464).",
        "",
    ]
    out = "\r\n".join(top).encode("ascii")
    out += (
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "Content-Description: Notification\r\n\r\n"
    ).encode("ascii") + _human(failures, reporting_mta)
    out += (
        f"\r\n--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n"
        "Content-Description: Delivery report\r\n\r\n"
    ).encode("ascii") + _status_part(failures, reporting_mta, arrival, envid)
    out += (
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        f"Content-Transfer-Encoding: {headers_cte}\r\n"
        "Content-Description: Message headers\r\n\r\n"
    ).encode("ascii") + headers
    out += f"\r\n--{boundary}--\r\n".encode("ascii")
    return out
