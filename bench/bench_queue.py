"""RIS queue lease(max=1)+ack per second, N concurrent consumers, SQLite and PostgreSQL.

    .venv/bin/python bench/bench_queue.py [--documents 400] [--consumers 4] [--rounds 3]
        [--modes direct,https] [--postgres URL] [--baseline DIR]

Each consumer leases one document then acks it, until the queue is empty, the way a RIS
polls. `direct`: the consumers are threads calling DocumentQueue, in one process.
`https`: the gateway's consumer API (FastAPI on uvicorn, TLS) runs in a process of its own and
the consumers are threads of this one, each with its own keep-alive HTTPS connection and
bearer token of the same consumer. Every cell runs in a fresh process on a fresh database
(SQLite in a temporary folder, synchronous=FULL; PostgreSQL in a throw-away schema).

`--baseline DIR`: the same cells with the mssgate package of DIR (a tree of an earlier
commit: `git archive REV | tar -x -C DIR`), alternating with this tree's in every round, so
that before and after are measured in one run. Printed: the median rate with min..max over
the rounds, CPU milliseconds per lease+ack (this process's; with `https`, the server's and the
clients' apart; PostgreSQL's own CPU is not counted), with `direct` the statements, BEGINs,
COMMITs and pings per lease+ack (on PostgreSQL, its round trips), and after/before ratios.

PostgreSQL runs when --postgres or MSSGATE_TEST_POSTGRES_URL names a server. A benchmark,
not a test: it prints, never asserts; figures vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAILBOX = "ris@bench.test"


def _use_tree(tree: Path) -> None:
    # The tree measured comes first; ROOT after it, for tests.documents.factory.
    for path in (str(ROOT), str(tree)):
        if path in sys.path:
            sys.path.remove(path)
    sys.path[:0] = [str(tree), str(ROOT)]


# -- in a child process: one cell ---------------------------------------------------------


def _sample() -> Any:
    from mssgate.documents import Accepted, process_message
    from tests.documents.factory import make_cda, make_mail

    raw = make_mail([("doc.xml", make_cda(), "text/xml")])
    [outcome] = process_message(raw, allow_test_oids=True).outcomes
    assert isinstance(outcome, Accepted)
    return outcome


@contextmanager
def _engine(db: str) -> Iterator[Any]:
    from sqlalchemy import create_engine, text

    from mssgate.db import open_engine, sqlalchemy_url

    if db == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            engine = open_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
            yield engine
            engine.dispose()
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(sqlalchemy_url(db))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    # open_engine, as serve opens it (its pool options are part of what is measured), on a
    # schema of its own: libpq's `options` in the URL sets the search path.
    sep = "&" if "?" in db else "?"
    engine = open_engine(f"{db}{sep}options=-csearch_path%3D{schema}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _prepare(engine: Any) -> tuple[Any, str]:
    from mssgate.db import upgrade
    from mssgate.directory import Directory
    from mssgate.directory.models import MailboxKind, NewProfessional

    upgrade(engine)
    directory = Directory(engine, actor="bench")
    directory.domains.add_local("bench.test")
    directory.professionals.add(
        NewProfessional(address=MAILBOX, display_name="RIS", kind=MailboxKind.APP)
    )
    consumer, token = directory.consumers.add("ris", mailbox=MAILBOX)
    return consumer, token


def _fill(queue: Any, outcome: Any, count: int) -> None:
    from mssgate.queue import NewDocument

    tag = uuid.uuid4().hex
    for n in range(count):
        digest = hashlib.sha256(f"{tag}-{n}".encode()).hexdigest()
        record = outcome.record.model_copy(
            update={
                "sha256": digest,
                "mailbox": MAILBOX,
                "sender": "dr@hopital.test",
                "received_at": datetime.now(UTC),
            }
        )
        queue.enqueue(
            NewDocument(
                record=record,
                content=outcome.content,
                email=b"",
                headers="",
                receipt_to=None,
                delivery=f"bench-{tag}-{n}",
            )
        )


def _child_direct(db: str, documents: int, consumers: int) -> dict[str, float]:
    from mssgate.queue import DocumentQueue

    outcome = _sample()
    with _engine(db) as engine:
        consumer, _ = _prepare(engine)
        queue = DocumentQueue(engine)
        _fill(queue, outcome, documents)

        def drain(_: int) -> int:
            done = 0
            while leases := queue.lease(consumer, max_documents=1, lease_seconds=300):
                for lease in leases:
                    queue.ack(consumer, lease.document.id or "", lease.lease_id)
                    done += 1
            return done

        trips = _RoundTrips(engine)
        cpu, started = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(max_workers=consumers) as pool:
            total = sum(pool.map(drain, range(consumers)))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        trips.stop()
    return {
        "rate": total / wall,
        "cpu_ms": cpu / total * 1000,
        "trips": trips.count / total,
        "done": total,
    }


class _RoundTrips:
    """Counts what the database is asked, as SQLAlchemy sees it: every statement (SAVEPOINT and
    RELEASE included), every BEGIN, COMMIT and ROLLBACK, and a pre-ping per checkout when the
    pool pings. On PostgreSQL each is a round trip (psycopg sends BEGIN on its own before a
    transaction's first statement); on SQLite they are calls into the library, not trips.
    The empty leases that end each consumer's loop are counted too (four per cell)."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.count = 0
        self._lock = threading.Lock()
        self._hooks: list[tuple[Any, str]] = [
            (engine, "before_cursor_execute"),
            (engine, "begin"),
            (engine, "commit"),
            (engine, "rollback"),
        ]
        if getattr(engine.pool, "_pre_ping", False):
            self._hooks.append((engine.pool, "checkout"))
        for target, name in self._hooks:
            event.listen(target, name, self._one)

    def _one(self, *_: Any, **__: Any) -> None:
        with self._lock:
            self.count += 1

    def stop(self) -> None:
        from sqlalchemy import event

        for target, name in self._hooks:
            event.remove(target, name, self._one)


def _child_server(db: str, data: Path) -> None:
    """Serves the API; reads commands on stdin: `fill N`, `cpu`; stops at end of input."""
    import asyncio

    from mssgate.api.server import start_api
    from mssgate.config import load_config
    from mssgate.queue import DocumentQueue

    outcome = _sample()
    config = load_config(data / "mssgate.toml")
    with _engine(db) as engine:
        _, token = _prepare(engine)
        queue = DocumentQueue(engine, data_dir=data)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        server = asyncio.run_coroutine_threadsafe(
            start_api(config, engine, queue=queue, port=0), loop
        ).result(60)
        print(json.dumps({"port": server.port, "token": token}), flush=True)
        for line in sys.stdin:
            command = line.split()
            if command[0] == "fill":
                _fill(queue, outcome, int(command[1]))
                print("filled", flush=True)
            elif command[0] == "cpu":
                print(json.dumps({"cpu": time.process_time()}), flush=True)
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)


