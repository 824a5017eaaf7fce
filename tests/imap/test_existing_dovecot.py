"""An operator's existing Dovecot: the LMTP target and the post-login backend set apart.

The private Dovecot of a first runner plays the operator's instance; a second runner (another
front door, on the same directory) is configured with `imap.lmtp_target` and
`imap.backend_command` only, so it starts no Dovecot of its own and reaches that one.
"""

from __future__ import annotations

import imaplib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session
from pydantic import ValidationError

from mssgate.config import ImapConfig, parse_lmtp_target
from mssgate.mailstore import LmtpStore
from tests.imap.conftest import ALICE, IMAP_BINARY, PASSWORD, ImapGateway, message

pytestmark = pytest.mark.slow


def test_front_door_and_delivery_through_an_existing_dovecot(
    imap_gateway: ImapGateway, tmp_path: Path
) -> None:
    existing_conf = imap_gateway.data / "dovecot" / "dovecot.conf"
    lmtp = imap_gateway.status["lmtp"]
    marks = tmp_path / "backend-calls"
    # The operator's own command, here a wrapper that records each login it starts, so the
    # test sees that this command (not the default) opened the session. "{user}" is $0.
    wrapper = f'printf "%s\\n" "$0" >> {marks}; exec {IMAP_BINARY} -c {existing_conf} -u "$0"'
    status_path = tmp_path / "second.json"
    env = {
        **imap_gateway.env,
        "MSSGATE_IMAP__LMTP_TARGET": lmtp,
        "MSSGATE_IMAP__BACKEND_COMMAND": json.dumps(["/bin/sh", "-c", wrapper, "{user}"]),
    }
    with (tmp_path / "second.log").open("wb") as log:
        second = subprocess.Popen(
            [sys.executable, "-m", "mssgate.imap", str(status_path)],
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    client: imaplib.IMAP4_SSL | None = None
    try:
        deadline = time.monotonic() + 60
        while not status_path.exists():
            assert second.poll() is None, (tmp_path / "second.log").read_text()
            assert time.monotonic() < deadline, "the second runner did not start"
            time.sleep(0.05)
        status = json.loads(status_path.read_text())
        assert status["dovecot_pid"] is None  # nothing started: the existing one is used
        assert status["lmtp"] == lmtp
        LmtpStore(status["lmtp"]).deliver(ALICE, message(7), delivery_id="x7", sender=ALICE)
        client = imaplib.IMAP4_SSL(
            "127.0.0.1", status["ports"]["imaps"], ssl_context=imap_gateway.client_context()
        )
        client.login(ALICE, PASSWORD)
        assert client.select("INBOX")[1] == [b"1"]
        _, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert isinstance(data[0], tuple) and b"<m7@client.test>" in data[0][1]
        assert marks.read_text().split() == [ALICE]
        # One mailbox engine behind both front doors: the first one sees the same message.
        first = imap_gateway.login()
        try:
            assert first.select("INBOX")[1] == [b"1"]
        finally:
            first.logout()
    finally:
        if client is not None:
            client.logout()
        second.terminate()
        assert second.wait(timeout=60) == 0
    assert imap_gateway.status["dovecot_pid"] is not None


class _Sink:
    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.received.append((list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 saved"


class _LmtpController(Controller):
    def factory(self) -> LMTP:
        return LMTP(self.handler)


def test_lmtp_over_tcp_host_and_port() -> None:
    # Dovecot's `inet_listener lmtp` form of the target, against a real LMTP server.
    sink = _Sink()
    with socket.socket() as probe:  # aiosmtpd's controller checks its port by connecting
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = _LmtpController(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        LmtpStore(f"127.0.0.1:{port}").deliver(ALICE, message(3), delivery_id="t3", sender=ALICE)
    finally:
        controller.stop()
    [(rcpts, content)] = sink.received
    assert rcpts == [ALICE] and b"<m3@client.test>" in content


@pytest.mark.parametrize(
    ("target", "parsed"),
    [
        ("/run/dovecot/lmtp", ("/run/dovecot/lmtp", None)),
        ("127.0.0.1:24", ("127.0.0.1", 24)),
        ("mail.hopital-a.test:2424", ("mail.hopital-a.test", 2424)),
        ("[::1]:24", ("::1", 24)),
    ],
)
def test_lmtp_target_forms(target: str, parsed: tuple[str, int | None]) -> None:
    assert parse_lmtp_target(target) == parsed


@pytest.mark.parametrize(
    "target", ["lmtp", "relative/socket", "host:", ":24", "host:0", "host:65536", "host:x"]
)
def test_bad_lmtp_targets(target: str) -> None:
    with pytest.raises(ValueError, match="LMTP target"):
        parse_lmtp_target(target)
    with pytest.raises(ValidationError):
        ImapConfig(lmtp_target=target, backend_command=("imap", "-u", "{user}"))


def test_existing_dovecot_settings_are_checked_together() -> None:
    with pytest.raises(ValidationError, match="must contain"):
        ImapConfig(lmtp_target="/run/lmtp", backend_command=("imap", "-u", "alice"))
    with pytest.raises(ValidationError, match="needs both"):
        ImapConfig(lmtp_target="/run/lmtp")
    with pytest.raises(ValidationError, match="needs both"):
        ImapConfig(backend_command=("imap", "-u", "{user}"))
    assert not ImapConfig().external_dovecot
    assert ImapConfig(dovecot_config=Path("/etc/dovecot/dovecot.conf")).external_dovecot
    both = ImapConfig(lmtp_target="127.0.0.1:24", backend_command=("imap", "-u", "{user}"))
    assert both.external_dovecot
