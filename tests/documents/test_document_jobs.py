"""Document jobs (issue 12 item 13): recorded with the delivery, the spool keeps the message
until the job is done, the worker runs the pipeline in a worker process and ingests, and a
job run again (a crash after the ingest, before `done`) changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssgate.config import load_config
from mssgate.db import open_engine, upgrade
from mssgate.db.tx import write
from mssgate.directory import Directory
from mssgate.documents.isolation import PipelinePool
from mssgate.documents_worker import DocumentWorker
from mssgate.integration import DocumentFeed
from mssgate.metrics import DatabaseCollector
from mssgate.queue import DocumentQueue
from mssgate.spool import PendingDelivery, Spool, new_queue_id
from mssgate.spool.jobs import DocumentJobs, add_document_job
from tests.queue.helpers import RIS_A, SENDER, add_consumer, add_mailboxes

from .factory import CdaSpec, make_cda, make_mail


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_job_is_kept_with_its_message_processed_once_and_replayed_harmlessly(
    datadir: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    config = load_config(datadir / "mssgate.toml")
    if backend == "postgres":
        engine: Engine = request.getfixturevalue("pg_engine")
    else:
        engine = open_engine(config.database_url)
        upgrade(engine)
    add_mailboxes(engine, RIS_A)
    add_consumer(engine, "ris-a", RIS_A)
    queue = DocumentQueue.from_config(config, engine)
    spool = Spool(engine, config.server.data_dir / "spool")
    raw = make_mail([("CR.xml", make_cda(CdaSpec()), "text/xml")])
    queue_id = new_queue_id()
    spool.accept(queue_id=queue_id, content=raw, listener="mta", sender=SENDER, identity=None,
                 peer=None, recipients=[(RIS_A, "local")])  # fmt: skip
    item = PendingDelivery(spool_id=queue_id, recipient=RIS_A, route="local", attempts=0)
    feed = DocumentFeed(queue, spool, Directory(engine, actor="test"), config)
    assert feed.wants(RIS_A)

    spool.delivered(item, documents=True)
    jobs = DocumentJobs(engine)
    assert [j.spool_id for j in jobs.due()] == [queue_id]
    # The backlog is a gauge: route "documents" of the pending recipients.
    families = {f.name: f for f in DatabaseCollector(engine).collect()}
    [waiting] = [s for s in families["mssgate_spool_recipients_pending"].samples
                 if s.labels["route"] == "documents"]  # fmt: skip
    assert waiting.value == 1
    # Every recipient has the message, but the pipeline has not read it yet: it stays.
    [entry] = spool.entries()
    assert entry.state == "queued" and spool.path(queue_id).exists()
    assert {"recipient": RIS_A, "route": "documents", "state": "pending", "attempts": 0,
            "last_error": None} in entry.recipients  # fmt: skip

    pool = PipelinePool(1)
    pool.start()
    try:
        worker = DocumentWorker(jobs, spool, feed, pool, config=config.documents)
        assert asyncio.run(worker.run_once()) == 1
        assert jobs.due() == []
        assert list(spool.entries()) == [] and not spool.path(queue_id).exists()
        # allow_test_ins is off in this folder: the document is held, never lost.
        [held] = queue.quarantine.entries()
        assert held.code == 906

        # A crash after the ingest and before `done` leaves the job due: run it again.
        spool.path(queue_id).write_bytes(raw)
        with write(engine) as conn:
            add_document_job(conn, queue_id, RIS_A)
        assert asyncio.run(worker.run_once()) == 1
        assert [e.id for e in queue.quarantine.entries()] == [held.id]
        assert queue.entries() == []
    finally:
        pool.stop()
        engine.dispose()
