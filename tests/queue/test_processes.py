"""Several gateway processes on one PostgreSQL lease without duplicates (SKIP LOCKED)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssgate.queue import DocumentQueue
from tests.queue.helpers import RIS_A, add_consumer, add_mailboxes, fill

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.postgres
@pytest.mark.slow
def test_processes_never_lease_the_same_document(
    pg_engine: Engine, pg_schema: str, tmp_path: Path
) -> None:
    add_mailboxes(pg_engine, RIS_A)
    add_consumer(pg_engine, "ris-a", RIS_A)
    ids = fill(DocumentQueue(pg_engine, data_dir=tmp_path), 120)
    start_at = str(time.time() + 4)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.queue.pg_worker", pg_schema, "ris-a", start_at],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    taken: list[str] = []
    busy = 0
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err.decode()
        got = json.loads(out)
        busy += bool(got)
        taken += got
    assert len(taken) == len(set(taken)) == len(ids)
    assert set(taken) == set(ids)
    assert busy >= 2  # they did compete
