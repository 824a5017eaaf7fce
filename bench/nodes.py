"""Throughput of one node vs two nodes on one PostgreSQL, on this machine (issue 13).

Each layout gets a fresh PostgreSQL schema and real `mssgate serve` processes. Messages are
submitted (STARTTLS + AUTH, sessions reused) alternately to each node of the layout, half to a
mailbox homed on the first node and half to one homed on the last: with two nodes, half the
messages are handed over node to node. The clock runs from the first MAIL FROM until every
message is in its home Maildir. CPU per message is the serve processes' user+system time
(PostgreSQL's own CPU not included) over the messages.

On a machine with few cores the two nodes share the same CPUs: the ratio then shows the
overhead of a second node (hand-overs, two sets of pollers), not scaling.

Usage: .venv/bin/python bench/nodes.py [--messages 200] [--sessions 4] [--url postgresql://...]
A benchmark, not a test: it prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent
DOMAIN = "bench.test"
SENDER = f"sender@{DOMAIN}"
PASSWORD = "bench password 123"
HOMES = (f"rcpt-a@{DOMAIN}", f"rcpt-b@{DOMAIN}")
TICK = os.sysconf("SC_CLK_TCK")


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    subprocess.run([BIN / "mssgate", *args], env=env, input=stdin, text=True, check=True,
                   capture_output=True)  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, and the same for waited-for children (fields 14-17 of proc(5))
    return sum(int(f) for f in fields[11:15]) / TICK


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env.update(
        MSSGATE_SMTP__SUBMISSION_PORT="0",
        MSSGATE_SMTP__SMTPS_PORT="0",
        MSSGATE_SMTP__MTA_PORT="0",
        MSSGATE_API__PORT="0",
        MSSGATE_NODE__PORT="0",
        MSSGATE_IMAP__ENABLED="false",  # Maildir files: the bench counts them
        MSSGATE_POLICY__REQUIRE_SIGNATURE="false",
    )
    return env


def run(layout: int, url: str, messages: int, sessions: int, root: Path) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    subprocess.run(["psql", url, "-qc", f'CREATE SCHEMA "{schema}"'], check=True)
    db = f"{url}?options=-csearch_path%3D{schema}"
    names = ["a", "b"][:layout]
    dirs = [root / f"{layout}-{n}" for n in names]
    env = base_env()
    cli(env, "init", "--data", str(dirs[0]), "--domain", DOMAIN, "--database", db,
        "--node", "a")  # fmt: skip
    conf = [str(d / "mssgate.toml") for d in dirs]
    cli(env, "--config", conf[0], "directory", "add", SENDER, "--name", "sender",
        "--kind", "organisation", "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    if layout == 2:
        cli(env, "--config", conf[0], "node", "add", "b", "--data", str(dirs[1]))
    for address, home in zip(HOMES, (conf[0], conf[-1]), strict=True):
        cli(env, "--config", home, "directory", "add", address, "--name", address,
            "--kind", "organisation")  # fmt: skip
    procs, ports = [], []
    try:
        for d in dirs:
            log = (d / "serve.log").open("wb")
            procs.append(subprocess.Popen([BIN / "mssgate", "serve"],
                                          env={**env, "MSSGATE_CONFIG": str(d / "mssgate.toml")},
                                          stdout=subprocess.DEVNULL, stderr=log))  # fmt: skip
        for d in dirs:
            status = d / "run" / "serve.json"
            while not status.exists():
                time.sleep(0.05)
            ports.append(json.loads(status.read_text())["ports"]["submission"])
        ctx = ssl.create_default_context(cafile=str(dirs[0] / "certs" / "ca.crt.pem"))
        ctx.check_hostname = False
        msg = [
            (f"From: {SENDER}\r\nTo: {HOMES[(i // 2) % 2]}\r\nSubject: bench\r\n"
             f"Message-ID: <{i}@bench.test>\r\n\r\n" + ("x" * 76 + "\r\n") * 20).encode()
            for i in range(messages)
        ]  # fmt: skip

        errors: list[BaseException] = []

        def session(k: int) -> None:
            try:
                send(k)
            except BaseException as exc:  # a refused message would leave the wait below hanging
                errors.append(exc)

        def send(k: int) -> None:
            port = ports[k % layout]
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.starttls(context=ctx)
                client.login(SENDER, PASSWORD)
                for i in range(k, messages, sessions):
                    client.sendmail(SENDER, [HOMES[(i // 2) % 2]], msg[i])

        before = sum(cpu_seconds(p.pid) for p in procs)
        start = time.monotonic()
        threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = time.monotonic() - start
        if errors:
            raise SystemExit(f"layout {layout}: {errors[0]!r}")

        def delivered() -> int:
            total = 0
            for address, d in zip(HOMES, (dirs[0], dirs[-1]), strict=True):
                new = d / "mail" / DOMAIN / address.split("@")[0] / "Maildir" / "new"
                total += len(list(new.iterdir())) if new.exists() else 0
            return total

        while delivered() < messages:
            if time.monotonic() - start > 300:
                raise SystemExit(f"layout {layout}: {delivered()} of {messages} delivered")
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        cpu = sum(cpu_seconds(p.pid) for p in procs) - before
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        subprocess.run(
            [
                "psql",
                url,
                "-qc",
                f'SET client_min_messages = warning; DROP SCHEMA "{schema}" CASCADE',
            ],
            check=False,
        )
    return {
        "accepted_per_s": messages / accepted,
        "delivered_per_s": messages / elapsed,
        "cpu_ms_per_message": 1000 * cpu / messages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "MSSGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.messages} messages, {args.sessions} sessions")
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: run(n, args.url, args.messages, args.sessions, Path(tmp)) for n in (1, 2)}
    for n, r in results.items():
        print(
            f"{n} node{'s' if n > 1 else ' '}: accepted {r['accepted_per_s']:.1f} msg/s,"
            f" delivered {r['delivered_per_s']:.1f} msg/s,"
            f" serve CPU {r['cpu_ms_per_message']:.1f} ms/message"
        )
    ratio = results[2]["delivered_per_s"] / results[1]["delivered_per_s"]
    print(f"two nodes / one node (delivered msg/s): {ratio:.2f}")
    if (os.cpu_count() or 1) <= 2:
        print("2 CPUs or fewer: both nodes share them; the ratio shows overhead, not scaling")


if __name__ == "__main__":
    main()
