"""Outbound messages in the database: the submission row (unique per consumer and MSH-10),
its recipients, and their status read from the spool rows that carry them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    and_,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from mssgate import audit
from mssgate.db.schema import (
    outbound_messages,
    outbound_recipients,
    spool_messages,
    spool_recipients,
)
from mssgate.db.tx import write
from mssgate.directory.timeutil import aware

Status = Literal["queued", "sent", "delivered", "failed", "read"]
# The consumer_id of the messages routing rules forward (mssgate.outbound.forward): no
# consumer sent them (consumers' ids start at 1), so none sees their status or ZAMs.
FORWARDS: Final = 0
_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
# The reply code: the relay records "<enhanced> <reply>" ("5.1.1 550 5.1.1 No such user").
_BASIC = re.compile(r"(?<![.\d])([245]\d\d)(?![.\d])")


class RecipientStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    address: str
    status: Status
    code: str | None = None
    detail: str | None = None
    # For the business acknowledgements (mssgate.outbound.zam), not shown in the status.
    reply_code: int | None = Field(default=None, exclude=True)
    changed_at: datetime | None = Field(default=None, exclude=True)


class OutboundStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    event: str
    recipients: list[RecipientStatus]


@dataclass(frozen=True)
class Stored:
    id: str
    ack: str
    submitted_at: datetime
    event: str = ""
    unique_id: str | None = None


@dataclass(frozen=True)
class Unspooled:
    address: str
    message_id: str
    spool_id: str = ""


@dataclass(frozen=True)
class NewRecipient:
    address: str
    spool_id: str
    message_id: str


class OutboundStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def find(self, consumer_id: int, control_id: str) -> Stored | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(
                    outbound_messages.c.id,
                    outbound_messages.c.ack,
                    outbound_messages.c.submitted_at,
                    outbound_messages.c.event,
                    outbound_messages.c.unique_id,
                ).where(
                    outbound_messages.c.consumer_id == consumer_id,
                    outbound_messages.c.control_id == control_id,
                )
            ).first()
        if row is None:
            return None
        return Stored(row.id, row.ack, aware(row.submitted_at), row.event, row.unique_id)

    def unspooled(self, outbound_id: str) -> list[Unspooled]:
        """The copies of a submission whose spool entry does not exist (yet)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    outbound_recipients.c.recipient,
                    outbound_recipients.c.message_id,
                    outbound_recipients.c.spool_id,
                )
                .select_from(
                    outbound_recipients.outerjoin(
                        spool_messages, spool_messages.c.id == outbound_recipients.c.spool_id
                    )
                )
                .where(
                    outbound_recipients.c.outbound_id == outbound_id,
                    spool_messages.c.id.is_(None),
                )
            ).all()
        return [Unspooled(r.recipient, r.message_id, r.spool_id) for r in rows]

    def respooled(self, outbound_id: str, recipient: str, spool_id: str) -> None:
        with write(self._engine) as conn:
            conn.execute(
                update(outbound_recipients)
                .where(
                    outbound_recipients.c.outbound_id == outbound_id,
                    outbound_recipients.c.recipient == recipient,
                )
                .values(spool_id=spool_id)
            )

    def record(
        self,
        *,
        outbound_id: str,
        consumer_id: int,
        consumer_name: str,
        control_id: str,
        event: str,
        sender: str,
        unique_id: str | None,
        submitted_at: datetime,
        ack: str,
        recipients: list[NewRecipient],
        actor: str | None = None,
        zams: bool = True,
        origin_sender: str | None = None,
    ) -> Stored | None:
        """Claims the (consumer, MSH-10) pair; None when it was taken (the caller answers with
        the stored submission, and spools nothing). `zams=False`: no consumer awaits ZAMs
        for it (a routing rule's forward), none is ever owed. `origin_sender`: a forward's,
        the envelope sender of the document it forwards."""
        try:
            with write(self._engine) as conn:
                conn.execute(
                    insert(outbound_messages).values(
                        id=outbound_id, consumer_id=consumer_id, control_id=control_id,
                        event=event, sender=sender, unique_id=unique_id,
                        submitted_at=submitted_at, ack=ack, origin_sender=origin_sender,
                    )
                )  # fmt: skip
                for r in recipients:
                    conn.execute(
                        insert(outbound_recipients).values(
                            outbound_id=outbound_id, recipient=r.address, spool_id=r.spool_id,
                            message_id=r.message_id, reception_zam=not zams,
                        )
                    )  # fmt: skip
                # Ids only: the recipients' addresses may name the patient (INS@patient).
                audit.append(
                    conn,
                    actor=actor or f"consumer:{consumer_name}",
                    action="outbound.submitted",
                    subject=outbound_id,
                    detail={"event": event, "recipients": len(recipients)},
                )
        except IntegrityError:
            return None
        return Stored(outbound_id, ack, submitted_at)

    def forwarded(
        self, consumer_id: int, *, unique_id: str, event: str, recipient: str
    ) -> str | None:
        """The id of a message of `consumer_id` that sent this document (uniqueId, event) to
        `recipient` already, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(
                _sent_to(outbound_messages.c.id, consumer_id, unique_id, recipient)
                .where(outbound_messages.c.event == event)
                .limit(1)
            ).first()
        return None if row is None else str(row.id)

    def origin_senders(
        self, consumer_id: int, *, unique_id: str, recipient: str
    ) -> list[str | None]:
        """For whom the messages of `consumer_id` that brought the document `unique_id` to
        `recipient` (not withdrawals of it) were sent: their `origin_sender` (None: unknown,
        recorded before revision 0027)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                _sent_to(
                    outbound_messages.c.origin_sender, consumer_id, unique_id, recipient
                ).where(outbound_messages.c.event != "MDM^T04")
            ).all()
        return [r.origin_sender for r in rows]

    def forget(self, outbound_id: str) -> None:
        """Removes a submission whose spooling failed: the RIS's retry submits it anew."""
        with write(self._engine) as conn:
            conn.execute(
                delete(outbound_recipients).where(outbound_recipients.c.outbound_id == outbound_id)
            )
            conn.execute(delete(outbound_messages).where(outbound_messages.c.id == outbound_id))

    def mark_read(
        self,
        *,
        mailbox: str,
        message_id: str,
        reader: str,
        disposition: str,
        at: datetime,
        then: Callable[[Connection, str], object] = lambda _conn, _id: None,
    ) -> str | None:
        """Records a read receipt for the copy `message_id` sent from `mailbox` to `reader`;
        the outbound id, or None when no such copy exists (or it was read already). `then`
        runs in the same transaction with the outbound id (its ZAMs: a crash loses neither)."""
        return self._decide(
            mailbox,
            reader,
            [
                outbound_recipients.c.message_id == message_id,
                outbound_recipients.c.read_at.is_(None),
            ],
            {"read_at": at, "disposition": disposition},
            "outbound.read",
            {"disposition": disposition[:100]},
            then,
        )

    def mark_delivery(
        self,
        *,
        mailbox: str,
        recipient: str,
        action: str,
        status: str,
        detail: str | None,
        at: datetime,
        envid: str | None,
        message_id: str | None,
        then: Callable[[Connection, str], object] = lambda _conn, _id: None,
    ) -> str | None:
        """Records what a DSN reported for the copy sent from `mailbox` to `recipient`,
        named by its ENVID (the copy's spool id) or else its Message-ID; the outbound id,
        or None when no such copy exists or a DSN already decided it. The caller has
        checked who reported (receipts.may_report). `then` as for mark_read."""
        if envid is not None:
            which = outbound_recipients.c.spool_id == envid
        elif message_id is not None:
            which = outbound_recipients.c.message_id == message_id
        else:
            return None
        return self._decide(
            mailbox,
            recipient,
            [which, outbound_recipients.c.dsn_action.is_(None)],
            {"dsn_action": action, "dsn_status": status, "dsn_detail": detail, "dsn_at": at},
            f"outbound.{action}",
            {"status": status, "by": "dsn"},
            then,
        )

    def _decide(
        self,
        mailbox: str,
        recipient: str,
        which: list[ColumnElement[bool]],
        values: dict[str, object],
        action: str,
        detail: dict[str, str],
        then: Callable[[Connection, str], object],
    ) -> str | None:
        """Sets `values` on the copy `which` names, audited as `action`, then `then`, in one
        transaction; the outbound id, or None when `which` names no copy (mark_read)."""
        with write(self._engine) as conn:
            row = self._copy(conn, mailbox, recipient, *which)
            if row is None:
                return None
            conn.execute(
                update(outbound_recipients)
                .where(
                    outbound_recipients.c.outbound_id == row.outbound_id,
                    outbound_recipients.c.recipient == recipient,
                )
                .values(**values)
            )
            audit.append(conn, actor="outbound", action=action, subject=row.outbound_id,
                         detail=detail)  # fmt: skip
            then(conn, str(row.outbound_id))
        return str(row.outbound_id)

    def _copy(
        self, conn: Connection, mailbox: str, recipient: str, *which: ColumnElement[bool]
    ) -> Row[Any] | None:
        """The copy to `recipient` sent from `mailbox` that `which` names, its message
        locked (its outbound_id), or None."""
        query = (
            select(outbound_recipients.c.outbound_id)
            .select_from(
                outbound_recipients.join(
                    outbound_messages,
                    outbound_messages.c.id == outbound_recipients.c.outbound_id,
                )
            )
            .where(
                *which,
                outbound_recipients.c.recipient == recipient,
                outbound_messages.c.sender == mailbox,
            )
        )
        row = conn.execute(query).first()
        if row is None:
            return None
        self._lock_message(conn, str(row.outbound_id))
        # Read again under the lock: `which` may say "not decided yet" (no DSN, not read),
        # and another DSN or receipt may have decided it while this one waited for the lock
        # (PostgreSQL reads what was committed before the wait): the first decides.
        return conn.execute(query).first()

    def _lock_message(self, conn: Connection, outbound_id: str) -> None:
        # The message's row before its copies': the order the makers of its ZAMs lock in
        # (mssgate.outbound.zamqueue), so that on PostgreSQL they never deadlock.
        conn.execute(
            select(outbound_messages.c.id)
            .where(outbound_messages.c.id == outbound_id)
            .with_for_update()
        )

    def submitted(self, consumer_id: int, outbound_id: str) -> tuple[str, str] | None:
        """(MSH-10, ACK) of a consumer's submission (None: unknown or another's)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(outbound_messages.c.control_id, outbound_messages.c.ack).where(
                    outbound_messages.c.id == outbound_id,
                    outbound_messages.c.consumer_id == consumer_id,
                )
            ).first()
        return None if row is None else (row.control_id, row.ack)

    def status(self, consumer_id: int, outbound_id: str) -> OutboundStatus | None:
        """None for an id unknown or another consumer's (the API answers 404 to both)."""
        with self._engine.connect() as conn:
            return self.status_in(conn, outbound_id, consumer_id=consumer_id)

    def status_in(
        self, conn: Connection, outbound_id: str, *, consumer_id: int | None = None
    ) -> OutboundStatus | None:
        """`status` read on the caller's connection (inside its transaction: the ZAMs of a
        change are made in the transaction that records it); any consumer's when None."""
        query = select(outbound_messages.c.event).where(outbound_messages.c.id == outbound_id)
        if consumer_id is not None:
            query = query.where(outbound_messages.c.consumer_id == consumer_id)
        head = conn.execute(query).first()
        if head is None:
            return None
        rows = conn.execute(
            select(
                outbound_recipients.c.recipient,
                spool_recipients.c.route,
                spool_recipients.c.state,
                spool_recipients.c.last_error,
                spool_recipients.c.updated_at,
                outbound_recipients.c.read_at,
                outbound_recipients.c.disposition,
                outbound_recipients.c.dsn_action,
                outbound_recipients.c.dsn_status,
                outbound_recipients.c.dsn_detail,
                outbound_recipients.c.dsn_at,
            )
            .select_from(
                outbound_recipients.outerjoin(
                    spool_recipients,
                    and_(
                        spool_recipients.c.spool_id == outbound_recipients.c.spool_id,
                        spool_recipients.c.recipient == outbound_recipients.c.recipient,
                    ),
                )
            )
            .where(outbound_recipients.c.outbound_id == outbound_id)
            .order_by(outbound_recipients.c.recipient)
        ).all()
        return OutboundStatus(
            id=outbound_id,
            event=head.event,
            recipients=[
                RecipientStatus(
                    address=r.recipient, status="read", detail=r.disposition, changed_at=r.read_at
                )
                if r.read_at is not None
                else _from_dsn(r.recipient, r.dsn_action, r.dsn_status, r.dsn_detail, r.dsn_at)
                if r.dsn_action is not None and r.state != "failed"
                else _recipient(r.recipient, r.route, r.state, r.last_error, r.updated_at)
                for r in rows
            ],
        )


