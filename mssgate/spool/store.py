"""Spool storage: message files under `<data>/spool/msg`, delivery state in the database.

Order of an acceptance (see `Spool.accept`): file written and fsynced under its final name,
then one transaction with the message row, its recipients and the audit row (shared with the
acceptances that wait at the same moment: see groupcommit.py); only then may SMTP answer 250.
Nothing reads a message file before its row is committed, so no rename is needed.

Several nodes may share the database (docs/architecture.md, "Several nodes"): each row names
the node whose data folder holds its file (`node`), and a node delivers, relays, runs the
document pipeline on and recovers only its own rows. A Spool made without a node (tests of
one process) reads and writes every row, as before nodes existed.
A crash before the commit leaves a file without a row: the client got no 250 and will retry,
so `recover` deletes such files. A crash after the commit and before the 250 makes the client
retry a message we have: delivered twice, never lost (at least once).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    func,
    literal,
    select,
    update,
)

from mssgate import audit
from mssgate.db.schema import spool_documents, spool_messages, spool_recipients
from mssgate.db.tx import write
from mssgate.directory.timeutil import aware, now
from mssgate.errors import Conflict, NotFound, StorageError
from mssgate.fsutil import ensure_dir, fsync_dir, write_new_durably
from mssgate.patients import conversations
from mssgate.patients.conversations import ConversationRefused, PatientMessage, PatientReply
from mssgate.smtp.dsnparams import MessageDsn, RecipientDsn, stored_rcpt
from mssgate.spool.groupcommit import GroupCommitter
from mssgate.spool.jobs import add_document_job, release_document_jobs

Route = Literal["local", "relay"]
# The statements of a delivery's end, built once (queue/statements.py says why). Bound
# parameters are named apart from the columns (SQLAlchemy reserves those names).
_LOCK_MESSAGE = (
    select(spool_messages.c.id)
    .where(spool_messages.c.id == bindparam("spool_id_"))
    .with_for_update(key_share=True)
)
_DELIVERED = (
    update(spool_recipients)
    .where(
        spool_recipients.c.spool_id == bindparam("spool_id_"),
        spool_recipients.c.recipient == bindparam("recipient_"),
    )
    .values(state="delivered", attempts=bindparam("attempts_"), updated_at=bindparam("stamp_"))
)
# What the message still waits for, one statement: its deliveries pending or held (a held
# one keeps the message and its file until released) and its document jobs not done (the
# pipeline reads the spool file too).
_WAITING = select(
    select(func.count())
    .select_from(spool_recipients)
    .where(
        spool_recipients.c.spool_id == bindparam("spool_id_"),
        spool_recipients.c.state.in_(("pending", "held")),
    )
    .scalar_subquery()
    + select(func.count())
    .select_from(spool_documents)
    .where(spool_documents.c.spool_id == bindparam("spool_id_"), spool_documents.c.state != "done")
    .scalar_subquery()
)
_MARK_DONE = (
    update(spool_messages).where(spool_messages.c.id == bindparam("spool_id_")).values(state="done")
)
_QUEUE_ID = re.compile(r"[0-9A-Z]{12,32}")
# The process out of descriptors or memory (a flood of connections, say): the gateway's
# footing, not the message's. Its delivery stays due rather than being held.
_PROCESS_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def new_queue_id() -> str:
    """Sortable by arrival (milliseconds first), unguessable enough to be no handle."""
    return f"{int(time.time() * 1000):011X}{secrets.token_hex(5).upper()}"


class PendingDelivery(BaseModel):
    model_config = ConfigDict(frozen=True)

    spool_id: str
    recipient: str
    route: Route
    attempts: int
    # RFC 3461 NOTIFY and ORCPT as stored ("SUCCESS,FAILURE", "rfc822;xtext"); None: not given.
    notify: str | None = None
    orcpt: str | None = None

    @property
    def dsn(self) -> RecipientDsn:
        return stored_rcpt(self.notify, self.orcpt)


class SpoolEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    received_at: datetime
    listener: str
    sender: str
    size: int
    state: str
    # The node whose data folder holds the file (None: written before nodes existed).
    node: str | None
    recipients: list[dict[str, object]]
    # Why it still waits: the error of its latest failed attempt among the deliveries not
    # made (None when none failed yet).
    last_error: str | None = None


class MessageEnvelope(BaseModel):
    """What the relay needs of a spooled message besides its bytes: whom to bounce to, and
    since when it has been waiting (the give-up clock)."""

    model_config = ConfigDict(frozen=True)

    id: str
    sender: str
    received_at: datetime
    # RFC 3461 RET and ENVID (decoded) of MAIL FROM.
    ret: str | None = None
    envid: str | None = None
    listener: str | None = None

    @property
    def dsn(self) -> MessageDsn:
        return MessageDsn(ret=self.ret, envid=self.envid)

    @property
    def reported_to_its_ris(self) -> bool:
        """A copy a RIS sent (mssgate.outbound): what this gateway learns of it (relayed,
        refused, failed here) reaches the RIS as the copy's status and ZAM. A DSN of ours
        to its application mailbox would say it again, one per copy, as mail."""
        return self.listener in OUTBOUND_LISTENERS


# The listeners a RIS's copies are spooled under (mssgate.outbound.service.Channel).
OUTBOUND_LISTENERS: Final = frozenset({"api", "mllp"})


# `spool delete|bounce` counts a delivery falling due this soon as due now: a worker whose
# query runs between the command's reading of the clock and its commit (PostgreSQL's
# snapshot, SQLite's last commit) still sees it pending, and a node whose clock runs a
# little ahead takes it first; either then delivers what the command withdraws.
DUE_MARGIN = timedelta(seconds=10)


class DeliveryDue(Conflict):
    """A delivery of the message is due now: a worker may be making it."""


@dataclass(frozen=True)
class SetAside:
    """What `Spool.set_aside` took off the pending list of a message."""

    envelope: MessageEnvelope
    recipients: list[str]
    documents: list[str]
    # Each recipient's RFC 3461 NOTIFY/ORCPT: a bounce reports only whom NOTIFY asks for.
    dsn: dict[str, RecipientDsn] = field(default_factory=dict)


@dataclass(frozen=True)
class Notice:
    """A notification to spool in the same transaction as a withdrawal (`spool bounce`'s
    DSN): signed and routed already, with a null sender."""

    content: bytes
    recipient: str
    route: Route
    listener: str


class RecipientState(BaseModel):
    model_config = ConfigDict(frozen=True)

    spool_id: str
    recipient: str
    route: Route
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime


@dataclass(frozen=True)
class _Acceptance:
    queue_id: str
    stamp: datetime
    listener: str
    sender: str
    identity: str | None
    peer: str | None
    size: int
    recipients: tuple[tuple[str, Route], ...]
    dsn: MessageDsn = field(default_factory=MessageDsn)
    rcpt_dsn: tuple[tuple[str, RecipientDsn], ...] = ()
    patients: tuple[PatientMessage, ...] = ()
    patient_reply: PatientReply | None = None


class Spool:
    def __init__(self, engine: Engine, root: Path, *, node: str | None = None) -> None:
        self._engine = engine
        self.root = root
        self.node = node
        # SQLite serves one data folder only (`node add` needs PostgreSQL): there a row's file
        # can be nowhere else. On PostgreSQL another folder may hold it even while this node
        # is the only one registered (nodes starting one after the other on an upgraded
        # database), and adopting it would fail it as lost.
        self._one_folder = engine.dialect.name == "sqlite"
        self._msg = ensure_dir(root / "msg")
        self._tmp = ensure_dir(root / "tmp")
        self._committer = GroupCommitter(self._insert)

    def path(self, queue_id: str) -> Path:
        if not _QUEUE_ID.fullmatch(queue_id):
            raise NotFound(f"no spooled message {queue_id!r}")
        return self._msg / f"{queue_id}.eml"

    def accept(
        self,
        *,
        queue_id: str,
        content: bytes,
        listener: str,
        sender: str,
        identity: str | None,
        peer: str | None,
        recipients: Sequence[tuple[str, Route]],
        dsn: MessageDsn | None = None,
        rcpt_dsn: Mapping[str, RecipientDsn] | None = None,
        patients: Sequence[PatientMessage] = (),
        patient_reply: PatientReply | None = None,
    ) -> None:
        """Makes the message durable. Returns only when a 250 may be sent. `dsn` and
        `rcpt_dsn` (by recipient): the RFC 3461 parameters it came with, kept with it.
        `patients`: the message's records as one sent to patients' mailboxes, committed with
        it (a patient's reply is accepted only if it refers to one). `patient_reply`: a
        patient's message, whose conversation is checked again in this transaction (raises
        ConversationRefused, nothing kept, when it ended since the DATA check)."""
        path = self.path(queue_id)
        try:
            write_new_durably(path, content)
        except FileExistsError:
            raise  # another message's file (never ours to remove)
        except BaseException:
            # The directory's fsync may fail after the file is complete: a file whose client
            # gets a 451 must not stay (recovery would remove it, but only at the next start).
            path.unlink(missing_ok=True)
            raise
        acceptance = _Acceptance(
            queue_id=queue_id,
            stamp=now(),
            listener=listener,
            sender=sender,
            identity=identity,
            peer=peer,
            size=len(content),
            recipients=tuple(recipients),
            dsn=dsn or MessageDsn(),
            rcpt_dsn=tuple((rcpt_dsn or {}).items()),
            patients=tuple(patients),
            patient_reply=patient_reply,
        )
        try:
            self._committer.commit(acceptance)
        except ConversationRefused:
            path.unlink(missing_ok=True)
            raise
        except Exception as exc:
            path.unlink(missing_ok=True)
            raise StorageError(f"spool commit failed: {exc.__class__.__name__}") from exc

    def _insert(self, group: Sequence[_Acceptance]) -> None:
        """One transaction for a group of acceptances: their rows and their audit entries."""
        with write(self._engine) as conn:
            self._insert_rows(conn, group)

    def _insert_rows(self, conn: Connection, group: Sequence[_Acceptance]) -> None:
        # The group's patient conversations first and at once, in key order: taken one
        # acceptance after the other, two nodes' groups could wait on each other in a cycle.
        conversations.lock_conversations(
            conn,
            [(m.ins, m.mailbox) for a in group for m in a.patients]
            + [(r.ins, box) for a in group if (r := a.patient_reply) for box in r.recipients],
        )
        conn.execute(
            spool_messages.insert(),
            [
                {
                    "id": a.queue_id,
                    "received_at": a.stamp,
                    "listener": a.listener,
                    "sender": a.sender,
                    "identity": a.identity,
                    "peer": a.peer,
                    "size": a.size,
                    "state": "queued",
                    "node": self.node,
                    "dsn_ret": a.dsn.ret,
                    "dsn_envid": a.dsn.envid,
                }
                for a in group
            ],
        )
        conn.execute(
            spool_recipients.insert(),
            [
                {
                    "spool_id": a.queue_id,
                    "recipient": rcpt,
                    "route": route,
                    "state": "pending",
                    "attempts": 0,
                    "last_error": None,
                    "next_attempt_at": a.stamp,
                    "updated_at": a.stamp,
                    "dsn_notify": params.notify_text(),
                    "dsn_orcpt": params.orcpt_text(),
                }
                for a in group
                for rcpt, route in a.recipients
                for params in (dict(a.rcpt_dsn).get(rcpt, RecipientDsn()),)
            ],
        )
        audit.append_many(
            conn,
            [
                audit.NewEntry(
                    actor=f"smtp:{a.listener}",
                    action="message.accepted",
                    subject=a.queue_id,
                    detail={
                        "sender": a.sender,
                        "identity": a.identity,
                        "peer": a.peer,
                        "recipients": len(a.recipients),
                        "size": a.size,
                    },
                )
                for a in group
            ],
        )
        for a in group:
            conversations.record(conn, spool_id=a.queue_id, at=a.stamp, messages=a.patients)
        # Last, so that a FIN committed in this very group counts: a refused reply fails the
        # group's transaction, and the committer then commits each one alone, in the order
        # they came (groupcommit): a reply that came before the FIN is taken, one after not.
        for a in group:
            conversations.check_in_acceptance(conn, a.patient_reply)

    def read(self, queue_id: str) -> bytes:
        try:
            return self.path(queue_id).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"spool file of {queue_id} is missing") from None
        except OSError as exc:
            if exc.errno in _PROCESS_EXHAUSTED:
                raise StorageError(f"cannot read spool files: {exc.strerror}") from exc
            raise

    def size(self, queue_id: str) -> int:
        """Bytes of the spooled file; 0 when it is gone (the delivery then reports that)."""
        try:
            return self.path(queue_id).stat().st_size
        except FileNotFoundError:
            return 0

    def mine(self) -> ColumnElement[bool]:
        """The rows whose file is in this node's data folder (every row without a node)."""
        if self.node is None:
            return literal(True)
        return spool_messages.c.node == self.node

    def due(self, *, route: Route, limit: int = 100) -> list[PendingDelivery]:
        query = select(spool_recipients).where(
            spool_recipients.c.route == route,
            spool_recipients.c.state == "pending",
            spool_recipients.c.next_attempt_at <= now(),
        )
        if self.node is not None:
            # Another node's entry has its file in that node's data folder: taking it here
            # failed it as "the message file was lost" and bounced acknowledged mail.
            query = query.join(
                spool_messages, spool_messages.c.id == spool_recipients.c.spool_id
            ).where(self.mine())
        query = query.order_by(spool_recipients.c.spool_id).limit(limit)
        with self._engine.connect() as conn:
            return [
                PendingDelivery(
                    spool_id=r.spool_id,
                    recipient=r.recipient,
                    route=r.route,
                    attempts=r.attempts,
                    notify=r.dsn_notify,
                    orcpt=r.dsn_orcpt,
                )
                for r in conn.execute(query)
            ]

    def _recipient(self, spool_id: str, recipient: str) -> object:
        return and_(
            spool_recipients.c.spool_id == spool_id, spool_recipients.c.recipient == recipient
        )

    def delivered(self, item: PendingDelivery, *, documents: bool = False) -> None:
        """`documents`: the mailbox's RIS wants the documents of the message; the pipeline
        job is recorded in the same transaction as the delivery (mssgate.spool.jobs),
        so that a crash can lose neither."""
        # One transaction for the recipient and, if it was the last one, the message.
        with write(self._engine) as conn:
            self._lock_message(conn, item.spool_id)
            conn.execute(
                _DELIVERED,
                {
                    "spool_id_": item.spool_id,
                    "recipient_": item.recipient,
                    "attempts_": item.attempts + 1,
                    "stamp_": now(),
                },
            )
            if documents:
                add_document_job(conn, item.spool_id, item.recipient)
            done = self._mark_done_if_complete(conn, item.spool_id, locked=True)
        if done:
            self._unlink(item.spool_id)

    def attempt_failed(
        self, item: PendingDelivery, *, error: str, permanent: bool, retry_in: timedelta
    ) -> None:
        stamp = now()
        with write(self._engine) as conn:
            # Only a delivery still pending: one an operator took off the list meanwhile
            # (`spool delete --force`) must not come back as pending.
            changed = conn.execute(
                update(spool_recipients)
                .where(
                    self._recipient(item.spool_id, item.recipient),  # type: ignore[arg-type]
                    spool_recipients.c.state == "pending",
                )
                .values(
                    state="failed" if permanent else "pending",
                    attempts=item.attempts + 1,
                    last_error=error[:500],
                    next_attempt_at=stamp + retry_in,
                    updated_at=stamp,
                )
            )
            if permanent and changed.rowcount:
                audit.append(
                    conn,
                    actor="spool",
                    action="delivery.failed",
                    subject=item.spool_id,
                    detail={"recipient": item.recipient, "error": error[:200]},
                )
        if permanent:
            self._finish_if_complete(item.spool_id)

    def hold(self, item: PendingDelivery, *, reason: str) -> None:
        """Sets a delivery aside after an unexpected error: it keeps its file, is never due,
        and shows in `spool list` with its reason until an operator releases it. Only a
        delivery still pending: one that the same unit already delivered or failed for good
        (the relay holds a whole message) keeps its outcome."""
        with write(self._engine) as conn:
            held = conn.execute(
                update(spool_recipients)
                .where(
                    self._recipient(item.spool_id, item.recipient),  # type: ignore[arg-type]
                    spool_recipients.c.state == "pending",
                )
                .values(
                    state="held",
                    attempts=item.attempts + 1,
                    last_error=reason[:500],
                    updated_at=now(),
                )
            ).rowcount
            if not held:
                return
            audit.append(
                conn,
                actor="spool",
                action="delivery.held",
                subject=item.spool_id,
                detail={"recipient": item.recipient, "reason": reason[:200]},
            )

    def release(self, queue_id: str, *, actor: str) -> int:
        """Makes the held deliveries of a message due again; returns how many."""
        self.path(queue_id)  # a malformed id is NotFound, like an unknown one
        with write(self._engine) as conn:
            result = conn.execute(
                update(spool_recipients)
                .where(
                    spool_recipients.c.spool_id == queue_id,
                    spool_recipients.c.state == "held",
                )
                .values(state="pending", next_attempt_at=now(), updated_at=now())
            )
            released = int(result.rowcount)
            released += release_document_jobs(conn, queue_id)
            if released:
                audit.append(conn, actor=actor, action="spool.release", subject=queue_id,
                             detail={"deliveries": released})  # fmt: skip
        if not released:
            raise NotFound(f"no held delivery in spooled message {queue_id!r}")
        return released

    def set_aside(
        self, queue_id: str, *, reason: str, force: bool = False, recipients_only: bool = False
    ) -> SetAside:
        """First step of taking a message off the pending list (`spool delete`, `spool
        bounce`): what it still has to deliver (recipients, document jobs) is held with
        `reason`, so that no worker starts on it, and returned.

        The spool has no lease: a delivery under way is seen only as one that is due (a
        worker picks due deliveries and moves them out of due when its attempt ends). A
        message with a delivery due now (or within DUE_MARGIN) is refused unless `force`
        (a gateway that is not running delivers nothing): deleting or bouncing it could
        cross a delivery that the peer or the mailbox has already taken. Under the message
        row's lock, as a delivery takes it when it commits. `recipients_only`: refused when
        every recipient has had its delivery made or failed (a bounce has nobody to report)."""
        self.path(queue_id)  # a malformed id is NotFound, like an unknown one
        still = spool_recipients.c.state.in_(("pending", "held"))
        jobs_left = spool_documents.c.state != "done"
        with write(self._engine) as conn:
            self._lock_message(conn, queue_id)
            message = conn.execute(
                select(spool_messages).where(spool_messages.c.id == queue_id)
            ).first()
            if message is None or message.state != "queued":
                raise NotFound(f"no spooled message {queue_id!r} waiting for delivery")
            recipients = conn.execute(
                select(spool_recipients).where(spool_recipients.c.spool_id == queue_id, still)
            ).all()
            jobs = conn.execute(
                select(spool_documents).where(spool_documents.c.spool_id == queue_id, jobs_left)
            ).all()
            stamp = now()
            due = [
                r for r in (*recipients, *jobs)
                if r.state == "pending" and aware(r.next_attempt_at) <= stamp + DUE_MARGIN
            ]  # fmt: skip
            if recipients_only and not recipients:
                raise Conflict(
                    f"spooled message {queue_id} has no recipient left to deliver to: nothing"
                    " to bounce (`mssgate spool delete` drops what else keeps it)"
                )
            if due and not force:
                raise DeliveryDue(
                    f"spooled message {queue_id} has {len(due)} delivery(ies) due now (or"
                    f" within {DUE_MARGIN.seconds} s), maybe under way: try again once"
                    " `spool list` shows the attempt over"
                    " (--force if no gateway is running)"
                )
            conn.execute(
                update(spool_recipients)
                .where(spool_recipients.c.spool_id == queue_id, still)
                .values(state="held", last_error=reason[:500], updated_at=stamp)
            )
            conn.execute(
                update(spool_documents)
                .where(spool_documents.c.spool_id == queue_id, jobs_left)
                .values(state="held", last_error=reason[:500], updated_at=stamp)
            )
        return SetAside(
            envelope=MessageEnvelope(
                id=message.id,
                sender=message.sender,
                received_at=aware(message.received_at),
                ret=message.dsn_ret,
                envid=message.dsn_envid,
            ),
            recipients=[r.recipient for r in recipients],
            documents=[j.mailbox for j in jobs],
            dsn={r.recipient: stored_rcpt(r.dsn_notify, r.dsn_orcpt) for r in recipients},
        )

    def withdraw(
        self,
        aside: SetAside,
        *,
        actor: str,
        action: str,
        detail: dict[str, object],
        notice: Notice | None = None,
    ) -> str | None:
        """Second step: what `set_aside` held fails for good (recipients) or is dropped
        (document jobs), audited as `action`; the message is then done and its file gone.

        `notice` (a bounce's DSN) is spooled in the same transaction, and its queue id
        returned: spooled first and committed apart, a failure or crash in between left the
        sender told while the deliveries stayed held, and `spool release` (what a held
        delivery asks for) then delivered a message already reported undelivered."""
        queue_id = aside.envelope.id
        reason = f"{action} by {actor}"
        notice_id: str | None = None
        if notice is not None:
            notice_id = new_queue_id()
            # Durable before the commit, as an acceptance: a crash before it leaves a file
            # without a row, which `recover` removes.
            write_new_durably(self.path(notice_id), notice.content)
            detail = {**detail, "dsn": notice_id}
        try:
            done = self._withdraw(aside, queue_id, reason, actor, action, detail, notice_id, notice)
        except BaseException:
            if notice_id is not None:
                self.path(notice_id).unlink(missing_ok=True)
            raise
        if done:
            self._unlink(queue_id)
        return notice_id

    def _withdraw(
        self,
        aside: SetAside,
        queue_id: str,
        reason: str,
        actor: str,
        action: str,
        detail: dict[str, object],
        notice_id: str | None,
        notice: Notice | None,
    ) -> bool:
        with write(self._engine) as conn:
            # The message's lock first, as everywhere (lock order), then the notice's rows.
            self._lock_message(conn, queue_id)
            if notice_id is not None and notice is not None:
                self._insert_rows(
                    conn,
                    [
                        _Acceptance(
                            queue_id=notice_id,
                            stamp=now(),
                            listener=notice.listener,
                            sender="",
                            identity=None,
                            peer=None,
                            size=len(notice.content),
                            recipients=((notice.recipient.lower(), notice.route),),
                        )
                    ],
                )
            stamp = now()
            failed = conn.execute(
                update(spool_recipients)
                .where(
                    spool_recipients.c.spool_id == queue_id,
                    spool_recipients.c.recipient.in_(aside.recipients),
                    spool_recipients.c.state == "held",
                )
                .values(state="failed", last_error=reason, updated_at=stamp)
            ).rowcount
            dropped = conn.execute(
                update(spool_documents)
                .where(
                    spool_documents.c.spool_id == queue_id,
                    spool_documents.c.mailbox.in_(aside.documents),
                    spool_documents.c.state == "held",
                )
                .values(state="done", last_error=reason, updated_at=stamp)
            ).rowcount
            if failed != len(aside.recipients) or dropped != len(aside.documents):
                # Another `spool delete|bounce` of this message (held rows are no obstacle
                # to set_aside: that is how a failed one is run again), a `spool release`, or
                # a delivery made meanwhile (--force): what this command would report is no
                # longer so. Rolled back whole, its DSN with it: never a second DSN, nor
                # one for a recipient that got the message.
                raise Conflict(
                    f"spooled message {queue_id} changed while being withdrawn ({failed} of"
                    f" {len(aside.recipients)} recipient(s), {dropped} of"
                    f" {len(aside.documents)} document job(s) still held): nothing done;"
                    " see `spool list` and run the command again if it still applies"
                )
            audit.append(
                conn,
                actor=actor,
                action=action,
                subject=queue_id,
                detail={
                    "sender": aside.envelope.sender,
                    "recipients": aside.recipients,
                    "documents": aside.documents,
                    **detail,
                },
            )
            return self._mark_done_if_complete(conn, queue_id)

    def envelope(self, queue_id: str) -> MessageEnvelope:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(
                    spool_messages.c.id,
                    spool_messages.c.sender,
                    spool_messages.c.received_at,
                    spool_messages.c.dsn_ret,
                    spool_messages.c.dsn_envid,
                    spool_messages.c.listener,
                ).where(spool_messages.c.id == queue_id)
            ).first()
        if row is None:
            raise NotFound(f"no spooled message {queue_id!r}")
        return MessageEnvelope(
            id=row.id,
            sender=row.sender,
            received_at=aware(row.received_at),
            ret=row.dsn_ret,
            envid=row.dsn_envid,
            listener=row.listener,
        )

    def recipient_state(self, spool_id: str, recipient: str) -> RecipientState:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(spool_recipients).where(
                    self._recipient(spool_id, recipient)  # type: ignore[arg-type]
                )
            ).first()
        if row is None:
            raise NotFound(f"no recipient {recipient!r} in spooled message {spool_id!r}")
        return RecipientState(
            spool_id=row.spool_id,
            recipient=row.recipient,
            route=row.route,
            state=row.state,
            attempts=row.attempts,
            last_error=row.last_error,
            next_attempt_at=aware(row.next_attempt_at),
        )

    def settle(self, spool_id: str, *, first: Callable[[Connection], object]) -> None:
        """Runs `first` (a document job's own bookkeeping) and marks the message done once
        nothing waits for it, in one transaction: a crash in between cannot leave a message
        that nothing will ever finish. Then removes its file."""
        with write(self._engine) as conn:
            self._lock_message(conn, spool_id)  # first, as in a delivery (lock order)
            first(conn)
            done = self._mark_done_if_complete(conn, spool_id, locked=True)
        if done:
            self._unlink(spool_id)

    def _finish_if_complete(self, spool_id: str) -> None:
        with write(self._engine) as conn:
            done = self._mark_done_if_complete(conn, spool_id)
        if done:
            self._unlink(spool_id)

    def _lock_message(self, conn: Connection, spool_id: str) -> None:
        # Two deliveries of one message (two mailboxes, or a mailbox and the relay) finishing
        # at once on PostgreSQL would each count the other as pending under READ COMMITTED,
        # and the message would never be done: the message row is locked, so the second
        # waits for the first to commit, then counts. (SQLite has one writer anyway.)
        # Taken first in the transaction, and FOR NO KEY UPDATE: a document job's insert
        # holds KEY SHARE on this row (its foreign key), which FOR UPDATE would wait for;
        # two lanes each holding one and waiting for the other was a deadlock.
        conn.execute(_LOCK_MESSAGE, {"spool_id_": spool_id})

    def _mark_done_if_complete(
        self, conn: Connection, spool_id: str, *, locked: bool = False
    ) -> bool:
        """`locked`: this transaction took the message's lock already (_lock_message)."""
        if not locked:
            self._lock_message(conn, spool_id)
        if conn.execute(_WAITING, {"spool_id_": spool_id}).scalar_one():
            return False
        conn.execute(_MARK_DONE, {"spool_id_": spool_id})
        return True

    def _unlink(self, spool_id: str) -> None:
        # The row says done (committed) before the file goes: a crash in between leaves a
        # harmless file, removed by `recover`.
        self.path(spool_id).unlink(missing_ok=True)

    def recover(self, *, only_node: bool = False) -> int:
        """Removes files without a queued row (never acknowledged, or already done).

        With a node: adopts the queued rows written before nodes existed (no node) whose
        file is here, and all of them when `only_node` on SQLite (one data folder: their
        files can be nowhere else). The other nodes' rows are left alone.
        """
        with self._engine.connect() as conn:
            queued = {
                r.id: r.node
                for r in conn.execute(
                    select(spool_messages.c.id, spool_messages.c.node).where(
                        spool_messages.c.state == "queued"
                    )
                )
            }
        removed = 0
        here: set[str] = set()
        for entry in os.scandir(self._msg):
            queue_id = entry.name.removesuffix(".eml")
            if not entry.name.endswith(".eml"):
                continue
            if queue_id not in queued:
                os.unlink(entry.path)
                removed += 1
            else:
                here.add(queue_id)
        for entry in os.scandir(self._tmp):
            os.unlink(entry.path)
        if removed:
            fsync_dir(self._msg)
        if self.node is not None:
            anywhere = only_node and self._one_folder
            orphans = [i for i, node in queued.items() if node is None and (anywhere or i in here)]
            self._adopt(orphans)
        return removed

    def adopt_unowned(self, *, only_node: bool) -> int:
        """Claims the queued rows without a node whose file is here (all of them when this
        is the only node, on SQLite): rows written by something that names no node (an older
        `mssgate` beside a newer serve, a script). Cheap when there are none: one indexed
        query."""
        if self.node is None:
            return 0
        with self._engine.connect() as conn:
            unowned = list(
                conn.execute(
                    select(spool_messages.c.id).where(
                        spool_messages.c.node.is_(None), spool_messages.c.state == "queued"
                    )
                ).scalars()
            )
        anywhere = only_node and self._one_folder
        mine = [i for i in unowned if anywhere or self.path(i).exists()]
        self._adopt(mine)
        return len(mine)

    def _adopt(self, queue_ids: Sequence[str]) -> None:
        for start in range(0, len(queue_ids), 500):
            chunk = queue_ids[start : start + 500]
            with write(self._engine) as conn:
                conn.execute(
                    update(spool_messages)
                    .where(spool_messages.c.id.in_(chunk), spool_messages.c.node.is_(None))
                    .values(node=self.node)
                )

    def entries(self, *, include_done: bool = False) -> Iterator[SpoolEntry]:
        query = select(spool_messages).order_by(spool_messages.c.id)
        if not include_done:
            query = query.where(spool_messages.c.state == "queued")
        with self._engine.connect() as conn:
            for m in conn.execute(query).all():
                rows = list(
                    conn.execute(
                        select(spool_recipients).where(spool_recipients.c.spool_id == m.id)
                    )
                )
                # The document pipeline's jobs keep the message too: shown beside the
                # recipients, as route "documents", with their state and reason.
                rows += conn.execute(
                    select(
                        spool_documents.c.mailbox.label("recipient"),
                        literal("documents").label("route"),
                        spool_documents.c.state,
                        spool_documents.c.attempts,
                        spool_documents.c.last_error,
                        spool_documents.c.updated_at,
                    ).where(spool_documents.c.spool_id == m.id)
                ).all()
                failed = [r for r in rows if r.last_error and r.state not in ("delivered", "done")]
                latest = max(failed, key=lambda r: aware(r.updated_at), default=None)
                yield SpoolEntry(
                    id=m.id,
                    received_at=aware(m.received_at),
                    listener=m.listener,
                    sender=m.sender,
                    size=m.size,
                    state=m.state,
                    node=m.node,
                    recipients=[
                        {
                            "recipient": r.recipient,
                            "route": r.route,
                            "state": r.state,
                            "attempts": r.attempts,
                            "last_error": r.last_error,
                        }
                        for r in rows
                    ],
                    last_error=latest.last_error if latest is not None else None,
                )

    def flush(self) -> int:
        """Makes every pending delivery due now; returns how many."""
        with write(self._engine) as conn:
            result = conn.execute(
                update(spool_recipients)
                .where(spool_recipients.c.state == "pending")
                .values(next_attempt_at=now())
            )
            return int(result.rowcount)
