"""`mssgate serve` keeps the queue moving on its own: expired leases are reaped (a dead
document's error MDN leaves without any consumer calling), and a receipt left pending in
the outbox (its hand-over failed, or a kill -9 came between commit and hand-over) is sent."""

from __future__ import annotations

import email
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.db.schema import receipts_outbox
from mssgate.directory import Directory
from mssgate.queue import DocumentQueue, QueueSettings, QueueState
from tests.conftest import DOMAIN, Cli
from tests.queue.helpers import cda, deliver, mail
from tests.smtp.conftest import ALICE, PASSWORD, Gateway, free_env

RIS = f"ris@{DOMAIN}"


@pytest.fixture
def seeded(cli: Cli, datadir: Path) -> Iterator[tuple[Gateway, Engine, list[str]]]:
    cli.ok("directory", "add", ALICE, "--name", "alice", "--rpps", "99700367909",
           "--password-stdin",
           stdin=PASSWORD + "\n")  # fmt: skip
    cli.ok("directory", "add", RIS, "--name", "RIS imagerie", "--kind", "application")
    cli.ok("consumer", "add", "ris", "--mailbox", RIS)
    engine = open_engine(load_config(datadir / "mssgate.toml").database_url)
    [consumer] = Directory(engine, actor="test").consumers.list()

    # An hour ago: two documents leased; one acked, then a kill -9 before its receipt was
    # handed over (no callback: it stays pending); the other's lease, its last attempt,
    # long expired.
    then = datetime.now(UTC) - timedelta(hours=1)
    earlier = DocumentQueue(
        engine,
        settings=QueueSettings(max_attempts=1),
        data_dir=datadir,
        clock=lambda: then,
    )
    ids = [deliver(earlier, mail([cda(n)], n=n, receipt=True, sender=ALICE, to=RIS),
                   mailbox=RIS, sender=ALICE)[0] for n in (1, 2)]  # fmt: skip
    leases = earlier.lease(consumer, max_documents=2, lease_seconds=30)
    assert [lease.document.id for lease in leases] == ids
    earlier.ack(consumer, ids[1], leases[1].lease_id)
    assert [r.document_id for r in earlier.pending_receipts()] == [ids[1]]

    gateway = Gateway(data=datadir, env=free_env(datadir))
    gateway.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    gateway.env["MSSGATE_QUEUE__MAX_ATTEMPTS"] = "1"
    gateway.env["MSSGATE_QUEUE__MAINTENANCE_INTERVAL_SECONDS"] = "0.2"
    try:
        yield gateway, engine, ids
    finally:
        if gateway.proc is not None:
            gateway.stop()
        engine.dispose()


def test_serve_reaps_expired_leases_and_drains_the_receipt_outbox(
    seeded: tuple[Gateway, Engine, list[str]],
) -> None:
    gateway, engine, (expired, acked) = seeded
    gateway.start()
    # No consumer calls anything: both receipts reach the sender's mailbox all the same.
    receipts = gateway.wait_delivered(ALICE, 2)
    subjects = sorted(
        str(email.message_from_bytes(p.read_bytes(), policy=policy.SMTP)["Subject"])
        for p in receipts
    )
    assert subjects[0].startswith("XDM/1.0/DDM") and subjects[1].startswith(
        "[KO Intégration système !][906]"
    )
    queue = DocumentQueue(engine)
    assert queue.entry(expired).state == QueueState.DEAD
    assert queue.entry(acked).state == QueueState.DONE
    with engine.connect() as conn:
        rows = conn.execute(select(receipts_outbox.c.document_id, receipts_outbox.c.state))
        states = {row.document_id: row.state for row in rows}
    assert states == {expired: "handed", acked: "handed"}
    assert len(gateway.mailbox(ALICE)) == 2  # each once

    # Later rounds, while serve runs: another receipt stranded by a dead process goes too.
    then = datetime.now(UTC) - timedelta(hours=1)
    # Its lease must outlive the hour back in time, or serve's reaper could take it first.
    stranded = DocumentQueue(
        engine,
        settings=QueueSettings(max_lease_seconds=3 * 3600),
        data_dir=gateway.data,
        clock=lambda: then,
    )
    [consumer] = Directory(engine, actor="test").consumers.list()
    [doc_id] = deliver(stranded, mail([cda(3)], n=3, receipt=True, sender=ALICE, to=RIS),
                       mailbox=RIS, sender=ALICE)  # fmt: skip
    [lease] = stranded.lease(consumer, lease_seconds=2 * 3600)
    stranded.ack(consumer, doc_id, lease.lease_id)
    gateway.wait_delivered(ALICE, 3)
