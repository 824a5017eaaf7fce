"""Rules against one document: which match, and what they decide (pure; no I/O).

Rules run in order (then by name). A matching rule adds its tags, copies and forwards; `hold`
holds the document (with no copy nor forward: a held document goes nowhere until an operator
releases it) and ends the run; `stop` ends it. A forward is of a CDA only, never to the
document's sender or to the mailbox it came to (a loop). A rule whose match needs the CDA
when the CDA could not be probed within its budget cannot be decided: the document is held,
naming the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mssgate.documents.record import Accepted, DocumentRecord
from mssgate.routing.model import Match, Rule
from mssgate.routing.probe import CdaFacts

CDA_FORMATS = ("cda-n1", "cda-n3")


@dataclass(frozen=True)
class Subject:
    """What a rule is matched against: the envelope and the document's record, and the
    CDA's facts when a rule needed them (None: not probed, or not a CDA)."""

    mailbox: str
    sender: str
    record: DocumentRecord
    facts: CdaFacts | None = None


@dataclass(frozen=True)
class Decision:
    """One matching rule, and what it did (as action texts: `copy-to a@b`, `tag x`)."""

    rule: str
    actions: tuple[str, ...]


@dataclass(frozen=True)
class Forward:
    """A new message to `to`, sent by `sender` (None: `[routing] forward_from`). `outcome`:
    the document to send instead of the one routed (the GP's copy of an L2 result without
    its L2 reader, mssgate.routing.l2_result)."""

    rule: str
    to: str
    sender: str | None = None
    outcome: Accepted | None = None
    # Optional: one that cannot be sent is said, not a hold of the document.
    optional: bool = False


@dataclass
class Plan:
    decisions: list[Decision] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    hold: str | None = None  # the reason, naming the rule
    held_by: str | None = None
    # What the probe read (None: no rule needed the CDA), for what follows the routing
    # (mssgate.screening tracks the CANCER-D2LM forms sent to L2).
    facts: CdaFacts | None = None

    @property
    def routed(self) -> bool:
        return bool(self.decisions)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _any(wanted: tuple[str, ...], have: Sequence[str | None]) -> bool:
    return not wanted or any(h is not None and h in wanted for h in have)


def matches(match: Match, subject: Subject) -> bool:
    """Whether `match` holds; raises Undecidable when it needs facts the probe could not get."""
    doc = subject.record.document
    if not (
        _any(match.mailbox, [subject.mailbox.lower()])
        and _any(match.domain, [_domain(subject.mailbox)])
        and _any(match.sender, [subject.sender.lower()])
        and _any(match.sender_domain, [_domain(subject.sender)])
        and _any(match.format, [doc.format])
        and _any(match.code, [doc.type_code])
        and _any(match.confidentiality, [c.upper() for c in doc.confidentiality])
    ):
        return False
    if not match.needs_cda():
        return True
    if doc.format not in CDA_FORMATS:
        return False  # what only a CDA carries, a PDF or another XDM entry does not
    facts = subject.facts
    if facts is None or facts.failure is not None:
        raise Undecidable(facts.failure if facts is not None else "the CDA was not probed")
    return (
        _any(match.template_id, facts.template_ids)
        and _any(match.service_event, facts.service_events)
        and _any(match.practice_setting, facts.practice_settings)
        and _any(match.departement, [facts.departement])
        and _any(match.d2lm, facts.d2lm_labels)
        and (match.xpath is None or facts.xpaths.get(match.xpath, False))
    )


class Undecidable(Exception):
    """A rule's match needs what could not be read within its budget."""


def ordered(rules: Sequence[Rule]) -> list[Rule]:
    return sorted(rules, key=lambda r: (r.order, r.name))


