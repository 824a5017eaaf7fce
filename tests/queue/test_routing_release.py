"""Releasing one document a routing rule held releases that document only (issue 16
review): the release runs the whole message again, and with the rules' holds passed over
for all of it, the message's other held documents were queued (and copied) too, though no
operator had looked at them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from mssgate.documents.limits import DocumentLimits
from mssgate.queue import DocumentQueue
from mssgate.queue.ingest import ingest, release
from mssgate.routing.model import Rule, parse_action
from mssgate.routing.router import Router
from mssgate.routing.store import RuleStore
from tests.queue.helpers import RIS_A, RIS_B, SENDER, cda, mail


def test_a_release_passes_over_the_hold_of_the_released_document_only(
    queue: DocumentQueue, engine: Engine
) -> None:
    store = RuleStore(engine)
    store.add(Rule(name="look", actions=(parse_action("copy-to " + RIS_B),
                                         parse_action("hold a human looks first"))),
              actor="test")  # fmt: skip
    router = Router(store, limits=DocumentLimits())
    report = ingest(
        queue, mail([cda(1), cda(2)]), delivery="spool-1", mailbox=RIS_A, sender=SENDER,
        message_id=None, subject=None, received_at=datetime.now(UTC),
        limits=DocumentLimits(), allow_test_oids=True, router=router,
    )  # fmt: skip
    first, second = report.held
    releasing = Router(store, limits=DocumentLimits(), holds=False)
    queued = release(queue, first, limits=DocumentLimits(), allow_test_oids=True,
                     actor="test", router=releasing)  # fmt: skip
    assert len(queued) == 1
    assert queue.entry(queued[0]).record.origin == queue.quarantine.get(first).origin
    # The other stays held, for its own release; nothing of it reached a queue.
    assert queue.quarantine.get(second).state == "held"
    [copy] = queue.entries(mailbox=RIS_B)
    assert copy.record.origin == queue.quarantine.get(first).origin
