"""Business acknowledgements (ZAM) as queue items of kind `ack`, for a RIS that only polls
(issue 15): `POST /v1/leases?kind=ack`, `GET /v1/acks/{id}[/content]`,
`POST /v1/acks/{id}/ack`, with the documents' semantics (at least once, an expired lease
offers the item again, a retried ack is harmless, another consumer's item is 404).

Where a ZAM is made: it is derived from the durable status (mssgate.outbound.zam), so it
is made by whoever looks first and recorded once under its MSH-10 (unique):
- in the transaction that records a read receipt (`materialise`, a crash loses neither);
- by the sweeper (`sweep`, a supervised task of `serve`) for copies whose spool delivery
  ended or a DSN came back, which only the copies without a ZAM^Z02 yet are read for
  (`outbound_recipients.reception_zam`): a crash between a change and its ZAM is caught
  at the next pass;
- before a consumer leases acks, and when it reads GET /v1/outbound/{id}/acks, so what it
  sees never waits for the sweeper.
Any other status change calls `status_changed(outbound_id)` after its commit (or
`materialise` in its transaction, having locked the outbound message first).

Acks never go dead: a ZAM the RIS cannot take is offered again (attempts count), and there
is no one to tell about it but the RIS itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import hl7  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine, Row, false, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from mssgate import audit
from mssgate.db.schema import (
    outbound_acks,
    outbound_messages,
    outbound_recipients,
    spool_recipients,
)
from mssgate.db.tx import write
from mssgate.directory.models import Consumer
from mssgate.directory.timeutil import aware
from mssgate.errors import MssgateError, NotFound, ValidationFailed
from mssgate.outbound import hl7in
from mssgate.outbound.store import FORWARDS, OutboundStore
from mssgate.outbound.zam import Zam, zam_items
from mssgate.queue.backend import Backend, backend_for
from mssgate.queue.scans import ScanTimes
from mssgate.queue.service import LeaseLost, QueueSettings
from mssgate.supervisor import PassHealth, run_in_passes

log = logging.getLogger("mssgate.outbound")

ACK_MEDIA_TYPE: Final = "application/hl7-v2"
_CODES: Final = {"Z02": "ACK_RECEPTION_MSS", "Z03": "ACK_LECTURE_MSS"}
# A ZAM's MSH-10 (mssgate.outbound.zam): any other id is unknown without asking the
# database, where a NUL would make PostgreSQL raise (a 500 instead of the 404).
_ACK_ID: Final = re.compile(r"[0-9A-F]{1,32}-[0-9]{1,4}-Z0(?:2N?|3)")
SWEEP_BATCH: Final = 100


class AckItem(BaseModel):
    """One ZAM as the API shows it; `content` is its ER7 (also at /v1/acks/{id}/content)."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str = "ack"
    outbound_id: str
    message_type: str
    code: str
    recipient: str
    accepted: bool
    created_at: datetime
    state: str
    attempts: int
    content_type: str = ACK_MEDIA_TYPE
    content: str


class AckLease(BaseModel):
    model_config = ConfigDict(frozen=True)

    lease_id: str
    expires_at: datetime
    ack: AckItem


def _item(row: Row[Any], state: str | None = None) -> AckItem:
    return AckItem(
        id=row.id,
        outbound_id=row.outbound_id,
        message_type=f"ZAM^{row.trigger}^ZAM_Z01",
        code=_CODES[row.trigger],
        recipient=row.recipient,
        accepted=row.accepted,
        created_at=aware(row.created_at),
        state=state or row.state,
        attempts=row.attempts,
        content=row.er7,
    )


