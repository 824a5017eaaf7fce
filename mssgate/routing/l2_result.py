"""Where an L2 result goes: the decision (pure), and the directory look-up it is given.

An L2 result is a CANCER-D2LM interpretation form (FIN) sent BY a configured CRCDC mailbox
(issue 16: the direction is told by the sender; the d2lm preset's `d2lm-from-crcdc` rule
tags it `d2lm-l2-result`). It goes to:

- the L1 radiologist, the original (the CRCDC's own copy is the one it sent): the mailbox
  the L1 submission came to (its screening case: the practice's RIS, where this gateway saw
  the form), else the L1 author's `mailto:` telecom in the form, else the directory's one
  mailbox for the L1 RPPS; nothing more when the result came to that mailbox, else
  `copy-to` when it is hosted here, else `forward` (a new signed MSSanté message);
- the GP named in the form (participant `PCP`), the copy without the L2 reader
  (mssgate.documents.d2lm_anon): the GP's `mailto:` in the form, else the directory's one
  mailbox for the GP's RPPS; always a `forward` of the transformed bytes (a `copy-to` would
  hand the original to the GP's queue), and an optional one: when it cannot be sent (no
  `forward_from`, no key) the L1 delivery is not held for it, the decision says why.

Nothing is guessed: no L1 mailbox holds the document (an operator finds where it goes); a GP
without a mailbox, or a copy that could not be made, is a problem said in the audit and the
document's tags, and the L1 delivery goes on (the 15-day deadline runs). Never back to a
CRCDC (a loop), never the same mailbox twice.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Collection, Sequence
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, select

from mssgate.db.schema import professionals
from mssgate.documents.d2lm import D2lmForm, Practitioner
from mssgate.documents.d2lm_anon import anonymise_l2_reader, copy_oid, number_forms
from mssgate.documents.errors import DocumentError
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.record import Accepted
from mssgate.errors import ValidationFailed
from mssgate.identifiers import normalize_address
from mssgate.routing.engine import Decision, Forward, Plan
from mssgate.routing.model import Rule
from mssgate.routing.preset import RESULT_RULE
from mssgate.screening.cases import ScreeningCases

Role = Literal["l1", "gp"]
Source = Literal["form", "directory", "case"]
Via = Literal["copy-to", "forward"]
TAG_NO_GP: Final = "d2lm-l2-result-no-gp"
# Several mailboxes for one RPPS are listed in the reason up to this many.
_SHOWN: Final = 3


class Recipient(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    address: str
    source: Source
    via: Via
    # True: the copy without the L2 reader is sent, not the original.
    anonymised: bool


class L2ResultRouting(BaseModel):
    model_config = ConfigDict(frozen=True)

    recipients: tuple[Recipient, ...] = ()
    # Set: the document is held with this reason and goes nowhere.
    hold: str | None = None
    # What was not done, and why (audited, and tagged TAG_NO_GP when the GP got nothing).
    problems: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


def is_l2_result(form: D2lmForm | None, sender: str, crcdc: Collection[str]) -> bool:
    """An interpretation form sent by one of the CRCDC mailboxes (addresses lower case)."""
    return form is not None and form.kind == "FIN" and sender.strip().lower() in crcdc


def route_l2_result(
    form: D2lmForm,
    *,
    sender: str,
    crcdc: Collection[str],
    hosted: Callable[[str], bool],
    directory: Callable[[str], Sequence[str]],
    case_mailbox: str | None = None,
    anonymisation_error: str | None = None,
) -> L2ResultRouting | None:
    """The recipients of an L2 result, or None when the form is no L2 result (module
    docstring). `crcdc`: the CRCDC addresses (lower case); `hosted(address)`: a mailbox of
    this gateway; `directory(rpps)`: the active mailboxes of that practitioner;
    `case_mailbox`: where the L1 submission came to; `anonymisation_error`: why the GP's copy
    could not be made (mssgate.documents.d2lm_anon.AnonymisationError), None when it was."""
    if not is_l2_result(form, sender, crcdc):
        return None
    problems: list[str] = []
    taken = set(crcdc) | {sender.strip().lower()}
    case_address = _normal(case_mailbox) if case_mailbox is not None else None
    l1_found: tuple[str, Source] | None = (case_address, "case") if case_address else None
    if l1_found is None:
        l1_found = _address(form.l1_reader, "the L1 radiologist", directory, problems)
    if l1_found is not None and l1_found[0] in taken:
        problems.append(f"the L1 radiologist's mailbox {l1_found[0]} is a CRCDC's: not sent back")
        l1_found = None
    if l1_found is None:
        return L2ResultRouting(
            hold="L2 result: no mailbox found for the L1 radiologist ("
            + "; ".join(problems or ["the form names no L1 reader"])
            + "): an operator sends it on",
            problems=tuple(problems),
        )
    l1_address, l1_source = l1_found
    recipients = [
        Recipient(
            role="l1",
            address=l1_address,
            source=l1_source,
            via="copy-to" if hosted(l1_address) else "forward",
            anonymised=False,
        )
    ]
    gp = _gp(form, l1_address, taken, directory, anonymisation_error, problems, sender=sender)
    if gp is not None:
        recipients.append(gp)
    tags = () if gp is not None else (TAG_NO_GP,)
    return L2ResultRouting(recipients=tuple(recipients), problems=tuple(problems), tags=tags)


def _gp(
    form: D2lmForm,
    l1_address: str,
    taken: set[str],
    directory: Callable[[str], Sequence[str]],
    anonymisation_error: str | None,
    problems: list[str],
    *,
    sender: str,
) -> Recipient | None:
    if form.gp is None:
        problems.append("the form names no GP (participant PCP): no GP copy")
        return None
    same_person = (
        form.l1_reader is not None
        and form.gp.rpps is not None
        and (form.gp.rpps in number_forms(form.l1_reader.rpps or ""))
    )
    found = _address(form.gp, "the GP", directory, problems)
    if found is None:
        return None
    address, source = found
    if same_person or address == l1_address:
        problems.append("the GP is the L1 radiologist: the original only")
        return None
    if address in taken:
        problems.append(f"the GP's mailbox {address} is a CRCDC's: not sent back")
        return None
    if anonymisation_error is not None:
        problems.append(f"no GP copy: the L2 reader could not be removed ({anonymisation_error})")
        return None
    reader = form.l2_reader.email if form.l2_reader is not None else None
    if reader is not None and _normal(reader) is not None and _normal(reader) in taken:
        # A forward names its original sender (headers and note): the reader's own address.
        problems.append("no GP copy: the result was sent from the L2 reader's own mailbox")
        return None
    if form.l2_reader is not None and _names_reader(sender, form.l2_reader):
        # The same without a mailto in the form: the address itself says who read.
        problems.append("no GP copy: the result was sent from a mailbox naming the L2 reader")
        return None
    return Recipient(role="gp", address=address, source=source, via="forward", anonymised=True)


def _letters(value: str) -> str:
    """Letters and digits only, without accents, lower case: "Roy-Martin" -> "roymartin"."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if c.isascii() and c.isalnum()).lower()


