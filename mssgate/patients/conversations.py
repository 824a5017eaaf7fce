"""Conversations between a professional mailbox and a patient's mailbox (Mon espace santé).

The rules (../shared/design/screening.md, "Patient mailboxes"; docs/security-model.md):
- only a professional (a PER, ORG or APP mailbox of our directory) starts a conversation:
  every message we accept for `<INS>@<patient domain>` is recorded (Message-ID, INS, the
  sending mailbox, time) in the spool's acceptance transaction (`record`);
- a patient's message is accepted only as a reply within one: In-Reply-To or References
  names a Message-ID recorded for that INS *and* for the mailbox it is addressed to (the
  conversation is the pair INS + professional mailbox, never the patient and anyone);
- a professional ends the conversation with `X-MSS-MES: FIN`: the pair's latest recorded
  message decides, so a FIN ends it and a later message of the same mailbox to the same
  patient (without FIN) starts it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, Engine, func, select

from mssgate import audit
from mssgate.db.schema import patient_messages
from mssgate.ins import is_patient_mailbox_local_part
from mssgate.patients.msgids import referenced

# The one value ECO.2.2.8 defines (docs/documents.md, 1.5).
END_VALUE = "FIN"


class Refusal(StrEnum):
    """Why a message to or from a patient is refused: the human part of the SMTP reply."""

    NO_CONVERSATION = "no conversation with this patient started by a professional"
    ENDED = "the professional ended this conversation"
    OTHER_PROFESSIONAL = (
        "this patient's conversation is with another professional: reply to the one who wrote"
    )
    AUTHOR_NOT_PATIENT = "the author at the patient domain is not a patient mailbox (INS@domain)"
    SENDER_NOT_AUTHOR = "the envelope sender must be the From: patient's own mailbox"
    NOT_A_PROFESSIONAL = "only a professional mailbox of the directory may write to a patient"
    MESSAGE_ID_REQUIRED = (
        "a message to a patient needs exactly one Message-ID of at most 250 characters"
        " (the patient's reply refers to it)"
    )
    BAD_END_VALUE = "X-MSS-MES takes one value, FIN (ends the conversation with the patient)"


@dataclass(frozen=True)
class PatientMessage:
    """One message to a patient, as recorded: `mailbox` is the professional's address."""

    message_id: str
    ins: str
    mailbox: str
    ends_conversation: bool


def patient_ins(address: str, patient_domain: str) -> str | None:
    """The INS of `<INS>@<patient_domain>` (upper case: `2a` is `2A`), else None."""
    local, at, domain = address.rpartition("@")
    if not at or domain.lower() != patient_domain.lower():
        return None
    return local.upper() if is_patient_mailbox_local_part(local) else None


def at_patient_domain(address: str, patient_domain: str) -> bool:
    return address.rpartition("@")[2].lower() == patient_domain.lower()


def ends_conversation(values: Sequence[str]) -> bool | None:
    """Whether X-MSS-MES fields (their unfolded values) end the conversation: False when
    there is none, True when each says FIN (in any case, folded or not), None otherwise (a
    typo the professional believes ends it must not be sent as if it did not)."""
    if not values:
        return False
    if all(" ".join(str(v).split()).upper() == END_VALUE for v in values):
        return True
    return None


def outgoing(
    *,
    recipients: Sequence[str],
    sender: str,
    message_id: str | None,
    mes_values: Sequence[str],
    patient_domain: str,
) -> tuple[list[PatientMessage], Refusal | None]:
    """What to record for a message `sender` (a professional, checked by the caller) sends
    to `recipients`, or why it cannot go. Nothing when no recipient is a patient."""
    patients = [ins for r in recipients if (ins := patient_ins(r, patient_domain)) is not None]
    if not patients:
        return [], None
    if at_patient_domain(sender, patient_domain):
        return [], Refusal.NOT_A_PROFESSIONAL
    if message_id is None:
        return [], Refusal.MESSAGE_ID_REQUIRED
    ends = ends_conversation(mes_values)
    if ends is None:
        return [], Refusal.BAD_END_VALUE
    unique = dict.fromkeys(patients)
    return [PatientMessage(message_id, ins, sender, ends) for ins in unique], None