class ZamQueue:
    def __init__(
        self,
        engine: Engine,
        *,
        facility: str,
        settings: QueueSettings | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._backend: Backend = backend_for(engine)
        self._store = OutboundStore(engine)
        self._facility = facility
        self.settings = settings or QueueSettings()
        self._clock = clock
        self._expiry_scans = ScanTimes()

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    # -- making them ----------------------------------------------------------------------

    def _produced(self, conn: Connection, outbound_id: str) -> tuple[int, list[Zam]] | None:
        """(consumer id, every ZAM the status warrants now), or None for an unknown id."""
        head = conn.execute(
            select(
                outbound_messages.c.consumer_id,
                outbound_messages.c.control_id,
                outbound_messages.c.ack,
            ).where(outbound_messages.c.id == outbound_id)
        ).first()
        if head is None or head.consumer_id == FORWARDS:
            return None  # a routing rule's forward: no RIS sent it, none awaits its ZAMs
        status = self._store.status_in(conn, outbound_id)
        if status is None:
            return None
        # The RIS's application and facility, as the ACK answered them (its MSH-5 and -6).
        msh = hl7.parse(head.ack).segment("MSH")
        items = zam_items(
            status,
            original_control_id=head.control_id,
            facility=self._facility,
            ris=(hl7in.value(msh, 5), hl7in.value(msh, 6)),
        )
        return int(head.consumer_id), items

    def _recorded(self, conn: Connection, outbound_id: str) -> set[str]:
        rows = conn.execute(
            select(outbound_acks.c.id).where(outbound_acks.c.outbound_id == outbound_id)
        )
        return {str(r.id) for r in rows}

    def materialise(self, conn: Connection, outbound_id: str) -> int:
        """In the caller's write transaction: records the ZAMs the status warrants that are
        not recorded yet; returns how many. The outbound message's row is locked first: two
        makers of the same ZAMs (PostgreSQL) take their locks in one order."""
        conn.execute(
            self._backend.lock(
                select(outbound_messages.c.id).where(outbound_messages.c.id == outbound_id)
            )
        )
        produced = self._produced(conn, outbound_id)
        if produced is None:
            return 0
        consumer_id, items = produced
        # Only the missing ones are inserted: re-inserting one a lease or an ack is updating
        # waits on its unique key for that transaction, which waits for the audit head this
        # one took at its first insert (a deadlock on PostgreSQL). Under the lock above, no
        # other maker is inserting: what is recorded now is all there is.
        recorded = self._recorded(conn, outbound_id)
        now = self._now()
        made = 0
        for z in items:
            if z.control_id in recorded:
                continue
            created = self._backend.insert_ignore(
                conn,
                outbound_acks,
                {
                    "id": z.control_id, "outbound_id": outbound_id, "consumer_id": consumer_id,
                    "position": z.position, "trigger": z.trigger, "recipient": z.recipient,
                    "accepted": z.accepted, "er7": z.er7, "created_at": now, "state": "ready",
                    "attempts": 0, "updated_at": now,
                },
            )  # fmt: skip
            if created:
                made += 1
                # Ids only: the recipient may be the patient's own mailbox.
                detail = {"outbound_id": outbound_id, "accepted": z.accepted}
                audit.append(
                    conn,
                    actor="outbound",
                    action="zam.enqueue",
                    subject=z.control_id,
                    detail=detail,
                )
        receptions = [z.recipient for z in items if z.trigger == "Z02"]
        if receptions:
            conn.execute(
                update(outbound_recipients)
                .where(
                    outbound_recipients.c.outbound_id == outbound_id,
                    outbound_recipients.c.recipient.in_(receptions),
                    outbound_recipients.c.reception_zam == false(),
                )
                .values(reception_zam=True)
            )
        return made

    def status_changed(self, outbound_id: str) -> int:
        """The hook for any change of a copy's status, after its commit: records the ZAMs it
        warrants (a crash before this is the sweeper's). A read first: nothing new, no write."""
        with self._engine.connect() as conn:
            produced = self._produced(conn, outbound_id)
            if produced is None:
                return 0
            recorded = self._recorded(conn, outbound_id)
        if all(z.control_id in recorded for z in produced[1]):
            return 0
        with write(self._engine) as conn:
            return self.materialise(conn, outbound_id)

    def due(self, *, consumer_id: int | None = None, limit: int = SWEEP_BATCH) -> list[str]:
        """Outbound messages with a copy whose reception ZAM is owed: its spool delivery
        ended, a DSN or a read receipt came back, and no ZAM^Z02 is recorded for it."""
        r, s = outbound_recipients.c, spool_recipients.c
        query = (
            select(r.outbound_id)
            .select_from(
                outbound_recipients.outerjoin(
                    spool_recipients, (s.spool_id == r.spool_id) & (s.recipient == r.recipient)
                )
            )
            .where(
                r.reception_zam == false(),
                or_(
                    s.state.in_(("delivered", "failed")),
                    r.read_at.is_not(None),
                    r.dsn_action.is_not(None),
                ),
            )
            .distinct()
            .limit(limit)
        )
        if consumer_id is not None:
            query = query.join(outbound_messages, outbound_messages.c.id == r.outbound_id).where(
                outbound_messages.c.consumer_id == consumer_id
            )
        with self._engine.connect() as conn:
            return [str(row.outbound_id) for row in conn.execute(query)]

    def sweep(self, *, consumer_id: int | None = None, limit: int = SWEEP_BATCH) -> int:
        """One pass over at most `limit` messages owed a ZAM; returns how many it took."""
        owed = self.due(consumer_id=consumer_id, limit=limit)
        for outbound_id in owed:
            with write(self._engine) as conn:
                self.materialise(conn, outbound_id)
        return len(owed)

    # -- the consumer's side ----------------------------------------------------------------

    def listed(self, outbound_id: str) -> list[str]:
        """The ER7 of the message's recorded ZAMs, per recipient, reception before reading."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(outbound_acks.c.er7)
                .where(outbound_acks.c.outbound_id == outbound_id)
                .order_by(outbound_acks.c.position, outbound_acks.c.trigger, outbound_acks.c.seq)
            )
            return [str(r.er7) for r in rows]

    def lease(
        self, consumer: Consumer, *, max_items: int = 1, lease_seconds: int | None = None
    ) -> list[AckLease]:
        if not 1 <= max_items <= self.settings.max_lease_batch:
            raise ValidationFailed(f"max must be between 1 and {self.settings.max_lease_batch}")
        seconds = lease_seconds or self.settings.visibility_timeout_seconds
        if not 1 <= seconds <= self.settings.max_lease_seconds:
            raise ValidationFailed(
                f"lease_seconds must be between 1 and {self.settings.max_lease_seconds}"
            )
        # What the status warrants is offered now, not at the sweeper's next pass.
        self.sweep(consumer_id=consumer.id)
        leases: list[AckLease] = []
        a = outbound_acks.c
        claim = self._backend.claim(
            select(outbound_acks)
            .where(a.consumer_id == consumer.id, a.state == "ready")
            .order_by(a.seq)
            .limit(max_items)
        )
        with write(self._engine) as conn:
            now = self._now()
            # Lapsed leases looked for at most once a second, or when short (queue/scans.py).
            scanned = self._expiry_scans.due(consumer.id, now)
            if scanned:
                self._expire(conn, consumer, now)
            expires = now + timedelta(seconds=seconds)
            candidates = conn.execute(claim).all()
            if not scanned and len(candidates) < max_items:
                self._expire(conn, consumer, now)
                candidates = conn.execute(claim).all()
            for row in candidates:
                lease_id = secrets.token_hex(16)
                changed = conn.execute(
                    update(outbound_acks)
                    .where(a.seq == row.seq, a.state == "ready")
                    .values(state="leased", attempts=a.attempts + 1, lease_id=lease_id,
                            lease_expires_at=expires, updated_at=now)
                )  # fmt: skip
                if changed.rowcount != 1:
                    continue
                audit.append(conn, actor=f"consumer:{consumer.name}", action="zam.lease",
                             subject=row.id, detail={"attempt": row.attempts + 1,
                                                     "seconds": seconds})  # fmt: skip
                item = _item(row, "leased").model_copy(update={"attempts": row.attempts + 1})
                leases.append(AckLease(lease_id=lease_id, expires_at=expires, ack=item))
        return leases

    def _expire(self, conn: Connection, consumer: Consumer, now: datetime) -> None:
        self._expiry_scans.mark(consumer.id, now)
        a = outbound_acks.c
        rows = conn.execute(
            self._backend.claim(
                select(a.seq, a.id, a.attempts).where(
                    a.consumer_id == consumer.id, a.state == "leased", a.lease_expires_at <= now
                )
            )
        ).all()
        for row in rows:
            conn.execute(
                update(outbound_acks)
                .where(a.seq == row.seq)
                .values(state="ready", lease_expires_at=None, updated_at=now)
            )
            audit.append(conn, actor="outbound", action="zam.expire", subject=row.id,
                         detail={"attempts": row.attempts})  # fmt: skip

    def _row(self, conn: Connection, consumer: Consumer, ack_id: str, *, lock: bool) -> Row[Any]:
        if not _ACK_ID.fullmatch(ack_id):
            raise NotFound("no such acknowledgement")
        query = select(outbound_acks).where(outbound_acks.c.id == ack_id)
        row = conn.execute(self._backend.lock(query) if lock else query).first()
        # Another consumer's answers exactly like a missing one: no existence leak.
        if row is None or row.consumer_id != consumer.id:
            raise NotFound("no such acknowledgement")
        return row

    def item(self, consumer: Consumer, ack_id: str) -> AckItem:
        with self._engine.connect() as conn:
            return _item(self._row(conn, consumer, ack_id, lock=False))

    def ack(self, consumer: Consumer, ack_id: str, lease_id: str) -> None:
        with write(self._engine) as conn:
            now = self._now()
            row = self._row(conn, consumer, ack_id, lock=True)
            if row.state == "done" and row.lease_id == lease_id:
                return  # a retried ack (the client lost our first answer)
            if row.state != "leased" or row.lease_id != lease_id:
                raise LeaseLost("this lease is not held any more (expired or superseded)")
            if aware(row.lease_expires_at) <= now:
                raise LeaseLost("this lease has expired")
            conn.execute(
                update(outbound_acks)
                .where(outbound_acks.c.seq == row.seq)
                .values(state="done", lease_expires_at=None, updated_at=now)
            )
            audit.append(conn, actor=f"consumer:{consumer.name}", action="zam.ack",
                         subject=ack_id, detail={"attempts": row.attempts})  # fmt: skip

    def counts(self) -> dict[str, int]:
        """Items per state (tests, operators)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(outbound_acks.c.state, func.count()).group_by(outbound_acks.c.state)
            ).all()
        return {"ready": 0, "leased": 0, "done": 0} | {str(s): int(n) for s, n in rows}


async def sweep_forever(zams: ZamQueue, interval: float, health: PassHealth | None = None) -> None:
    """The supervised sweeper of `serve`: the ZAMs of the spool's deliveries (which call no
    hook) and of a change a crash cut from its ZAM are made here, every `interval` s. A pass
    that fails on the database is logged (`outbound.zam_sweep.pass_failed`), told to
    `health` and tried again; anything else is a bug, for the supervisor."""

    async def one_pass() -> int:
        # A full batch: more are owed (a backlog, as after revision 0020): again at once.
        return int(await asyncio.to_thread(zams.sweep) >= SWEEP_BATCH)

    await run_in_passes("outbound.zam_sweep", one_pass, wake=asyncio.Event(),
                        poll_seconds=interval, health=health or PassHealth(),
                        transient=(MssgateError, SQLAlchemyError, OSError), logger=log)  # fmt: skip
