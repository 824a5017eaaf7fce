"""Crash harness: steady SMTP load, SIGKILL at random moments, restart, reconcile.

Runs a gateway on loopback ports (a temporary data folder), sends signed-off (policy off:
this measures the spool, not S/MIME) messages from several sender processes that retry like
real clients, kills the gateway with SIGKILL N times at random moments, restarts it each
time, then waits for delivery and reconciles every 250-acknowledged queue id with the
mailbox: lost must be 0; duplicates are counted (each is a message whose 250 was lost with
the process, so the client sent it again).

Usage: .venv/bin/python bench/crash_harness.py [--kills 5] [--senders 4] [--seconds 60]
Bounded in time and count, loopback only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASSWORD = "harness password 1"
DOMAIN = "crash.test"
SENDER, RCPT = f"s@{DOMAIN}", f"r@{DOMAIN}"
BIN = Path(sys.executable).parent


def env_for(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env.update(
        MSSGATE_CONFIG=str(data / "mssgate.toml"),
        MSSGATE_SMTP__SUBMISSION_PORT="0",
        MSSGATE_SMTP__SMTPS_PORT="0",
        MSSGATE_SMTP__MTA_PORT="0",
        MSSGATE_API__PORT="0",
        MSSGATE_IMAP__ENABLED="false",
        MSSGATE_POLICY__REQUIRE_SIGNATURE="false",
        MSSGATE_SMTP__MAX_CONNECTIONS_PER_IP="100",
    )
    return env


def start(data: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    status = data / "run" / "serve.json"
    status.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [BIN / "mssgate", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not status.exists():
        if proc.poll() is not None:
            raise SystemExit("serve failed to start")
        time.sleep(0.05)
    return proc, status


def sender(n: int, status_path: str, cafile: str, stop_at: float, out: mp.Queue) -> None:
    ctx = ssl.create_default_context(cafile=cafile)
    acked: list[str] = []
    client = None
    i = 0
    while time.monotonic() < stop_at:
        body = f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: {n}-{i}\r\n\r\n" + "x" * 76 + "\r\n"
        try:
            if client is None:
                port = json.loads(Path(status_path).read_text())["ports"]["submission"]
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                client.starttls(context=ctx)
                client.login(SENDER, PASSWORD)
            client.mail(SENDER)
            client.rcpt(RCPT)
            code, text = client.data(body.encode())
            if code == 250:
                acked.append(text.split()[-1].decode())
                i += 1
        except (OSError, smtplib.SMTPException, ValueError, KeyError):
            client = None
            time.sleep(0.05)
    out.put(acked)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    rng = random.Random()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "gw"
        env = env_for(data)
        m = str(BIN / "mssgate")
        subprocess.run(
            [m, "init", "--data", str(data), "--domain", DOMAIN],
            env=env,
            check=True,
            capture_output=True,
        )
        for who in (SENDER, RCPT):
            subprocess.run(
                [
                    m,
                    "directory",
                    "add",
                    who,
                    "--name",
                    "x",
                    "--rpps",
                    "99700367909",
                    "--password-stdin",
                ],
                env=env,
                input=PASSWORD + "\n",
                text=True,
                check=True,
                capture_output=True,
            )
        proc, status = start(data, env)
        stop_at = time.monotonic() + args.seconds
        queue: mp.Queue = mp.Queue()
        senders = [
            mp.Process(
                target=sender,
                args=(n, str(status), str(data / "certs" / "ca.crt.pem"), stop_at, queue),
            )
            for n in range(args.senders)
        ]
        for p in senders:
            p.start()
        kills = 0
        for _ in range(args.kills):
            # Random moments spread over the run.
            time.sleep(rng.uniform(0.2, 2) * args.seconds / (args.kills + 1))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc, status = start(data, env)
        acked = [q for _ in senders for q in queue.get(timeout=args.seconds + 120)]
        for p in senders:
            p.join()
        box = data / "mail" / DOMAIN / "r" / "Maildir" / "new"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            names = [p.name.split(".")[0] for p in box.iterdir()] if box.exists() else []
            if set(acked) <= set(names):
                break
            time.sleep(0.2)
        delivered = set(names)
        lost = [q for q in acked if q not in delivered]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        subjects = {}
        for path in box.iterdir():
            subject = next(
                (
                    ln
                    for ln in path.read_text(errors="replace").splitlines()
                    if ln.startswith("Subject:")
                ),
                "",
            )
            subjects[subject] = subjects.get(subject, 0) + 1
        duplicates = sum(c - 1 for c in subjects.values() if c > 1)
        print(
            f"kills={kills} senders={args.senders} seconds={args.seconds:.0f} "
            f"acknowledged={len(acked)} delivered_files={len(delivered)} "
            f"lost={len(lost)} duplicates={duplicates}"
        )
        if lost:
            print("LOST:", lost[:20])
            raise SystemExit(1)


if __name__ == "__main__":
    main()
