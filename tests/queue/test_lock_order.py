"""Issue 12 A.1 at the level where it lived: the spool's group commit and the queue's lease
and ack transitions on one SQLite database, from many threads at once.

SQLite's busy handler is turned off (busy_timeout 0): any writer of this process that
reached SQLite's lock while another held it would fail at once with `database is locked`.
Before the write-transaction API, leases held SQLite's lock (BEGIN IMMEDIATE) before they took
the process's, so a spool commit that held the process's lock met SQLite's lock, and each
waited for the other until the busy handler gave up (10 s, then a 451).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from mssgate.db import open_engine, upgrade
from mssgate.queue import DocumentQueue, QueueSettings
from mssgate.spool import Spool, new_queue_id
from tests.queue.helpers import RIS_A, add_consumer, add_mailboxes, cda, fill, mail

DOCUMENTS = 100
ACCEPTS = 300


def test_spool_commits_and_queue_transitions_never_meet_sqlite_busy(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    add_mailboxes(engine, RIS_A)
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    queue = DocumentQueue(
        engine, settings=QueueSettings(max_attempts=3, visibility_timeout_seconds=60),
        data_dir=tmp_path,
    )  # fmt: skip
    spool = Spool(engine, tmp_path / "spool")
    engine.dispose()

    def no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    event.listen(engine, "connect", no_busy_wait)
    errors: list[str] = []
    acked: list[str] = []
    fed = threading.Event()
    lock = threading.Lock()

    def guarded(work: Any) -> Any:
        def run(*args: Any) -> None:
            try:
                work(*args)
            except Exception as exc:  # a thread's exception would be lost
                with lock:
                    errors.append(f"{work.__name__}: {type(exc).__name__}: {exc}"[:300])

        return run

    @guarded
    def accept(n: int) -> None:
        for i in range(ACCEPTS // 3):
            spool.accept(
                queue_id=new_queue_id(), content=mail([cda(10_000 + n * 1000 + i)]),
                listener="submission", sender=RIS_A, identity=RIS_A, peer=None,
                recipients=[(RIS_A, "local")],
            )  # fmt: skip

    @guarded
    def feed() -> None:
        fill(queue, DOCUMENTS)
        fed.set()

    @guarded
    def lease_and_ack() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            leases = queue.lease(consumer, max_documents=3)
            if not leases:
                if fed.is_set() and len(acked) >= DOCUMENTS:
                    return
                continue
            for x in leases:
                queue.ack(consumer, x.document.id, x.lease_id)
                with lock:
                    acked.append(x.document.id)

    threads = [threading.Thread(target=accept, args=(n,), daemon=True) for n in range(3)]
    threads += [threading.Thread(target=feed, daemon=True)]
    threads += [threading.Thread(target=lease_and_ack, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(acked) == DOCUMENTS
    assert sum(len(e.recipients) for e in spool.entries()) == ACCEPTS // 3 * 3
