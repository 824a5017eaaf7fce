"""RFC 8098 MDNs as the ANS guide describes them, and when one may be sent."""

from __future__ import annotations

import email
from email.header import Header
from email.message import EmailMessage, Message
from email.policy import SMTP, default
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssgate.queue.mdn import build_mdn, header_block, receipt_recipient

ORIGINAL = (
    b"Return-Path: <dr.a@hopital.mssante.fr>\r\n"
    b"From: Dr A <dr.a@hopital.mssante.fr>\r\n"
    b"To: ris@clinique.mssante.fr\r\n"
    b"Subject: XDM/1.0/DDM+CR d'imagerie PAT-TROIS DOMINIQUE 28/03/1979\r\n"
    b"Message-ID: <m-1@hopital.mssante.fr>\r\n"
    b"Disposition-Notification-To: Dr A <dr.a@hopital.mssante.fr>\r\n"
    b"\r\n"
    b"body with patient data\r\n"
)


def parse(mdn: bytes) -> Message:
    return email.message_from_bytes(mdn, policy=default)


def parts(message: Message) -> list[Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return payload


def test_processed() -> None:
    mdn = build_mdn(
        ORIGINAL, outcome="processed", reporting_ua="mx.test; mssgate", our_address="ris@c.test"
    )
    message = parse(mdn)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "disposition-notification"
    assert message["To"] == "dr.a@hopital.mssante.fr"
    assert message["Subject"] == "XDM/1.0/DDM+CR d'imagerie PAT-TROIS DOMINIQUE 28/03/1979"
    assert message["In-Reply-To"] == "<m-1@hopital.mssante.fr>"
    text, report, original = parts(message)
    assert text.get_content_type() == "text/plain"
    assert report.get_content_type() == "message/disposition-notification"
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"Original-Message-ID: <m-1@hopital.mssante.fr>\r\n" in mdn
    assert b"Final-Recipient: rfc822;ris@c.test\r\n" in mdn
    assert b"Disposition: automatic-action/MDN-sent-automatically; processed\r\n" in mdn
    assert b"body with patient data" not in mdn
    assert all(b < 128 for b in mdn)  # 7-bit: ready for S/MIME signing


def test_error_carries_code_label_and_subject_prefix() -> None:
    mdn = build_mdn(
        ORIGINAL,
        outcome="error",
        code=902,
        label=None,
        reporting_ua="mx.test",
        our_address="ris@c.test",
        reason="IPP absent",
    )
    message = parse(mdn)
    assert str(message["Subject"]).startswith("[KO Intégration système !][902] XDM/1.0/DDM+")
    assert (
        b"Disposition: automatic-action/MDN-sent-automatically; "
        b"processed/Error: 902^Identifiant patient inconnu\r\n"
    ) in mdn
    human = parts(message)[0].get_content()
    assert "902^Identifiant patient inconnu" in human and "IPP absent" in human


DR_A = "dr.a@hopital.mssante.fr"
# A sender steering the receipt to a third mailbox: Return-Path and the request agree.
FORGED = (
    b"Return-Path: <secretariat@clinique-c.test>\r\n"
    b"From: Dr A <dr.a@hopital.mssante.fr>\r\n"
    b"Message-ID: <m-2@hopital.mssante.fr>\r\n"
    b"Disposition-Notification-To: <secretariat@clinique-c.test>\r\n"
    b"\r\n"
)


@pytest.mark.parametrize(
    ("headers", "sender", "expected"),
    [
        (ORIGINAL, "dr.a@hopital.mssante.fr", "dr.a@hopital.mssante.fr"),
        (ORIGINAL, "Dr.A@Hopital.Mssante.FR", "dr.a@hopital.mssante.fr"),
        # Return-Path is the receiving side's to write (RFC 5321 §4.4): the sender's own copy
        # of it, however well it matches, never decides where a receipt goes (issue 12 C.7).
        (FORGED, "dr.a@hopital.mssante.fr", None),
        (ORIGINAL, "bounce@elsewhere.test", None),
        (ORIGINAL.replace(b"Disposition-Notification-To", b"X-Other"), DR_A, None),
        (ORIGINAL.split(b"\r\n", 1)[1], "dr.a@hopital.mssante.fr", "dr.a@hopital.mssante.fr"),
        # A null sender (a DSN or an MDN itself) never gets a receipt: no notification loop.
        (ORIGINAL, "", None),
        (FORGED, "", None),
    ],
)
def test_receipt_only_to_the_envelope_sender(
    headers: bytes, sender: str, expected: str | None
) -> None:
    assert receipt_recipient(headers, sender) == expected


# ------------------------------------------------------------------ subjects (issue 12 C.11)
def _original_with_subject(subject: str, encoding: str) -> bytes:
    """An original header block whose Subject a sender's client wrote for `subject`."""
    if encoding == "header-utf8":
        field = Header(subject, "utf-8").encode()
    elif encoding == "header-latin1" and all(ord(c) < 256 for c in subject):
        field = Header(subject, "iso-8859-1").encode()
    else:
        # What a modern client (the email package's SMTP policy) writes.
        message = EmailMessage(policy=SMTP)
        message["Subject"] = subject
        field = message.as_bytes().split(b":", 1)[1].strip().decode("ascii")
    return (
        b"From: Dr A <dr.a@hopital.mssante.fr>\r\n"
        b"Subject: " + field.encode("ascii") + b"\r\n"
        b"Message-ID: <m-1@hopital.mssante.fr>\r\n"
        b"Disposition-Notification-To: dr.a@hopital.mssante.fr\r\n"
    )


def _shown(raw: bytes) -> str:
    """The Subject as a mail client shows it: RFC 2047 decoded, folding whitespace as one."""
    return " ".join(str(parse(raw + b"\r\n")["Subject"] or "").split())


@settings(max_examples=300, deadline=None)
@given(
    subject=st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=120),
    encoding=st.sampled_from(["header-utf8", "header-latin1", "policy"]),
    outcome=st.sampled_from(["processed", "error"]),
)
def test_receipt_subject_is_the_original_decoded_once(
    subject: str, encoding: str, outcome: Literal["processed", "error"]
) -> None:
    original = _original_with_subject(subject, encoding)
    mdn = build_mdn(original, outcome=outcome, code=902, reporting_ua="mx.test",
                    our_address="ris@c.test")  # fmt: skip
    assert all(b < 128 for b in mdn)  # still 7-bit: the Subject is encoded, once
    expected = _shown(original)
    if outcome == "error":
        expected = f"[KO Intégration système !][902] {expected}".rstrip()
    assert _shown(header_block(mdn)) == expected


@pytest.mark.parametrize(
    ("field", "shown"),
    [
        # Raw UTF-8 (SMTPUTF8 or a careless client): read as UTF-8, encoded once.
        ("Compte rendu échographie".encode(), "Compte rendu échographie"),
        # A broken encoded word is shown as it stands, never dropped nor crashing the ack.
        (b"=?utf-8?b?not*base64?= suite", "=?utf-8?b?not*base64?= suite"),
        (b"=?x-unknown?q?abc?= suite", "=?x-unknown?q?abc?= suite"),
        (b"=?utf-8?q?=FF=FE?=", "=?utf-8?q?=FF=FE?="),
    ],
)
def test_receipt_subject_from_hostile_fields(field: bytes, shown: str) -> None:
    original = b"Subject: " + field + b"\r\nDisposition-Notification-To: a@b.test\r\n"
    mdn = build_mdn(original, outcome="processed", reporting_ua="mx", our_address="r@c.test")
    assert all(b < 128 for b in header_block(mdn))
    assert _shown(header_block(mdn)) == shown
