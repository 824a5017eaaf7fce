"""A routing rule's `forward`: the document as a new MSSanté message from an application
mailbox of this gateway, built, signed and spooled by the RIS's own sending path
(mssgate.outbound.service: the IHE_XDM.ZIP with its METADATA.XML rebuilt from the CDA, the
S/MIME signature of the sending mailbox's key, DKIM and DSN requests on the relay).

Two steps, around the queue entry: `prepare` (before it: a forward that cannot be sent holds
the document, with the rule's name) and `send` (after it). Both run inside ingest, whose
delivery upstream is at-least-once; the forward is recorded under a key of the document
(uniqueId, event) and the recipient, unique in the database, so a replay, a resend, or
another mailbox's delivery of the same document (run at the same time on this node or
another) finds it, and spools only a copy a crash kept out of the spool, under the spool id
it was recorded with: two runs at once cannot both spool it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.directory.models import AccountState, MailboxKind
from mssgate.documents.cda import format_identifier, parse_cda
from mssgate.documents.errors import DocumentError
from mssgate.documents.record import Accepted
from mssgate.errors import PKIError, StorageError
from mssgate.logs import event
from mssgate.outbound.compose import inert
from mssgate.outbound.hl7in import Action as SubmissionAction
from mssgate.outbound.hl7in import Author, Envelope, Event, Rejection, Submission
from mssgate.outbound.service import Outbound, _Copy, _new_message_id, _Prepared
from mssgate.outbound.store import FORWARDS, NewRecipient, Stored
from mssgate.routing.engine import Forward
from mssgate.routing.model import Rule
from mssgate.smime.mailbox_keys import find_mailbox_key, mailbox_keys_dir
from mssgate.spool import new_queue_id
from mssgate.spool.store import Route

log = logging.getLogger("mssgate.outbound")
_MAX_HEADER = 300


@dataclass(frozen=True)
class Ready:
    """A forward checked and built, to send once the document is queued. `repeat_of`: the
    same document went to this recipient already by a forward (another mailbox's rule, or
    a peer forwarding it back): nothing is sent again."""

    forward: Forward
    sender: str
    control_id: str
    unique_id: str | None
    event: str
    prepared: _Prepared | None = None
    route: Route = "relay"
    existing: Stored | None = None
    repeat_of: str | None = None
    # The sender of the document forwarded (ingest.routing_sender: the From: when it names
    # another address than the envelope), recorded with the forward.
    origin_sender: str | None = None


class Forwarder:
    """`forward_from`: `[routing] forward_from`, the sending mailbox of a forward that names
    none. Uses the steps of `outbound` (same package) that a RIS's submission goes through."""

    def __init__(self, outbound: Outbound, *, forward_from: str | None) -> None:
        self._out = outbound
        self._from = forward_from

    def prepare(
        self,
        forward: Forward,
        outcome: Accepted,
        *,
        mailbox: str,
        sender: str,
        message_id: str | None,
        delivery: str,
    ) -> Ready | str:
        """The forward ready to send, or why it cannot be (the document is then held)."""
        out = self._out
        problem = _patient_problem(out._config.policy.patient_domain, forward.to)
        if problem is not None:
            return problem
        author = forward.sender or self._from
        if author is None:
            return (
                "no mailbox to send from: set [routing] forward_from, or write"
                " `forward ADDRESS from APP-MAILBOX`"
            )
        problem = _sender_problem(out._directory, author)
        if problem is not None:
            return problem
        record = outcome.record
        submission = self._submission(outcome, forward.to, "")
        if isinstance(submission, str):
            return submission
        unique_id = submission.unique_id
        # The record's key: its unique (consumer, MSH-10) pair is what makes "not twice to
        # one address" hold for two deliveries run at once (checking, then recording, let
        # both send).
        key = "\0".join(("forward", unique_id or record.sha256, submission.event, forward.to))
        control_id = "FWD-" + hashlib.sha256(key.encode()).hexdigest()[:40]
        submission = replace(submission, envelope=Envelope(control_id=control_id))
        refused = self._authority(submission, record.document.replaces, forward.to, sender)
        if refused is not None:
            return refused
        existing = out._store.find(FORWARDS, control_id)
        if existing is None and unique_id is not None:
            earlier = out._store.forwarded(
                FORWARDS, unique_id=unique_id, event=submission.event, recipient=forward.to
            )
            if earlier is not None:
                return Ready(forward, author, control_id, unique_id, submission.event,
                             repeat_of=earlier)  # fmt: skip
        try:
            [(_, route)] = out._routes(submission)
            prepared = out._prepare(submission, author, out._clock(), "routing")
        except Rejection as exc:
            return str(exc)
        headers = {
            "X-MSSGATE-Forwarded-By": f"routing rule {forward.rule}",
            "X-MSSGATE-Original-Sender": _header(sender),
            "X-MSSGATE-Original-Recipient": mailbox,
        }
        if message_id:
            headers["X-MSSGATE-Original-Message-ID"] = _header(message_id)
        note = (
            f"Document transféré par la passerelle {out._hostname}"
            f" (règle de routage « {forward.rule} »).\n"
            f"Expéditeur d'origine : {_header(sender)}\n"
            f"Destinataire d'origine : {mailbox}\n"
            f"Message d'origine : {_header(message_id or '(sans Message-ID)')}\n"
        )
        prepared = replace(prepared, note=note, headers=tuple(headers.items()))
        return Ready(forward, author, control_id, unique_id, submission.event, prepared, route,
                     existing, origin_sender=sender)  # fmt: skip

    def _authority(
        self, submission: Submission, replaces: str | None, to: str, sender: str
    ) -> str | None:
        """Why a withdrawal or a replacement may not be forwarded to `to`: at the recipient
        every forward has one sender, our mailbox, so one of the document a forward brought
        there for someone else would withdraw or replace it in our name (ingest checked only
        that its sender sent this mailbox a document with that uniqueId, which anyone can
        copy)."""
        if submission.event == "MDM^T04":
            target, what = submission.unique_id, "a withdrawal"
        elif submission.event == "MDM^T10":
            target, what = replaces, "a replacement"
        else:
            return None
        if target is None:
            return None
        senders = self._out._store.origin_senders(FORWARDS, unique_id=target, recipient=to)
        mine = sender.strip().lower()
        if all(s is not None and s.strip().lower() == mine for s in senders):
            return None
        return (
            f"{what} of document {target}, which a forward brought to {to} for another sender"
            " (or one unknown): it would act there in our mailbox's name"
        )[:300]

    def send(self, ready: Ready) -> str:
        """Spools the forward (or what of it a crash kept out of the spool); its outbound
        id. Raises StorageError or OSError: the delivery is tried again, and finds it."""
        out = self._out
        if ready.repeat_of is not None:
            event(log, "routing.forward_repeat", outbound_id=ready.repeat_of,
                  rule=ready.forward.rule)  # fmt: skip
            return ready.repeat_of
        assert ready.prepared is not None
        prepared, to = ready.prepared, ready.forward.to
        stored = ready.existing
        if stored is None:
            outbound_id = new_queue_id()
            copy = _Copy(to, ready.route, new_queue_id(), _new_message_id(ready.sender))
            stored = out._store.record(
                outbound_id=outbound_id, consumer_id=FORWARDS, consumer_name="",
                control_id=ready.control_id, event=ready.event, sender=ready.sender,
                unique_id=ready.unique_id, submitted_at=prepared.now, ack="",
                recipients=[NewRecipient(to, copy.queue_id, copy.message_id)],
                actor=f"routing:{ready.forward.rule}", zams=False,
                origin_sender=ready.origin_sender,
            )  # fmt: skip
            if stored is not None:
                # The row first: a crash before the spool leaves it unspooled, and the
                # delivery's replay spools it (below).
                self._spool(copy, prepared)
                event(log, "routing.forwarded", outbound_id=outbound_id,
                      rule=ready.forward.rule, route=ready.route)  # fmt: skip
                out._on_spooled()
                return outbound_id
            # Recorded meanwhile (the same delivery on another node): as a replay.
            stored = out._store.find(FORWARDS, ready.control_id)
            assert stored is not None
        resumed = False
        for missing in out._store.unspooled(stored.id):
            # Under the spool id it was recorded with: the run that recorded it may still be
            # spooling it (another node, a release run twice, a job taken over), and of two
            # runs spooling one id one fails (its file or row exists), never both succeed.
            copy = _Copy(missing.address, ready.route, missing.spool_id, missing.message_id)
            self._spool(copy, prepared)
            event(log, "routing.forward_resumed", outbound_id=stored.id,
                  rule=ready.forward.rule)  # fmt: skip
            out._on_spooled()
            resumed = True
        if not resumed:
            event(log, "routing.forward_repeat", outbound_id=stored.id,
                  rule=ready.forward.rule)  # fmt: skip
        return stored.id

    def _spool(self, copy: _Copy, prepared: _Prepared) -> None:
        try:
            self._out._accept(copy, self._out._content(prepared, copy), prepared)
        except FileExistsError as exc:
            # This node's other run is spooling it: this one's delivery is tried again.
            raise StorageError(f"forward {copy.queue_id} is being spooled by another run") from exc

    def _submission(self, outcome: Accepted, to: str, control_id: str) -> Submission | str:
        """The document as the outbound path sends a RIS's: its CDA read again (the
        pipeline accepted it), its INS as the pipeline found it, the event its record says
        (a withdrawal goes as one, a replacement as one)."""
        record = outcome.record
        try:
            document = parse_cda(outcome.content, self._out._limits)
        except DocumentError as exc:
            return f"the CDA cannot be read again: {exc}"
        from mssgate.ins import INS

        ins = record.ins
        if ins.oid is None:
            return "the document's INS has no OID (read from a PDF's text)"
        header = document.header
        event_type: Event
        action: SubmissionAction
        if record.document.withdrawn:
            event_type, action = "MDM^T04", "delete"
        elif header.replaces and not record.document.replaces:
            # Ingest found that its sender did not send here the document it replaces (it
            # goes to the RIS as a new one, with a note). The CDA still says RPLC, and at the
            # recipient every forward has one sender, our mailbox: there it would replace
            # the document a forward brought from someone else.
            return (
                f"its CDA replaces document {format_identifier(header.replaces[0])}, which its"
                " sender did not send here: forwarded, it would replace it at the recipient"
                " in our mailbox's name"
            )[:300]
        elif header.replaces:
            event_type, action = "MDM^T10", "replace"
        else:
            event_type, action = "MDM^T02", "new"
        return Submission(
            event=event_type,
            envelope=Envelope(control_id=control_id),
            ins=INS(value=ins.value, oid=ins.oid, kind=ins.kind, test=ins.test),
            cda=outcome.content,
            document=document,
            pdf=None,
            recipients=(to,),
            reply_to=None,
            author=Author(header.author_rpps[0] if header.author_rpps else None, None, None),
            action=action,
        )


