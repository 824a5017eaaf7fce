"""The delivery worker: drains due local deliveries from the spool into the MailStore."""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from mssgate import metrics
from mssgate.config import DeliveryConfig
from mssgate.directory.timeutil import now
from mssgate.errors import StorageError
from mssgate.logs import event
from mssgate.mailstore import DeliveryFailed, MailStore
from mssgate.relay.dsn import RecipientReport, build_dsn
from mssgate.smtp.body import MemoryBudget
from mssgate.smtp.dsnparams import MessageDsn, RecipientDsn
from mssgate.spool.store import MessageEnvelope, PendingDelivery, Spool
from mssgate.supervisor import PassHealth, run_in_passes

log = logging.getLogger("mssgate.delivery")

_DEFAULTS = DeliveryConfig()

# Failures of the gateway's own footing, not of one entry: holding the entry would be wrong.
_TRANSIENT = (SQLAlchemyError, StorageError, MemoryError)
_ENHANCED = re.compile(r"\b(5\.\d{1,3}\.\d{1,3})\b")
_REPLY = re.compile(r"\b(5\d\d [^\r\n]*)")

# (DSN bytes, its recipient: the envelope sender); spools it with a null sender, durably.
OnDsn = Callable[[bytes, str], None]


@dataclass(frozen=True)
class Notifications:
    """What local delivery needs to send DSNs (RFC 3461/3464): where they go (the relay's
    BounceSpooler) and the gateway's names. Without it, delivery reports nothing."""

    on_dsn: OnDsn
    hostname: str
    mss_nil: str | None = None


def retry_delay(attempts: int, config: DeliveryConfig = _DEFAULTS) -> timedelta:
    cap = timedelta(seconds=config.retry_max_seconds)
    delay: timedelta = timedelta(seconds=config.retry_first_seconds) * (2 ** min(attempts, 16))
    return delay if delay < cap else cap


class DocumentHandoff(Protocol):
    """The document pipeline's side of a delivery (mssgate.documents_worker): whether a
    mailbox's messages go through it, and a nudge once one is waiting. The delivery never
    runs the pipeline itself: it records a job with the delivery, in one transaction."""

    def wants(self, mailbox: str) -> bool: ...

    def wake(self) -> None: ...


# What the mailbox stores of a message (recipient, message): the message itself, or for a
# RIS with encryption at rest, the message encrypted to its key. Raises DeliveryFailed.
Seal = Callable[[str, bytes], bytes]


class CrossNode(Protocol):
    """Hand-over to a mailbox's home node when it is another node (mssgate.nodelink)."""

    def home_elsewhere(self, recipient: str) -> str | None:
        """The home node's address (host:port), or None to deliver here."""
        ...

    def hand_over(
        self,
        address: str,
        recipient: str,
        message: bytes,
        *,
        queue_id: str,
        sender: str,
        dsn: MessageDsn | None = None,
        rcpt_dsn: RecipientDsn | None = None,
    ) -> None:
        """`dsn`, `rcpt_dsn`: the RFC 3461 parameters the entry came with; the home node
        delivers, so it is the one to send the DSNs they ask for."""
        ...

    def taken_elsewhere(self, queue_id: str, recipient: str) -> bool:
        """Whether a node took an earlier hand-over of this entry (mssgate.handovers)."""
        ...


class Gates(Protocol):
    """mssgate.mailmove.MailboxGates."""

    def hold(self, address: str) -> AbstractContextManager[None]: ...

    def moving_elsewhere(self, address: str) -> bool: ...


