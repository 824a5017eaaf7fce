"""`mssgate serve` with IMAP wherever its data folder lives: a path far beyond the 108 bytes
of a unix socket name, and (as root) a folder under a private parent its mail user cannot
traverse. Mail goes in over SMTP and comes out over IMAPS."""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssgate.dovecot.paths import STATE_ROOT, instance_key
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
        cli.ok(*cfg, "directory", "add", who, "--name", "X", "--rpps", "99700367909",
               "--password-stdin",
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


@pytest.fixture
def under_private_parent() -> Iterator[Path]:
    """DATA in a clone inside a 0700 folder, as /root is and as `mktemp -d` makes."""
    if os.geteuid() != 0:
        pytest.skip("as root only: a user's private Dovecot runs as that user")
    top = Path(tempfile.mkdtemp(prefix="mssgate-private-"))
    data = top / "clone" / "var"
    outside = STATE_ROOT / instance_key(data)
    try:
        yield data
    finally:
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)


def test_root_serves_imap_from_a_data_folder_under_a_private_parent(
    cli: Cli, under_private_parent: Path
) -> None:
    # The mail user could not traverse the 0700 parent: serve refused to start ("mail user
    # 'mail' cannot reach .../var/mail"). Mail now lives where that user can reach it.
    data = under_private_parent
    top = data.parent.parent
    gw = _gateway(cli, data)
    gw.start()
    outside = STATE_ROOT / instance_key(data)
    try:
        placed = gw.wait_event("dovecot.mail_root")
        assert placed["path"] == str(outside / "mail")
        _smtp_in_imap_out(gw, "sous un dossier prive")
        assert list((outside / "mail" / DOMAIN / "bob" / "Maildir").rglob("*,*"))
    finally:
        assert gw.stop() == 0
    assert stat.S_IMODE(top.stat().st_mode) == 0o700  # never loosened
    # Root's folder, searchable and not listable, holding the mail user's private one.
    st = outside.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711)
    st = (outside / "mail").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam("mail").pw_uid, 0o700)
    assert (outside / "data-folder").read_text().splitlines()[0] == str(data)
    report = cli.ok("--config", str(data / "mssgate.toml"), "check", "--json").json()
    (row,) = [c for c in report["checks"] if c["check"] == "dovecot"]
    assert f"mail in {outside / 'mail'}" in row["detail"]
    # A second start finds the same place.
    gw.start()
    try:
        assert gw.wait_event("dovecot.started")
        imap = imaplib.IMAP4_SSL(
            "127.0.0.1", gw.ports["imaps"], ssl_context=gw.client_context(), timeout=30
        )
        imap.login(BOB, PASSWORD)
        assert imap.select("INBOX")[1] == [b"1"]
        imap.logout()
    finally:
        assert gw.stop() == 0


def test_mail_placed_outside_stays_there_with_imap_off(
    cli: Cli, under_private_parent: Path
) -> None:
    # IMAP switched off after Dovecot's mail went to /var/lib/mssgate: local delivery (plain
    # Maildir) must keep writing where the mailboxes are, not start a second store.
    data = under_private_parent
    gw = _gateway(cli, data)
    gw.env["MSSGATE_IMAP__ENABLED"] = "false"
    outside = STATE_ROOT / instance_key(data) / "mail"
    outside.mkdir(parents=True)
    gw.start()
    try:
        client = gw.login()
        client.sendmail(ALICE, [BOB], message(body="sans IMAP"))
        client.quit()
        gw.wait_event("delivery.ok", timeout=20)
    finally:
        assert gw.stop() == 0
    assert len(list((outside / DOMAIN / "bob" / "Maildir" / "new").iterdir())) == 1
    assert not (data / "mail").exists()
