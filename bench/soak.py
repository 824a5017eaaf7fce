"""Soak run: signed mail to personal and RIS mailboxes while RIS consumers lease and ack.

A real `mssgate serve` (temporary data folder, loopback ports, Dovecot behind the front door
unless --no-imap) on SQLite or on PostgreSQL (--postgres URL: a schema of its own, dropped at
the end). For --seconds, --sessions SMTP sessions (aiosmtplib, STARTTLS + AUTH, spread over
a few processes) each send S/MIME-signed messages in turn to two practitioners and to two RIS
mailboxes (with a CR-IMG CDA attached), while --consumers RIS clients (two per RIS mailbox)
lease, fetch the content and ack over the HTTPS API. Then it waits for every accepted
message to be delivered and every document to be acked, and reads the database:

- accepted (250), 4xx and 5xx replies seen by the clients, transactions slower than
  --stall-seconds ("stalls"), connection errors;
- API calls, API 5xx and other API errors;
- delivered deliveries and whether every 250 was delivered; documents leased and acked;
- p50/p99 of DATA end -> in the mailbox (spool acceptance -> delivery recorded) and of
  DATA end -> first lease of its document (an upper bound of "leasable": consumers poll).

Usage:
  .venv/bin/python bench/soak.py --seconds 600
  .venv/bin/python bench/soak.py --seconds 600 --postgres postgresql://postgres@127.0.0.1:5432/test

A benchmark, not a test: it prints figures and asserts nothing. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

PASSWORD = "soak password 1234"
DOMAIN = "soak.test"
SENDERS = [f"dr.s{i}@{DOMAIN}" for i in range(2)]
PERSONS = [f"dr.p{i}@{DOMAIN}" for i in range(2)]
RIS = [f"ris{i}@{DOMAIN}" for i in range(2)]
BIN = Path(sys.executable).parent
MSSGATE = str(BIN / "mssgate")


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    done = subprocess.run(
        [MSSGATE, *args], env=env, input=stdin, text=True, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"mssgate {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def setup(data: Path, database: str | None, imap: bool) -> tuple[dict[str, str], list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env.update(
        MSSGATE_CONFIG=str(data / "mssgate.toml"),
        MSSGATE_SMTP__SUBMISSION_PORT="0",
        MSSGATE_SMTP__SMTPS_PORT="0",
        MSSGATE_SMTP__MTA_PORT="0",
        MSSGATE_API__PORT="0",
        MSSGATE_IMAP__PORT="0",
        MSSGATE_IMAP__IMAPS_PORT="0",
        MSSGATE_IMAP__ENABLED="true" if imap else "false",
        MSSGATE_SMTP__MAX_CONNECTIONS_PER_IP="200",
        MSSGATE_POLICY__ALLOW_TEST_INS="true",
    )
    if database:
        env["MSSGATE_DATABASE__URL"] = database
    run(["init", "--data", str(data), "--domain", DOMAIN], env)
    for who in SENDERS + PERSONS:
        run(
            [
                "directory",
                "add",
                who,
                "--name",
                who.split("@")[0],
                "--rpps",
                "99700367909",
                "--password-stdin",
            ],
            env,
            stdin=PASSWORD + "\n",
        )
    for who in RIS:
        run(["directory", "add", who, "--name", "RIS", "--kind", "application"], env)
    certs = data.parent / "smime"
    for who in SENDERS:
        run(["cert", "issue", who, "--out", str(certs)], env)
    tokens = []
    for i in range(4):
        out = run(["consumer", "add", f"ris-{i}", "--mailbox", RIS[i % 2], "--json"], env)
        tokens.append(json.loads(out)["token"])
    return env, tokens


def signed(sender: str, to: str, certs: Path, cda: bytes | None) -> bytes:
    from mssgate.pki import load_certificate, load_private_key
    from mssgate.smime import sign_message

    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "soak"
    msg["Message-ID"] = "<MSGID@soak.test>"
    msg.set_content("Compte rendu en pièce jointe.\n" if cda else "Bonjour.\n")
    if cda is not None:
        msg.add_attachment(cda, maintype="text", subtype="xml", filename="CR-IMG.xml")
    return sign_message(
        msg.as_bytes(),
        key=load_private_key(certs / f"{sender}.key.pem"),
        cert=load_certificate(certs / f"{sender}.crt.pem"),
    )


def templates(certs: Path) -> dict[tuple[str, str], bytes]:
    from mssgate.documents.samples import make_cda

    cda = make_cda()
    out = {}
    for sender in SENDERS:
        for to in PERSONS:
            out[(sender, to)] = signed(sender, to, certs, None)
        for to in RIS:
            out[(sender, to)] = signed(sender, to, certs, cda)
    return out


# ------------------------------------------------------------------ SMTP load (processes)
def smtp_worker(
    port: int, cafile: str, sessions: list[int], deadline: float, tpl_file: str, out: mp.Queue
) -> None:
    out.put(asyncio.run(_smtp(port, cafile, sessions, deadline, tpl_file)))


async def _smtp(
    port: int, cafile: str, sessions: list[int], deadline: float, tpl_file: str
) -> dict[str, Any]:
    import aiosmtplib

    raw = json.loads(Path(tpl_file).read_text())
    tpl = {tuple(k.split("|")): v.encode("latin-1") for k, v in raw.items()}
    ctx = ssl.create_default_context(cafile=cafile)
    result: dict[str, Any] = {"sent": {}, "codes": {}, "errors": 0, "latencies": []}

    async def session(n: int) -> None:
        sender = SENDERS[n % len(SENDERS)]
        targets = PERSONS + RIS
        client: aiosmtplib.SMTP | None = None
        i = 0
        while time.time() < deadline:
            try:
                if client is None:
                    client = aiosmtplib.SMTP(
                        hostname="127.0.0.1",
                        port=port,
                        start_tls=True,
                        tls_context=ctx,
                        timeout=120,
                    )
                    await client.connect()
                    await client.login(sender, PASSWORD)
                to = targets[(n + i) % len(targets)]
                i += 1
                mid = f"{uuid.uuid4().hex}@soak.test"
                body = tpl[(sender, to)].replace(b"MSGID@soak.test", mid.encode())
                start = time.perf_counter()
                _, reply = await client.sendmail(sender, [to], body)
                end = time.time()
                result["latencies"].append(time.perf_counter() - start)
                queue_id = reply.rsplit(" ", 1)[-1]
                result["sent"][queue_id] = [end, mid, to]
                result["codes"]["250"] = result["codes"].get("250", 0) + 1
            except aiosmtplib.SMTPResponseException as exc:
                key = str(exc.code)
                result["codes"][key] = result["codes"].get(key, 0) + 1
                result.setdefault("samples", []).append(f"{exc.code} {exc.message}"[:200])
                if exc.code in (421,) and client is not None:
                    client = None
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                result["errors"] += 1
                result.setdefault("samples", []).append(f"{type(exc).__name__}: {exc}"[:200])
                client = None
                await asyncio.sleep(0.5)
        if client is not None:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()

    await asyncio.gather(*(session(n) for n in sessions))
    return result


# ------------------------------------------------------------------ RIS consumers
def new_ris_stats() -> dict[str, Any]:
    return {"calls": 0, "api_5xx": 0, "api_other": 0, "leased": {}, "acked": 0, "samples": []}


async def consumers(
    base: str, cafile: str, tokens: list[str], stats: dict[str, Any], stop: asyncio.Event
) -> None:
    """Each token leases, fetches and acks until `stop` is set."""
    import httpx

    ctx = ssl.create_default_context(cafile=cafile)

    async def one(token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            base_url=base, verify=ctx, headers=headers, timeout=60
        ) as client:
            while not stop.is_set():
                try:
                    resp = await client.post("/v1/leases", json={"max": 10})
                    stats["calls"] += 1
                    if resp.status_code >= 500:
                        stats["api_5xx"] += 1
                        stats["samples"].append(f"lease {resp.status_code} {resp.text[:150]}")
                        await asyncio.sleep(0.2)
                        continue
                    if resp.status_code != 200:
                        stats["api_other"] += 1
                        stats["samples"].append(f"lease {resp.status_code} {resp.text[:150]}")
                        await asyncio.sleep(0.2)
                        continue
                    leases = resp.json()["leases"]
                    if not leases:
                        await asyncio.sleep(0.1)
                        continue
                    for lease in leases:
                        doc = lease["document"]
                        mid = (doc.get("message_id") or "").strip("<>")
                        stats["leased"].setdefault(mid, time.time())
                        got = await client.get(f"/v1/documents/{doc['id']}/content")
                        ack = await client.post(
                            f"/v1/documents/{doc['id']}/ack", json={"lease_id": lease["lease_id"]}
                        )
                        stats["calls"] += 2
                        for r in (got, ack):
                            if r.status_code >= 500:
                                stats["api_5xx"] += 1
                                stats["samples"].append(f"{r.status_code} {r.text[:150]}")
                            elif r.status_code >= 400:
                                stats["api_other"] += 1
                                stats["samples"].append(f"{r.status_code} {r.text[:150]}")
                        if ack.status_code == 200:
                            stats["acked"] += 1
                except (httpx.HTTPError, OSError) as exc:
                    stats["api_other"] += 1
                    stats["samples"].append(f"{type(exc).__name__}: {exc}"[:150])
                    await asyncio.sleep(0.5)

    await asyncio.gather(*(one(t) for t in tokens))


# ------------------------------------------------------------------ reading the outcome
def spool_times(env: dict[str, str]) -> dict[str, tuple[datetime, datetime | None, str]]:
    """queue id -> (accepted at, delivered at or None, state) from the gateway's database."""
    from sqlalchemy import select

    from mssgate.config import load_config
    from mssgate.db import open_engine
    from mssgate.db.schema import spool_messages, spool_recipients

    os.environ.update({k: v for k, v in env.items() if k.startswith("MSSGATE_")})
    config = load_config(Path(env["MSSGATE_CONFIG"]))
    engine = open_engine(config.database_url)
    out = {}
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                spool_messages.c.id,
                spool_messages.c.received_at,
                spool_recipients.c.state,
                spool_recipients.c.updated_at,
            ).join(spool_recipients, spool_recipients.c.spool_id == spool_messages.c.id)
        )
        for r in rows:
            done = r.updated_at if r.state == "delivered" else None
            out[r.id] = (r.received_at, done, r.state)
    engine.dispose()
    return out