def _pair_key(ins: str, mailbox: str) -> int:
    """A stable signed 64-bit key of the conversation for pg_advisory_xact_lock (bigint key
    space, apart from the (int, int) one mssgate.mailmove uses). Two pairs sharing a key only
    wait for each other."""
    digest = hashlib.blake2b(
        f"mssgate.patient-conversation\0{ins.upper()}\0{mailbox.lower()}".encode(),
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_conversations(conn: Connection, pairs: Iterable[tuple[str, str]]) -> None:
    """Takes the (INS, professional mailbox) conversations for the caller's transaction, until
    it ends. PostgreSQL: a FIN recorded on one node and a reply checked on another, both
    uncommitted, do not see each other's rows and both committed; the lock makes the second
    wait for the first to commit, then read it (READ COMMITTED: each statement's snapshot is
    taken when it starts). In key order, so two groups of several never wait on each other in
    a cycle. SQLite has one writer already (mssgate.db.tx)."""
    if conn.dialect.name != "postgresql":
        return
    for key in sorted({_pair_key(ins, mailbox) for ins, mailbox in pairs}):
        conn.execute(select(func.pg_advisory_xact_lock(key)))


def record(
    conn: Connection, *, spool_id: str, at: datetime, messages: Sequence[PatientMessage]
) -> None:
    """Writes the rows in the caller's transaction (the spool's acceptance), and one audit
    entry per conversation ended (the INS is in the row, not in the trail)."""
    if not messages:
        return
    lock_conversations(conn, ((m.ins, m.mailbox) for m in messages))
    conn.execute(
        patient_messages.insert(),
        [
            {
                "message_id": m.message_id,
                "ins": m.ins,
                "mailbox": m.mailbox,
                "spool_id": spool_id,
                "sent_at": at,
                "ends_conversation": m.ends_conversation,
            }
            for m in messages
        ],
    )
    ended = [m for m in messages if m.ends_conversation]
    if ended:
        audit.append(
            conn,
            actor=f"mailbox:{ended[0].mailbox}",
            action="patient.conversation_ended",
            subject=spool_id,
            detail={"mailbox": ended[0].mailbox, "patients": len(ended)},
        )


@dataclass(frozen=True)
class PatientReply:
    """A patient's message as the check reads it: the INS, our recipients, and the ids it
    refers to (bounded, mssgate.patients.msgids.referenced)."""

    ins: str
    recipients: tuple[str, ...]
    ids: tuple[str, ...]


class ConversationRefused(Exception):
    """Raised in a patient's message's acceptance transaction when the conversation it
    replies in ended (or never was) since its DATA check: nothing of it is committed."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal


def reply_refusal(
    engine: Engine,
    *,
    ins: str,
    recipients: Sequence[str],
    in_reply_to: list[str],
    references: list[str],
) -> Refusal | None:
    """Whether a message from patient `ins` to `recipients` (our mailboxes) may be accepted:
    None, or the reason it may not. Every recipient must be in an open conversation with
    that patient that the message refers to (one DATA reply answers for all of them)."""
    reply = PatientReply(ins, tuple(recipients), tuple(referenced(in_reply_to, references)))
    with engine.connect() as conn:
        return refusal_on(conn, reply)


def check_in_acceptance(conn: Connection, reply: PatientReply | None) -> None:
    """The check again, in the acceptance transaction of the patient's message (the spool's):
    a FIN accepted while the message was between its DATA check and its commit (signature,
    DKIM, the spool's wait) ends the conversation for it too. Raises ConversationRefused."""
    if reply is None:
        return
    lock_conversations(conn, ((reply.ins, mailbox) for mailbox in reply.recipients))
    refusal = refusal_on(conn, reply)
    if refusal is not None:
        raise ConversationRefused(refusal)


def refusal_on(conn: Connection, reply: PatientReply) -> Refusal | None:
    """reply_refusal on the caller's connection (and transaction)."""
    ins, recipients, ids = reply.ins, reply.recipients, list(reply.ids)
    known: set[str] = set()
    if ids:
        known = set(
            conn.scalars(
                select(patient_messages.c.mailbox).where(
                    patient_messages.c.ins == ins, patient_messages.c.message_id.in_(ids)
                )
            )
        )
    for mailbox in recipients:
        if mailbox not in known:
            return Refusal.OTHER_PROFESSIONAL if known else Refusal.NO_CONVERSATION
    for mailbox in recipients:
        latest = conn.scalar(
            select(patient_messages.c.ends_conversation)
            .where(patient_messages.c.ins == ins, patient_messages.c.mailbox == mailbox)
            .order_by(patient_messages.c.seq.desc())
            .limit(1)
        )
        if latest:
            return Refusal.ENDED
    return None
