"""RFC 8098 MDNs as the ANS guide describes them, and when one may be sent."""

from __future__ import annotations

import email
from email.message import Message
from email.policy import default

import pytest

from mssgate.queue.mdn import build_mdn, receipt_recipient

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


@pytest.mark.parametrize(
    ("headers", "sender", "expected"),
    [
        (ORIGINAL, None, "dr.a@hopital.mssante.fr"),
        (ORIGINAL.replace(b"Return-Path: <dr.a@", b"Return-Path: <other@"), None, None),
        (ORIGINAL.replace(b"Disposition-Notification-To", b"X-Other"), None, None),
        (ORIGINAL.split(b"\r\n", 1)[1], "dr.a@hopital.mssante.fr", "dr.a@hopital.mssante.fr"),
        (ORIGINAL.split(b"\r\n", 1)[1], "bounce@elsewhere.test", None),
        # A null sender (a DSN or an MDN itself) never gets a receipt: no notification loop.
        (ORIGINAL.split(b"\r\n", 1)[1], "", None),
    ],
)
def test_receipt_only_when_asked_by_the_return_path(
    headers: bytes, sender: str | None, expected: str | None
) -> None:
    assert receipt_recipient(headers, sender) == expected
