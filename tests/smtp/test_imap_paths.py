"""`mssgate serve` with IMAP wherever its data folder lives: a path far beyond the 108 bytes
of a unix socket name, and (as root) a folder under a private parent its mail user cannot
traverse. Mail goes in over SMTP and comes out over IMAPS."""

from __future__ import annotations

import imaplib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DOMAIN, Cli
from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway, free_env, message

pytestmark = pytest.mark.skipif(
    shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin") is None,
    reason="Dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)",
)


def _gateway(cli: Cli, data: Path) -> Gateway:
    cli.ok("init", "--data", str(data), "--domain", DOMAIN)
    cfg = ["--config", str(data / "mssgate.toml")]
    for who in (ALICE, BOB):
        cli.ok(*cfg, "directory", "add", who, "--name", "X", "--password-stdin",
               stdin=PASSWORD + "\n")  # fmt: skip
    gateway = Gateway(data=data, env=free_env(data))
    gateway.env.update(
        MSSGATE_IMAP__ENABLED="true", MSSGATE_IMAP__PORT="0", MSSGATE_IMAP__IMAPS_PORT="0"
    )
    return gateway


def _smtp_in_imap_out(gw: Gateway, body: str) -> None:
    client = gw.login()
    client.sendmail(ALICE, [BOB], message(body=body))
    client.quit()
    gw.wait_event("delivery.ok", timeout=20)
    imap = imaplib.IMAP4_SSL(
        "127.0.0.1", gw.ports["imaps"], ssl_context=gw.client_context(), timeout=30
    )
    try:
        imap.login(BOB, PASSWORD)
        typ, data = imap.select("INBOX")
        assert typ == "OK" and int(data[0] or b"0") == 1
        typ, fetched = imap.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        raw = fetched[0][1]
        assert isinstance(raw, bytes) and body.encode() in raw
    finally:
        imap.logout()


@pytest.fixture
def long_data(cli: Cli) -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="mssgate-long-"))
    top.chmod(0o711)  # the mail user may traverse it: this test is about length only
    filler = 150 - len(str(top)) - 1
    data = top / ("d" * filler)
    assert len(str(data)) == 150
    try:
        yield data
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_150_character_data_path_serves_imap(cli: Cli, long_data: Path) -> None:
    # A socket under DATA/dovecot/run/ would be ~180 bytes: Dovecot's net_listen_unix()
    # failed with "File name too long" and serve exited.
    gw = _gateway(cli, long_data)
    gw.start()
    try:
        started = gw.wait_event("dovecot.started")
        lmtp = str(started["lmtp"])
        assert not lmtp.startswith(str(long_data)) and len(lmtp.encode()) < 108
        _smtp_in_imap_out(gw, "par un long chemin")
    finally:
        assert gw.stop() == 0