def pipeline_counts(env: dict[str, str]) -> dict[str, dict[str, int]]:
    """Document jobs and queue entries by state: where the documents not yet leased are."""
    from sqlalchemy import func, select

    from mssgate.config import load_config
    from mssgate.db import open_engine
    from mssgate.db.schema import queue_documents, spool_documents

    config = load_config(Path(env["MSSGATE_CONFIG"]))
    engine = open_engine(config.database_url)
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for name, table in (("jobs", spool_documents), ("queue", queue_documents)):
            rows = conn.execute(select(table.c.state, func.count()).group_by(table.c.state))
            out[name] = {r[0]: int(r[1]) for r in rows}
    engine.dispose()
    return out


def pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{1000 * values[min(len(values) - 1, int(len(values) * q))]:.0f} ms"


def report(
    args: argparse.Namespace,
    smtp: list[dict[str, Any]],
    ris: dict[str, Any],
    times: dict[str, tuple[datetime, datetime | None, str]],
    elapsed: float,
    env: dict[str, str],
) -> None:
    sent = {q: v for r in smtp for q, v in r["sent"].items()}
    codes: dict[str, int] = {}
    for r in smtp:
        for k, n in r["codes"].items():
            codes[k] = codes.get(k, 0) + n
    lat = [x for r in smtp for x in r["latencies"]]
    stalls = sum(1 for x in lat if x > args.stall_seconds)
    delivered = {q for q, t in times.items() if t[1] is not None}
    held = sorted(q for q, t in times.items() if t[2] == "held")
    missing = sorted(q for q in sent if q not in delivered)
    to_mailbox = [
        (t[1] - t[0]).total_seconds() for q, t in times.items() if q in sent and t[1] is not None
    ]
    leasable = [
        ris["leased"][v[1]] - v[0] for v in sent.values() if v[2] in RIS and v[1] in ris["leased"]
    ]
    ris_sent = sum(1 for v in sent.values() if v[2] in RIS)
    four = sum(n for k, n in codes.items() if k.startswith("4"))
    five = sum(n for k, n in codes.items() if k.startswith("5"))
    db = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"soak on {db}, {'Maildir' if args.no_imap else 'Dovecot (LMTP)'}: "
        f"{args.seconds:.0f} s of load, {args.sessions} SMTP sessions, 4 RIS consumers, "
        f"{elapsed:.0f} s in all"
    )
    print(
        f"  accepted (250)            {codes.get('250', 0)}  ({codes.get('250', 0) / args.seconds:.1f}/s)"
    )
    print(
        f"  4xx / 5xx replies         {four} / {five}   connection errors {sum(r['errors'] for r in smtp)}"
    )
    print(
        f"  stalls (> {args.stall_seconds:.0f} s)          {stalls}   SMTP transaction p50 {pct(lat, 0.5)} p99 {pct(lat, 0.99)} max {pct(lat, 1.0)}"
    )
    print(
        f"  delivered                 {len(delivered & set(sent))} of {len(sent)}   every 250 delivered: {'yes' if not missing else 'NO'}  held: {len(held)}"
    )
    print(f"  DATA end -> in mailbox    p50 {pct(to_mailbox, 0.5)}  p99 {pct(to_mailbox, 0.99)}")
    print(
        f"  RIS documents             sent {ris_sent}  leased {len(ris['leased'])}  acked {ris['acked']}"
    )
    print(f"  DATA end -> leased        p50 {pct(leasable, 0.5)}  p99 {pct(leasable, 0.99)}")
    print(
        f"  API calls                 {ris['calls']}   5xx {ris['api_5xx']}   other errors {ris['api_other']}"
    )
    counts = pipeline_counts(env)
    print(
        f"  document jobs by state    {counts['jobs']}   queue entries by state {counts['queue']}"
    )
    samples = [x for r in smtp for x in r.get("samples", [])][:5] + ris["samples"][:5]
    for line in samples:
        print(f"  sample: {line}")
    if missing:
        print(f"  never delivered: {missing[:10]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--postgres", help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--no-imap", action="store_true", help="Maildir instead of Dovecot")
    parser.add_argument("--stall-seconds", type=float, default=5.0)
    parser.add_argument("--drain-seconds", type=float, default=300)
    args = parser.parse_args()

    top = Path(tempfile.mkdtemp(prefix="mssgate-soak-"))
    top.chmod(0o755)  # Dovecot's mail user must reach the mail store under it
    data = top / "gw"
    schema = None
    database = None
    if args.postgres:
        from sqlalchemy import create_engine, text

        from mssgate.db import sqlalchemy_url

        schema = f"soak_{uuid.uuid4().hex[:10]}"
        admin = create_engine(sqlalchemy_url(args.postgres))
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in args.postgres else "?"
        database = f"{args.postgres}{sep}options=-csearch_path%3D{schema}"
    proc = None
    try:
        env, tokens = setup(data, database, not args.no_imap)
        tpl = templates(top / "smime")
        tpl_file = top / "templates.json"
        tpl_file.write_text(
            json.dumps({f"{a}|{b}": v.decode("latin-1") for (a, b), v in tpl.items()})
        )
        log = (top / "serve.log").open("wb")
        proc = subprocess.Popen(
            [MSSGATE, "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        status = data / "run" / "serve.json"
        while not status.exists():
            if proc.poll() is not None:
                raise SystemExit(f"serve exited {proc.returncode}: see {top / 'serve.log'}")
            time.sleep(0.1)
        ports = json.loads(status.read_text())["ports"]
        cafile = str(data / "certs" / "ca.crt.pem")
        start = time.time()
        deadline = start + args.seconds
        queue: mp.Queue = mp.Queue()
        nprocs = min(args.processes, args.sessions)
        plan = [list(range(i, args.sessions, nprocs)) for i in range(nprocs)]
        procs = [
            mp.Process(
                target=smtp_worker,
                args=(ports["submission"], cafile, p, deadline, str(tpl_file), queue),
            )
            for p in plan
        ]
        for p in procs:
            p.start()
        drain_until = deadline + args.drain_seconds
        smtp_results: list[dict[str, Any]] = []
        ris_stats = new_ris_stats()

        async def drive() -> None:
            stop = asyncio.Event()
            base = f"https://localhost:{ports['api']}"
            ris = asyncio.create_task(consumers(base, cafile, tokens, ris_stats, stop))
            while len(smtp_results) < len(procs):
                got = await asyncio.to_thread(queue.get, True, args.seconds + 600)
                smtp_results.append(got)
            for p in procs:
                p.join()
            # Every accepted message must be delivered and every document leased: wait.
            sent = {q: v for r in smtp_results for q, v in r["sent"].items()}
            ris_mids = {v[1] for v in sent.values() if v[2] in RIS}
            while time.time() < drain_until:
                times = await asyncio.to_thread(spool_times, env)
                pending = [q for q in sent if q not in times or times[q][1] is None]
                if not pending and ris_mids <= set(ris_stats["leased"]):
                    break
                await asyncio.sleep(2)
            await asyncio.sleep(1)  # the last acks
            stop.set()
            await ris

        asyncio.run(drive())
        elapsed = time.time() - start
        report(args, smtp_results, ris_stats, spool_times(env), elapsed, env)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if schema is not None:
            from sqlalchemy import create_engine, text

            from mssgate.db import sqlalchemy_url

            admin = create_engine(sqlalchemy_url(args.postgres))
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        print(f"data folder and serve.log kept in {top}")


if __name__ == "__main__":
    main()
