"""The routing step of ingest: the rules of the moment, the CDA probed when a rule needs it
(in a killable worker under its budget), the plan per document, and its trace (one audit
entry and one log line per matching rule, with the rule's name).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from mssgate import audit
from mssgate.db.tx import write
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.record import Accepted
from mssgate.logs import event
from mssgate.routing.engine import CDA_FORMATS, Decision, Plan, Subject, evaluate, needs_cda
from mssgate.routing.l2_result import extend_plan
from mssgate.routing.model import Rule
from mssgate.routing.probe import CdaFacts, probe_cda
from mssgate.routing.store import RuleStore

if TYPE_CHECKING:
    from mssgate.config import Config
    from mssgate.documents.isolation import PipelinePool

log = logging.getLogger("mssgate.routing")


class Router:
    """`pool`: the document worker processes an XPath runs in, killed past `xpath_seconds`;
    without one (tests, tools) the probe runs in this thread with only the node budget.
    `holds=False`: an operator's release, which `hold` actions no longer stop."""

    def __init__(
        self,
        store: RuleStore,
        *,
        limits: DocumentLimits,
        xpath_seconds: float = 2.0,
        xpath_max_nodes: int = 200_000,
        pool: PipelinePool | None = None,
        holds: bool = True,
        max_forwards: int = 10,
    ) -> None:
        self.store = store
        self._max_forwards = max_forwards
        self._limits = limits
        self._seconds = xpath_seconds
        self._max_nodes = xpath_max_nodes
        self._pool = pool
        self.holds = holds

    @classmethod
    def from_config(
        cls, config: Config, engine: Engine, *, pool: PipelinePool | None = None, holds: bool = True
    ) -> Router:
        return cls(
            RuleStore(engine, config.routing.rule),
            limits=DocumentLimits.from_config(config.documents),
            xpath_seconds=config.routing.xpath_seconds,
            xpath_max_nodes=config.routing.xpath_max_nodes,
            pool=pool,
            holds=holds,
            max_forwards=config.routing.max_forwards,
        )

    def with_pool(self, pool: PipelinePool | None) -> Router:
        return Router(self.store, limits=self._limits, xpath_seconds=self._seconds,
                      xpath_max_nodes=self._max_nodes, pool=pool, holds=self.holds,
                      max_forwards=self._max_forwards)  # fmt: skip

    def rules(self) -> list[Rule]:
        return self.store.rules()

    def budget(self) -> MessageBudget:
        """The time the probes of one message's CDAs share (`xpath_seconds`), and its
        forwards (`max_forwards`)."""
        return MessageBudget(self._seconds, self._max_forwards)

    def plan(
        self,
        rules: list[Rule],
        outcome: Accepted,
        *,
        mailbox: str,
        sender: str,
        budget: MessageBudget | None = None,
        holds: bool | None = None,
    ) -> Plan:
        """`budget`: the message's (Router.budget), shared by its documents; without one,
        this document has a budget of its own. `holds`: this document's, over the router's."""
        record = outcome.record
        needed, xpaths = needs_cda(rules)
        facts = None
        if needed and record.document.format in CDA_FORMATS:
            facts = self.probe(outcome.content, xpaths, budget or self.budget())
        subject = Subject(mailbox=mailbox, sender=sender, record=record, facts=facts)
        holding = self.holds if holds is None else holds
        plan = evaluate(rules, subject, holds=holding)
        # An L2 result from a CRCDC (the d2lm preset): its L1 and GP deliveries.
        extend_plan(plan, outcome, mailbox=mailbox, sender=sender, rules=rules,
                    engine=self.store.engine, limits=self._limits, holds=holding)  # fmt: skip
        if plan.forwards:
            budget = budget or self.budget()
            if len(plan.forwards) > budget.forwards_left:
                # A sender decides how many documents a message carries: each forward is a
                # signed message out of this gateway, so their number per message is bounded.
                rule = plan.forwards[budget.forwards_left].rule
                plan.hold = (
                    f"routing rule {rule!r} would forward more than {self._max_forwards}"
                    " documents of this message ([routing] max_forwards)"
                )
                plan.held_by = rule
                plan.copies.clear()
                plan.forwards.clear()
                budget.forwards_left = 0
            else:
                budget.forwards_left -= len(plan.forwards)
        return plan

    def probe(self, data: bytes, xpaths: tuple[str, ...], budget: MessageBudget) -> CdaFacts:
        # A sender decides how many CDAs a message carries: with a budget per CDA, one
        # message of many slow ones killed a worker and waited a budget for each.
        if budget.left <= 0:
            return CdaFacts(
                failure=f"this message's routing budget of {self._seconds:g} s was spent"
                " on its other documents"
            )
        if self._pool is None:
            started = time.monotonic()
            try:
                return probe_cda(data, xpaths=xpaths, max_nodes=self._max_nodes,
                                 limits=self._limits)  # fmt: skip
            finally:
                budget.left -= time.monotonic() - started
        from mssgate.documents.isolation import Failed

        outcome = self._pool.run(probe_cda, data, budget.left, xpaths=xpaths,
                                 max_nodes=self._max_nodes, limits=self._limits)  # fmt: skip
        if isinstance(outcome, Failed):
            # The worker is gone (killed past the budget, or dead): none is spent on the
            # message's other CDAs, which are held too.
            budget.left = 0.0
            reason = (
                f"the CDA's routing XPath ran over its budget of {self._seconds:g} s"
                if outcome.timed_out
                else outcome.reason
            )
            return CdaFacts(failure=reason)
        budget.left -= outcome.seconds
        return outcome.result


