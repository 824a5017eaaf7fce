"""DSNs (RFC 3464) as the stdlib email package reads them, whatever a peer put in its reply."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.relay.dsn import RecipientFailure, build_dsn

ARRIVAL = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
ORIGINAL = (
    b"Received: from x\r\n\tby y; Sun, 1 Mar 2026 08:30:00 +0000\r\n"
    b"From: alice@hopital-a.test\r\nSubject: CR patient\r\n\r\nDonnees de sante\r\n"
)


def dsn(failures: list[RecipientFailure], original: bytes = ORIGINAL) -> EmailMessage:
    raw = build_dsn(
        original,
        reporting_mta="mx.hopital-a.test",
        failures=failures,
        postmaster="mailer-daemon@hopital-a.test",
        arrival=ARRIVAL,
        envelope_sender="alice@hopital-a.test",
    )
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    return msg


def blocks(msg: EmailMessage) -> list[dict[str, str]]:
    part = list(msg.iter_parts())[1]
    assert part.get_content_type() == "message/delivery-status"
    payload = part.get_payload()
    assert isinstance(payload, list)
    return [dict(b.items()) for b in payload if isinstance(b, EmailMessage)]


def test_several_recipients_and_their_fields() -> None:
    msg = dsn(
        [
            RecipientFailure(
                "a@clinique-b.test",
                "5.1.1",
                "550 5.1.1 unknown",
                "mx.clinique-b.test",
                last_attempt=ARRIVAL,
            ),
            RecipientFailure("b@clinique-c.test", "5.7.1", explanation="not on the trust list"),
        ]
    )
    first, a, b = blocks(msg)
    assert first == {
        "Reporting-MTA": "dns; mx.hopital-a.test",
        "Arrival-Date": "Sun, 01 Mar 2026 08:30:00 +0000",
    }
    assert a == {
        "Final-Recipient": "rfc822; a@clinique-b.test",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.clinique-b.test",
        "Diagnostic-Code": "smtp; 550 5.1.1 unknown",
        "Last-Attempt-Date": "Sun, 01 Mar 2026 08:30:00 +0000",
    }
    assert b == {
        "Final-Recipient": "rfc822; b@clinique-c.test",
        "Action": "failed",
        "Status": "5.7.1",
    }
    human = next(msg.iter_parts()).get_content()
    assert "<b@clinique-c.test>: not on the trust list" in human
    assert "définitif" in human


def test_original_headers_only_never_the_body() -> None:
    part = list(dsn([RecipientFailure("a@b.test", "5.0.0")]).iter_parts())[2]
    assert part.get_content_type() == "text/rfc822-headers"
    text = part.get_content()
    assert "Subject: CR patient" in text and "\tby y;" in text
    assert "Donnees" not in text


def test_lf_only_original_and_eight_bit_headers() -> None:
    original = "Subject: tension élevée\nFrom: a@b.test\n\nbody\n".encode()
    part = list(dsn([RecipientFailure("a@b.test", "5.0.0")], original).iter_parts())[2]
    assert part["Content-Transfer-Encoding"] == "8bit"
    assert "From: a@b.test" in part.get_content()


@given(reply=st.text(max_size=600), recipient=st.text(min_size=1, max_size=80))
def test_nothing_from_a_peer_can_add_a_field_or_a_part(reply: str, recipient: str) -> None:
    msg = dsn([RecipientFailure(recipient, "5.1.1", reply or None, "mx.example")])
    assert len(list(msg.iter_parts())) == 3
    _, rcpt = blocks(msg)
    assert set(rcpt) <= {"Final-Recipient", "Action", "Status", "Remote-MTA", "Diagnostic-Code"}
    assert rcpt["Status"] == "5.1.1"


def test_injection_attempt_is_flattened() -> None:
    msg = dsn([RecipientFailure("a@b.test", "5.1.1", "550 no\r\nStatus: 2.0.0\r\n\r\n--x")])
    _, rcpt = blocks(msg)
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 no??Status: 2.0.0????--x"


def test_refusals() -> None:
    with pytest.raises(ValueError, match=r"5\.x\.x"):
        RecipientFailure("a@b.test", "4.4.1")
    with pytest.raises(ValueError, match="at least one"):
        dsn([])
    with pytest.raises(ValueError, match="null sender"):
        build_dsn(
            ORIGINAL,
            reporting_mta="m",
            failures=[RecipientFailure("a@b.test", "5.0.0")],
            postmaster="p@m",
            arrival=ARRIVAL,
            envelope_sender="",
        )
