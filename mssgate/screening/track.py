"""What the routing of one queued document means for the screening cases: an L1 form the
d2lm preset sent to a CRCDC opens a case; a form a CRCDC sent (the preset's
`d2lm-from-crcdc` rule matched) is an L2 result and closes the case of its form.

Called by ingest after the document is queued, replay or not: opening is keyed by (mailbox,
form id) and closing only touches open cases, so a replayed delivery changes nothing.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

from sqlalchemy import Engine

from mssgate.documents.record import DocumentRecord
from mssgate.logs import event
from mssgate.routing.engine import Plan
from mssgate.routing.preset import L2_RULE_PREFIX, RESULT_RULE
from mssgate.screening.cases import NewCase, ScreeningCases

log = logging.getLogger("mssgate.screening")


def track(
    engine: Engine,
    plan: Plan,
    record: DocumentRecord,
    *,
    queue_document_id: str,
    mailbox: str,
    sender: str,
    replaces: str | None,
    actor: str,
) -> None:
    """`record`: the queued document's; `replaces`: the relatedDocument the CDA names (as
    received: ingest drops it from the record when the sender is not the replaced form's)."""
    form = plan.facts.d2lm if plan.facts is not None else None
    if form is None or plan.hold is not None:
        return
    cases = ScreeningCases(engine)
    document = record.document
    rules = [d.rule for d in plan.decisions]
    if RESULT_RULE in rules:
        if form.right.l2 is None and form.left.l2 is None:
            # A form the CRCDC sent back without an L2 result (films to redo, a question):
            # the second reading is still owed, its case stays open and counted.
            event(log, "screening.l2_result", entry=queue_document_id, cases=[],
                  reason="no L2 result in the form")  # fmt: skip
            return
        closed = cases.result(
            crcdc=sender.lower(),
            set_id=document.set_id,
            replaces=replaces,
            ins=form.ins,
            document_id=document.unique_id or queue_document_id,
            queue_document_id=queue_document_id,
            actor=actor,
        )
        event(log, "screening.l2_result", entry=queue_document_id, cases=closed)
        return
    for decision in plan.decisions:
        if not decision.rule.startswith(L2_RULE_PREFIX):
            continue
        crcdc = _sent_to(decision.actions)
        if crcdc is None:
            continue
        received = record.received_at.date() if record.received_at is not None else None
        if received is None:
            continue  # never: ingest stamps every record it queues
        exam = _believed(form.exam_date, received)
        new = NewCase(
            mailbox=mailbox,
            queue_document_id=queue_document_id,
            document_id=document.unique_id or queue_document_id,
            set_id=document.set_id,
            ins=form.ins,
            ins_oid=form.ins_oid,
            exam_date=exam,
            exam_date_known=exam == form.exam_date,
            departement=form.departement,
            crcdc=crcdc,
            l1_rpps=form.l1_reader.rpps if form.l1_reader else None,
            l1_email=form.l1_reader.email if form.l1_reader else None,
            gp_rpps=form.gp.rpps if form.gp else None,
            gp_email=form.gp.email if form.gp else None,
        )
        case_id, created = cases.open(new, actor=actor)
        if created:
            event(log, "screening.case_open", case=case_id, entry=queue_document_id,
                  crcdc=crcdc, departement=form.departement)  # fmt: skip
        return


def _believed(exam: date | None, received: date) -> date:
    """The day the deadline counts from: the form's exam date, unless it has none or one
    after the form arrived (a typo such as 2099 would keep the case out of the overdue count
    for ever); then the day received. The day after is believed: a form dated in Paris
    before midnight UTC."""
    if exam is None or exam > received + timedelta(days=1):
        return received
    return exam


def _sent_to(actions: tuple[str, ...]) -> str | None:
    """The CRCDC address a preset rule copied or forwarded the form to; None when the send
    was not made (a forward refused as a loop says so in parentheses)."""
    for action in actions:
        kind, _, rest = action.partition(" ")
        if kind in ("copy-to", "forward") and rest and "(" not in rest:
            return rest.partition(" from ")[0].strip().lower()
    return None