def _header(value: str) -> str:
    """A value another party wrote, fit for one header line: printable ASCII, no encoded
    word (the Message-ID was decoded once already when read: a second layer would be
    decoded again, CRLF included, when the forward is built), bounded."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in value)
    return inert(cleaned)[:_MAX_HEADER]


def _patient_problem(patient_domain: str, to: str) -> str | None:
    # A rule's address is fixed: every document it matches, whoever its patient, would reach
    # that one patient (and start a conversation in the sending mailbox's name). The
    # patient's copy is the RIS's, addressed from the document's own INS (hl7in refuses a
    # PRT recipient at the patient domain for the same reason).
    if to.rpartition("@")[2].lower() != patient_domain.lower():
        return None
    return (
        "a patient's mailbox is never a forward's recipient (the patient's copy is the"
        " RIS's DESTMSSANTEPAT one, for the document's own INS)"
    )


def _sender_problem(directory: Directory, author: str) -> str | None:
    found = directory.professionals.find(author)
    if found is None or not found.local:
        return f"{author} is no mailbox of this gateway"
    if found.kind is not MailboxKind.APP or found.state is not AccountState.ACTIVE:
        return f"{author} is not an active application mailbox"
    return None


def forward_problems(
    config: Config, directory: Directory, rules: Sequence[Rule]
) -> list[tuple[str, str]]:
    """(rule, one readable line) per forward that could not be sent (forward_issues)."""
    return [
        (rule, f"rule {rule}: forward {to}: {problem}")
        for rule, to, problem in forward_issues(config, directory, rules)
    ]


def forward_issues(
    config: Config, directory: Directory, rules: Sequence[Rule]
) -> list[tuple[str, str, str]]:
    """(rule, recipient, what is wrong) for each forward that could not be sent as things stand:
    no sending mailbox, one that is not an active application mailbox of this gateway or
    has no signing key, a recipient neither hosted here nor of a trusted peer, a patient's
    mailbox. At run time the same causes hold the document, naming the rule."""
    keys = mailbox_keys_dir(config)
    local = directory.domains.local_names()
    problems: list[tuple[str, str, str]] = []
    for rule in rules:
        for action in rule.actions:
            if action.kind != "forward":
                continue
            to, via = action.forward_parts()
            author = via or config.routing.forward_from
            problem = _patient_problem(config.policy.patient_domain, to)
            if problem is None and author is None:
                problem = (
                    "no mailbox to send from: set [routing] forward_from, or write"
                    " 'forward ADDRESS from APP-MAILBOX'"
                )
            elif problem is None and author is not None:
                problem = _sender_problem(directory, author)
                if problem is None:
                    try:
                        if find_mailbox_key(keys, author) is None:
                            problem = (
                                f"no signing key for {author} (mssgate consumer add, or cert"
                                " install-key)"
                            )
                    except PKIError as exc:
                        problem = f"signing key of {author} unusable: {exc}"
            domain = to.rsplit("@", 1)[1]
            if problem is None and domain in local:
                found = directory.professionals.find(to)
                if found is None or not found.local:
                    problem = f"no mailbox {to} here (directory add)"
            elif problem is None and directory.domains.peer_ca_pem(domain) is None:
                problem = f"{domain} is neither a local domain nor a trusted peer (domain trust)"
            if problem is not None:
                problems.append((rule.name, to, problem))
    return problems
