"""Review of issue 12 A.3 (delivery lanes) on PostgreSQL: two lanes finishing deliveries of
one message at the same moment.

A message to two RIS mailboxes: each lane records its delivery and the document job of its
mailbox in one transaction. Inserting the job row takes a KEY SHARE lock on the message row
(its foreign key); the done check then locked that row FOR UPDATE, which conflicts with the
other lane's KEY SHARE: each lane waited for the other, PostgreSQL broke the cycle by failing
one (`deadlock detected`), and that delivery, already in the mailbox, was made again.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from mssgate.spool import Spool, new_queue_id
from mssgate.spool.store import PendingDelivery

RIS_A = "ris-a@hopital.test"
RIS_B = "ris-b@hopital.test"


@pytest.mark.postgres
def test_two_lanes_recording_document_jobs_of_one_message_never_deadlock(
    pg_engine: Engine, tmp_path: Path
) -> None:
    spool = Spool(pg_engine, tmp_path / "spool")
    queue_id = new_queue_id()
    spool.accept(queue_id=queue_id, content=b"Subject: x\r\n\r\nbody\r\n", listener="mta",
                 sender="dr.a@clinique.test", identity=None, peer="192.0.2.1",
                 recipients=[(RIS_A, "local"), (RIS_B, "local")])  # fmt: skip
    items = sorted(spool.due(route="local"), key=lambda i: i.recipient)
    assert [i.recipient for i in items] == [RIS_A, RIS_B]

    # Both lanes reach the done check together, as they do under load (made deterministic:
    # each waits for the other at its first lock of the message row).
    meet = threading.Barrier(2, timeout=10)
    met: set[int] = set()

    def rendezvous(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        me = threading.get_ident()
        if "FOR" in statement and "spool_messages" in statement and me not in met:
            met.add(me)
            meet.wait()

    event.listen(pg_engine, "before_cursor_execute", rendezvous)
    errors: list[str] = []

    def lane(item: PendingDelivery) -> None:
        try:
            spool.delivered(item, documents=True)
        except Exception as exc:  # collected: a thread's exception would be lost
            errors.append(f"{type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=lane, args=(item,)) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    event.remove(pg_engine, "before_cursor_execute", rendezvous)
    assert errors == []
    states = {spool.recipient_state(queue_id, r).state for r in (RIS_A, RIS_B)}
    assert states == {"delivered"}
    # The message waits for its two document jobs, not for a delivery.
    assert spool.path(queue_id).exists()
