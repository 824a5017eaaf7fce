"""The delivery worker: drains due local deliveries from the spool into the MailStore."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from mssgate import metrics
from mssgate.logs import event
from mssgate.mailstore import DeliveryFailed, MailStore
from mssgate.smtp.body import MemoryBudget
from mssgate.spool.store import PendingDelivery, Spool

log = logging.getLogger("mssgate.delivery")

MAX_ATTEMPTS = 30
RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(hours=1)


def retry_delay(attempts: int) -> timedelta:
    delay: timedelta = RETRY_BASE * (2 ** min(attempts, 16))
    return delay if delay < RETRY_CAP else RETRY_CAP


# Runs after the mailbox has the message and before the delivery is recorded: the document
# pipeline feeding the RIS queue. It must be idempotent (a crash in between repeats it).
AfterDelivery = Callable[[PendingDelivery, bytes], None]


class DeliveryWorker:
    def __init__(
        self,
        spool: Spool,
        store: MailStore,
        *,
        poll_seconds: float = 5.0,
        after_delivery: AfterDelivery | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self._spool = spool
        self._store = store
        self._poll = poll_seconds
        self._after = after_delivery
        self._budget = budget
        self._wake = asyncio.Event()
        self.delivered = 0

    def wake(self) -> None:
        self._wake.set()

    def _deliver_one(self, item: PendingDelivery) -> None:
        try:
            content = self._spool.read(item.spool_id)
            self._store.deliver(item.recipient, content, delivery_id=item.spool_id)
            if self._after is not None:
                self._after(item, content)
        except DeliveryFailed as exc:
            permanent = exc.permanent or item.attempts + 1 >= MAX_ATTEMPTS
            self._spool.attempt_failed(
                item, error=str(exc), permanent=permanent, retry_in=retry_delay(item.attempts)
            )
            metrics.delivery(item.route, "failed" if permanent else "deferred")
            event(
                log,
                "delivery.failed",
                queue_id=item.spool_id,
                permanent=permanent,
                attempts=item.attempts + 1,
                error=str(exc),
            )
            return
        self._spool.delivered(item)
        metrics.delivery(item.route, "delivered")
        self.delivered += 1
        event(log, "delivery.ok", queue_id=item.spool_id, route=item.route)

    async def run_once(self) -> int:
        batch = await asyncio.to_thread(self._spool.due, route="local")
        for item in batch:
            if self._budget is None:
                await asyncio.to_thread(self._deliver_one, item)
                continue
            # The document pipeline reads the whole message, several times over: it waits
            # for its share of memory like the SMTP checks do.
            async with self._budget.reserve(self._spool.size(item.spool_id)):
                await asyncio.to_thread(self._deliver_one, item)
        return len(batch)

    async def run(self) -> None:
        while True:
            done = await self.run_once()
            if done:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
