"""One gateway process leasing from a shared PostgreSQL schema (run by test_processes)."""

from __future__ import annotations

import json
import sys
import time

from mssgate.directory import Directory
from mssgate.queue import DocumentQueue
from tests.queue.conftest import pg_engine_for


def main(schema: str, consumer_name: str, start_at: float) -> None:
    engine = pg_engine_for(schema)
    consumer = next(
        c for c in Directory(engine, actor="w").consumers.list() if c.name == consumer_name
    )
    queue = DocumentQueue(engine)
    taken: list[str] = []
    # Every worker starts at the same moment, so that they really compete.
    time.sleep(max(0.0, start_at - time.time()))
    while True:
        leases = queue.lease(consumer, max_documents=1, lease_seconds=600)
        if not leases:
            break
        taken += [x.document.id for x in leases]
    engine.dispose()
    sys.stdout.write(json.dumps(taken))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