def _names_reader(sender: str, reader: Practitioner) -> bool:
    """The sender's address names the L2 reader: its family name (3 letters or more) or one
    of its numbers in the local part ("alain.roy@", "810000000123@")."""
    local = _letters(sender.rpartition("@")[0])
    family = _letters(reader.family or "")
    numbers = number_forms(reader.rpps) if reader.rpps else frozenset()
    return (len(family) >= 3 and family in local) or any(n in local for n in numbers)


def _normal(address: str) -> str | None:
    try:
        return normalize_address(address)
    except ValidationFailed:
        return None


def _address(
    who: Practitioner | None,
    role: str,
    directory: Callable[[str], Sequence[str]],
    problems: list[str],
) -> tuple[str, Source] | None:
    """The practitioner's mailbox: the form's `mailto:`, else the directory's only one."""
    if who is None:
        problems.append(f"the form names no {role.removeprefix('the ')}")
        return None
    if who.email is not None:
        address = _normal(who.email)
        if address is not None:
            return address, "form"
        problems.append(f"{role}'s mailto: in the form is no address")
    if who.rpps is None:
        problems.append(f"{role} has no RPPS to look up")
        return None
    found = sorted({a for a in (_normal(x) for x in directory(who.rpps)) if a})
    if len(found) == 1:
        return found[0], "directory"
    if not found:
        problems.append(f"{role}'s RPPS {who.rpps} has no mailbox in the directory")
    else:
        shown = ", ".join(found[:_SHOWN]) + (", ..." if len(found) > _SHOWN else "")
        problems.append(f"{role}'s RPPS {who.rpps} has {len(found)} mailboxes ({shown})")
    return None


def directory_lookup(engine: Engine) -> Callable[[str], list[str]]:
    """`directory(rpps)` over the professionals table: the active person mailboxes (hosted
    or correspondents from the Annuaire) whose national id is that number, in any of its
    written forms (`8`+RPPS as the directory keeps it, bare; `0`+ADELI, bare)."""

    def lookup(number: str) -> list[str]:
        forms = sorted(number_forms(number))
        query = (
            select(professionals.c.address)
            .where(professionals.c.idnat.in_(forms))
            .where(professionals.c.kind == "PER")
            .where(professionals.c.state == "active")
            .order_by(professionals.c.address)
            .limit(10)
        )
        with engine.connect() as conn:
            return [row.address for row in conn.execute(query)]

    return lookup


# -- in the routing of one document ----------------------------------------------------


