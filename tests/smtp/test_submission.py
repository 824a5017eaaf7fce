"""Submission (STARTTLS) and SMTPS for practitioners' clients, with smtplib."""

from __future__ import annotations

import base64
import smtplib
import sqlite3
import ssl

import pytest

from tests.conftest import DOMAIN, Cli
from tests.smtp.conftest import ALICE, BOB, CAROL, PASSWORD, Gateway, Raw, message


def test_no_auth_or_mail_before_tls(gateway: Gateway) -> None:
    client = smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=10)
    code, features = client.ehlo("client.test")
    assert code == 250
    assert b"STARTTLS" in features and b"AUTH" not in features
    assert client.docmd("MAIL FROM:<alice@hopital-a.test>") == (
        530,
        b"5.7.0 Must issue a STARTTLS command first",
    )
    assert client.docmd("AUTH PLAIN AGFsaWNlAHB3")[0] == 530
    assert client.docmd("RCPT TO:<bob@hopital-a.test>")[0] == 530
    client.quit()


def test_auth_required_after_tls(gateway: Gateway) -> None:
    client = gateway.submission()
    assert client.docmd(f"MAIL FROM:<{ALICE}>") == (530, b"5.7.0 Authentication required")
    assert b"PLAIN" in client.esmtp_features["auth"].encode()
    client.quit()


def test_send_and_deliver_with_trace(gateway: Gateway) -> None:
    client = gateway.login()
    client.mail(ALICE)
    client.rcpt(BOB)
    code, text = client.data(message(body="line\r\n.starts with a dot"))
    assert code == 250
    assert text.startswith(b"2.0.0 Ok: queued as ")
    queue_id = text.split()[-1].decode()
    client.quit()
    [delivered] = gateway.wait_delivered(BOB, 1)
    assert delivered.name.startswith(queue_id)
    content = delivered.read_bytes()
    # The envelope sender as Return-Path (written at delivery), then our trace field.
    assert content.startswith(
        f"Return-Path: <{ALICE}>\r\nReceived: from client.test ([127.0.0.1])\r\n".encode()
    )
    assert b"with ESMTPSA (TLSv1.3:TLS_" in content
    assert f"id {queue_id}".encode() in content
    assert b"\r\n.starts with a dot\r\n" in content  # unstuffed exactly once
    # The file is in the mailbox a moment before the delivery is recorded and logged.
    gateway.wait_event("delivery.ok", queue_id=queue_id)
    events = [e for e in gateway.events() if e.get("queue_id") == queue_id]
    assert {e["event"] for e in events} >= {"smtp.accept", "delivery.ok"}
    # The accepted message is in the audit trail.
    con = sqlite3.connect(gateway.data / "mssgate.db")
    actions = [r[0] for r in con.execute("SELECT action FROM audit WHERE subject = ?", (queue_id,))]
    con.close()
    assert actions == ["message.accepted"]


def test_smtps_implicit_tls_and_auth_login(gateway: Gateway) -> None:
    client = smtplib.SMTP_SSL(
        "127.0.0.1", gateway.ports["smtps"], context=gateway.client_context(), timeout=10
    )
    client.ehlo("client.test")
    client.user, client.password = ALICE, PASSWORD
    code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
    assert code == 235
    client.sendmail(ALICE, [BOB], message())
    client.quit()
    gateway.wait_delivered(BOB, 1)


@pytest.mark.parametrize(
    ("who", "password"),
    [(ALICE, "wrong password!"), ("nobody@hopital-a.test", PASSWORD), (CAROL, PASSWORD)],
)
def test_bad_credentials_and_suspended(gateway: Gateway, who: str, password: str) -> None:
    client = gateway.submission()
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        client.login(who, password)
    assert err.value.smtp_code == 535
    assert err.value.smtp_error.startswith(b"5.7.8")
    client.close()


