"""SMTP acceptance benchmark: the gateway's full submission path next to a bare aiosmtpd.

Both servers run on this machine in the same run, behind the same TLS settings (our TLS
factory), and all are driven by the same load tool: a few processes (--processes), each an
asyncio loop (aiosmtplib) holding its share of the sessions, every session STARTTLS + AUTH
(reused for every message unless --no-reuse), timing each transaction from MAIL FROM to the
250 after DATA. The load tool's own CPU and the machine's busy share are printed too: they
say how much of the machine was left for the server. The bare aiosmtpd handler accepts and
drops; the gateway checks the directory and policy, writes, fsyncs, commits the spool row
and the audit row before answering, then delivers to Maildir.

Usage: .venv/bin/python bench/bench_smtp.py [--messages 300] [--sessions 1 4] [--no-reuse]
       [--signed] [--auth-cache-seconds 0]
A benchmark, not a test: it prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASSWORD = "bench password 123"
DOMAIN = "bench.test"
SENDER = f"sender@{DOMAIN}"
RCPT = f"rcpt@{DOMAIN}"
BIN = Path(sys.executable).parent


def make_message(size: int) -> bytes:
    head = f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: bench\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def run_bare(port_file: str, cert: str, key: str) -> None:
    """The reference: aiosmtpd with a handler that accepts and drops."""
    import logging

    # aiosmtpd 1.4 logs a warning on every AUTH: its legacy login_data field is deprecated.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    from aiosmtpd.smtp import SMTP, AuthResult

    from mssgate.tls import server_context

    class Sink:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 2.0.0 OK"

    def accept(*_args: object) -> AuthResult:
        return AuthResult(success=True)

    async def main() -> None:
        ctx = server_context(Path(cert), Path(key))
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(
                Sink(),
                tls_context=ctx,
                require_starttls=True,
                auth_required=True,
                authenticator=accept,
                data_size_limit=30_000_000,
                hostname="bare",
            ),
            "127.0.0.1",
            0,
        )
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        await asyncio.Event().wait()

    asyncio.run(main())


def worker(
    port: int,
    cafile: str,
    message: bytes,
    counts: list[int],
    reuse: bool,
    login: bool,
    out: mp.Queue,
) -> None:
    """One load process: an asyncio loop running one SMTP session per entry of `counts`."""
    out.put(asyncio.run(_sessions(port, cafile, message, counts, reuse, login)))


async def _sessions(
    port: int, cafile: str, message: bytes, counts: list[int], reuse: bool, login: bool
) -> list[float]:
    import aiosmtplib

    ctx = ssl.create_default_context(cafile=cafile)

    async def connect() -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=True, tls_context=ctx, timeout=120
        )
        await client.connect()
        if login:
            await client.login(SENDER, PASSWORD)
        return client

    async def session(count: int) -> list[float]:
        latencies = []
        client = await connect()
        for n in range(count):
            start = time.perf_counter()
            await client.sendmail(SENDER, [RCPT], message)
            latencies.append(time.perf_counter() - start)
            if not reuse and n + 1 < count:
                await client.quit()
                client = await connect()
        await client.quit()
        return latencies

    results = await asyncio.gather(*(session(c) for c in counts))
    return [x for r in results for x in r]


PROCESSES = 4  # load-tool processes (--processes)
SIGNER: tuple[Path, Path] | None = None  # (key, cert) when --signed


def signed_message(size: int) -> bytes:
    from mssgate.pki import load_certificate, load_private_key
    from mssgate.smime import sign_message

    raw = make_message(size)
    if SIGNER is None:
        return raw
    return sign_message(raw, key=load_private_key(SIGNER[0]), cert=load_certificate(SIGNER[1]))


def load(
    port: int, cafile: str, size: int, sessions: int, total: int, reuse: bool, login: bool = True
) -> dict:
    message = signed_message(size)
    per = max(1, total // sessions)
    # Sessions are spread over a few processes, each an asyncio loop: the load tool must not
    # need a core per session on a 2-core machine, nor be one GIL-bound process.
    nprocs = min(sessions, PROCESSES)
    plan = [[per] * (sessions // nprocs + (i < sessions % nprocs)) for i in range(nprocs)]
    queue: mp.Queue = mp.Queue()
    procs = [
        mp.Process(target=worker, args=(port, cafile, message, counts, reuse, login, queue))
        for counts in plan
    ]
    clients_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = machine_busy_seconds()
    start = time.perf_counter()
    for p in procs:
        p.start()
    lat = [x for _ in procs for x in queue.get(timeout=600)]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - start
    busy = machine_busy_seconds() - busy_before
    # The load tool's workers are joined children: their CPU is in RUSAGE_CHILDREN now. It
    # tells how much of the machine the clients took, and so what was left for the server.
    clients_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (clients_after.ru_utime - clients_before.ru_utime) + (
        clients_after.ru_stime - clients_before.ru_stime
    )
    lat.sort()
    return {
        "msgs_per_s": len(lat) / elapsed,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "client_cpu_ms": 1000 * client_cpu / len(lat),
        "machine_busy": busy / (elapsed * (os.cpu_count() or 1)),
    }


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all processes, all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU so far of a process, its reaped children and its live descendants.

    The gateway's pipeline workers are child processes: the serve process's own figure left
    their CPU out (until this counted the tree, the gateway's column was the serve process
    alone). A child is listed under the thread that started it, so every thread's list is read.
    """
    if pid is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return 0.0
    own = sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick  # utime stime cutime cstime
    return own + sum(cpu_seconds(child) for child in set(children))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(
    data: Path, signed: bool, auth_cache_seconds: float | None = None, workers: str = "1"
) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env.update(
        MSSGATE_CONFIG=str(data / "mssgate.toml"),
        MSSGATE_SMTP__SUBMISSION_PORT="0",
        MSSGATE_SMTP__SMTPS_PORT="0",
        MSSGATE_SMTP__MTA_PORT="0",
        MSSGATE_API__PORT="0",
        MSSGATE_IMAP__ENABLED="false",
        MSSGATE_SMTP__MAX_CONNECTIONS_PER_IP="100",
        MSSGATE_SMTP__MAX_MESSAGE_SIZE="30000000",
        # --signed: the full path (S/MIME verified, document pipeline for a RIS mailbox,
        # enqueue); otherwise the acceptance path alone, as Postfix's reference has it.
        MSSGATE_POLICY__REQUIRE_SIGNATURE="true" if signed else "false",
    )
    # SMTP acceptance processes (serve --workers): its children are counted in its CPU.
    env["MSSGATE_SERVER__WORKERS"] = workers
    if auth_cache_seconds is not None:
        # --no-reuse pays one login per message: 0 makes each one an Argon2id verification.
        env["MSSGATE_AUTH__CACHE_SECONDS"] = str(auth_cache_seconds)
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
                "Bench",
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
    if signed:
        global SIGNER
        out = data.parent / f"smime-{data.name}"  # one per gateway (--workers 1 2)
        subprocess.run(
            [m, "cert", "issue", SENDER, "--out", str(out)],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [m, "consumer", "add", "ris", "--mailbox", RCPT],
            env=env,
            check=True,
            capture_output=True,
        )
        SIGNER = (out / f"{SENDER}.key.pem", out / f"{SENDER}.crt.pem")
    proc = subprocess.Popen(
        [m, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    status = data / "run" / "serve.json"
    while not status.exists():
        time.sleep(0.05)
    return proc, json.loads(status.read_text())["ports"]["submission"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 65536])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-reuse", action="store_true")
    parser.add_argument("--no-postfix", action="store_true")
    parser.add_argument("--signed", action="store_true", help="S/MIME-signed mail, full path")
    parser.add_argument("--processes", type=int, default=4, help="load-tool processes")
    parser.add_argument(
        "--auth-cache-seconds", type=float, help="the gateway's [auth] cache_seconds (0: off)"
    )
    parser.add_argument(
        "--workers",
        nargs="+",
        default=["1"],
        help="serve --workers of the gateway; several values: one gateway each, same run,"
        " rounds alternating, and the ratio of each to the first",
    )
    args = parser.parse_args()
    global PROCESSES, SIGNER
    PROCESSES = max(1, args.processes)
    with tempfile.TemporaryDirectory() as tmp:
        gateways = {}
        cas: dict[str, str] = {}
        signers: dict[str, tuple[Path, Path] | None] = {}
        for workers in args.workers:
            name = "gateway" if len(args.workers) == 1 else f"gateway N={workers}"
            data = Path(tmp) / f"gw-{workers}"
            gateways[name] = start_gateway(data, args.signed, args.auth_cache_seconds, workers)
            # Each gateway has its own dev CA (init made it); the others use the last one's.
            cas[name] = str(data / "certs" / "ca.crt.pem")
            signers[name] = SIGNER  # --signed: a sender certificate of that gateway's CA
        certs = data / "certs"
        port_file = Path(tmp) / "bare.port"
        bare = mp.Process(
            target=run_bare,
            args=(str(port_file), str(certs / "server.crt.pem"), str(certs / "server.key.pem")),
        )
        bare.start()
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        bare_port = int(port_file.read_text())
        ca = str(certs / "ca.crt.pem")
        servers = [(name, port, True) for name, (_, port) in gateways.items()]
        servers.append(("bare aiosmtpd", bare_port, True))
        # CPU per message is read for our two Python servers (each with its child processes:
        # the gateway's pipeline workers); Postfix spreads its work over several short-lived
        # processes and is left out of that column.
        pids: dict[str, int | None] = {name: gw.pid for name, (gw, _) in gateways.items()}
        pids["bare aiosmtpd"] = bare.pid
        postfix = None
        if shutil.which("postfix") and os.geteuid() == 0 and not args.no_postfix:
            sys.path.insert(0, str(Path(__file__).parent))
            from postfix_peer import PostfixPeer

            # Postfix's own user must reach its folders: not under the 0700 temporary dir.
            postfix_root = Path(tempfile.mkdtemp(prefix="mssgate-bench-postfix-"))
            postfix_root.chmod(0o755)
            postfix = PostfixPeer(
                postfix_root,
                port=free_port(),
                cert=certs / "server.crt.pem",
                key=certs / "server.key.pem",
                domain=DOMAIN,
            )
            postfix.start()
            # Postfix has no SASL here: the load tool skips AUTH for it (one round trip per
            # session, negligible with connection reuse).
            servers.append(("postfix (durable)", postfix.port, False))
        print(
            f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {args.messages} messages per cell, "
            f"{args.rounds} rounds alternating, reuse={not args.no_reuse}, signed={args.signed}"
        )
        print(
            "| size | sessions | server | msgs/s (median) | min..max | p50 ms | p99 ms "
            "| server CPU ms/msg | client CPU ms/msg | machine busy |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        try:
            for size in args.sizes:
                for sessions in args.sessions:
                    results: dict[str, list[dict]] = {name: [] for name, _, _ in servers}
                    for _ in range(args.rounds):
                        for name, port, login in servers:
                            SIGNER = signers.get(name, SIGNER)
                            before = cpu_seconds(pids.get(name))
                            result = load(
                                port,
                                cas.get(name, ca),
                                size,
                                sessions,
                                args.messages,
                                not args.no_reuse,
                                login,
                            )
                            if name.startswith("gateway"):
                                time.sleep(0.5)  # its delivery worker finishes the last ones
                            spent = cpu_seconds(pids.get(name)) - before
                            result["cpu_ms"] = 1000 * spent / args.messages
                            results[name].append(result)
                    medians = {}
                    for name, runs in results.items():
                        rates = sorted(r["msgs_per_s"] for r in runs)
                        medians[name] = statistics.median(rates)
                        p50 = statistics.median(r["p50_ms"] for r in runs)
                        p99 = statistics.median(r["p99_ms"] for r in runs)
                        cpu = (
                            f"{statistics.median(r['cpu_ms'] for r in runs):.2f}"
                            if pids.get(name)
                            else "-"
                        )
                        client = statistics.median(r["client_cpu_ms"] for r in runs)
                        busy = statistics.median(r["machine_busy"] for r in runs)
                        print(
                            f"| {size // 1024} KB | {sessions} | {name} | {medians[name]:.0f} "
                            f"| {rates[0]:.0f}..{rates[-1]:.0f} | {p50:.1f} | {p99:.1f} "
                            f"| {cpu} | {client:.2f} | {100 * busy:.0f}% |"
                        )
                    first = next(iter(gateways))
                    for ours in gateways:
                        for name in medians:
                            if not name.startswith("gateway") or (ours != first and name == first):
                                ratio = medians[ours] / medians[name]
                                print(
                                    f"| {size // 1024} KB | {sessions} | {ours} / {name} | "
                                    f"{ratio:.2f} | | | | | | |"
                                )
        finally:
            if postfix is not None:
                postfix.stop()
                shutil.rmtree(postfix.root, ignore_errors=True)
            for gw, _ in gateways.values():
                gw.send_signal(signal.SIGTERM)
            for gw, _ in gateways.values():
                gw.wait(timeout=60)
            bare.terminate()
            bare.join()


if __name__ == "__main__":
    main()