# -- in the parent ------------------------------------------------------------------------


def _python(tree: Path, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{ROOT}")
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--tree", str(tree), *args],
        env=env,
        text=True,
        **kwargs,
    )


def _direct(tree: Path, db: str, documents: int, consumers: int) -> dict[str, float]:
    args = ["--child", "direct", "--db", db, "--documents", str(documents)]
    proc = _python(tree, *args, "--consumers", str(consumers), stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=1800)
    if proc.returncode:
        raise SystemExit(f"the direct cell failed ({tree}, {db})")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def _https(tree: Path, db: str, documents: int, consumers: int) -> dict[str, float]:
    import httpx

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{ROOT}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mssgate",
                "init",
                "--data",
                str(data),
                "--domain",
                "bench.test",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        proc = _python(
            tree,
            "--child",
            "server",
            "--db",
            db,
            "--data",
            str(data),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            hello = json.loads(proc.stdout.readline())

            def ask(command: str) -> str:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(command + "\n")
                proc.stdin.flush()
                return proc.stdout.readline()

            ask(f"fill {documents}")
            base = f"https://127.0.0.1:{hello['port']}"
            ca = str(data / "certs" / "ca.crt.pem")
            headers = {"Authorization": f"Bearer {hello['token']}"}
            clients = [
                httpx.Client(base_url=base, verify=ca, headers=headers, timeout=60)
                for _ in range(consumers)
            ]
            for client in clients:  # connections and TLS sessions up before the clock
                client.get("/healthz")

            def drain(client: httpx.Client) -> int:
                done = 0
                while True:
                    answer = client.post("/v1/leases", json={"max": 1, "lease_seconds": 300})
                    answer.raise_for_status()
                    leases = answer.json()["leases"]
                    if not leases:
                        return done
                    for lease in leases:
                        doc = lease["document"]["id"]
                        client.post(
                            f"/v1/documents/{doc}/ack", json={"lease_id": lease["lease_id"]}
                        ).raise_for_status()
                        done += 1

            server_cpu = json.loads(ask("cpu"))["cpu"]
            cpu, started = time.process_time(), time.perf_counter()
            with ThreadPoolExecutor(max_workers=consumers) as pool:
                total = sum(pool.map(drain, clients))
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            server_cpu = json.loads(ask("cpu"))["cpu"] - server_cpu
            for client in clients:
                client.close()
        finally:
            proc.stdin.close()
            proc.wait(120)
    return {
        "rate": total / wall,
        "cpu_ms": server_cpu / total * 1000,
        "client_cpu_ms": cpu / total * 1000,
        "done": total,
    }


def _cell(values: list[dict[str, float]], key: str) -> tuple[float, float, float]:
    got = [v[key] for v in values]
    return statistics.median(got), min(got), max(got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=400)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="direct,https")
    parser.add_argument("--postgres", default=os.environ.get("MSSGATE_TEST_POSTGRES_URL"))
    parser.add_argument("--baseline", type=Path, help="a tree of an earlier commit")
    parser.add_argument("--tree", type=Path, default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["direct", "server"], help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _use_tree(args.tree)
    if args.child == "direct":
        print(json.dumps(_child_direct(args.db, args.documents, args.consumers)), flush=True)
        return
    if args.child == "server":
        _child_server(args.db, args.data)
        return

    trees = [("before", args.baseline.resolve())] if args.baseline else []
    trees.append(("after", ROOT))
    databases = [("sqlite", "sqlite")]
    if args.postgres:
        databases.append(("postgresql", args.postgres))
    else:
        print("postgresql skipped: pass --postgres URL or set MSSGATE_TEST_POSTGRES_URL")
    modes = args.modes.split(",")
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for round_no in range(1, args.rounds + 1):
        for mode in modes:
            for db_name, db in databases:
                for label, tree in trees:
                    run = _direct if mode == "direct" else _https
                    got = run(tree, db, args.documents, args.consumers)
                    results.setdefault((mode, db_name, label), []).append(got)
                    extra = (
                        f", clients {got['client_cpu_ms']:.2f} ms" if "client_cpu_ms" in got else ""
                    )
                    if "trips" in got:
                        extra += f", {got['trips']:.1f} round trips"
                    print(
                        f"round {round_no} {mode:<6} {db_name:<10} {label:<6} "
                        f"{got['rate']:7.1f} lease+ack/s, CPU {got['cpu_ms']:.2f} ms{extra}"
                        f" ({int(got['done'])} done)",
                        flush=True,
                    )
    print(
        f"\n{args.consumers} consumers, lease(max=1)+ack, {args.documents} documents per cell,"
        f" {args.rounds} round(s): median (min..max) lease+ack/s; CPU ms per lease+ack"
    )
    for mode in modes:
        for db_name, _ in databases:
            row = []
            for label, _ in trees:
                values = results[(mode, db_name, label)]
                median, low, high = _cell(values, "rate")
                cpu = _cell(values, "cpu_ms")[0]
                client = (
                    f" + clients {_cell(values, 'client_cpu_ms')[0]:.2f}" if mode == "https" else ""
                )
                trips = f", {_cell(values, 'trips')[0]:.1f} trips" if mode == "direct" else ""
                row.append(
                    f"{label} {median:.0f} ({low:.0f}..{high:.0f}), CPU {cpu:.2f}{client}{trips}"
                )
            if len(trees) == 2:
                before = _cell(results[(mode, db_name, "before")], "rate")[0]
                after = _cell(results[(mode, db_name, "after")], "rate")[0]
                row.append(f"after/before {after / before:.2f}")
            print(f"{mode:<6} {db_name:<10} " + " | ".join(row))


if __name__ == "__main__":
    main()
