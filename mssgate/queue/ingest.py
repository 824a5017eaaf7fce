"""From a delivered message to queued documents and quarantined ones.

Upstream delivery is at-least-once (a crash between our commit and the spool's bookkeeping
replays the message), so ingesting the same delivery again must change nothing: documents
are keyed by (mailbox, delivery, place, bytes), quarantined items by (mailbox, message,
place, bytes). The same bytes in another delivery (a resend) are a new queue entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from mssgate import metrics
from mssgate.documents.errors import QuarantineCode
from mssgate.documents.headers import with_ddm_subject
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.record import (
    Accepted,
    DocumentRecord,
    PipelineResult,
    Quarantined,
    quarantine,
)
from mssgate.documents.signed import process_signed_message
from mssgate.errors import Conflict, ValidationFailed
from mssgate.headers import read_headers, sole_address
from mssgate.identifiers import normalize_address
from mssgate.queue.backend import storable
from mssgate.queue.mdn import receipt_headers, receipt_recipient
from mssgate.queue.service import DocumentQueue, NewDocument
from mssgate.queue.withdrawal import replacement_refusal, withdrawal_refusal
from mssgate.routing.engine import Plan
from mssgate.routing.l2_result import forward_dropped
from mssgate.routing.router import Router, trace
from mssgate.screening.track import track

if TYPE_CHECKING:
    from mssgate.outbound.forward import Forwarder, Ready


@dataclass
class IngestReport:
    queued: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    held_outcomes: list[Quarantined] = field(default_factory=list)
    # Of `queued`: the ones that repeat bytes the mailbox got before (queued again, with
    # `duplicate_of`), and the ones an earlier run of this same delivery queued already.
    duplicates: list[str] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    # Copies routing rules made for other mailboxes (mssgate.routing), and who holds them.
    copies: list[str] = field(default_factory=list)
    # The outbound ids of the forwards routing rules sent (mssgate.outbound.forward).
    forwards: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return self.queued + self.held


def ingest(
    service: DocumentQueue,
    raw: bytes,
    *,
    delivery: str | None = None,
    mailbox: str,
    sender: str,
    message_id: str | None,
    subject: str | None,
    received_at: datetime,
    limits: DocumentLimits,
    allow_test_oids: bool,
    actor: str = "queue",
    require_birthplace: bool = True,
    result: PipelineResult | None = None,
    router: Router | None = None,
    released: tuple[str, str] | None = None,
    forwarder: Forwarder | None = None,
) -> IngestReport:
    """`result`: the pipeline's outcome when it ran already (in a worker process, see
    mssgate.documents_worker); else it runs here. `router`: the routing rules applied to
    each accepted document (none: each goes to `mailbox` only, as before rules existed).
    `released`: (origin, sha256) of the quarantine entry an operator released: when it is
    one document of the message, only it is ingested (the others were queued, copied or
    held at ingest); else (the message held whole) all are; the rules' holds passed over.
    `forwarder`: sends the rules' forwards (none: a document a rule forwards is held)."""
    box = normalize_address(mailbox)
    if delivery is None:
        # No spool entry to name (a direct call): the bytes themselves, so that the same
        # message again is a replay and any other message a new delivery.
        delivery = "sha256:" + hashlib.sha256(raw).hexdigest()
    if result is None:
        # Only what the signature covers is read; `raw` is still what is kept and sealed.
        result = process_signed_message(
            raw,
            limits=limits,
            allow_test_oids=allow_test_oids,
            require_birthplace=require_birthplace,
        )
    message_id = storable(message_id or result.message_id)
    subject = storable(subject or result.subject)
    headers = receipt_headers(raw).decode("utf-8", "replace")
    receipt_to = receipt_recipient(raw, sender)
    route_sender = routing_sender(raw, sender)
    report = IngestReport()
    holding = _Holds(service, raw, actor=actor)
    rules = router.rules() if router is not None else []
    if released is not None and all(_identity(o) != released for o in result.outcomes):
        released_one = None  # an entry of the whole message (or a package): all of it goes
    else:
        released_one = released
    budget = router.budget() if router is not None else None
    for found in result.outcomes:
        if released_one is not None and _identity(found) != released_one:
            # The message's other documents were queued (and copied) or held at ingest;
            # each held one has its own release.
            continue
        # Who may withdraw or replace, and whose the document is from now on: the sender
        # the signature vouches for (a peer's MAIL FROM is checked for its domain only).
        outcome = _withdrawal_checked(service, found, mailbox=box, sender=route_sender)
        plan: Plan | None = None
        if rules and router is not None and isinstance(outcome, Accepted):
            # What is released is no longer held by a rule: the operator has looked at it.
            holds = False if released is not None else None
            plan = router.plan(rules, outcome, mailbox=box, sender=route_sender,
                               budget=budget, holds=holds)  # fmt: skip
            if plan.hold is not None:
                outcome = _held_after_all(outcome, plan.hold)
        ready: list[Ready] = []
        if plan is not None and plan.forwards and isinstance(outcome, Accepted):
            # Before the queue entry: a forward that cannot be sent holds the document
            # (naming the rule) rather than queue it as if it had gone.
            checked = _forwards(forwarder, plan, outcome, mailbox=box,
                                route_sender=route_sender, message_id=message_id,
                                delivery=delivery)  # fmt: skip
            if isinstance(checked, str):
                outcome = _held_after_all(outcome, checked)
            else:
                ready = checked
        if isinstance(outcome, Accepted):
            record = outcome.record.model_copy(
                update={
                    "received_at": received_at,
                    "message_id": message_id,
                    "subject": subject,
                    "sender": route_sender,
                    "mailbox": box,
                }
            )
            record = with_ddm_subject(record)
            if plan is not None and plan.tags:
                record = record.model_copy(update={"tags": tuple(plan.tags)})
            doc_id, created = service.enqueue(
                NewDocument(
                    record=record,
                    content=outcome.content,
                    email=raw,
                    headers=headers,
                    receipt_to=receipt_to,
                    delivery=delivery,
                ),
                actor=actor,
            )
            if not created:
                report.replayed.append(doc_id)
            elif service.duplicate_of(doc_id) is not None:
                report.duplicates.append(doc_id)
                metrics.document(record.document.format, "duplicate")
            else:
                # Counted once: a replayed delivery finds the row and adds nothing.
                metrics.document(record.document.format, "queued")
            report.queued.append(doc_id)
            if plan is not None and plan.routed:
                assert router is not None
                # What ingest added to the record (the subject's note), which every copy gets.
                added = record.notes[len(outcome.record.notes) :]
                copies = _copies(service, holding, found, record, plan, raw=raw, headers=headers,
                                 sender=sender, delivery=delivery, actor=actor,
                                 added=added)  # fmt: skip
                report.copies.extend(i for i, _ in copies.values())
                # A CANCER-D2LM form sent to L2 opens a screening case, an L2 result closes
                # it (again on a replay: both are idempotent). The relatedDocument as sent.
                replaces = found.record.document.replaces if isinstance(found, Accepted) else None
                track(router.store.engine, plan, record, queue_document_id=doc_id, mailbox=box,
                      sender=route_sender, replaces=replaces, actor=actor)  # fmt: skip
                # After the entry: a crash before this replays the delivery, which finds the
                # entry and the forward's record, and spools only what is missing.
                assert forwarder is not None or not ready
                forwards = {r.forward.to: forwarder.send(r) for r in ready} if forwarder else {}
                report.forwards.extend(forwards.values())
                if created or any(made for _, made in copies.values()):
                    ids = {box: i for box, (i, _) in copies.items()}
                    trace(router.store.engine, plan, subject=doc_id, mailbox=box, copies=ids,
                          actor=actor, forwards=forwards)  # fmt: skip
        else:
            held_id, created = holding.hold(
                outcome,
                mailbox=box,
                sender=sender,
                message_id=message_id,
                subject=subject,
                received_at=received_at,
            )
            if created:
                kind = outcome.document.format if outcome.document is not None else "unknown"
                metrics.document(kind, "quarantined")
                if plan is not None and router is not None:
                    trace(router.store.engine, plan, subject=held_id, mailbox=box, copies={},
                          actor=actor)  # fmt: skip
            report.held.append(held_id)
            report.held_outcomes.append(outcome)
    return report