def extend_plan(
    plan: Plan,
    outcome: Accepted,
    *,
    mailbox: str,
    sender: str,
    rules: Sequence[Rule],
    engine: Engine,
    limits: DocumentLimits,
    holds: bool = True,
) -> None:
    """When the d2lm preset's `d2lm-from-crcdc` rule matched (an L2 result), its deliveries
    added to `plan`, under that rule's decision: a `copy-to` or `forward` of the original to
    the L1 radiologist, a `forward` of the copy without the L2 reader to the GP
    (`Forward.outcome`), or a hold when no L1 mailbox is found (`holds=False`, an operator's
    release: queued at its mailbox only, the operator sends it on). The mailbox the result
    came to has it already."""
    index = next((i for i, d in enumerate(plan.decisions) if d.rule == RESULT_RULE), None)
    form = plan.facts.d2lm if plan.facts is not None else None
    if index is None or plan.hold is not None or form is None:
        return
    rule = next((r for r in rules if r.name == RESULT_RULE), None)
    crcdc = set(rule.match.sender) if rule is not None else set()
    anonymised: Accepted | None = None
    error: str | None = None
    try:
        anonymised = _anonymised(outcome, limits)
    except DocumentError as exc:
        error = str(exc)
    routing = route_l2_result(
        form,
        sender=sender,
        crcdc=crcdc,
        hosted=hosted_lookup(engine),
        directory=directory_lookup(engine),
        case_mailbox=_case_mailbox(engine, sender, form, outcome),
        anonymisation_error=error,
    )
    if routing is None:
        return
    actions: list[str] = []
    if routing.hold is not None and holds:
        plan.hold, plan.held_by = routing.hold[:480], RESULT_RULE
        plan.copies.clear()
        plan.forwards.clear()
        actions.append(f"hold {routing.hold}")
    for recipient in routing.recipients if plan.hold is None else ():
        to = recipient.address
        if to == mailbox.lower():
            actions.append(f"{recipient.role}: {to} (the mailbox it came to)")
        elif recipient.via == "copy-to":
            if to not in plan.copies:
                plan.copies.append(to)
            actions.append(f"copy-to {to}")
        elif all(f.to != to for f in plan.forwards):
            copy = anonymised if recipient.anonymised else None
            plan.forwards.append(Forward(RESULT_RULE, to, outcome=copy, optional=copy is not None))
            actions.append(f"forward {to}" + (" (without the L2 reader)" if copy else ""))
    actions.extend(f"not done: {problem}" for problem in routing.problems)
    plan.tags.extend(t for t in routing.tags if t not in plan.tags)
    decided = plan.decisions[index]
    plan.decisions[index] = Decision(decided.rule, decided.actions + tuple(actions))


def _anonymised(outcome: Accepted, limits: DocumentLimits) -> Accepted:
    """The document as the GP gets it: the copy's bytes, sha256, size and ids."""
    record = outcome.record
    # A replacement of the sender's own document here (ingest checked it: the CRCDC's
    # correction of its result) replaces the GP's copy of it; any other relatedDocument
    # names a document the GP never got from us.
    replaces = record.document.replaces
    copy = anonymise_l2_reader(outcome.content, limits, replaces=replaces)
    document = record.document.model_copy(
        update={
            "unique_id": copy.document_id,
            "replaces": copy_oid(replaces) if replaces else None,
        }
    )
    record = record.model_copy(
        update={
            "document": document,
            "sha256": hashlib.sha256(copy.data).hexdigest(),
            "size": len(copy.data),
        }
    )
    return outcome.model_copy(update={"content": copy.data, "record": record})


def _case_mailbox(engine: Engine, sender: str, form: D2lmForm, outcome: Accepted) -> str | None:
    """The mailbox the L1 submission came to, from its screening case (one mailbox only), of
    the same woman: a lineage naming another woman's form sends nothing to her practice.
    A closed case too: this result's first delivery closed it before its forwards were
    spooled, and a replay (or a resend) must find the same mailbox."""
    cases = ScreeningCases(engine).answered_by(
        crcdc=sender.strip().lower(),
        set_id=outcome.record.document.set_id or form.set_id,
        replaces=outcome.record.document.replaces,
        include_closed=True,
    )
    mailboxes = {case.mailbox for case in cases if case.ins == form.ins}
    return mailboxes.pop() if len(mailboxes) == 1 else None


def hosted_lookup(engine: Engine) -> Callable[[str], bool]:
    """`hosted(address)`: an active mailbox of this gateway (not a correspondent)."""

    def hosted(address: str) -> bool:
        c = professionals.c
        query = select(c.address).where(
            c.address == address.lower(), c.local.is_(True), c.state == "active"
        )
        with engine.connect() as conn:
            return conn.execute(query).first() is not None

    return hosted


def forward_dropped(plan: Plan, forward: Forward, reason: str) -> None:
    """An optional forward (the GP's copy) that could not be sent: said in its rule's
    decision (audit, log) instead of holding the document."""
    plan.forwards.remove(forward)
    for i, decided in enumerate(plan.decisions):
        if decided.rule == forward.rule:
            actions = tuple(a for a in decided.actions if not a.startswith(f"forward {forward.to}"))
            note = f"not done: forward {forward.to} ({reason})"[:480]
            plan.decisions[i] = Decision(decided.rule, (*actions, note))
