"""A real sync client over many messages, and Dovecot dying under the supervisor."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from mssgate.mailstore import DeliveryFailed
from tests.imap.conftest import ALICE, PASSWORD, ImapGateway, message

pytestmark = pytest.mark.slow


def _varied(n: int) -> bytes:
    # Different sizes and shapes: long base64 lines, a dot-leading line (LMTP dot-stuffing),
    # 8-bit text.
    digest = hashlib.sha256(str(n).encode()).hexdigest()
    body = "\r\n".join(
        [f"ligne {i} {digest}" for i in range(n % 40)] + [".point en tête", "Ça marche é"]
    )
    return message(n, subject=f"message {n}", body=body).replace(
        b"Date:", b"Content-Type: text/plain; charset=utf-8\r\nDate:"
    )


def test_mbsync_finds_200_delivered_messages_byte_for_byte(
    imap_gateway: ImapGateway, tmp_path: Path
) -> None:
    mbsync = shutil.which("mbsync")
    if mbsync is None:
        pytest.skip("mbsync is not installed (apt-get install isync)")
    sent = {f"<m{n}@client.test>": _varied(n) for n in range(200)}
    store = imap_gateway.store()
    for n, raw in enumerate(sent.values()):
        store.deliver(ALICE, raw, delivery_id=f"d{n}", sender=ALICE)
    local = tmp_path / "local"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(
        # mbsync 1.4 matches DNS names only; the dev certificate has localhost.
        f"IMAPAccount gw\nHost localhost\nPort {imap_gateway.ports['imaps']}\n"
        f'User {ALICE}\nPass "{PASSWORD}"\nSSLType IMAPS\nCertificateFile {imap_gateway.ca}\n\n'
        "IMAPStore remote\nAccount gw\n\n"
        f"MaildirStore near\nPath {local}/\nInbox {local}/INBOX\n\n"
        "Channel inbox\nFar :remote:\nNear :near:\nPatterns INBOX\nSync Pull\nCreate Near\n"
    )
    result = subprocess.run(
        [mbsync, "-c", str(config), "-a"],
        capture_output=True,
        timeout=300,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr.decode()
    files = [p for sub in ("new", "cur") for p in (local / "INBOX" / sub).iterdir()]
    assert len(files) == 200
    found = {}
    for path in files:
        content = path.read_bytes()
        match = re.search(rb"^Message-ID: (<[^>]+>)", content, re.MULTILINE)
        assert match is not None
        # mbsync adds one header of its own (X-TUID, its transaction id) to what it stores.
        tuid = re.compile(rb"^X-TUID: [^\n]*\n", re.MULTILINE)
        found[match.group(1).decode()] = tuid.sub(b"", content, count=1)
    assert found.keys() == sent.keys()
    for mid, raw in sent.items():
        # What was handed to LMTP, after Dovecot's Return-Path; mbsync keeps the server's
        # line ends as a Maildir (LF) would.
        expected = f"Return-Path: <{ALICE}>\r\n".encode() + raw
        assert found[mid].replace(b"\r\n", b"\n") == expected.replace(b"\r\n", b"\n"), mid


def test_dovecot_killed_is_restarted_and_no_delivered_message_is_lost(
    imap_gateway: ImapGateway,
) -> None:
    store = imap_gateway.store()
    first_pid = imap_gateway.status["dovecot_pid"]
    delivered: list[str] = []
    # Failed attempts per message: at least once allows a message whose 250 was lost in the
    # kill (saved by an orphaned lmtp process, its reply never sent) to arrive twice, but
    # only a message that saw a failure, and at most once per failure.
    failures: Counter[str] = Counter()
    for n in range(60):
        if n == 25:
            os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        mid = f"<m{n}@client.test>"
        while True:
            try:
                store.deliver(ALICE, message(n), delivery_id=f"d{n}", sender=ALICE)
                break
            except DeliveryFailed as exc:
                assert not exc.permanent, exc  # the spool would retry a temporary failure
                assert time.monotonic() < deadline, "Dovecot did not come back"
                failures[mid] += 1
                time.sleep(0.1)
        delivered.append(mid)
    status = imap_gateway.reload()
    assert status["restarts"] == 1 and status["dovecot_pid"] != first_pid
    assert imap_gateway.events("dovecot.died") and imap_gateway.events("dovecot.restarted")
    client = imap_gateway.login()
    try:
        client.select("INBOX")
        _, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    finally:
        client.logout()
    found = Counter(
        part[1].decode().split(":", 1)[1].strip() for part in data if isinstance(part, tuple)
    )
    assert set(found) == set(delivered)
    for mid, count in found.items():
        assert count <= 1 + failures[mid], (mid, count, failures[mid])