def routing_sender(raw: bytes, sender: str) -> str:
    """The sender routing rules match (and the d2lm preset tells an L2 result by), and the
    one recorded as the document's (who may later withdraw or replace it, whose a forward
    carries): the envelope sender, unless the From: names another address, then the From:.
    A peer's MAIL FROM is checked for its domain only (the operator's certificate), its
    From: against the S/MIME signer: the CRCDC's address in MAIL FROM from someone else of
    its domain does not make a form its L2 result, nor that sender's report its own."""
    author = sole_address(read_headers(raw).get_all("From") or [])
    try:
        found = normalize_address(author) if author else None
    except ValidationFailed:
        found = None
    return sender if found is None or found == sender.strip().lower() else found


class _Holds:
    """Holds one message's documents for an operator, the addressee's and its copies'. For a
    mailbox whose RIS asked that its mail be kept encrypted, the bytes are stored like its
    mailbox copy, readable with its key only; the whole message is sealed once per mailbox,
    however many of its documents are held there."""

    def __init__(self, service: DocumentQueue, raw: bytes, *, actor: str) -> None:
        self._service = service
        self._raw = raw
        self._actor = actor
        self._sealed: dict[str, tuple[list[str], bytes | None]] = {}

    def hold(
        self,
        outcome: Quarantined,
        *,
        mailbox: str,
        sender: str,
        message_id: str | None,
        subject: str | None,
        received_at: datetime,
    ) -> tuple[str, bool]:
        if mailbox not in self._sealed:
            keys = self._service.encryption_keys(mailbox)
            message = self._service.cipher().seal_message(self._raw, keys) if keys else None
            self._sealed[mailbox] = (keys, message)
        keys, message = self._sealed[mailbox]
        sealed = None
        if message is not None:
            sealed = (self._service.cipher().encrypt(outcome.content, keys), message)
        return self._service.quarantine.hold(
            outcome,
            message=self._raw,
            mailbox=mailbox,
            sender=sender,
            message_id=message_id,
            subject=subject,
            received_at=received_at,
            actor=self._actor,
            sealed=sealed,
        )


