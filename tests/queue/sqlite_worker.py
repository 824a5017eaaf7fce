"""One gateway process leasing and acking from a shared SQLite file, in several threads (run by
test_exclusive_leases)."""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mssgate.db import open_engine
from mssgate.directory import Directory
from mssgate.queue import DocumentQueue


def _wait_for(folder: Path, prefix: str, count: int) -> None:
    while len(list(folder.glob(f"{prefix}-*"))) < count:
        time.sleep(0.01)


def main(url: str, consumer_name: str, folder: Path, workers: int, threads: int) -> None:
    engine = open_engine(url)
    consumer = next(
        c for c in Directory(engine, actor="w").consumers.list() if c.name == consumer_name
    )
    queue = DocumentQueue(engine)
    # Every worker holds a lease before any goes on, so that they all really compete (a worker
    # started late could otherwise find the queue drained).
    [first] = queue.lease(consumer, max_documents=1, lease_seconds=600)
    (folder / f"leased-{os.getpid()}").touch()
    _wait_for(folder, "leased", workers)
    queue.ack(consumer, first.document.id or "", first.lease_id)

    def drain(_: int) -> list[str]:
        taken: list[str] = []
        while leases := queue.lease(consumer, max_documents=1, lease_seconds=600):
            for lease in leases:
                queue.ack(consumer, lease.document.id or "", lease.lease_id)
                taken.append(lease.document.id or "")
        return taken

    with ThreadPoolExecutor(max_workers=threads) as pool:
        taken = [doc for part in pool.map(drain, range(threads)) for doc in part]
    engine.dispose()
    sys.stdout.write(json.dumps([first.document.id, *taken]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
