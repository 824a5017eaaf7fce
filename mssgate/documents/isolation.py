"""The document pipeline in worker processes that can be killed: a time bound per message.

pypdf and lxml run in C or in long pure-Python loops that no in-process check interrupts
(one PDF page ran 15.8 s past a 10 s budget checked between pages). A worker process is the
one thing that can be stopped at any instant: the parent waits for its answer up to the
message's budget, and past it kills the process and starts another. The message is then
held whole by the caller, with the reason.

The workers are started with `spawn` (never `fork`: the gateway has threads and an event
loop whose copies would be unsafe in a child), at a lower CPU priority so that SMTP and the
deliveries keep their share of the machine while a hostile message burns its budget. Each
reads the message from the spool file itself, so the parent sends a path, not the bytes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import queue
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from mssgate.documents.record import PipelineResult
from mssgate.errors import StorageError
from mssgate.logs import JsonFormatter, event

log = logging.getLogger("mssgate.documents.isolation")

# A job: a module-level function (pickled by reference) run on the message's bytes.
PipelineFunction = Callable[..., PipelineResult]
_T = TypeVar("_T")

# A worker that has not said it is ready after this long is broken (imports hanging).
_START_SECONDS: Final = 60.0
_NICENESS: Final = 10
_PR_SET_PDEATHSIG: Final = 1


@dataclass(frozen=True)
class Finished(Generic[_T]):
    result: _T
    seconds: float


@dataclass(frozen=True)
class Failed:
    """The pipeline gave no result: over its time, the worker died, or it raised."""

    reason: str
    timed_out: bool


def _die_with_parent(parent: int) -> None:
    """Killed by the kernel when the gateway dies (SIGKILL, the OOM killer): `stop` never runs
    then, and a worker busy with a hostile message would go on burning a core for as long as
    the message lasts. A kernel signal reaches it even inside C code holding the GIL.

    Linux sends it when the *thread* that started the worker ends: serve starts workers from
    its main thread and from the document worker's own threads, which live as long as it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the gateway died before the line above
        os._exit(1)


# The log fields of the job the worker runs now (its message's queue id).
_job_context: dict[str, Any] = {}


# A library warns once per broken object, and a document may have as many of those as it
# likes (a 22 kB PDF: 2,000 warnings): past this many lines per job, they are only counted.
_JOB_LOG_LINES = 20
_job_lines = {"logged": 0, "suppressed": 0}


class _JobContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.context = dict(_job_context)
        if getattr(record, "uncapped", False):
            return True
        if _job_lines["logged"] >= _JOB_LOG_LINES:
            _job_lines["suppressed"] += 1
            return False
        _job_lines["logged"] += 1
        return True


def _end_job_log() -> None:
    if _job_lines["suppressed"]:
        log.warning(
            "documents.log_capped",
            extra={
                "fields": {"logged": _job_lines["logged"], "suppressed": _job_lines["suppressed"]},
                "uncapped": True,
            },
        )
    _job_lines.update(logged=0, suppressed=0)


