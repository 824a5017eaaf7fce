"""Dovecot and the IMAP front door run by `python -m mssgate.imap` on loopback ports.

The runner is a subprocess so that tests can measure its memory and signal it, and so that
blocking clients (imaplib, mbsync) in the test process never stall its event loop.
"""

from __future__ import annotations

import imaplib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mssgate.dovecot import find_dovecot
from mssgate.dovecot.backend import IMAP_BINARY
from mssgate.mailstore import LmtpStore
from tests.conftest import DOMAIN, Cli, copy_datadir

PASSWORD = "a long enough password"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"  # suspended


def require_dovecot() -> None:
    if find_dovecot() is None or not IMAP_BINARY.exists():
        pytest.skip("Dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)")
    if not Path("/usr/lib/dovecot/lmtp").exists():
        pytest.skip("Dovecot's LMTP server is not installed (apt-get install dovecot-lmtpd)")


def message(n: int = 1, *, to: str = ALICE, subject: str = "test", body: str = "Bonjour") -> bytes:
    return (
        f"From: Bob <{BOB}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <m{n}@client.test>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
        f"\r\n{body}\r\n"
    ).encode()


@dataclass
class ImapGateway:
    data: Path
    env: dict[str, str]
    status: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def ca(self) -> Path:
        return self.data / "certs" / "ca.crt.pem"

    @property
    def ports(self) -> dict[str, int]:
        ports: dict[str, int] = self.status["ports"]
        return ports

    @property
    def status_path(self) -> Path:
        return self.data / "imap-status.json"

    def start(self, **extra_env: str) -> None:
        self.status_path.unlink(missing_ok=True)
        self.log_path = self.data / f"imap-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mssgate.imap", str(self.status_path)],
                env={**self.env, **extra_env},
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.status_path.exists():
                self.reload()
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"runner exited {self.proc.returncode}: {self.logs()}")
            time.sleep(0.05)
        raise RuntimeError(f"runner did not start: {self.logs()}")

    def reload(self) -> dict[str, Any]:
        self.status = json.loads(self.status_path.read_text())
        return self.status

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == name:
                    out.append(record)
        return out

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def store(self) -> LmtpStore:
        return LmtpStore(Path(self.status["lmtp"]))

    def deliver(self, raw: bytes, to: str = ALICE, delivery_id: str = "d") -> None:
        self.store().deliver(to, raw, delivery_id=delivery_id, sender=BOB)

    def client_context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        if cert is not None and key is not None:
            ctx.load_cert_chain(cert, key)
        return ctx

    def imaps(self, ctx: ssl.SSLContext | None = None) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL(
            "127.0.0.1", self.ports["imaps"], ssl_context=ctx or self.client_context(), timeout=30
        )

    def login(self, who: str = ALICE) -> imaplib.IMAP4_SSL:
        client = self.imaps()
        client.login(who, PASSWORD)
        return client

    def maildir_files(self, who: str = ALICE) -> list[Path]:
        local, domain = who.split("@")
        box = self.data / "mail" / domain / local / "Maildir"
        return sorted(
            p for sub in ("new", "cur") if (box / sub).exists() for p in (box / sub).iterdir()
        )


def runner_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env.update(
        MSSGATE_CONFIG=str(data / "mssgate.toml"),
        MSSGATE_IMAP__PORT="0",
        MSSGATE_IMAP__IMAPS_PORT="0",
        MSSGATE_IMAP__IDLE_TIMEOUT_SECONDS="5",
        MSSGATE_SMTP__AUTH_FAILURE_DELAY_MAX_SECONDS="0.4",
    )
    return env


@pytest.fixture
def imap_datadir(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, datadir_template: Path
) -> Iterator[Path]:
    """Like `datadir` (a copy of the session's `mssgate init`), but outside pytest's 0700
    temporary tree: as root, Dovecot's mail uid must traverse every parent of the mail
    folder (and a short path keeps unix socket names under their 108-byte limit)."""
    require_dovecot()
    top = Path(tempfile.mkdtemp(prefix="mssgate-imap-"))
    top.chmod(0o711)
    data = top / "data"
    copy_datadir(datadir_template, data)
    monkeypatch.setenv("MSSGATE_CONFIG", str(data / "mssgate.toml"))
    yield data
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def imap_setup(cli: Cli, imap_datadir: Path) -> ImapGateway:
    for who in (ALICE, BOB, CAROL):
        cli.ok("directory", "add", who, "--name", who.split("@")[0], "--rpps", "99700367909",
               "--password-stdin",
               stdin=PASSWORD + "\n")  # fmt: skip
    cli.ok("directory", "suspend", CAROL)
    return ImapGateway(data=imap_datadir, env=runner_env(imap_datadir))


@pytest.fixture
def imap_gateway(imap_setup: ImapGateway) -> Iterator[ImapGateway]:
    imap_setup.start()
    yield imap_setup
    if imap_setup.proc is not None:
        imap_setup.stop()
