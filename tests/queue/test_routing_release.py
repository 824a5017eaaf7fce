"""Releasing one document a routing rule held releases that document only (issue 16
review): the release runs the whole message again, and with the rules' holds passed over
for all of it, the message's other held documents were queued (and copied) too, though no
operator had looked at them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from mssgate.documents.limits import DocumentLimits
from mssgate.documents.record import PipelineResult
from mssgate.queue import DocumentQueue
from mssgate.queue.ingest import IngestReport, ingest, release
from mssgate.routing.model import Rule, parse_action, parse_match
from mssgate.routing.router import Router
from mssgate.routing.store import RuleStore
from tests.queue.helpers import RIS_A, RIS_B, SENDER, cda, mail


def _ingest(
    queue: DocumentQueue, raw: bytes, router: Router, result: PipelineResult | None = None
) -> IngestReport:
    return ingest(
        queue, raw, delivery="spool-1", mailbox=RIS_A, sender=SENDER, message_id=None,
        subject=None, received_at=datetime.now(UTC), limits=DocumentLimits(),
        allow_test_oids=True, result=result, router=router,
    )  # fmt: skip


def test_a_release_passes_over_the_hold_of_the_released_document_only(
    queue: DocumentQueue, engine: Engine
) -> None:
    store = RuleStore(engine)
    store.add(Rule(name="look", actions=(parse_action("copy-to " + RIS_B),
                                         parse_action("hold a human looks first"))),
              actor="test")  # fmt: skip
    router = Router(store, limits=DocumentLimits())
    report = _ingest(queue, mail([cda(1), cda(2)]), router)
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


def test_a_release_queues_and_copies_nothing_of_the_documents_it_did_not_release(
    queue: DocumentQueue, engine: Engine
) -> None:
    store = RuleStore(engine)
    store.add(Rule(name="copy", order=1, actions=(parse_action("copy-to " + RIS_B),)),
              actor="test")  # fmt: skip
    second_only = "xpath=//cda:ClinicalDocument/cda:id[@root='1.2.250.1.999.1.1.45.2']"
    store.add(Rule(name="look", order=2, match=parse_match([second_only]),
                   actions=(parse_action("hold a human looks first"),)), actor="test")  # fmt: skip
    router = Router(store, limits=DocumentLimits())
    report = _ingest(queue, mail([cda(1), cda(2)]), router)
    [held] = report.held
    assert len(report.queued) == 1 and len(queue.entries(mailbox=RIS_B)) == 1
    releasing = Router(store, limits=DocumentLimits(), holds=False)
    [queued] = release(queue, held, limits=DocumentLimits(), allow_test_oids=True,
                       actor="test", router=releasing)  # fmt: skip
    # The first document was queued and copied at ingest: the release of the second gives
    # neither queue it again (each RIS got it twice before, marked duplicate_of).
    assert len(queue.entries(mailbox=RIS_A)) == 2
    assert len(queue.entries(mailbox=RIS_B)) == 2
    assert queue.entry(queued).record.origin == queue.quarantine.get(held).origin


def test_a_message_held_whole_is_released_whole(queue: DocumentQueue, engine: Engine) -> None:
    from mssgate.documents.errors import QuarantineCode
    from mssgate.documents.pipeline import hold_message

    store = RuleStore(engine)
    store.add(Rule(name="copy", actions=(parse_action("copy-to " + RIS_B),)), actor="test")
    raw = mail([cda(1), cda(2)])
    held_whole = hold_message(raw, QuarantineCode.OTHER, "over budget")
    report = _ingest(queue, raw, Router(store, limits=DocumentLimits()), result=held_whole)
    [held] = report.held
    releasing = Router(store, limits=DocumentLimits(), holds=False)
    queued = release(queue, held, limits=DocumentLimits(), allow_test_oids=True,
                     actor="test", router=releasing)  # fmt: skip
    assert len(queued) == 2 and len(queue.entries(mailbox=RIS_B)) == 2
