"""IMAP benchmark: the front door (TLS, login, byte relay) next to the same Dovecot direct.

One run, one mailbox of N messages of ~10 KB delivered over LMTP, two paths measured with
the same client (imaplib) and the same commands:
  - front door: IMAPS to `python -m mssgate.imap` (our TLS, our LOGIN, relay to `imap -u`);
  - direct: Dovecot's `imap -u USER` on a pipe (imaplib.IMAP4_stream), no TLS, no relay.
  - socat TLS: socat (C, OpenSSL) terminating TLS with the gateway's certificate in front of
    the same `imap -u`: a TLS front door with no Python in it (client-side TLS included).
Timed: SELECT + FETCH 1:* ENVELOPE, and UID FETCH 1:* BODY.PEEK[]; the median of --rounds.
The front door runs once per event loop in --loops (server.event_loop), all at once on the
same Dovecot; each round times every path in turn.
The ratios are each path's time over Dovecot alone, and the front door's over socat's.

Usage: .venv/bin/python bench/bench_imap.py [--messages 2000] [--size 10240] [--rounds 3]
       [--loops uvloop,asyncio] [--baseline DIR]
`--baseline DIR` adds an older tree's front door (`git archive COMMIT mssgate | tar -x -C
DIR`), on the same Dovecot and in the same rounds: before and after in one run.
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
import socket
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


def start_runner(
    data: Path, loop: str, extra: dict[str, str] | None = None, tree: Path | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    """`python -m mssgate.imap` on `loop`; from an older tree (`--baseline`) with that tree's
    default loop, as it may know no `server.event_loop`."""
    status = data / f"status-{loop}.json"
    status.unlink(missing_ok=True)
    env = {
        **os.environ,
        "MSSGATE_IMAP__PORT": "0",
        "MSSGATE_IMAP__IMAPS_PORT": "0",
        **(extra or {}),
    }
    if tree is None:
        env["MSSGATE_SERVER__EVENT_LOOP"] = loop
    else:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    log = (data / f"runner-{loop}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mssgate.imap", str(status)], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 60
    while not status.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"runner failed: {(data / f'runner-{loop}.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, json.loads(status.read_text())


def stop_runner(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_socat(data: Path, command: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """A TLS front door in C: socat (OpenSSL) terminating TLS in front of the same `imap -u`,
    with the gateway's certificate."""
    port = free_port()
    certs = data / "certs"
    listen = (
        f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,"
        f"cert={certs / 'server.crt.pem'},key={certs / 'server.key.pem'}"
    )
    proc = subprocess.Popen(
        ["socat", "-b", "262144", listen, "EXEC:" + shlex.join(command) + ",pipes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if time.monotonic() > deadline:
            raise SystemExit("socat did not listen")
        time.sleep(0.05)


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
    paths: dict[str, Callable[[], imaplib.IMAP4]], messages: int, rounds: int
) -> dict[str, tuple[float, float, int]]:
    """Each round runs every path once, in turn: a machine busier for a while slows all of
    them alike rather than the one measured then."""
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in paths}
    sizes: dict[str, int] = {}
    for _ in range(rounds):
        for name, connect in paths.items():
            client = connect()
            envelope, body, sizes[name] = timed(client, messages)
            client.logout()
            times[name][0].append(envelope)
            times[name][1].append(body)
    spreads.update({name: (min(bodies), max(bodies)) for name, (_, bodies) in times.items()})
    return {
        name: (statistics.median(envs), statistics.median(bodies), sizes[name])
        for name, (envs, bodies) in times.items()
    }


