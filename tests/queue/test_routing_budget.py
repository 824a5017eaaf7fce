"""Routing's time budget is the message's, not each CDA's (issue 16 review): a sender who
puts many CDAs in one message, each running a rule's XPath to the end of its budget, must
not get one killed worker and one budget per CDA."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from mssgate.documents.isolation import PipelinePool
from mssgate.documents.limits import DocumentLimits
from mssgate.queue import DocumentQueue
from mssgate.queue.ingest import ingest
from mssgate.routing.model import Rule, parse_action, parse_match
from mssgate.routing.router import Router
from mssgate.routing.store import RuleStore
from tests.queue.helpers import RIS_A, SENDER, cda, mail

# Quintic in the nodes: runs far past any budget over the sample CDA.
SLOW_XPATH = "count(//*[count(//*[count(//*[count(//*[count(//*) > 0]) > 0]) > 0]) > 0])"


def test_the_cdas_of_one_message_share_one_routing_budget(
    queue: DocumentQueue, engine: Engine
) -> None:
    store = RuleStore(engine)
    rule = Rule(name="slow", match=parse_match([f"xpath={SLOW_XPATH}"]),
                actions=(parse_action("tag never"),))  # fmt: skip
    store.add(rule, actor="test")
    pool = PipelinePool(1)
    pool.start()
    try:
        router = Router(store, limits=DocumentLimits(), xpath_seconds=0.5, pool=pool)
        report = ingest(
            queue, mail([cda(i) for i in range(1, 5)]), delivery="spool-1", mailbox=RIS_A,
            sender=SENDER, message_id=None, subject=None, received_at=datetime.now(UTC),
            limits=DocumentLimits(), allow_test_oids=True, router=router,
        )  # fmt: skip
        # One worker killed for the message, not one per CDA (four before).
        assert pool.replaced == 1
    finally:
        pool.stop()
    assert report.queued == [] and len(report.held) == 4
    reasons = sorted(queue.quarantine.get(i).reason for i in report.held)
    assert reasons[0].startswith("routing rule 'slow' could not be decided: the CDA's routing")
    assert all("routing rule 'slow' could not be decided" in r for r in reasons)
    assert sum("budget of 0.5 s was spent" in r for r in reasons) == 3, reasons
