"""DSNs (RFC 3464) for the RIS's copies, read by the same bounded parser as read receipts:
what our own builder writes reads back; who may report is the recipient's domain's mail
system only; hostile bytes are no report, never an error."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from mssgate.outbound.receipts import delivery_report, may_report, read_receipt
from mssgate.relay.dsn import RecipientReport, build_dsn
from tests.smtp.test_outbound_gateway import mdn

ORIGINAL = b"From: ris@clinique-b.test\r\nMessage-ID: <copy-1@clinique-b.test>\r\n\r\nbody\r\n"
BOB = "bob@hopital-a.test"


def report(action: str, status: str, **extra: object) -> bytes:
    return build_dsn(
        ORIGINAL,
        reporting_mta="mx.hopital-a.test",
        failures=[RecipientReport(BOB, status, action=action, **extra)],  # type: ignore[arg-type]
        postmaster="mailer-daemon@hopital-a.test",
        arrival=datetime(2026, 1, 2, tzinfo=UTC),
        envelope_sender="ris@clinique-b.test",
        envid="1A2B+C 3",
    )


def test_our_success_and_failure_dsns_read_back() -> None:
    ok = delivery_report(report("delivered", "2.0.0", original_recipient=f"rfc822;{BOB}"))
    assert ok is not None
    assert ok.reporter == "mailer-daemon@hopital-a.test"
    assert ok.envid == "1A2B+C 3"  # xtext-encoded in the report, decoded here
    assert ok.original_message_id == "<copy-1@clinique-b.test>"
    [r] = ok.recipients
    assert (r.recipient, r.action, r.status, r.diagnostic) == (BOB, "delivered", "2.0.0", None)
    failed = delivery_report(report("failed", "5.2.0", diagnostic="550 5.2.0 Mailbox unavailable"))
    assert failed is not None
    [f] = failed.recipients
    assert (f.action, f.status, f.diagnostic) == (
        "failed",
        "5.2.0",
        "550 5.2.0 Mailbox unavailable",
    )
    # An MDN is no DSN, and a DSN no MDN: one parser, each kind on its own.
    assert delivery_report(mdn("<copy-1@clinique-b.test>")) is None
    assert read_receipt(report("delivered", "2.0.0")) is None


def test_relayed_or_inconsistent_blocks_report_nothing() -> None:
    assert delivery_report(report("relayed", "2.0.0")) is None
    raw = report("delivered", "2.0.0").replace(b"Status: 2.0.0", b"Status: 5.1.1")
    assert delivery_report(raw) is None


def test_only_the_recipients_domain_mail_system_may_report() -> None:
    assert may_report("mailer-daemon@hopital-a.test", BOB)
    assert may_report("postmaster@hopital-a.test", BOB)
    assert not may_report("mailer-daemon@clinique-b.test", BOB)  # another operator
    assert not may_report(BOB, BOB)  # the recipient itself reads; it does not deliver
    assert not may_report("alice@hopital-a.test", BOB)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_hostile_bytes_in_a_report_are_no_report_not_an_error(noise: bytes) -> None:
    base = report("delivered", "2.0.0")
    head, _, body = base.partition(b"\r\n\r\n")
    found = delivery_report(head + b"\r\n\r\n" + noise + body)
    if found is not None:
        for r in found.recipients:
            assert r.status[0] in "25" and r.recipient.isascii()
    assert delivery_report(noise) is None or b"delivery-status" in noise.lower()


def test_a_nested_multipart_bomb_is_no_report() -> None:
    nested = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
        for i in range(1200)
    )
    bomb = (
        b"From: mailer-daemon@hopital-a.test\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="t"\r\n\r\n'
        b"--t\r\n" + nested
    )
    assert delivery_report(bomb) is None
