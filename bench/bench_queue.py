"""Lease+ack per second through the queue, 1 and 4 concurrent consumers, SQLite and PostgreSQL.

    .venv/bin/python bench/bench_queue.py [--documents 400] [--postgres URL]

PostgreSQL runs when --postgres or MSSGATE_TEST_POSTGRES_URL gives a server (in a throw-away
schema). Each consumer is a thread doing lease(max=1) then ack until the queue is empty, the
way a RIS polls; every transition is its own transaction with its audit row (SQLite with
synchronous=FULL). A benchmark, not a test: numbers vary by machine and disk.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mssgate.db import open_engine, sqlalchemy_url, upgrade  # noqa: E402
from mssgate.directory import Directory  # noqa: E402
from mssgate.directory.models import Consumer, MailboxKind, NewProfessional  # noqa: E402
from mssgate.documents import Accepted, process_message  # noqa: E402
from mssgate.queue import DocumentQueue, NewDocument  # noqa: E402
from tests.documents.factory import make_cda, make_mail  # noqa: E402

MAILBOX = "ris@bench.test"


def sample() -> Accepted:
    raw = make_mail([("doc.xml", make_cda(), "text/xml")])
    [outcome] = process_message(raw, allow_test_oids=True).outcomes
    assert isinstance(outcome, Accepted)
    return outcome


def prepare(engine: Engine) -> Consumer:
    upgrade(engine)
    directory = Directory(engine, actor="bench")
    directory.domains.add_local("bench.test")
    directory.professionals.add(
        NewProfessional(address=MAILBOX, display_name="RIS", kind=MailboxKind.APP)
    )
    consumer, _ = directory.consumers.add("ris", mailbox=MAILBOX)
    return consumer


def fill(queue: DocumentQueue, outcome: Accepted, count: int, tag: str) -> None:
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
                record=record, content=outcome.content, email=b"", headers="", receipt_to=None,
                delivery=f"bench-{tag}-{n}",
            )
        )


def drain(queue: DocumentQueue, consumer: Consumer) -> int:
    done = 0
    while True:
        leases = queue.lease(consumer, max_documents=1, lease_seconds=300)
        if not leases:
            return done
        for lease in leases:
            queue.ack(consumer, lease.document.id or "", lease.lease_id)
            done += 1


def measure(queue: DocumentQueue, consumer: Consumer, workers: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        total = sum(pool.map(lambda _: drain(queue, consumer), range(workers)))
    return total / (time.perf_counter() - started)


@contextmanager
def sqlite_engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory() as folder:
        engine = open_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        yield engine
        engine.dispose()


@contextmanager
def postgres_engine(url: str) -> Iterator[Engine]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(sqlalchemy_url(url))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_engine(
        sqlalchemy_url(url), connect_args={"options": f"-csearch_path={schema}"}, pool_size=8
    )
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def run(name: str, engine: Engine, outcome: Accepted, documents: int) -> None:
    consumer = prepare(engine)
    queue = DocumentQueue(engine)
    for workers in (1, 4):
        fill(queue, outcome, documents, f"{workers}")
        per_second = measure(queue, consumer, workers)
        print(f"{name:<10} {workers} consumer(s): {per_second:8.1f} lease+ack/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=400)
    parser.add_argument("--postgres", default=os.environ.get("MSSGATE_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    outcome = sample()
    with sqlite_engine() as engine:
        run("sqlite", engine, outcome, args.documents)
    if args.postgres:
        with postgres_engine(args.postgres) as engine:
            run("postgresql", engine, outcome, args.documents)
    else:
        print("postgresql skipped: pass --postgres URL or set MSSGATE_TEST_POSTGRES_URL")


if __name__ == "__main__":
    main()
