"""Private Dovecot instances: one per data folder, stopped with the gateway."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from mssgate.dovecot.paths import runtime_dir
from tests.conftest import Cli
from tests.imap.conftest import ALICE, PASSWORD, ImapGateway, message, require_dovecot, runner_env

pytestmark = pytest.mark.slow


def _dovecot_pids_for(config: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(config).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def test_two_gateways_on_one_machine_each_have_their_own_dovecot(
    imap_gateway: ImapGateway, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_dovecot()
    top = Path(tempfile.mkdtemp(prefix="mssgate-imap-"))
    top.chmod(0o711)
    try:
        data = top / "data"
        cli.ok("init", "--data", str(data), "--domain", "clinique-b.test")
        monkeypatch.setenv("MSSGATE_CONFIG", str(data / "mssgate.toml"))
        cli.ok("directory", "add", "eve@clinique-b.test", "--name", "eve", "--rpps", "99700367909",
               "--password-stdin",
               stdin=PASSWORD + "\n")  # fmt: skip
        other = ImapGateway(data=data, env=runner_env(data))
        other.start()
        try:
            assert other.status["dovecot_pid"] != imap_gateway.status["dovecot_pid"]
            other.deliver(message(1, to="eve@clinique-b.test"), to="eve@clinique-b.test")
            imap_gateway.deliver(message(2))
            assert len(other.maildir_files("eve@clinique-b.test")) == 1
            assert len(imap_gateway.maildir_files(ALICE)) == 1
            client = other.imaps()
            client.login("eve@clinique-b.test", PASSWORD)
            assert client.select("INBOX")[1] == [b"1"]
            client.logout()
        finally:
            other.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_sigterm_stops_dovecot_and_its_config_stays_inside_the_data_dir(
    imap_setup: ImapGateway,
) -> None:
    imap_setup.start()
    config = imap_setup.data / "dovecot" / "dovecot.conf"
    assert _dovecot_pids_for(config)
    runtime = runtime_dir(imap_setup.data)
    for line in config.read_text().splitlines():
        if line.split(" = ")[0] in ("state_dir", "mail_home"):
            assert str(imap_setup.data) in line
        if line.startswith("base_dir = "):
            # Sockets in the data folder's short runtime folder (108-byte socket names).
            assert line == f'base_dir = "{runtime}"'
    assert (runtime / "lmtp").is_socket()
    assert imap_setup.stop() == 0
    deadline = time.monotonic() + 10  # Dovecot's children exit just after their master
    while _dovecot_pids_for(config) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dovecot_pids_for(config) == []
    assert imap_setup.events("dovecot.stopped")
    assert os.path.exists(imap_setup.data / "dovecot" / "state")
    assert not runtime.exists()  # sockets and pid file go with the instance