def test_auth_failures_are_audited_and_penalised(gateway: Gateway) -> None:
    import time

    client = gateway.submission()
    blob = base64.b64encode(f"\0{ALICE}\0nope-nope-nope".encode()).decode()
    timings = []
    for _ in range(5):
        start = time.monotonic()
        assert client.docmd("AUTH PLAIN " + blob)[0] == 535
        timings.append(time.monotonic() - start)
    client.close()
    # Three free failures, then each waits 1 s, then 2 s. The server's own line says which
    # delay each attempt was given (elapsed time only ever adds the machine's load to it);
    # the client's clock checks the floor: the wait really happened before the answer.
    failed = [e for e in gateway.events() if e.get("event") == "smtp.auth_failed"]
    assert [(e["failures"], e["delay"]) for e in failed] == [
        (1, 0.0), (2, 0.0), (3, 0.0), (4, 1.0), (5, 2.0)
    ]  # fmt: skip
    assert timings[3] >= 0.9 and timings[4] >= 1.9
    con = sqlite3.connect(gateway.data / "mssgate.db")
    rows = con.execute("SELECT subject, detail FROM audit WHERE action='auth.failed'").fetchall()
    con.close()
    assert len(rows) == 5
    assert all(r[0] == ALICE and '"peer": "127.0.0.1"' in r[1] for r in rows)
    assert all("nope" not in r[1] for r in rows)  # no password in the trail


def test_sender_must_be_the_identity(gateway: Gateway) -> None:
    client = gateway.login()
    assert client.docmd(f"MAIL FROM:<{BOB}>") == (
        553,
        b"5.7.1 Sender address must be the address you authenticated as",
    )
    assert client.docmd("MAIL FROM:<>")[0] == 553
    assert client.docmd(f"MAIL FROM:<{ALICE.upper()}>")[0] == 250  # case does not matter
    client.quit()


@pytest.mark.parametrize(
    "headers",
    [
        b"From: bob@hopital-a.test\r\n",
        b"From: alice@hopital-a.test\r\nFrom: alice@hopital-a.test\r\n",
        b"From: alice@hopital-a.test, bob@hopital-a.test\r\n",
        b"",
        b"From: =?utf-8?q?alice=40hopital-a.test?= <bob@hopital-a.test>\r\n",
        # Review of issue 12 item 9: the stdlib's address parser drops what it cannot read
        # and returned alice alone, while a mail client shows bob's address.
        b"From: alice@hopital-a.test <bob@hopital-a.test>\r\n",
        b"From: alice@hopital-a.test\r\n\t<bob@hopital-a.test>\r\n",
        b"From: alice@hopital-a.test bob@hopital-a.test\r\n",
    ],
)
def test_from_header_must_be_the_identity(gateway: Gateway, headers: bytes) -> None:
    client = gateway.login()
    client.mail(ALICE)
    client.rcpt(BOB)
    code, text = client.data(headers + b"To: bob@hopital-a.test\r\nSubject: x\r\n\r\nbody\r\n")
    assert (code, text.split(b" ")[0]) == (553, b"5.7.1")
    client.quit()
    assert gateway.mailbox(BOB) == []


@pytest.mark.parametrize(
    ("recipient", "code", "status"),
    [
        ("nobody@hopital-a.test", 550, b"5.1.1"),
        (CAROL, 550, b"5.2.1"),
        ("someone@example.org", 550, b"5.7.1"),
        ("bob%example.org@hopital-a.test", 550, b"5.7.1"),
        ("example.org!bob@hopital-a.test", 550, b"5.7.1"),
        ('"bob@example.org"@hopital-a.test', 550, b"5.7.1"),
        ("@example.org:bob@hopital-a.test", 550, b"5.7.1"),
        ("bob@[127.0.0.1]", 550, b"5.7.1"),
        ("bob", 550, b"5.7.1"),
        ("bob@unknown-operator.test", 550, b"5.7.1"),
        ("dr.b@clinique-b.test", 250, b"2.1.5"),  # a trusted peer: relayed
        ("279035121518988@patient.mssante.fr", 553, b"5.1.3"),  # INS key wrong
        ("dupont@patient.mssante.fr", 553, b"5.1.3"),  # not an INS at all
        ("279035121518989@patient.mssante.fr", 550, b"5.7.1"),  # valid, operator not trusted
    ],
)
def test_recipients(gateway: Gateway, recipient: str, code: int, status: bytes) -> None:
    client = gateway.login()
    client.mail(ALICE)
    got = client.docmd(f"RCPT TO:<{recipient}>")
    assert (got[0], got[1].split(b" ")[0]) == (code, status)
    client.quit()


def test_a_domain_off_the_trust_list_is_named(gateway: Gateway) -> None:
    client = gateway.login()
    client.mail(ALICE)
    got = client.docmd("RCPT TO:<someone@Unknown-Operator.test>")
    expected = b"5.7.1 Relaying denied: domain unknown-operator.test is not on the trust list"
    assert got == (550, expected)
    client.quit()