def _forwards(
    forwarder: Forwarder | None,
    plan: Plan,
    outcome: Accepted,
    *,
    mailbox: str,
    route_sender: str,
    message_id: str | None,
    delivery: str,
) -> list[Ready] | str:
    """Each forward of the plan checked and built, or the reason the document is held (the
    first that cannot be sent; the plan then holds it, with no copy nor forward)."""
    ready: list[Ready] = []
    for forward in list(plan.forwards):
        if forwarder is None:
            found: Ready | str = "this process sends no forwards"
        else:
            # A forward names (and records, for the withdrawals and replacements of what it
            # brought) the sender the rules knew: the From:, signed, not the envelope sender
            # (anyone of its domain). A forward of other bytes (an L2 result's copy for the
            # GP, without the L2 reader) names no Message-ID either, which the sending
            # software writes: the reader's workstation's name.
            copy = forward.outcome is not None
            found = forwarder.prepare(
                forward, forward.outcome or outcome, mailbox=mailbox, sender=route_sender,
                message_id=None if copy else message_id, delivery=delivery,
            )  # fmt: skip
        if isinstance(found, str) and forward.optional:
            forward_dropped(plan, forward, found)
            continue
        if isinstance(found, str):
            reason = f"routing rule {forward.rule!r} cannot forward to {forward.to}: {found}"
            plan.hold, plan.held_by = reason[:480], forward.rule
            plan.copies.clear()
            plan.forwards.clear()
            return plan.hold
        ready.append(found)
    return ready


def _identity(outcome: Accepted | Quarantined) -> tuple[str, str]:
    """(origin, sha256): the same document of a message, whatever became of it."""
    if isinstance(outcome, Accepted):
        return outcome.record.origin, outcome.record.sha256
    return outcome.origin, outcome.sha256


def _held_after_all(outcome: Accepted, reason: str) -> Quarantined:
    """An accepted document held after all (906), by a routing rule or a withdrawal check."""
    record = outcome.record
    return quarantine(
        QuarantineCode.OTHER,
        reason,
        outcome.content,
        content_type=record.content_type,
        origin=record.origin,
        document=record.document,
    )


def _copies(
    service: DocumentQueue,
    holding: _Holds,
    found: Accepted | Quarantined,
    record: DocumentRecord,
    plan: Plan,
    *,
    raw: bytes,
    headers: str,
    sender: str,
    delivery: str,
    actor: str,
    added: tuple[str, ...],
) -> dict[str, tuple[str, bool]]:
    """The copies a plan asks for, each its own entry in its mailbox's queue: (id, created)
    by mailbox. A copy is the addressee's document: no read receipt goes back for it (the
    sender wrote to the addressee, not to the copy's mailbox), and a withdrawal or a
    replacement is checked against what that mailbox received, as for its own mail (by the
    record's sender, the authenticated one). A held copy keeps the envelope `sender`, as the
    addressee's held documents do: a release runs ingest again with it."""
    made: dict[str, tuple[str, bool]] = {}
    for target in plan.copies:
        checked = _withdrawal_checked(service, found, mailbox=target, sender=record.sender or "")
        if not isinstance(checked, Accepted):
            made[target] = holding.hold(
                checked,
                mailbox=target,
                sender=sender,
                message_id=record.message_id,
                subject=record.subject,
                received_at=record.received_at or datetime.now().astimezone(),
            )
            continue
        # As the addressee's entry, but with what the check for this mailbox said (a
        # replacement of a document this mailbox never got is no replacement here).
        copy = record.model_copy(
            update={
                "mailbox": target,
                "document": checked.record.document,
                "notes": (*checked.record.notes, *added),
            }
        )
        made[target] = service.enqueue(
            NewDocument(record=copy, content=checked.content, email=raw, headers=headers,
                        receipt_to=None, delivery=delivery),
            actor=actor,
        )  # fmt: skip
    return made


