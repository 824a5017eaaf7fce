"""One gateway process leasing and acking from a shared SQLite file, in several threads (run by
test_exclusive_leases)."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from mssgate.db import open_engine
from mssgate.directory import Directory
from mssgate.queue import DocumentQueue


def main(url: str, consumer_name: str, start_at: float, threads: int) -> None:
    engine = open_engine(url)
    consumer = next(
        c for c in Directory(engine, actor="w").consumers.list() if c.name == consumer_name
    )
    queue = DocumentQueue(engine)
    # Every worker starts at the same moment, so that they really compete.
    time.sleep(max(0.0, start_at - time.time()))

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
    sys.stdout.write(json.dumps(taken))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
