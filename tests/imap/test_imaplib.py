"""A practitioner's mail client (Python's imaplib) through the front door, over TLS."""

from __future__ import annotations

import imaplib
import re
import socket
import threading

import pytest

from tests.imap.conftest import ALICE, BOB, CAROL, PASSWORD, ImapGateway, message

pytestmark = pytest.mark.slow


def test_login_list_select_fetch_search_store_copy_move_expunge_append(
    imap_gateway: ImapGateway,
) -> None:
    for n in (1, 2, 3):
        imap_gateway.deliver(message(n, subject=f"compte rendu {n}", body=f"texte {n}"))
    client = imap_gateway.imaps()
    typ, data = client.login(ALICE, PASSWORD)
    assert typ == "OK"
    # The tagged OK carries Dovecot's post-login capabilities.
    caps = data[0].decode()
    for cap in ("IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "CONDSTORE", "QRESYNC", "BINARY"):
        assert f" {cap}" in caps
    typ, data = client.capability()
    assert b"IDLE" in data[0] and b"AUTH=PLAIN" not in data[0]

    typ, boxes = client.list()
    flags = {line.decode().rsplit(" ", 1)[-1]: line.decode() for line in boxes}
    assert "\\Sent" in flags["Sent"] and "\\Drafts" in flags["Drafts"]
    assert "\\Trash" in flags["Trash"] and "\\Junk" in flags["Junk"]

    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"3"])

    typ, data = client.fetch("1", "(ENVELOPE BODYSTRUCTURE)")
    text = data[0].decode() if isinstance(data[0], bytes) else data[0][0].decode()
    assert '"compte rendu 1"' in text and '"<m1@client.test>"' in text
    assert '("text" "plain"' in text.lower()

    typ, data = client.fetch("2", "(BODY.PEEK[])")
    assert isinstance(data[0], tuple)
    assert data[0][1].endswith(message(2, subject="compte rendu 2", body="texte 2"))

    typ, data = client.fetch("3", "(BODY.PEEK[TEXT]<0.5>)")
    assert isinstance(data[0], tuple) and data[0][1] == b"texte"

    typ, data = client.search(None, "SUBJECT", '"rendu 2"')
    assert data == [b"2"]

    typ, data = client.store("1", "+FLAGS", "(\\Flagged)")
    assert typ == "OK"
    typ, data = client.search(None, "FLAGGED")
    assert data == [b"1"]

    assert client.copy("1", "Trash")[0] == "OK"
    typ, data = client.uid("MOVE", "2", "Drafts")
    assert typ == "OK"
    assert client.response("EXPUNGE") == ("EXPUNGE", [b"2"])  # MOVE expunged the source
    assert client.status("Trash", "(MESSAGES)")[1] == [b"Trash (MESSAGES 1)"]
    assert client.status("Drafts", "(MESSAGES)")[1] == [b"Drafts (MESSAGES 1)"]

    client.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = client.expunge()
    assert (typ, data) == ("OK", [b"1"])
    typ, data = client.select("INBOX")
    assert data == [b"1"]

    sent = message(9, subject="envoi")
    typ, data = client.append("Sent", "(\\Seen)", None, sent)
    assert typ == "OK" and b"APPENDUID" in data[0]
    client.select("Sent")
    typ, data = client.fetch("1", "(BODY.PEEK[])")
    assert isinstance(data[0], tuple) and data[0][1] == sent
    assert client.logout()[0] == "BYE"


def test_idle_is_woken_by_an_lmtp_delivery(imap_gateway: ImapGateway) -> None:
    client = imap_gateway.login()
    client.select("INBOX")
    tag = client._new_tag()  # imaplib has no IDLE before 3.14: speak it by hand
    client.send(tag + b" IDLE\r\n")
    assert client.readline().startswith(b"+")
    timer = threading.Timer(0.5, imap_gateway.deliver, (message(7),))
    timer.start()
    # The client says nothing until the update comes: only the server can end this read,
    # and the socket's own timeout (30 s) tells one that never comes from a slow one.
    assert client.sock.gettimeout() is not None
    line = client.readline()
    timer.join()
    assert re.match(rb"\* 1 EXISTS", line), line
    client.send(b"DONE\r\n")
    while not (line := client.readline()).startswith(tag):
        pass
    assert b" OK " in line
    client.logout()


def test_wrong_password_unknown_and_suspended_accounts_are_refused(
    imap_gateway: ImapGateway,
) -> None:
    for who, password in ((ALICE, "wrong password"), (CAROL, PASSWORD), ("x@nowhere.test", "p")):
        client = imap_gateway.imaps()
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login(who, password)
        client.logout()
    audit = imap_gateway.events("imap.auth_failed")
    assert len(audit) == 3


def test_cleartext_login_is_refused_before_starttls(imap_gateway: ImapGateway) -> None:
    client = imaplib.IMAP4("127.0.0.1", imap_gateway.ports["imap"], timeout=30)
    assert "LOGINDISABLED" in client.capabilities and "STARTTLS" in client.capabilities
    assert "AUTH=PLAIN" not in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login(ALICE, PASSWORD)
    client.starttls(imap_gateway.client_context())
    assert "LOGINDISABLED" not in client.capabilities
    assert client.login(BOB, PASSWORD)[0] == "OK"
    client.select("INBOX")
    client.logout()


def test_starttls_with_pipelined_plaintext_is_refused(imap_gateway: ImapGateway) -> None:
    sock = socket.create_connection(("127.0.0.1", imap_gateway.ports["imap"]), timeout=10)
    assert sock.recv(4096).startswith(b"* OK")
    sock.sendall(b"a STARTTLS\r\nb LOGIN x y\r\n")
    reply = b""
    while chunk := sock.recv(4096):  # all of it, up to the server's close (not a pause)
        reply += chunk
    assert b"BYE" in reply and b"a OK" not in reply
    sock.close()


def test_audit_records_successes_and_failures(imap_gateway: ImapGateway, cli) -> None:
    imap_gateway.login().logout()
    client = imap_gateway.imaps()
    with pytest.raises(imaplib.IMAP4.error):
        client.login(ALICE, "nope")
    client.logout()
    rows = [r for r in cli.ok("audit", "--json").json() if r["actor"].startswith("imap:")]
    actions = [(r["action"], r["subject"], r["detail"]["mechanism"]) for r in rows]
    assert ("auth.succeeded", ALICE, "LOGIN") in actions
    assert ("auth.failed", ALICE, "LOGIN") in actions
