"""Who may claim a copy's delivery (issue 15, review): a DSN is sent with the null reverse
path (RFC 3461 6.2, RFC 5321 4.5.5). A report shaped like one, From mailer-daemon@ the
recipient's domain, but with an envelope sender (a practitioner of that domain whose own
gateway lets its From: through) changes nothing; the same report with the null sender does.
Through the real DocumentFeed, as `serve` wires it, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from mssgate.db.schema import outbound_recipients
from mssgate.directory import Directory
from mssgate.integration import DocumentFeed
from mssgate.queue import DocumentQueue, QueueSettings
from mssgate.spool import new_queue_id
from tests.api.test_outbound_ack_leases import Sending, _deliver, _dsn
from tests.api.test_outbound_ack_leases import sending as sending  # the fixture
from tests.queue.helpers import RIS_A, RIS_B


def _status(s: Sending, outbound_id: str) -> str:
    [copy] = s.api.get(f"/v1/outbound/{outbound_id}").json()["recipients"]
    return str(copy["status"])


def test_a_dsn_with_an_envelope_sender_claims_nothing(sending: Sending) -> None:
    s = sending
    outbound_id = s.submit("ZS-1", RIS_B)
    _deliver(s.spool, RIS_B)
    with s.engine.connect() as conn:
        spool_id = conn.execute(
            select(outbound_recipients.c.spool_id).where(
                outbound_recipients.c.outbound_id == outbound_id
            )
        ).scalar_one()
    queue = DocumentQueue(s.engine, settings=QueueSettings(), data_dir=s.config.server.data_dir)
    feed = DocumentFeed(queue, s.spool, Directory(s.engine, actor="test"), s.config,
                        on_message=s.outbound.observe)  # fmt: skip
    report = _dsn(envid=spool_id, recipient=RIS_B, action="failed", status="5.2.2",
                  diagnostic="552 5.2.2 mailbox full")  # fmt: skip

    def arrives(sender: str) -> None:
        queue_id = new_queue_id()
        s.spool.accept(queue_id=queue_id, content=report, listener="mta", sender=sender,
                       identity=None, peer="127.0.0.1", recipients=[(RIS_A, "local")])  # fmt: skip
        feed.ingest(queue_id, RIS_A, report)

    arrives(RIS_B)  # the forged one: a practitioner's envelope
    assert _status(s, outbound_id) == "delivered"
    arrives("")  # the mail system's
    assert _status(s, outbound_id) == "failed"
