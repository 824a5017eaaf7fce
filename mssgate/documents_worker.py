"""The document worker: delivered messages through the pipeline, apart from delivery.

Local delivery only records that a RIS waits for a message's documents (a job, in the
delivery's own transaction: mssgate.spool.jobs) and goes on with the next mailbox. This
worker takes the due jobs, at most `documents.workers` at once, runs the pipeline of each in
a worker process under the message's time budget (mssgate.documents.isolation), then ingests
the outcome into the RIS queue and marks the job done. A message whose pipeline runs over its
budget, or kills its worker, is held whole in quarantine with the reason: nothing is lost,
and no message can hold another one.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from mssgate import metrics
from mssgate.config import DocumentsConfig
from mssgate.documents.errors import QuarantineCode
from mssgate.documents.isolation import Failed, PipelinePool, PoolStopped
from mssgate.documents.pipeline import hold_message
from mssgate.documents.signed import process_signed_message
from mssgate.errors import StorageError
from mssgate.integration import DocumentFeed
from mssgate.logs import event
from mssgate.spool import Spool
from mssgate.spool.jobs import DocumentJob, DocumentJobs
from mssgate.supervisor import PassHealth, run_in_passes

log = logging.getLogger("mssgate.documents")

# The gateway's footing, not the message: the job stays due and is tried again later.
_TRANSIENT = (SQLAlchemyError, StorageError, MemoryError)
_RETRY = timedelta(seconds=30)


class DocumentWorker:
    def __init__(
        self,
        jobs: DocumentJobs,
        spool: Spool,
        feed: DocumentFeed,
        pool: PipelinePool,
        *,
        config: DocumentsConfig,
    ) -> None:
        self._jobs = jobs
        self._spool = spool
        self._feed = feed
        self._pool = pool
        self._config = config
        self._slots = asyncio.Semaphore(config.workers)
        self._threads = ThreadPoolExecutor(config.workers, thread_name_prefix="documents")
        self._wake = asyncio.Event()
        self.health = PassHealth()  # for /healthz: passes that keep failing
        self._loop: asyncio.AbstractEventLoop | None = None
        self.processed = 0

    # -- the delivery side ------------------------------------------------------------------

    def wants(self, mailbox: str) -> bool:
        return self._feed.wants(mailbox)

    def wake(self) -> None:
        """Callable from any thread (the delivery runs in worker threads)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- one job ----------------------------------------------------------------------------

    def _process(self, job: DocumentJob) -> None:
        try:
            self._attempt(job)
        except PoolStopped:
            return  # serve is stopping: the job stays pending for the next start
        except _TRANSIENT as exc:
            error = f"{type(exc).__name__}: {exc}"
            self._jobs.retry(job, error=error, delay=_RETRY)
            event(log, "documents.deferred", level=logging.ERROR, queue_id=job.spool_id,
                  error=error[:300])  # fmt: skip
        except Exception as exc:
            # This message's own trouble (its file is gone, a bug its bytes reach): set it
            # aside with the reason, visible to `spool list`, and go on with the others.
            reason = f"{type(exc).__name__}: {exc}"[:480]
            self._jobs.hold(job, reason=reason)
            metrics.delivery("documents", "held")
            event(log, "documents.held", level=logging.ERROR, queue_id=job.spool_id,
                  reason=reason, traceback="".join(traceback.format_exception(exc)))  # fmt: skip

    def _attempt(self, job: DocumentJob) -> None:
        content = self._spool.read(job.spool_id)
        outcome = self._pool.run(
            process_signed_message,
            self._spool.path(job.spool_id),
            self._config.time_budget_seconds,
            log_context={"queue_id": job.spool_id},
            **self._feed.pipeline_arguments(),
        )
        if isinstance(outcome, Failed):
            result = hold_message(content, QuarantineCode.OTHER, outcome.reason)
            metrics.delivery("documents", "timed_out" if outcome.timed_out else "failed")
            event(log, "documents.budget_exceeded" if outcome.timed_out else "documents.failed",
                  level=logging.WARNING, queue_id=job.spool_id, reason=outcome.reason)  # fmt: skip
        else:
            result = outcome.result
        self._feed.ingest(job.spool_id, job.mailbox, content, result, pool=self._pool)
        self._spool.settle(job.spool_id, first=lambda conn: self._jobs.mark_done(conn, job))
        self.processed += 1

    # -- the loop ---------------------------------------------------------------------------

    async def _one(self, job: DocumentJob) -> None:
        async with self._slots:
            # Threads of its own: a job waits up to its whole budget, and the default
            # executor's threads are the deliveries'.
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._threads, self._process, job)

    async def run_once(self) -> int:
        batch = await asyncio.to_thread(self._jobs.due)
        # Every job of the batch ends before the next pass: none is taken twice at once.
        outcomes = await asyncio.gather(*(self._one(job) for job in batch), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(batch)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await run_in_passes("documents", self.run_once, wake=self._wake,
                            poll_seconds=self._config.poll_seconds, health=self.health,
                            transient=_TRANSIENT, logger=log)  # fmt: skip