def _sent_to(
    column: ColumnElement[Any], consumer_id: int, unique_id: str, recipient: str
) -> Select[Any]:
    """`column` of the messages of `consumer_id` about the document `unique_id` that have
    `recipient` among their recipients (what a forward asks before sending again)."""
    return (
        select(column)
        .select_from(
            outbound_messages.join(
                outbound_recipients,
                outbound_recipients.c.outbound_id == outbound_messages.c.id,
            )
        )
        .where(
            outbound_messages.c.consumer_id == consumer_id,
            outbound_messages.c.unique_id == unique_id,
            outbound_recipients.c.recipient == recipient,
        )
    )


def _from_dsn(
    address: str, action: str, status: str | None, detail: str | None, at: datetime | None
) -> RecipientStatus:
    """What the recipient's operator reported by DSN: the copy reached the mailbox
    (`delivered`), or failed there after the relay's 250, with its status and diagnostic."""
    if action == "delivered":
        return RecipientStatus(address=address, status="delivered", changed_at=at)
    basic = _BASIC.search(detail or "")
    return RecipientStatus(
        address=address,
        status="failed",
        code=status,
        detail=(detail or f"{status} reported by the recipient's operator")[:300],
        reply_code=int(basic.group(1)) if basic else None,
        changed_at=at,
    )


def _recipient(
    address: str,
    route: str | None,
    state: str | None,
    error: str | None,
    changed_at: datetime | None,
) -> RecipientStatus:
    """The spool's state in the API's words: a relayed copy the peer took is `sent` (its
    delivery there is the peer's, reported by DSN: see _from_dsn), a local one written to
    the mailbox `delivered`."""
    if state == "delivered":
        status: Status = "sent" if route == "relay" else "delivered"
        return RecipientStatus(address=address, status=status, changed_at=changed_at)
    if state == "failed":
        found = _ENHANCED.search(error or "")
        basic = _BASIC.search(error or "")
        return RecipientStatus(
            address=address,
            status="failed",
            code=found.group(1) if found else None,
            detail=(error or "")[:300] or None,
            reply_code=int(basic.group(1)) if basic else None,
            changed_at=changed_at,
        )
    detail = None
    if state == "held":
        detail = "held by the operator"
    elif error:
        detail = f"retrying: {error[:300]}"
    return RecipientStatus(address=address, status="queued", detail=detail)