class MessageBudget:
    """Seconds left for the routing probes of one message's CDAs, and forwards left."""

    def __init__(self, seconds: float, forwards: int = 10) -> None:
        self.left = seconds
        self.forwards_left = forwards


def trace(
    engine: Engine,
    plan: Plan,
    *,
    subject: str,
    mailbox: str,
    copies: Mapping[str, str],
    actor: str,
    forwards: Mapping[str, str] | None = None,
) -> None:
    """One audit entry and one log line per matching rule. `subject`: the queue entry (or
    the quarantine entry, when held); `copies`: the copies' entries by mailbox; `forwards`:
    the forwards' outbound ids by recipient."""
    forwards = forwards or {}
    with write(engine) as conn:
        for decision in plan.decisions:
            detail: dict[str, object] = {
                "rule": decision.rule,
                "actions": list(decision.actions),
                "mailbox": mailbox,
            }
            made = {
                a.partition(" ")[2]: copies[a.partition(" ")[2]]
                for a in decision.actions
                if a.startswith("copy-to ") and a.partition(" ")[2] in copies
            }
            if made:
                detail["copies"] = made
            sent = _forwarded(decision, forwards)
            if sent:
                detail["forwards"] = sent
            if plan.held_by == decision.rule:
                detail["held"] = True
            audit.append(conn, actor=actor, action="routing.decision", subject=subject,
                         detail=detail)  # fmt: skip
    for decision in plan.decisions:
        # Rule names, actions and ids only: no patient data in a log line.
        fields: dict[str, Any] = {"actions": list(decision.actions),
                                  "held": plan.held_by == decision.rule}  # fmt: skip
        sent = _forwarded(decision, forwards)
        if sent:
            fields["forwards"] = sent  # outbound ids by recipient (a practitioner's address)
        event(log, "routing.decision", rule=decision.rule, entry=subject, mailbox=mailbox,
              **fields)  # fmt: skip


def _forwarded(decision: Decision, forwards: Mapping[str, str]) -> dict[str, str]:
    """The outbound ids of the forwards this rule's decision made, by recipient."""
    made: dict[str, str] = {}
    for action in decision.actions:
        words = action.split()
        if len(words) >= 2 and words[0] == "forward" and words[1] in forwards:
            made[words[1]] = forwards[words[1]]
    return made