class DeliveryWorker:
    def __init__(
        self,
        spool: Spool,
        store: MailStore,
        *,
        config: DeliveryConfig = _DEFAULTS,
        poll_seconds: float | None = None,
        documents: DocumentHandoff | None = None,
        budget: MemoryBudget | None = None,
        seal: Seal | None = None,
        cross_node: CrossNode | None = None,
        give_up_after: timedelta | None = None,
        gates: Gates | None = None,
        notifications: Notifications | None = None,
    ) -> None:
        self._spool = spool
        self._notify = notifications
        self._store = store
        self._config = config
        self._poll = config.poll_seconds if poll_seconds is None else poll_seconds
        self._documents = documents
        self._budget = budget
        self._seal = seal
        self._cross = cross_node
        # A hand-over that keeps failing temporarily (the home node down) gives up only
        # after this long since arrival, as the relay does; never by a count of attempts.
        self._give_up_after = give_up_after
        # A mailbox moving to another node (mssgate.mailmove): its home is read and its
        # message written to the local store under its gate, so that none lands here after
        # the move's final sync has read this node's copy.
        self._gates = gates
        self._wake = asyncio.Event()
        self.delivered = 0
        self.health = PassHealth()  # for /healthz: passes that keep failing

    def wake(self) -> None:
        self._wake.set()

    def _deliver_one(self, item: PendingDelivery) -> None:
        try:
            self._attempt(item)
        except _TRANSIENT:
            raise  # the database or the disk: the pass fails, the entry stays due
        except Exception as exc:
            # Anything else belongs to this entry (its file is gone, a part of the pipeline
            # broke on its bytes): set it aside with its reason so that the others go on.
            reason = f"{type(exc).__name__}: {exc}"[:480]
            self._spool.hold(item, reason=reason)
            metrics.delivery(item.route, "held")
            event(
                log,
                "delivery.held",
                level=logging.ERROR,
                queue_id=item.spool_id,
                reason=reason,
                traceback="".join(traceback.format_exception(exc)),
            )

    def _attempt(self, item: PendingDelivery) -> None:
        if self._gates is None:
            self._attempt_now(item)
            return
        with self._gates.hold(item.recipient):
            self._attempt_now(item)

    def _attempt_now(self, item: PendingDelivery) -> None:
        home = self._cross.home_elsewhere(item.recipient) if self._cross is not None else None
        if home is not None:
            self._hand_over(item, home)
            return
        # Only after a failed attempt: an earlier one may have handed it to the then home
        # node, which took it but whose 250 was lost, and the mailbox has come back here
        # since. That node's copy comes here by its own hand-over (or was synced with the
        # mailbox): this one would be a second.
        if (
            self._cross is not None
            and item.attempts > 0
            and self._cross.taken_elsewhere(item.spool_id, item.recipient)
        ):
            self._spool.delivered(item)
            metrics.delivery(item.route, "delivered")
            event(log, "delivery.taken_elsewhere", queue_id=item.spool_id)
            return
        if self._gates is not None and self._gates.moving_elsewhere(item.recipient):
            # Homed here by a move that another node is still finishing (its final sync
            # writes into this mailbox): waits, as for any temporary failure, until it is done.
            self._spool.attempt_failed(
                item,
                error="the mailbox is moving to this node: waiting for the move's final sync",
                permanent=False,
                retry_in=retry_delay(item.attempts, self._config),
            )
            metrics.delivery(item.route, "deferred")
            event(log, "delivery.failed", queue_id=item.spool_id, permanent=False,
                  attempts=item.attempts + 1, error="mailbox moving")  # fmt: skip
            return
        envelope = self._spool.envelope(item.spool_id)  # its sender for the Return-Path
        try:
            content = self._spool.read(item.spool_id)
            stored = content if self._seal is None else self._seal(item.recipient, content)
            self._store.deliver(
                item.recipient, stored, delivery_id=item.spool_id, sender=envelope.sender
            )
        except DeliveryFailed as exc:
            permanent = exc.permanent or item.attempts + 1 >= self._config.max_attempts
            if permanent:
                # Before the failure is committed: a crash in between reports twice, not never.
                self._report(item, envelope, _failure(item, str(exc)))
            self._spool.attempt_failed(
                item,
                error=str(exc),
                permanent=permanent,
                retry_in=retry_delay(item.attempts, self._config),
            )
            metrics.delivery(item.route, "failed" if permanent else "deferred")
            if exc.ambiguous and not permanent:
                metrics.delivery_retried_after_ambiguous_failure(item.route)
            event(
                log,
                "delivery.failed",
                queue_id=item.spool_id,
                permanent=permanent,
                ambiguous=exc.ambiguous,
                attempts=item.attempts + 1,
                error=str(exc),
            )
            return
        if item.dsn.wants_success:
            # The message is in the mailbox now: a success DSN that cannot be spooled is
            # logged, never a reason to deliver again (the mail store does not deduplicate:
            # each pass wrote another copy while the entry stayed due). As the relay's.
            try:
                self._report(item, envelope, _success(item))
            except Exception as exc:  # whatever building, signing or spooling it raised
                event(log, "delivery.dsn_failed", level=logging.ERROR, queue_id=item.spool_id,
                      action="delivered", error=f"{type(exc).__name__}: {exc}"[:300])  # fmt: skip
        wants = self._documents is not None and self._documents.wants(item.recipient)
        self._spool.delivered(item, documents=wants)
        if wants and self._documents is not None:
            self._documents.wake()
        metrics.delivery(item.route, "delivered")
        self.delivered += 1
        event(log, "delivery.ok", queue_id=item.spool_id, route=item.route)

    def _report(
        self, item: PendingDelivery, envelope: MessageEnvelope, report: RecipientReport
    ) -> None:
        """The DSN the recipient's NOTIFY asks for (none for a null sender, RFC 5321 4.5.5),
        from mailer-daemon@ the recipient's domain: ours, whose key signs it, and the domain
        a peer receiving it expects to speak for that recipient. Raises what spooling it
        raised: the delivery's outcome is then not committed, and comes back."""
        wanted = item.dsn.wants_failure if report.action == "failed" else item.dsn.wants_success
        reason = "NOTIFY asks for no failure report"
        if envelope.reported_to_its_ris:
            wanted, reason = False, "a RIS's copy: its status and ZAM say it"  # as the relay
        if self._notify is None or not envelope.sender or not wanted:
            if report.action == "failed" and envelope.sender and self._notify is not None:
                event(log, "delivery.dsn_suppressed", queue_id=item.spool_id, reason=reason)
            return
        dsn = build_dsn(
            self._spool.read(item.spool_id),
            reporting_mta=self._notify.hostname,
            failures=[report],
            postmaster=f"mailer-daemon@{item.recipient.rpartition('@')[2]}",
            arrival=envelope.received_at,
            envelope_sender=envelope.sender,
            date=now(),
            mss_nil=self._notify.mss_nil,
            envid=envelope.envid,
        )
        self._notify.on_dsn(dsn, envelope.sender)
        event(log, "delivery.dsn", queue_id=item.spool_id, action=report.action)

    def _hand_over(self, item: PendingDelivery, address: str) -> None:
        assert self._cross is not None
        content = self._spool.read(item.spool_id)
        envelope = self._spool.envelope(item.spool_id)
        try:
            # Unsealed, without a document job: the home node's own delivery does both.
            self._cross.hand_over(address, item.recipient, content, queue_id=item.spool_id,
                                  sender=envelope.sender, dsn=envelope.dsn,
                                  rcpt_dsn=item.dsn)  # fmt: skip
        except DeliveryFailed as exc:
            expired = self._give_up_after is not None and (
                now() - envelope.received_at > self._give_up_after
            )
            permanent = exc.permanent or expired
            delay = retry_delay(item.attempts, self._config)
            if permanent:
                # As a local refusal does, before the failure is committed (at least once).
                self._report(item, envelope, _failure(item, str(exc)))
            self._spool.attempt_failed(item, error=f"hand-over to {address}: {exc}",
                                       permanent=permanent, retry_in=delay)  # fmt: skip
            metrics.delivery(item.route, "failed" if permanent else "deferred")
            event(log, "delivery.failed", queue_id=item.spool_id, permanent=permanent,
                  node=address, attempts=item.attempts + 1, error=str(exc))  # fmt: skip
            return
        self._spool.delivered(item)
        metrics.delivery(item.route, "delivered")
        self.delivered += 1
        event(log, "delivery.ok", queue_id=item.spool_id, route=item.route, node=address)

    async def run_once(self) -> int:
        batch = await asyncio.to_thread(self._spool.due, route="local")
        # One lane per mailbox, in arrival order within it; several lanes at once. Serial
        # delivery made every mailbox wait behind the slowest LMTP exchange and fsync.
        lanes: dict[str, list[PendingDelivery]] = {}
        for item in batch:
            lanes.setdefault(item.recipient, []).append(item)
        slots = asyncio.Semaphore(self._config.concurrency)

        async def lane(items: list[PendingDelivery]) -> None:
            async with slots:
                for item in items:
                    await self._one(item)

        results = await asyncio.gather(*(lane(x) for x in lanes.values()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the first failure of the pass, as a serial pass would raise
        return len(batch)

    async def _one(self, item: PendingDelivery) -> None:
        if self._budget is None:
            await asyncio.to_thread(self._deliver_one, item)
            return
        # Sealing for a RIS with a key reads the whole message: it waits for its share of
        # memory like the SMTP checks do.
        async with self._budget.reserve(self._spool.size(item.spool_id)):
            await asyncio.to_thread(self._deliver_one, item)

    async def run(self) -> None:
        await run_in_passes("delivery", self.run_once, wake=self._wake,
                            poll_seconds=self._poll, health=self.health,
                            transient=_TRANSIENT, logger=log)  # fmt: skip


def _success(item: PendingDelivery) -> RecipientReport:
    return RecipientReport(
        item.recipient, "2.0.0", action="delivered", last_attempt=now(),
        original_recipient=item.dsn.orcpt_text(),
    )  # fmt: skip


def _failure(item: PendingDelivery, error: str) -> RecipientReport:
    """A local failure as a DSN reports it: the store's reply when it gave one (an LMTP
    refusal), else 5.2.0 (the mailbox could not take it)."""
    found = _ENHANCED.search(error)
    reply = _REPLY.search(error)
    status = found.group(1) if found else "5.2.0"
    # Our own words go out as a reply would: which file or socket failed stays in our log.
    return RecipientReport(
        item.recipient,
        status,
        diagnostic=reply.group(1)[:300] if reply else f"550 {status} Mailbox unavailable",
        last_attempt=now(),
        original_recipient=item.dsn.orcpt_text(),
    )
