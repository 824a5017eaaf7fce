"""IMAP benchmark: the front door (TLS, login, byte relay) next to the same Dovecot direct.

One run, one mailbox of N messages of ~10 KB delivered over LMTP, two paths measured with
the same client (imaplib) and the same commands:
  - front door: IMAPS to `python -m mssgate.imap` (our TLS, our LOGIN, relay to `imap -u`);
  - direct: Dovecot's `imap -u USER` on a pipe (imaplib.IMAP4_stream), no TLS, no relay.
Timed: SELECT + FETCH 1:* ENVELOPE, and UID FETCH 1:* BODY.PEEK[]; the median of --rounds.
The ratio is the front door's cost (TLS included) over Dovecot alone.

Usage: .venv/bin/python bench/bench_imap.py [--messages 2000] [--size 10240] [--rounds 3]
A benchmark, not a test: it prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import imaplib
import io
import json
import os
import platform
import shlex
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mssgate.cli import run as cli
from mssgate.dovecot.backend import IMAP_BINARY
from mssgate.mailstore import LmtpStore

PASSWORD = "bench password 123"
DOMAIN = "bench.test"
USER = f"reader@{DOMAIN}"


def make_message(n: int, size: int) -> bytes:
    head = (
        f"From: Dr Sender <sender@{DOMAIN}>\r\nTo: <{USER}>\r\nSubject: compte rendu {n}\r\n"
        f"Message-ID: <bench{n}@{DOMAIN}>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def setup(top: Path) -> Path:
    data = top / "data"
    cli(["init", "--data", str(data), "--domain", DOMAIN])
    os.environ["MSSGATE_CONFIG"] = str(data / "mssgate.toml")
    stdin, sys.stdin = sys.stdin, io.StringIO(PASSWORD + "\n")
    try:
        cli(
            [
                "directory",
                "add",
                USER,
                "--name",
                "reader",
                "--rpps",
                "99700367909",
                "--password-stdin",
            ]
        )
    finally:
        sys.stdin = stdin
    return data


def start_runner(data: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    status = data / "status.json"
    env = {
        **os.environ,
        "MSSGATE_IMAP__PORT": "0",
        "MSSGATE_IMAP__IMAPS_PORT": "0",
    }
    log = (data / "runner.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mssgate.imap", str(status)], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 60
    while not status.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"runner failed: {(data / 'runner.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, json.loads(status.read_text())


def timed(client: imaplib.IMAP4, messages: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    typ, data = client.select("INBOX", readonly=True)
    assert typ == "OK" and int(data[0]) == messages, data
    typ, data = client.fetch("1:*", "(ENVELOPE)")
    assert typ == "OK"
    envelope = time.perf_counter() - started
    started = time.perf_counter()
    typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert typ == "OK"
    body = time.perf_counter() - started
    size = sum(len(part[1]) for part in data if isinstance(part, tuple))
    return envelope, body, size


def measure(
    connect: Callable[[], imaplib.IMAP4], messages: int, rounds: int
) -> tuple[float, float, int]:
    envs, bodies, size = [], [], 0
    for _ in range(rounds):
        client = connect()
        envelope, body, size = timed(client, messages)
        client.logout()
        envs.append(envelope)
        bodies.append(body)
    return statistics.median(envs), statistics.median(bodies), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="mssgate-bench-imap-"))
    top.chmod(0o711)  # as root, Dovecot's mail uid must traverse it
    data = setup(top)
    proc, status = start_runner(data)
    try:
        store = LmtpStore(Path(str(status["lmtp"])))
        started = time.perf_counter()
        for n in range(args.messages):
            store.deliver(USER, make_message(n, args.size), delivery_id=str(n), sender=USER)
        delivery = time.perf_counter() - started
        ports = status["ports"]
        assert isinstance(ports, dict)
        ctx = ssl.create_default_context(cafile=data / "certs" / "ca.crt.pem")

        def front_door() -> imaplib.IMAP4:
            client = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=ctx)
            client.login(USER, PASSWORD)
            return client

        conf = data / "dovecot" / "dovecot.conf"
        # imaplib runs it through the shell; Dovecot logs to stderr, kept off the report.
        command = shlex.join([str(IMAP_BINARY), "-c", str(conf), "-u", USER]) + " 2>/dev/null"

        def direct() -> imaplib.IMAP4:
            return imaplib.IMAP4_stream(command)

        # Warm both (index files, page cache) before timing either.
        measure(direct, args.messages, 1)
        fd = measure(front_door, args.messages, args.rounds)
        dv = measure(direct, args.messages, args.rounds)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    mib = fd[2] / 2**20
    print(f"# bench_imap: {args.messages} messages x {args.size} B, median of {args.rounds}")
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}"
    )
    print(f"LMTP delivery: {delivery:.2f} s ({args.messages / delivery:.0f} msg/s)")
    print(f"{'path':<12} {'FETCH ENVELOPE':>15} {'UID FETCH BODY[]':>17} {'MiB/s':>7}")
    for name, (env, body, _) in (("front door", fd), ("dovecot", dv)):
        print(f"{name:<12} {env:>14.3f}s {body:>16.3f}s {mib / body:>7.1f}")
    print(
        f"ratio (front door / dovecot): ENVELOPE {fd[0] / dv[0]:.2f}x, "
        f"BODY.PEEK[] {fd[1] / dv[1]:.2f}x"
    )
    subprocess.run(["rm", "-rf", str(top)], check=False)


if __name__ == "__main__":
    main()