def _withdrawal_checked(
    service: DocumentQueue, outcome: Accepted | Quarantined, *, mailbox: str, sender: str
) -> Accepted | Quarantined:
    """A withdrawal not from the withdrawn document's sender, held (906) instead of queued;
    a replacement not from the replaced document's sender, queued as a new document with a
    note: the RIS would take either for its sender's T04 or T10 (mssgate.queue.withdrawal)."""
    if not isinstance(outcome, Accepted):
        return outcome
    record = outcome.record
    if not record.document.withdrawn:
        note = replacement_refusal(service.engine, record, mailbox=mailbox, sender=sender)
        if note is None:
            return outcome
        document = record.document.model_copy(update={"replaces": None})
        changed = record.model_copy(update={"document": document, "notes": (*record.notes, note)})
        return outcome.model_copy(update={"record": changed})
    reason = withdrawal_refusal(service.engine, record, mailbox=mailbox, sender=sender)
    if reason is None:
        return outcome
    return _held_after_all(outcome, reason)


def ingest_message(
    service: DocumentQueue,
    raw: bytes,
    *,
    delivery: str | None = None,
    mailbox: str,
    sender: str,
    message_id: str | None,
    subject: str | None,
    received_at: datetime,
    limits: DocumentLimits,
    allow_test_oids: bool,
    require_birthplace: bool = True,
    result: PipelineResult | None = None,
) -> list[str]:
    """Runs the pipeline over one message for one mailbox (or takes its `result`); returns
    the ids of the queued documents, then of the quarantined ones. Safe to call again for
    the same delivery (`delivery`: the spool entry's queue id)."""
    return ingest(
        service,
        raw,
        delivery=delivery,
        mailbox=mailbox,
        sender=sender,
        message_id=message_id,
        subject=subject,
        received_at=received_at,
        limits=limits,
        allow_test_oids=allow_test_oids,
        require_birthplace=require_birthplace,
        result=result,
    ).ids


def release(
    service: DocumentQueue,
    held_id: str,
    *,
    limits: DocumentLimits,
    allow_test_oids: bool,
    actor: str,
    require_birthplace: bool = True,
    pipeline: Callable[[bytes], PipelineResult] | None = None,
    router: Router | None = None,
    forwarder: Forwarder | None = None,
) -> list[str]:
    """Runs the pipeline again over the message a document was held from, with the current
    settings; the document is queued if it now passes (the message's others are left as
    ingest left them: queued, copied, or held for their own release). Returns its id.

    `pipeline` runs it elsewhere (a worker process under the message's budget: the CLI);
    it raises Conflict when it gives no result. Raises Conflict, leaving the document held,
    when it fails again. `router`: the routing rules, applied again (tags, copies); their
    holds are passed over for the released document.
    """
    store = service.quarantine
    entry = store.get(held_id)
    if entry.state != "held":
        raise Conflict(f"quarantined document {held_id} was released already")
    if entry.encrypted:
        raise Conflict(
            f"quarantined document {held_id} is stored encrypted to the RIS's OpenPGP key:"
            " the gateway cannot run the pipeline on it again (the sender must send it again)"
        )
    message = store.message(held_id)
    result = pipeline(message) if pipeline is not None else None
    report = ingest(
        service,
        message,
        # One delivery per held entry: a release retried after a crash queues nothing twice.
        delivery=f"release:{held_id}",
        mailbox=entry.mailbox,
        sender=entry.sender,
        message_id=entry.message_id,
        subject=entry.subject,
        received_at=entry.received_at,
        limits=limits,
        allow_test_oids=allow_test_oids,
        actor=actor,
        require_birthplace=require_birthplace,
        result=result,
        router=router,
        released=(entry.origin, entry.sha256),
        forwarder=forwarder,
    )
    for outcome in report.held_outcomes:
        if outcome.origin == entry.origin and outcome.sha256 == entry.sha256:
            raise Conflict(f"still quarantined ({int(outcome.code)}): {outcome.reason}")
    store.mark_released(held_id, actor=actor, detail={"queued": report.queued})
    return report.queued
