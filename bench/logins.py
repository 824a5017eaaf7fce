"""Login benchmark: a repeated password login, cold and cached, next to Dovecot's auth_cache.

One account, one Argon2id hash (the gateway's own, from its directory), N concurrent clients
each looping: connect, TLS handshake (no session resumption), log in, log out. Measured in
one run, each for --seconds:
  - the gateway's IMAP front door (IMAPS: LOGIN, then the `imap -u` session it opens, LOGOUT)
    and its SMTP submission (SMTPS: EHLO, AUTH PLAIN with an initial response, QUIT), each
    with [auth] cache_seconds = 0 (every login one Argon2id) and with the cache on;
  - the anchor: a Dovecot of this machine with IMAPS on loopback, a dict passdb (a file) holding
    the same {ARGON2ID} hash, auth_cache on (and off, for its cold figure).
Printed: logins/s, the server's CPU per login (its whole process tree: the gateway with the
Dovecot it runs, or Dovecot's master with its auth and login processes), the clients' CPU,
and the ratios gateway / Dovecot. The clients run on the same cores as the servers.

Usage: .venv/bin/python bench/logins.py [--clients 10] [--seconds 15]
Needs Dovecot (dovecot-imapd) and root (Dovecot's login processes run as its own users).
A benchmark, not a test: it prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import imaplib
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mssgate.dovecot.conf import resolve_users

BIN = Path(sys.executable).parent
DOMAIN = "bench.test"
USER = f"reader@{DOMAIN}"
PASSWORD = "bench password 123"
DOVECOT = shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin") or "dovecot"


# -- clients --------------------------------------------------------------------------------
def imap_login(port: int, ctx: ssl.SSLContext) -> None:
    client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=120)
    client.login(USER, PASSWORD)
    client.logout()


def smtp_login(port: int, ctx: ssl.SSLContext) -> None:
    client = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=120)
    client.ehlo("bench.client")
    client.user, client.password = USER, PASSWORD
    client.auth("PLAIN", client.auth_plain)
    client.quit()


PROTOCOLS: dict[str, Callable[[int, ssl.SSLContext], None]] = {
    "imap": imap_login,
    "smtp": smtp_login,
}


def client_loop(
    protocol: str,
    port: int,
    cafile: str,
    start_at: float,
    stop_at: float,
    out: mp.Queue[tuple[int, int, float]],
) -> None:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False  # the anchor Dovecot shows the gateway's certificate
    login = PROTOCOLS[protocol]
    time.sleep(max(0.0, start_at - time.time()))  # all clients start together
    done = errors = 0
    while time.time() < stop_at:
        try:
            login(port, ctx)
            done += 1
        except (OSError, imaplib.IMAP4.error, smtplib.SMTPException):
            errors += 1
    out.put((done, errors, time.time()))


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU of the process itself (all its threads), children left out."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, its reaped children and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(tree_cpu_seconds(int(child)) for child in children)


@dataclass
class Result:
    logins: int
    errors: int
    per_second: float
    server_cpu_ms: float
    own_cpu_ms: float
    client_cpu_ms: float


def measure(
    protocol: str, port: int, cafile: Path, server_pid: int, args: argparse.Namespace
) -> Result:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    PROTOCOLS[protocol](port, ctx)  # warm: the cache (when on) holds the login from here
    queue: mp.Queue[tuple[int, int, float]] = mp.Queue()
    start_at = time.time() + 1.0
    stop_at = start_at + args.seconds
    procs = [
        mp.Process(target=client_loop, args=(protocol, port, str(cafile), start_at, stop_at, queue))
        for _ in range(args.clients)
    ]
    for p in procs:
        p.start()
    clients_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = tree_cpu_seconds(server_pid)
    own_before = own_cpu_seconds(server_pid)
    results = [queue.get(timeout=args.seconds + 600) for _ in procs]
    cpu = tree_cpu_seconds(server_pid) - cpu_before
    own = own_cpu_seconds(server_pid) - own_before
    for p in procs:
        p.join()
    clients_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (clients_after.ru_utime - clients_before.ru_utime) + (
        clients_after.ru_stime - clients_before.ru_stime
    )
    logins = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results) - start_at
    per = max(logins, 1)
    return Result(
        logins,
        errors,
        logins / elapsed,
        1000 * cpu / per,
        1000 * own / per,
        1000 * client_cpu / per,
    )


# -- the gateway ----------------------------------------------------------------------------
def gateway_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env.update(
        MSSGATE_CONFIG=str(data / "mssgate.toml"),
        MSSGATE_SMTP__SUBMISSION_PORT="0",
        MSSGATE_SMTP__SMTPS_PORT="0",
        MSSGATE_SMTP__MTA_PORT="0",
        MSSGATE_API__PORT="0",
        MSSGATE_IMAP__PORT="0",
        MSSGATE_IMAP__IMAPS_PORT="0",
        MSSGATE_SMTP__MAX_CONNECTIONS_PER_IP="100",
    )
    return env


def setup_gateway(data: Path) -> None:
    env = gateway_env(data)
    m = str(BIN / "mssgate")
    subprocess.run([m, "init", "--data", str(data), "--domain", DOMAIN], env=env, check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run([m, "directory", "add", USER, "--name", "Bench", "--rpps", "99700367909",
                    "--password-stdin"], env=env, input=PASSWORD + "\n", text=True, check=True,
                   capture_output=True)  # fmt: skip


def start_gateway(data: Path, cache_seconds: int) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    env = gateway_env(data) | {"MSSGATE_AUTH__CACHE_SECONDS": str(cache_seconds)}
    status = data / "run" / "serve.json"
    status.unlink(missing_ok=True)
    log = (data / f"serve-{cache_seconds}.log").open("wb")
    proc = subprocess.Popen([str(BIN / "mssgate"), "serve"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not status.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"serve failed: {(data / f'serve-{cache_seconds}.log').read_text()}")
        time.sleep(0.05)
    return proc, json.loads(status.read_text())["ports"]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def stored_hash(data: Path) -> str:
    with sqlite3.connect(data / "mssgate.db") as db:
        row = db.execute("SELECT password_hash FROM professionals WHERE address = ?", (USER,))
        return str(row.fetchone()[0])


# -- the anchor: Dovecot with its own auth_cache ----------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dovecot_conf(root: Path, port: int, cert: Path, key: Path, cache: bool) -> str:
    users = resolve_users(root)
    cache_lines = ["auth_cache_size = 10M", "auth_cache_ttl = 5 mins"] if cache else []
    return (
        "\n".join(
            [
                f"base_dir = {root}/run",
                f"state_dir = {root}/state",
                f"instance_name = mssgate-bench-anchor-{port}",
                f"log_path = {root}/dovecot.log",
                "protocols = imap",
                "listen = 127.0.0.1",
                "ssl = required",
                f"ssl_cert = <{cert}",
                f"ssl_key = <{key}",
                "ssl_min_protocol = TLSv1.2",
                f"default_internal_user = {users.internal_user}",
                f"default_internal_group = {users.internal_group}",
                f"default_login_user = {users.login_user}",
                f"mail_uid = {users.mail_user}",
                f"mail_gid = {users.mail_gid}",
                f"first_valid_uid = {users.mail_uid}",
                f"mail_home = {root}/mail/%d/%n",
                "mail_location = maildir:~/Maildir",
                "mail_max_userip_connections = 1000",
                "auth_mechanisms = plain login",
                *cache_lines,
                # A dict passdb (a flat file): Dovecot's passwd-file has no cache key, so its
                # auth_cache is never consulted; dict lookups are cached per user.
                "passdb {",
                "  driver = dict",
                f"  args = {root}/dict-auth.conf.ext",
                "}",
                "userdb {",
                "  driver = static",
                "  args = allow_all_users=yes",
                "}",
                "service imap-login {",
                "  inet_listener imap {",
                "    port = 0",
                "  }",
                "  inet_listener imaps {",
                f"    port = {port}",
                "    ssl = yes",
                "  }",
                "}",
            ]
        )
        + "\n"
    )


def ssha512(password: str) -> str:
    """Dovecot's {SSHA512}: one SHA-512, the floor of what a login's password check costs."""
    salt = os.urandom(8)
    return (
        "{SSHA512}"
        + base64.b64encode(hashlib.sha512(password.encode() + salt).digest() + salt).decode()
    )


def start_dovecot(
    top: Path, data: Path, pw_hash: str, cache: bool, name: str
) -> tuple[subprocess.Popen[bytes], int]:
    root = top / name
    (root / "mail").mkdir(parents=True)
    root.chmod(0o755)
    (root / "mail").chmod(0o777)
    # Dovecot's file dict: a key line, then its value line.
    password = pw_hash if pw_hash.startswith("{") else "{ARGON2ID}" + pw_hash
    entry = json.dumps({"password": password})
    (root / "passdb.txt").write_text(f"shared/passdb/{USER}\n{entry}\n")
    (root / "dict-auth.conf.ext").write_text(
        f"uri = file:{root}/passdb.txt\npassword_key = passdb/%u\niterate_disable = yes\n"
    )
    for name in ("passdb.txt", "dict-auth.conf.ext"):
        (root / name).chmod(0o644)
    port = free_port()
    certs = data / "certs"
    conf = root / "dovecot.conf"
    conf.write_text(
        dovecot_conf(root, port, certs / "server.crt.pem", certs / "server.key.pem", cache)
    )
    proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = root / "dovecot.log"
                raise SystemExit(
                    f"dovecot failed: {log.read_text() if log.exists() else ''}"
                ) from None
            time.sleep(0.05)


# -- the run --------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="mssgate-bench-logins-"))
    top.chmod(0o711)  # as root, Dovecot's mail uid must traverse it
    data = top / "gw"
    rows: list[tuple[str, str, Result]] = []

    def row(server: str, protocol: str, result: Result) -> None:
        rows.append((server, protocol, result))
        print(
            f"| {server} | {protocol} | {result.per_second:.1f} | {result.server_cpu_ms:.1f} "
            f"| {result.own_cpu_ms:.1f} | {result.client_cpu_ms:.1f} | {result.logins} "
            f"| {result.errors} |",
            flush=True,
        )

    try:
        setup_gateway(data)
        ca = data / "certs" / "ca.crt.pem"
        pw_hash = stored_hash(data)
        print(
            f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {args.clients} clients, {args.seconds:g} s each, "
            f"hash {pw_hash.split('$')[3]}, TLS without resumption"
        )
        # Server CPU: the whole process tree (the gateway with the Dovecot sessions it
        # starts; Dovecot with its login, auth and imap processes). Main process: that
        # process alone (the gateway's event loop and threads; Dovecot's master).
        print("| server | protocol | logins/s | server CPU ms/login | main process ms/login "
              "| client CPU ms/login | logins | errors |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for cache, label in ((0, "gateway, cache off"), (300, "gateway, cache on")):
            proc, ports = start_gateway(data, cache)
            try:
                row(label, "imap", measure("imap", ports["imaps"], ca, proc.pid, args))
                row(label, "smtp", measure("smtp", ports["smtps"], ca, proc.pid, args))
            finally:
                stop(proc)
        anchors = (
            ("dovecot, auth_cache off", False, pw_hash),
            ("dovecot, auth_cache on", True, pw_hash),
            # The same login with a hash that costs nothing: TLS, login and session alone.
            ("dovecot, SSHA512 hash", True, ssha512(PASSWORD)),
        )
        for n, (label, cache, stored) in enumerate(anchors):
            proc, port = start_dovecot(top, data, stored, cache, f"dovecot-{n}")
            try:
                row(label, "imap", measure("imap", port, ca, proc.pid, args))
            finally:
                stop(proc)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    by = {(server, protocol): r.per_second for server, protocol, r in rows}
    anchor = by.get(("dovecot, auth_cache on", "imap"))
    if anchor:
        for protocol in ("imap", "smtp"):
            cached = by.get(("gateway, cache on", protocol))
            if cached:
                print(
                    f"ratio gateway cached {protocol} / dovecot cached imap: {cached / anchor:.2f}"
                )
    for protocol in ("imap", "smtp"):
        cold, cached = (
            by.get(("gateway, cache off", protocol)),
            by.get(("gateway, cache on", protocol)),
        )
        if cold and cached:
            print(f"ratio gateway cached / cold, {protocol}: {cached / cold:.1f}")


if __name__ == "__main__":
    main()
