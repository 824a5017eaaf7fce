"""RFC 3461 on a running gateway: DSN is advertised, its parameters are read (501 5.5.4 with
the reason when wrong), kept with the spool entry, and a local delivery that NOTIFY=SUCCESS
asked for sends the success DSN to the envelope sender, with a null reverse path."""

from __future__ import annotations

import email

from tests.smtp.conftest import ALICE, BOB, Gateway, message


def test_dsn_is_advertised_and_bad_parameters_are_refused_with_the_reason(
    gateway: Gateway,
) -> None:
    client = gateway.login()
    assert client.has_extn("dsn")
    assert client.docmd(f"MAIL FROM:<{ALICE}> RET=BODY") == (501, b"5.5.4 RET must be FULL or HDRS")
    code, text = client.docmd(f"MAIL FROM:<{ALICE}> ENVID=a+zz")
    assert (code, text) == (501, b"5.5.4 ENVID is not valid xtext (RFC 3461 4)")
    assert client.docmd(f"MAIL FROM:<{ALICE}> RET=HDRS ENVID=x")[0] == 250
    code, text = client.docmd(f"RCPT TO:<{BOB}> NOTIFY=NEVER,SUCCESS")
    assert (code, text) == (501, b"5.5.4 NOTIFY=NEVER cannot be combined with other values")
    assert client.docmd(f"RCPT TO:<{BOB}> ORCPT=bob")[0] == 501
    # The transaction goes on after a refused parameter.
    assert client.docmd(f"RCPT TO:<{BOB}> NOTIFY=FAILURE ORCPT=rfc822;{BOB}")[0] == 250
    client.quit()


def test_a_local_delivery_with_notify_success_sends_a_success_dsn(gateway: Gateway) -> None:
    client = gateway.login()
    client.ehlo()
    client.sendmail(
        ALICE,
        [BOB],
        message(),
        mail_options=["RET=HDRS", "ENVID=Case+2BSensitive"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob+40Hopital-A.test"],
    )
    client.quit()
    gateway.wait_delivered(BOB, 1)
    [dsn_path] = gateway.wait_delivered(ALICE, 1)
    raw = dsn_path.read_bytes()
    assert raw.startswith(b"Return-Path: <>\r\n")  # a DSN is never answered by another
    parsed = email.message_from_bytes(raw)
    assert parsed["From"] == "Mail Delivery System <mailer-daemon@hopital-a.test>"
    # Signed as mailer-daemon@ the domain (the key `init` made), the report inside.
    assert parsed.get_content_type() == "multipart/signed"
    assert b"multipart/report; report-type=delivery-status" in raw
    text = raw.decode()
    assert "Original-Envelope-Id: Case+2BSensitive\r\n" in text  # as given, case kept
    assert "Original-Recipient: rfc822;Bob@Hopital-A.test\r\n" in text
    assert f"Final-Recipient: rfc822; {BOB}\r\nAction: delivered\r\nStatus: 2.0.0" in text


def test_without_notify_a_delivery_sends_no_dsn(gateway: Gateway) -> None:
    client = gateway.login()
    client.sendmail(ALICE, [BOB], message())
    client.quit()
    gateway.wait_delivered(BOB, 1)
    gateway.wait_event("delivery.ok")
    assert not any(e.get("event") == "delivery.dsn" for e in gateway.events())
    assert gateway.mailbox(ALICE) == []
