"""A real gateway process (`mssgate serve`) on loopback ports, and real clients for it."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mssgate.pki import create_dev_ca, issue_server_cert, write_certificate, write_private_key
from tests.conftest import DOMAIN, Cli

PASSWORD = "a long enough password"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"  # suspended
PEER_DOMAIN = "clinique-b.test"
MSSGATE = Path(sys.executable).parent / "mssgate"


@dataclass
class Gateway:
    data: Path
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    banner_path: Path | None = None

    @property
    def ca(self) -> Path:
        return self.data / "certs" / "ca.crt.pem"

    def start(self, *, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        status = self.data / "run" / "serve.json"
        status.unlink(missing_ok=True)
        self.log_path = self.data / f"serve-{time.monotonic_ns()}.log"
        env = {**self.env, **(extra_env or {})}
        self.banner_path = self.log_path.with_suffix(".out")
        with self.log_path.open("wb") as log, self.banner_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [MSSGATE, "serve", *args],
                env=env,
                stdout=out,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if status.exists():
                self.ports = json.loads(status.read_text())["ports"]
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.logs()}")
            time.sleep(0.05)
        raise RuntimeError(f"serve did not start: {self.logs()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def events(self) -> list[dict[str, object]]:
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait_event(self, name: str, timeout: float = 10, **fields: object) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e.get("event") == name and all(e.get(k) == v for k, v in fields.items()):
                    return e
            time.sleep(0.05)
        raise AssertionError(f"no {name} event with {fields}")

    def healthz(self) -> tuple[int, dict[str, object]]:
        """GET /healthz over HTTPS: its status code and JSON body, 503 included."""
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.check_hostname = False
        url = f"https://127.0.0.1:{self.ports['api']}/healthz"
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def submission(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.ports["submission"], timeout=20)
        client.ehlo("client.test")
        client.starttls(context=self.client_context())
        client.ehlo("client.test")
        return client

    def login(self, who: str = ALICE) -> smtplib.SMTP:
        client = self.submission()
        client.login(who, PASSWORD)
        return client

    def mailbox(self, address: str) -> list[Path]:
        local, domain = address.split("@")
        new = self.data / "mail" / domain / local / "Maildir" / "new"
        return sorted(new.iterdir()) if new.exists() else []

    def wait_delivered(self, address: str, count: int, timeout: float = 20) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = self.mailbox(address)
            if len(files) >= count:
                return files
            time.sleep(0.05)
        raise AssertionError(f"{address}: {len(self.mailbox(address))} of {count} delivered")

    def wait_queue_ids(self, address: str, queue_ids: set[str], timeout: float = 20) -> list[Path]:
        """Wait until every queue id has a file: a count alone is fooled by duplicates."""
        deadline = time.monotonic() + timeout
        while True:
            files = self.mailbox(address)
            missing = queue_ids - {p.name.split(".")[0] for p in files}
            if not missing:
                return files
            if time.monotonic() > deadline:
                raise AssertionError(f"{address}: never delivered: {sorted(missing)}")
            time.sleep(0.05)


def message(sender: str = ALICE, to: str = BOB, body: str = "Bonjour", **headers: str) -> bytes:
    lines = [f"From: {sender}", f"To: {to}", "Subject: test", "Message-ID: <t@client.test>"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


@pytest.fixture
def peer_pki(tmp_path: Path) -> dict[str, Path]:
    """A peer operator's CA and its gateway's certificate (serverAuth + clientAuth)."""
    ca_key, ca_cert = create_dev_ca("peer operator CA")
    key, cert = issue_server_cert(ca_key, ca_cert, f"mx.{PEER_DOMAIN}")
    paths = {
        "ca": tmp_path / "peer-ca.pem",
        "ca_key": tmp_path / "peer-ca.key.pem",
        "cert": tmp_path / "peer.crt.pem",
        "key": tmp_path / "peer.key.pem",
    }
    write_certificate(paths["ca"], ca_cert)
    write_private_key(paths["ca_key"], ca_key)
    write_certificate(paths["cert"], cert)
    write_private_key(paths["key"], key)
    return paths


def free_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env.update(
        MSSGATE_CONFIG=str(data / "mssgate.toml"),
        MSSGATE_SMTP__SUBMISSION_PORT="0",
        MSSGATE_SMTP__SMTPS_PORT="0",
        MSSGATE_SMTP__MTA_PORT="0",
        MSSGATE_SMTP__DRAIN_SECONDS="10",
        # One acceptance process: these tests start hundreds of gateways, and a child is one
        # more Python to start each time; test_serve_workers.py runs two for real.
        MSSGATE_SERVER__WORKERS="1",
        MSSGATE_API__PORT="0",
        # Local delivery as Maildir files named by queue id (tests read them); IMAP and its
        # Dovecot are tested in tests/imap and tests/smtp/test_imap_serve.py.
        MSSGATE_IMAP__ENABLED="false",
        # These tests are about SMTP mechanics with unsigned mail; test_trust.py runs the
        # gateway with its default, signatures required.
        MSSGATE_POLICY__REQUIRE_SIGNATURE="false",
    )
    return env


@pytest.fixture
def gateway_setup(cli: Cli, datadir: Path, peer_pki: dict[str, Path]) -> Gateway:
    for who in (ALICE, BOB, CAROL):
        cli.ok("directory", "add", who, "--name", who.split("@")[0], "--rpps", "99700367909",
               "--password-stdin",
               stdin=PASSWORD + "\n")  # fmt: skip
    cli.ok("directory", "suspend", CAROL)
    cli.ok("domain", "trust", PEER_DOMAIN, "--relay", f"mx.{PEER_DOMAIN}:25",
           "--ca", str(peer_pki["ca"]))  # fmt: skip
    return Gateway(data=datadir, env=free_env(datadir))


@pytest.fixture
def a_env() -> dict[str, str]:
    """Settings of gateway A in the two-gateway pair (tests/smtp/test_two_gateways.py) beyond
    its own; a module overrides this fixture (IMAP on, for one)."""
    return {}


@pytest.fixture
def gateway(gateway_setup: Gateway) -> Iterator[Gateway]:
    gateway_setup.start()
    yield gateway_setup
    if gateway_setup.proc is not None:
        gateway_setup.stop()


class Raw:
    """A raw SMTP conversation over a socket (TLS optional): for protocol-level cases."""

    def __init__(self, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock: socket.socket = (
            tls.wrap_socket(sock, server_hostname="localhost") if tls is not None else sock
        )
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply."""
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got {b''.join(lines)!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"\n".join(lines)

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def starttls(self, ctx: ssl.SSLContext) -> None:
        assert self.cmd(b"STARTTLS").startswith(b"220")
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def closed(self, timeout: float = 5) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLError, OSError):
            return True

    def close(self) -> None:
        self.sock.close()
