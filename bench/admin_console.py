"""Issue 18 item 11: how long the admin console's pages take with 10,000 rows per table.

Prints, never asserts. A fresh data folder (`mssgate init`), 10,000 rows in each table the
console shows (directory, domains, spool, queue, quarantine, audit: tests/api/admin_seed.py),
the API served over HTTPS in this process, each page loaded with the admin token:

    .venv/bin/python bench/admin_console.py                 # SQLite
    .venv/bin/python bench/admin_console.py --rows 100000
    .venv/bin/python bench/admin_console.py --postgres postgresql://postgres@127.0.0.1:5432/test

For each page: the median and worst of --repeat loads through one keep-alive HTTPS
connection (httpx), and the median of the same page rendered in-process (the queries and the
template, no network): the difference is the HTTP and TLS path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import Engine, create_engine, text

from mssgate.api.server import start_api
from mssgate.cli import run
from mssgate.config import load_config
from mssgate.db import open_engine, sqlalchemy_url, upgrade
from mssgate.directory.admin_token import AdminToken
from tests.api.admin_seed import seed
from tests.queue.helpers import RIS_A, add_consumer, add_mailboxes

PAGES = [
    "/admin",
    "/admin/directory",
    "/admin/domains",
    "/admin/spool",
    "/admin/queue",
    "/admin/quarantine",
    "/admin/audit",
    # Deep pages: keyset from the middle of each table.
    "/admin/directory?after=dr005000%40annuaire.test",
    "/admin/spool?before=00000001388SEED005000",
    "/admin/quarantine?before=2026-01-01T01:23:20%2B00:00%7Cheld005000",
    "/admin/audit?before=5000",
]


def timed(get, path: str, repeat: int) -> list[float]:
    get(path)  # warm: the first load compiles the template, fills caches
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = get(path)
        out.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--postgres", help="a PostgreSQL URL (a schema of its own is made)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mssgate-bench-admin-") as tmp:
        data = Path(tmp) / "data"
        assert run(["init", "--data", str(data), "--domain", "hopital-a.test"]) == 0
        os.environ["MSSGATE_ADMIN__ENABLED"] = "true"
        config = load_config(data / "mssgate.toml")
        schema = None
        if args.postgres:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            admin = create_engine(sqlalchemy_url(args.postgres))
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            engine: Engine = create_engine(
                sqlalchemy_url(args.postgres),
                connect_args={"options": f"-csearch_path={schema}"},
            )
        else:
            engine = open_engine(config.database_url)
        try:
            upgrade(engine)
            add_mailboxes(engine, RIS_A)
            add_consumer(engine, "ris-a", RIS_A)
            started = time.perf_counter()
            seed(engine, args.rows, mailbox=RIS_A)
            print(f"{engine.dialect.name}: seeded {args.rows} rows per table in "
                  f"{time.perf_counter() - started:.1f} s")  # fmt: skip
            token, _ = AdminToken(engine, "bench").rotate()
            measure(config, engine, token, data, args.repeat)
        finally:
            engine.dispose()
            if schema is not None:
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


def measure(config, engine: Engine, token: str, data: Path, repeat: int) -> None:
    # The in-process figures go through Starlette's TestClient, which warns about its httpx.
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    from fastapi.testclient import TestClient

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start_api(config, engine, port=0), loop).result(30)
    auth = {"Authorization": f"Bearer {token}"}
    ca = ssl.create_default_context(cafile=str(data / "certs" / "ca.crt.pem"))
    try:
        with (
            httpx.Client(base_url=f"https://127.0.0.1:{server.port}", verify=ca,
                         headers=auth) as client,
            TestClient(server.app, headers=auth) as local,
        ):  # fmt: skip
            print(f"{'page':<68} {'https median':>12} {'worst':>8} {'in-process':>11}")
            for path in PAGES:
                over = timed(client.get, path, repeat)
                inside = timed(local.get, path, repeat)
                print(f"{path:<68} {statistics.median(over):>9.1f} ms {max(over):>5.1f} ms "
                      f"{statistics.median(inside):>8.1f} ms")  # fmt: skip
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


if __name__ == "__main__":
    main()
