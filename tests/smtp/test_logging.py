"""What a live gateway writes to its JSON log: one line per event, linked by ids.

A transaction's queue id is in its 250 replies and in every line about it, with the session
id; protocol errors each leave one line, with no more of the client's bytes than an escaped
excerpt, and never a traceback.
"""

from __future__ import annotations

import base64
import re

from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway, Raw, message

QUEUE_ID = re.compile(rb"queue id ([0-9A-Z]{12,32})$")


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def session_events(gateway: Gateway, session: str) -> list[dict[str, object]]:
    return [e for e in gateway.events() if e.get("session") == session]


def test_queue_id_in_every_250_and_log_line_of_its_transaction(gateway: Gateway) -> None:
    client = gateway.login()
    code, text = client.mail(ALICE)
    assert code == 250 and text.startswith(b"2.1.0 Sender OK, queue id ")
    found = QUEUE_ID.search(text)
    assert found is not None
    first = found.group(1).decode()
    assert client.rcpt(BOB) == (250, f"2.1.5 Recipient OK, queue id {first}".encode())
    # A refused recipient is a line of the same transaction.
    assert client.rcpt(f"nobody@{BOB.split('@')[1]}")[0] == 550
    assert client.data(message()) == (250, f"2.0.0 Ok: queued as {first}".encode())
    # The next transaction has its own id, and so has one begun again after RSET.
    _, text = client.mail(ALICE)
    second = text.split()[-1].decode()
    client.rset()
    _, text = client.mail(ALICE)
    third = text.split()[-1].decode()
    assert len({first, second, third}) == 3
    client.rcpt(BOB)
    # A refused message (From: is not the sender) is logged under its transaction's id.
    assert client.data(message(sender=BOB))[0] == 553
    client.quit()

    accept = gateway.wait_event("smtp.accept", queue_id=first)
    session = accept["session"]
    assert isinstance(session, str) and session
    gateway.wait_event("smtp.disconnect", session=session)
    events = session_events(gateway, session)
    names = [e["event"] for e in events]
    assert names[0] == "smtp.connect" and names[-1] == "smtp.disconnect"
    assert {"smtp.tls", "smtp.auth"} <= set(names)
    rejects = [e for e in events if e["event"] == "smtp.reject"]
    assert [(e["stage"], e["queue_id"]) for e in rejects] == [("RCPT", first), ("DATA", third)]
    assert rejects[0]["status"] == "5.1.1" and rejects[1]["status"] == "5.7.1"
    # The spool and the delivered file use the same id.
    [delivered] = gateway.wait_delivered(BOB, 1)
    assert delivered.name.startswith(first)
    assert f"id {first}".encode() in delivered.read_bytes().split(b"\r\n\r\n")[0]


def test_refused_mail_command_is_logged_with_session_and_queue_id(gateway: Gateway) -> None:
    client = gateway.login()
    assert client.mail(BOB)[0] == 553  # not the authenticated identity
    client.quit()
    reject = gateway.wait_event("smtp.reject", stage="MAIL")
    assert reject["session"] and reject["queue_id"] and reject["status"] == "5.7.1"


def test_each_protocol_error_is_one_log_line(gateway: Gateway) -> None:
    raw = Raw(gateway.ports["submission"])
    assert raw.reply().startswith(b"220")
    assert raw.cmd(b"EHLO \xff\xfe\x1b[31m").startswith(b"500 5.5.2")
    assert raw.cmd(b"NOOP " + b"A" * 2000).startswith(b"500 5.5.6")
    # Beyond the reader's buffer: drained without being kept, still one line.
    assert raw.cmd(b"NOOP " + b"B" * 100_000).startswith(b"500 5.5.6")
    raw.starttls(gateway.client_context())
    assert raw.cmd(b"EHLO client.test").startswith(b"250")
    assert raw.cmd(b"XYZZY \x1b]0;pwned\x07").startswith(b"500 5.5.1")
    # Another protocol's login on the wrong port: the verb is logged, not the password.
    assert raw.cmd(b"PASS " + PASSWORD.encode()).startswith(b"500 5.5.1")
    # A credential never reaches the log, even in a line too long to be a command (AUTH
    # lines may carry 12 KiB: a Pro Santé Connect token as an initial response).
    assert raw.cmd(b"AUTH PLAIN " + b"QUFB" * 3200).startswith(b"500 5.5.6")
    assert raw.cmd(b"QUIT").startswith(b"221")
    raw.close()

    connect = gateway.wait_event("smtp.connect", listener="submission")
    session = connect["session"]
    gateway.wait_event("smtp.disconnect", session=session)
    errors = [e for e in session_events(gateway, session) if e["event"] == "smtp.protocol_error"]
    assert [(e["reason"], e["excerpt"], e["length"], e["level"]) for e in errors] == [
        ("non-ASCII command", "EHLO \\xff\\xfe\\x1b[31m", 12, "warning"),
        ("command too long", "NOOP " + "A" * 27, 2005, "warning"),
        ("command too long", "NOOP " + "B" * 27, 100_005, "warning"),
        ("unknown command", "XYZZY ...", 16, "warning"),
        ("unknown command", "PASS ...", 5 + len(PASSWORD), "warning"),
        ("command too long", "AUTH ...", 12_811, "warning"),
    ]
    assert all(e["listener"] == "submission" and e["peer"] == "127.0.0.1" for e in errors)
    logs = gateway.logs()
    assert "Traceback" not in logs and "QUFB" not in logs and PASSWORD not in logs
    assert all(line.startswith("{") for line in logs.splitlines())


def test_refusals_of_the_protocol_layer_are_one_line_each(gateway: Gateway) -> None:
    # Replies no policy hook gives (aiosmtpd's own syntax and sequence checks, the
    # STARTTLS-first rule) still leave one line each; a policy refusal is not logged twice.
    raw = Raw(gateway.ports["submission"])
    assert raw.reply().startswith(b"220")
    assert raw.cmd(b"EHLO client.test").startswith(b"250")
    assert raw.cmd(b"MAIL FROM:<x@y.test>").startswith(b"530")  # STARTTLS first
    raw.starttls(gateway.client_context())
    assert raw.cmd(b"EHLO client.test").startswith(b"250")
    assert raw.cmd(b"AUTH PLAIN " + plain(ALICE, PASSWORD)).startswith(b"235")
    assert raw.cmd(b"RCPT TO:<" + BOB.encode() + b">").startswith(b"503")  # no MAIL yet
    assert raw.cmd(b"MAIL TO:<" + ALICE.encode() + b">").startswith(b"501")  # not FROM:
    assert raw.cmd(b"MAIL FROM:<" + ALICE.encode() + b"> SIZE=999999999999").startswith(b"552")
    assert raw.cmd(b"MAIL FROM:<" + BOB.encode() + b">").startswith(b"553")  # the policy's
    assert raw.cmd(b"QUIT").startswith(b"221")
    raw.close()

    connect = gateway.wait_event("smtp.connect", listener="submission")
    session = connect["session"]
    gateway.wait_event("smtp.disconnect", session=session)
    events = session_events(gateway, session)
    errors = [e for e in events if e["event"] == "smtp.protocol_error"]
    assert [(e["reason"], e["status"], str(e["excerpt"])[:4]) for e in errors] == [
        ("refused", "530", "MAIL"),
        ("refused", "503", "RCPT"),
        ("refused", "501", "MAIL"),
        ("refused", "552", "MAIL"),
    ]
    rejects = [e for e in events if e["event"] == "smtp.reject"]
    assert [r["stage"] for r in rejects] == ["MAIL"]  # the 553, logged by the policy only
