"""What one ingest did, counted apart (issue 18 item 10): new documents, documents that
repeat bytes the mailbox already got, documents held, and a replay of the same delivery,
on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from mssgate.documents.limits import DocumentLimits
from mssgate.queue import DocumentQueue
from mssgate.queue.ingest import IngestReport, ingest
from tests.documents.factory import CdaSpec, make_cda
from tests.queue.helpers import RIS_A, SENDER, cda, mail


def run(queue: DocumentQueue, raw: bytes, delivery: str) -> IngestReport:
    return ingest(
        queue,
        raw,
        delivery=delivery,
        mailbox=RIS_A,
        sender=SENDER,
        message_id=None,
        subject=None,
        received_at=datetime.now(UTC),
        limits=DocumentLimits(),
        allow_test_oids=True,
    )


def test_queued_duplicates_held_and_replayed_are_told_apart(queue: DocumentQueue) -> None:
    held_cda = make_cda(CdaSpec(include_ins=False))  # no INS: quarantined
    first = run(queue, mail([cda(1), held_cda]), "0000000000001FIRST")
    assert (len(first.queued), first.duplicates, first.replayed, len(first.held)) == (1, [], [], 1)
    # The same report in another message: queued again, said to be a duplicate.
    again = run(queue, mail([cda(1)], n=2), "0000000000002AGAIN")
    assert again.duplicates == again.queued and len(again.queued) == 1
    assert queue.duplicate_of(again.queued[0]) == first.queued[0]
    assert queue.duplicate_of(first.queued[0]) is None
    # The same delivery run again (a restart mid-ingest): nothing new, and said so.
    replay = run(queue, mail([cda(1)], n=2), "0000000000002AGAIN")
    assert replay.replayed == replay.queued == again.queued and replay.duplicates == []