def test_recipient_limit(gateway: Gateway, cli: Cli) -> None:
    gateway.stop()
    gateway.start(extra_env={"MSSGATE_SMTP__MAX_RECIPIENTS": "2"})
    client = gateway.login()
    client.mail(ALICE)
    client.rcpt(BOB)
    client.rcpt(ALICE)
    assert client.docmd(f"RCPT TO:<{BOB}>")[:1] == (452,)
    client.quit()


def test_size_limits(gateway: Gateway) -> None:
    gateway.stop()
    gateway.start(extra_env={"MSSGATE_SMTP__MAX_MESSAGE_SIZE": "10000"})
    client = gateway.login()
    assert b"SIZE 10000" in client.ehlo_resp
    code, text = client.docmd(f"MAIL FROM:<{ALICE}> SIZE=20000")
    assert (code, text.split(b" ")[0]) == (552, b"5.3.4")
    client.mail(ALICE)
    client.rcpt(BOB)
    code, text = client.data(message(body="x" * 70 + ("\r\n" + "y" * 70) * 200))
    assert (code, text.split(b" ")[0]) == (552, b"5.3.4")
    # The session goes on: a small message still passes.
    client.sendmail(ALICE, [BOB], message())
    client.quit()
    gateway.wait_delivered(BOB, 1)


def test_line_length_limit(gateway: Gateway) -> None:
    client = gateway.login()
    client.mail(ALICE)
    client.rcpt(BOB)
    code, text = client.data(message(body="z" * 1200))
    assert (code, text.split(b" ")[0]) == (550, b"5.6.0")
    client.quit()


def test_external_with_registered_and_unregistered_certificates(
    gateway: Gateway, cli: Cli, tmp_path: object
) -> None:
    from pathlib import Path

    out = Path(str(tmp_path)) / "certs-out"
    cli.ok("cert", "issue", ALICE, "--out", str(out))
    cli.ok("directory", "add", f"dave@{DOMAIN}", "--name", "Dave", "--rpps", "99700367909")
    from mssgate.pki import issue_smime_files

    certs = gateway.data / "certs"
    other = issue_smime_files(certs / "ca.key.pem", certs / "ca.crt.pem", f"dave@{DOMAIN}", out)

    def external(cert: Path, key: Path, authzid: str | None) -> tuple[int, bytes]:
        ctx = gateway.client_context()
        ctx.load_cert_chain(cert, key)
        raw = Raw(gateway.ports["smtps"], tls=ctx)
        raw.reply()
        raw.cmd(b"EHLO client.test")
        arg = base64.b64encode(authzid.encode()).decode() if authzid else "="
        got = raw.cmd(f"AUTH EXTERNAL {arg}".encode())
        raw.close()
        return int(got[:3]), got[4:]

    alice_cert, alice_key = out / f"{ALICE}.crt.pem", out / f"{ALICE}.key.pem"
    assert external(alice_cert, alice_key, None)[0] == 235
    assert external(alice_cert, alice_key, ALICE)[0] == 235
    # Alice's certificate does not open Bob's mailbox.
    assert external(alice_cert, alice_key, BOB)[0] == 535
    # A certificate of the right CA, not registered for its address.
    assert external(other.cert_path, other.key_path, None)[0] == 535


def test_external_without_certificate(gateway: Gateway) -> None:
    raw = Raw(gateway.ports["smtps"], tls=gateway.client_context())
    raw.reply()
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"AUTH EXTERNAL =").startswith(b"535 5.7.8")
    raw.close()


def test_untrusted_client_cert_is_refused_at_handshake(gateway: Gateway, tmp_path: object) -> None:
    from pathlib import Path

    from mssgate.pki import create_dev_ca, issue_smime_cert, write_certificate, write_private_key

    ca_key, ca_cert = create_dev_ca("rogue")
    key, cert = issue_smime_cert(ca_key, ca_cert, ALICE)
    base = Path(str(tmp_path))
    write_certificate(base / "c.pem", cert)
    write_private_key(base / "k.pem", key)
    ctx = gateway.client_context()
    ctx.load_cert_chain(base / "c.pem", base / "k.pem")
    raw = None
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        raw = Raw(gateway.ports["smtps"], tls=ctx)
        try:
            raw.reply()
            raw.cmd(b"EHLO x")
        finally:
            raw.close()
    gateway.wait_event("smtp.tls_failed", listener="smtps")