def _child_logging() -> None:
    """pypdf and lxml warn through `logging` (and `warnings`) about the file they read: as
    JSON lines, like the gateway's, with the queue id of the message being read. Without
    this, Python's last-resort handler printed them bare, with nothing saying which message
    they were about."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_JobContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)


def _child(conn: Connection, memory_bytes: int | None, parent: int) -> None:
    _die_with_parent(parent)
    _child_logging()
    # Runs in the worker process: everything it needs is imported before it says ready, so
    # that the time a job is given is spent on the job.
    import mssgate.documents.pipeline  # warms lxml, pypdf and our parsers
    import mssgate.documents.signed  # noqa: F401  (and the S/MIME structure readers)

    # Ctrl-C reaches the whole process group, and a service manager's SIGTERM the whole
    # cgroup: the parent stops its workers itself, and a worker dying of the signal first
    # would look like a message that killed it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # a container may forbid it; the job still runs
        os.nice(_NICENESS)
    if memory_bytes is not None:
        # What the per-message budgets do not count (a PDF's own streams) meets this: the
        # job gets MemoryError, or dies, and the message is held; the gateway is untouched.
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        function, path, kwargs, context = job
        _job_context.clear()
        _job_context.update(context)
        try:
            data = path if isinstance(path, bytes) else Path(path).read_bytes()
            answer: tuple[str, Any] = ("ok", function(data, **kwargs))
        except Exception as exc:  # the parent holds the message with this reason
            answer = ("error", f"{type(exc).__name__}: {exc}"[:300])
        finally:
            _end_job_log()
            _job_context.clear()
        conn.send(answer)
        del answer  # the next job's memory starts from nothing


class _Worker:
    def __init__(
        self, context: multiprocessing.context.SpawnContext, memory_bytes: int | None
    ) -> None:
        self.conn, child_end = context.Pipe(duplex=True)
        self.process: SpawnProcess = context.Process(
            target=_child,
            args=(child_end, memory_bytes, os.getpid()),
            name="mssgate-documents",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.ready = False

    def wait_ready(self) -> bool:
        if not self.ready:
            self.ready = self.conn.poll(_START_SECONDS) and self._recv_ready()
        return self.ready

    def _recv_ready(self) -> bool:
        try:
            return bool(self.conn.recv() == "ready")
        except (EOFError, OSError):
            return False

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()


class PipelinePool:
    """`size` worker processes; `run` blocks until one is free, at most `size` jobs at once.
    `memory_bytes` caps each worker's address space (RLIMIT_AS)."""

    def __init__(self, size: int, *, memory_bytes: int | None = None) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._size = size
        self._memory = memory_bytes
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._all: set[_Worker] = set()
        self.replaced = 0

    def start(self) -> None:
        with self._lock:
            for _ in range(self._size):
                self._new_worker()

    def run(
        self,
        function: Callable[..., _T],
        path: Path | bytes,
        budget_seconds: float,
        *,
        log_context: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Finished[_T] | Failed:
        """`path`: the file the worker reads (a spool file), or the bytes themselves when
        they are small and in no file (a routing rule's CDA: mssgate.routing.probe).
        `log_context`: fields added to whatever the job logs (e.g. {"queue_id": ...})."""
        worker = self._take()
        if not worker.wait_ready():
            # The gateway's trouble (an import failing, a memory cap too low), never the
            # message's: it waits for a worker that starts, it is not held.
            self._replace(worker)
            raise WorkerUnavailable("a document worker process did not start")
        try:
            started = time.monotonic()
            try:
                sent = path if isinstance(path, bytes) else str(path)
                worker.conn.send((function, sent, kwargs, log_context or {}))
            except OSError as exc:
                raise _Broken("the document worker process died") from exc
            if not worker.conn.poll(budget_seconds):
                raise _Broken(
                    f"document processing exceeded its time budget of {budget_seconds:g} s"
                    " per message",
                    timed_out=True,
                )
            try:
                status, value = worker.conn.recv()
            except (EOFError, OSError) as exc:
                code = worker.process.exitcode
                raise _Broken(
                    f"the document worker process died (exit code {code})"
                    if code is not None
                    else "the document worker process died"
                ) from exc
        except _Broken as broken:
            self._replace(worker)
            if self._closed:
                # Killed by `stop`, not by its message: the job is not this message's fault.
                raise PoolStopped("the document workers are stopping") from None
            return Failed(reason=str(broken), timed_out=broken.timed_out)
        with self._lock:
            if self._closed:
                raise PoolStopped("the document workers are stopping")
            self._idle.put(worker)
        if status != "ok":
            return Failed(reason=f"document processing failed: {value}", timed_out=False)
        return Finished(result=value, seconds=time.monotonic() - started)

    def _take(self) -> _Worker:
        while True:
            if self._closed:
                raise PoolStopped("the document workers are stopping")
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                continue

    def _new_worker(self) -> None:
        worker = _Worker(self._context, self._memory)
        self._all.add(worker)
        self._idle.put(worker)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)
            if self._closed:
                return
            self.replaced += 1
            event(log, "documents.worker_replaced", pid=worker.process.pid)
            self._new_worker()

    def stop(self) -> None:
        """Kills every worker, busy or not: a job cut short raises `PoolStopped`."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.kill()


class WorkerUnavailable(StorageError):
    """No worker process could start: the job waits and is tried again later."""


class PoolStopped(Exception):
    """The pool was stopped while a job ran: the job was not finished, nor judged."""


class _Broken(Exception):
    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.timed_out = timed_out