def evaluate(rules: Sequence[Rule], subject: Subject, *, holds: bool = True) -> Plan:
    """The plan for one document. `holds=False` (an operator's release) passes over `hold`
    actions and undecidable rules: the operator has looked at the document."""
    plan = Plan(facts=subject.facts)
    for rule in ordered(rules):
        if not rule.enabled:
            continue
        try:
            if not matches(rule.match, subject):
                continue
        except Undecidable as exc:
            if not holds:
                continue
            plan.hold = f"routing rule {rule.name!r} could not be decided: {exc}"[:480]
            plan.held_by = rule.name
            plan.decisions.append(Decision(rule.name, ("hold",)))
            return plan
        done: list[str] = []
        stop = False
        for action in rule.actions:
            if action.kind == "tag" and action.value not in plan.tags:
                assert action.value is not None
                plan.tags.append(action.value)
            elif action.kind == "copy-to":
                assert action.value is not None
                if action.value == subject.mailbox.lower():
                    continue  # its own queue has the document already
                if action.value not in plan.copies:
                    plan.copies.append(action.value)
            elif action.kind == "forward":
                refusal = _forward_refusal(action.forward_parts()[0], subject)
                if refusal is not None:
                    done.append(f"{action.text()} ({refusal})")
                    continue
                to, sender = action.forward_parts()
                if all(f.to != to for f in plan.forwards):
                    plan.forwards.append(Forward(rule.name, to, sender))
            elif action.kind == "hold":
                if not holds:
                    continue
                reason = _placed(action.value or "", subject.facts)
                plan.hold = f"held by routing rule {rule.name!r}: {reason}"[:480]
                plan.held_by = rule.name
                stop = True
            elif action.kind == "stop":
                stop = True
            done.append(action.text())
        plan.decisions.append(Decision(rule.name, tuple(done)))
        if stop:
            break
    if plan.hold is not None:
        plan.copies.clear()
        plan.forwards.clear()
    return plan


def _forward_refusal(to: str, subject: Subject) -> str | None:
    """Why a forward of this document is not made: only a CDA travels (the outbound path
    sends a CDA in its XDM archive); never back to its sender or its own mailbox (a loop)."""
    if subject.record.document.format not in CDA_FORMATS:
        return "not done: only a CDA is forwarded"
    if to == subject.sender.lower():
        return "refused: the document's own sender (a loop)"
    if to == subject.mailbox.lower():
        return "refused: the mailbox it came to (a loop)"
    return None


def _placed(reason: str, facts: CdaFacts | None) -> str:
    """A hold's reason with `{departement}` replaced by the document's: one rule that holds
    what no other rule took can say which département lacked one (the d2lm preset)."""
    if "{departement}" not in reason:
        return reason
    found = facts.departement if facts is not None else None
    return reason.replace("{departement}", found or "unknown (no French postal code)")


def needs_cda(rules: Sequence[Rule]) -> tuple[bool, tuple[str, ...]]:
    """Whether any enabled rule reads the CDA, and the XPaths to evaluate (each once)."""
    enabled = [r for r in rules if r.enabled]
    xpaths = tuple(dict.fromkeys(r.match.xpath for r in enabled if r.match.xpath))
    return any(r.match.needs_cda() for r in enabled), xpaths


def explain(rules: Sequence[Rule], plan: Plan) -> list[tuple[Rule, str]]:
    """Each rule with what it did for the document of `plan`, in order: its actions,
    `no match`, `disabled`, or `not reached` (after a rule that stopped or held)."""
    decided = {d.rule: d for d in plan.decisions}
    last = plan.decisions[-1].rule if plan.decisions else None
    ended = last is not None and (
        plan.held_by == last or any(a == "stop" for a in decided[last].actions)
    )
    shown: list[tuple[Rule, str]] = []
    reached = True
    for rule in ordered(rules):
        if not rule.enabled:
            shown.append((rule, "disabled"))
        elif not reached:
            shown.append((rule, "not reached"))
        elif rule.name in decided:
            actions = decided[rule.name].actions
            shown.append((rule, "matches: " + (", ".join(actions) or "nothing left to do")))
            if ended and rule.name == last:
                reached = False
        else:
            shown.append((rule, "no match"))
    return shown