# BODY.PEEK[] min and max of the last measure(), by path: printed beside the medians.
spreads: dict[str, tuple[float, float]] = {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--loops",
        default="uvloop,asyncio",
        help="event loops to run a front door on (server.event_loop), one runner each",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="an older tree holding mssgate/ (git archive COMMIT mssgate | tar -x -C DIR): "
        "its front door is measured too, on the same Dovecot, in the same rounds",
    )
    args = parser.parse_args()
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    top = Path(tempfile.mkdtemp(prefix="mssgate-bench-imap-"))
    top.chmod(0o711)  # as root, Dovecot's mail uid must traverse it
    data = setup(top)
    ctx = ssl.create_default_context(cafile=data / "certs" / "ca.crt.pem")
    conf = data / "dovecot" / "dovecot.conf"
    imap_command = [str(IMAP_BINARY), "-c", str(conf), "-u", USER]
    # imaplib runs it through the shell; Dovecot logs to stderr, kept off the report.
    command = shlex.join(imap_command) + " 2>/dev/null"

    def direct() -> imaplib.IMAP4:
        return imaplib.IMAP4_stream(command)

    runners: list[subprocess.Popen[bytes]] = []
    socat: subprocess.Popen[bytes] | None = None
    try:
        # The first runner starts the private Dovecot; the others use it as an existing one
        # (docs/imap.md), so every front door serves the same mailbox at the same time.
        proc, status = start_runner(data, loops[0])
        runners.append(proc)
        statuses = {loops[0]: status}
        lmtp = str(status["lmtp"])
        extra = {"MSSGATE_IMAP__DOVECOT_CONFIG": str(conf), "MSSGATE_IMAP__LMTP_TARGET": lmtp}
        for loop in loops[1:]:
            proc, statuses[loop] = start_runner(data, loop, extra)
            runners.append(proc)
        if args.baseline is not None:
            proc, statuses["baseline"] = start_runner(
                data, "baseline", extra, tree=args.baseline.resolve()
            )
            runners.append(proc)
        store = LmtpStore(Path(lmtp))
        started = time.perf_counter()
        for n in range(args.messages):
            store.deliver(USER, make_message(n, args.size), delivery_id=str(n), sender=USER)
        delivery = time.perf_counter() - started
        socat, socat_port = start_socat(data, imap_command)

        def front_door(port: int) -> Callable[[], imaplib.IMAP4]:
            def connect() -> imaplib.IMAP4:
                client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx)
                client.login(USER, PASSWORD)
                return client

            return connect

        def tls_floor() -> imaplib.IMAP4:
            return imaplib.IMAP4_SSL("127.0.0.1", socat_port, ssl_context=ctx)

        paths: dict[str, Callable[[], imaplib.IMAP4]] = {"dovecot": direct}
        for loop, status in statuses.items():
            ports = status["ports"]
            assert isinstance(ports, dict)
            paths[f"front/{loop}"] = front_door(int(ports["imaps"]))
        paths["socat TLS"] = tls_floor
        # Warm the mailbox (index files, page cache) and every path before timing any.
        measure(paths, args.messages, 1)
        results = measure(paths, args.messages, args.rounds)
        ciphers = {name: cipher_of(connect) for name, connect in paths.items()}
    finally:
        if socat is not None:
            socat.terminate()
            socat.wait(timeout=10)
        for proc in reversed(runners):
            stop_runner(proc)
    size = results["dovecot"][2]
    mib = size / 2**20
    print(f"# bench_imap: {args.messages} messages x {args.size} B, median of {args.rounds}")
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}"
    )
    print(f"LMTP delivery: {delivery:.2f} s ({args.messages / delivery:.0f} msg/s)")
    print(
        f"{'path':<16} {'FETCH ENVELOPE':>15} {'UID FETCH BODY[]':>17} {'min..max':>13} "
        f"{'MiB/s':>7}  TLS"
    )
    for name, (env, body, got) in results.items():
        assert got == size, (name, got, size)  # every path read the same bytes
        low, high = spreads[name]
        print(
            f"{name:<16} {env:>14.3f}s {body:>16.3f}s {low:>6.3f}..{high:.3f} "
            f"{mib / body:>7.1f}  {ciphers.get(name, '-')}"
        )
    dv, floor = results["dovecot"], results["socat TLS"]
    print(
        f"ratio socat TLS / dovecot (a TLS front door in C): "
        f"ENVELOPE {floor[0] / dv[0]:.2f}x, BODY.PEEK[] {floor[1] / dv[1]:.2f}x"
    )
    for loop in [*loops, *(["baseline"] if args.baseline is not None else [])]:
        fd = results[f"front/{loop}"]
        print(
            f"ratio front/{loop} / dovecot: ENVELOPE {fd[0] / dv[0]:.2f}x, "
            f"BODY.PEEK[] {fd[1] / dv[1]:.2f}x; / socat TLS: BODY.PEEK[] {fd[1] / floor[1]:.2f}x"
        )
    subprocess.run(["rm", "-rf", str(top)], check=False)


def cipher_of(connect: Callable[[], imaplib.IMAP4]) -> str:
    client = connect()
    try:
        sock = client.socket()
        if isinstance(sock, ssl.SSLSocket):
            return f"{sock.version()} {(sock.cipher() or ('?',))[0]}"
        return "-"
    finally:
        client.logout()


if __name__ == "__main__":
    main()
