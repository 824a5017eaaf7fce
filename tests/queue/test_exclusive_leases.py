"""Leases stay exclusive when transitions share transactions (mssgate.queue.transitions): several
processes on one SQLite file, each with several consumer threads leasing and acking, never
lease a document twice, and the audit chain they write together verifies. (PostgreSQL across
processes: test_processes.py; threads of one process: test_transition_group.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine

from mssgate import audit
from mssgate.db import open_engine, upgrade
from mssgate.queue import DocumentQueue, QueueState
from tests.queue.helpers import RIS_A, add_consumer, add_mailboxes, fill

REPO = Path(__file__).resolve().parents[2]


def _engine(tmp_path: Path) -> tuple[Engine, str]:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = open_engine(url)
    upgrade(engine)
    return engine, url


def test_processes_and_threads_on_one_sqlite_file_never_lease_a_document_twice(
    tmp_path: Path,
) -> None:
    engine, url = _engine(tmp_path)
    add_mailboxes(engine, RIS_A)
    add_consumer(engine, "ris-a", RIS_A)
    queue = DocumentQueue(engine, data_dir=tmp_path)
    ids = fill(queue, 90)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.queue.sqlite_worker",
                url,
                "ris-a",
                str(barrier),
                "3",
                "3",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    taken: list[str] = []
    busy = 0
    for worker in workers:
        out, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err.decode()
        got = json.loads(out)
        busy += bool(got)
        taken += got
    assert sorted(taken) == sorted(ids)  # each once: none twice, none missed
    assert busy == 3  # each held a lease while the others leased (sqlite_worker's barrier)
    assert all(queue.entry(i).state is QueueState.DONE for i in ids)
    actions = [e.action for e in audit.entries(engine) if e.subject in set(ids)]
    assert actions.count("queue.lease") == 90 and actions.count("queue.ack") == 90
    report = audit.verify(engine)
    assert report.ok, report.problems
    engine.dispose()
