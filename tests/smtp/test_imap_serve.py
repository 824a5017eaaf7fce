"""`mssgate serve` with IMAP on: mail sent over SMTP is read back over IMAPS through the
front door and Dovecot, with the same accounts and the same AUTH penalty."""

from __future__ import annotations

import imaplib
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DOMAIN, Cli
from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway, free_env, message

pytestmark = pytest.mark.skipif(
    shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin") is None,
    reason="Dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)",
)


@pytest.fixture
def with_imap(cli: Cli) -> Iterator[Gateway]:
    # Dovecot's mail user must reach the data folder, and pytest keeps its own tmp root 0700:
    # a folder of our own under /tmp, removed afterwards.
    root = Path(tempfile.mkdtemp(prefix="mssgate-serve-imap-"))
    root.chmod(0o711)
    data = root / "data"
    try:
        cli.ok("init", "--data", str(data), "--domain", DOMAIN)
        cfg = ["--config", str(data / "mssgate.toml")]
        for who in (ALICE, BOB):
            cli.ok(*cfg, "directory", "add", who, "--name", "X", "--rpps", "99700367909",
                   "--password-stdin",
                   stdin=PASSWORD + "\n")  # fmt: skip
        gateway = Gateway(data=data, env=free_env(data))
        gateway.env.update(
            MSSGATE_IMAP__ENABLED="true", MSSGATE_IMAP__PORT="0", MSSGATE_IMAP__IMAPS_PORT="0"
        )
        gateway.start()
        try:
            yield gateway
        finally:
            gateway.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_smtp_in_imap_out(with_imap: Gateway) -> None:
    gw = with_imap
    assert {"imaps", "imap"} <= set(gw.ports)
    client = gw.login()
    client.sendmail(ALICE, [BOB], message(body="lu par IMAP"))
    client.quit()
    gw.wait_event("delivery.ok")
    imap = imaplib.IMAP4_SSL("127.0.0.1", gw.ports["imaps"], ssl_context=gw.client_context())
    try:
        imap.login(BOB, PASSWORD)
        typ, data = imap.select("INBOX")
        assert typ == "OK" and int(data[0] or b"0") == 1
        typ, fetched = imap.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        body = fetched[0][1]
        assert isinstance(body, bytes) and b"lu par IMAP" in body
        typ, caps = imap.capability()
        assert b"IDLE" in caps[0] and b"MOVE" in caps[0]
    finally:
        imap.logout()
    bad = imaplib.IMAP4_SSL("127.0.0.1", gw.ports["imaps"], ssl_context=gw.client_context())
    with pytest.raises(imaplib.IMAP4.error):
        bad.login(BOB, "wrong password!")
    bad.shutdown()


def test_dovecot_stores_the_envelope_sender_as_return_path(with_imap: Gateway) -> None:
    # Issue 12 C.8: LMTP's MAIL FROM was <>, so every message read as a bounce; and a
    # Return-Path the sender wrote must not survive beside Dovecot's (RFC 5321 §4.4).
    gw = with_imap
    client = gw.login()
    client.sendmail(ALICE, [BOB], message(body="chemin de retour", Return_Path="<x@evil.test>"))
    client.quit()
    gw.wait_event("delivery.ok")
    imap = imaplib.IMAP4_SSL("127.0.0.1", gw.ports["imaps"], ssl_context=gw.client_context())
    try:
        imap.login(BOB, PASSWORD)
        imap.select("INBOX")
        typ, fetched = imap.fetch("1", "(BODY.PEEK[HEADER])")
        assert typ == "OK"
        head = fetched[0][1]
        assert isinstance(head, bytes)
        found = re.findall(rb"^Return-Path:[ \t]*(.*?)\r?$", head, re.MULTILINE | re.IGNORECASE)
        assert found == [f"<{ALICE}>".encode()], head
    finally:
        imap.logout()


def _send(gw: Gateway, body: str) -> None:
    client = gw.login()
    client.sendmail(ALICE, [BOB], message(body=body))
    client.quit()


def test_idle_is_woken_by_an_smtp_submission(with_imap: Gateway) -> None:
    gw = with_imap
    # A bounded wait: an IDLE that is never woken fails here, not at pytest's timeout.
    imap = imaplib.IMAP4_SSL(
        "127.0.0.1", gw.ports["imaps"], ssl_context=gw.client_context(), timeout=30
    )
    try:
        imap.login(BOB, PASSWORD)
        typ, data = imap.select("INBOX")
        assert typ == "OK" and int(data[0] or b"0") == 0
        tag = imap._new_tag()  # imaplib has no IDLE before 3.14: speak it by hand
        imap.send(tag + b" IDLE\r\n")
        assert imap.readline().startswith(b"+")
        # Submitted once the client idles: SMTP, spool, LMTP, Dovecot, then the front door.
        # The client says nothing until the update comes: only the server can end this read,
        # and the socket's own timeout (30 s) tells one that never comes from a slow one.
        sender = threading.Thread(target=_send, args=(gw, "reveil par IDLE"))
        sender.start()
        assert imap.sock.gettimeout() is not None
        line = imap.readline()
        sender.join()
        assert re.match(rb"\* 1 EXISTS", line), line
        imap.send(b"DONE\r\n")
        while not (line := imap.readline()).startswith(tag):
            pass
        assert b" OK " in line
        typ, fetched = imap.fetch("1", "(BODY.PEEK[])")
        body = fetched[0][1]
        assert isinstance(body, bytes) and b"reveil par IDLE" in body
    finally:
        imap.logout()


def _tls_counts(gw: Gateway) -> dict[str, float]:
    text = httpx.get(
        f"https://127.0.0.1:{gw.ports['api']}/metrics", verify=gw.client_context()
    ).text
    line = r'^mssgate_tls_sessions_total\{listener="(imaps?)",version="TLSv1\.3"\} (\S+)$'
    found = re.findall(line, text, re.MULTILINE)
    return {listener: float(n) for listener, n in found}


def test_imap_tls_sessions_are_counted_for_both_listeners(with_imap: Gateway) -> None:
    gw = with_imap
    before = _tls_counts(gw)
    implicit = imaplib.IMAP4_SSL("127.0.0.1", gw.ports["imaps"], ssl_context=gw.client_context())
    implicit.logout()
    upgraded = imaplib.IMAP4("127.0.0.1", gw.ports["imap"], timeout=30)
    upgraded.starttls(gw.client_context())
    upgraded.logout()
    after = _tls_counts(gw)
    assert after.get("imaps", 0) - before.get("imaps", 0) == 1
    assert after.get("imap", 0) - before.get("imap", 0) == 1
    gw.wait_event("imap.tls", listener="imap", version="TLSv1.3")
