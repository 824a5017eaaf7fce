"""Return-Path: written by the final delivery, from the envelope, never taken from a sender.

RFC 5321 §4.4: the delivering server inserts `Return-Path` with the MAIL FROM address, and
a message that arrives with one already is not to be believed. The gateway cuts any copy
out at SMTP acceptance (so nothing downstream, the receipt logic above all, can read a
sender's claim there) and the mail store writes the envelope sender in its place.
"""

from __future__ import annotations

import re

from mssgate.smime.rawmime import header_fields, join_fields, split_head_body

FIELD = "return-path"
# What MAIL FROM accepts (ASCII addresses only): printable ASCII without the spaces, angle
# brackets or line ends that could end the field early or start another one.
_SAFE_SENDER = re.compile(r"[!-;=?-~]*")


def spooled_sender(mail_from: str | None) -> str:
    """The envelope sender as the spool keeps it: "" for the null sender, as the gateway's
    own notifications have it. aiosmtpd gives "<>" for MAIL FROM:<>, which every "is this a
    notification" test (`if envelope.sender`) would take for an address."""
    return "" if mail_from in (None, "", "<>") else str(mail_from)


def strip_return_path(message: bytes) -> bytes:
    """`message` without top-level Return-Path fields; every other byte as received."""
    head, _, _ = split_head_body(message)
    fields = header_fields(head)
    kept = [f for f in fields if f.name != FIELD]
    if len(kept) == len(fields):
        return message  # the usual case: no copy of a body that may weigh 25 MB
    return join_fields(kept) + message[len(head) :]


def return_path_field(sender: str) -> bytes:
    """`Return-Path: <sender>` with its CRLF; `<>` for the null sender of a notification.

    Raises:
        ValueError: the sender could break out of the field (never one MAIL FROM accepted).
    """
    if sender == "<>":
        sender = ""  # the null sender as the MTA listener spools it (MAIL FROM:<>)
    if not _SAFE_SENDER.fullmatch(sender):
        raise ValueError(f"unusable envelope sender {sender!r}")
    return b"Return-Path: <" + sender.encode("ascii") + b">\r\n"


def with_return_path(message: bytes, sender: str) -> bytes:
    """`message` as delivered: one Return-Path, the envelope sender's, first."""
    return return_path_field(sender) + strip_return_path(message)
