"""Supervision of `serve`'s long-running tasks: none of them may stop silently.

A task that raises is logged once with its traceback (`task.crashed`), counted, and started
again after a backoff that doubles up to a cap. A task that crashed `unhealthy_after` times
within `window` seconds makes the gateway unhealthy (`/healthz` answers 503 with its name)
until it has run `window` seconds without crashing. A task that returns is a crash too: every
supervised task is meant to run until `serve` stops. Cancellation is the one normal end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mssgate import metrics
from mssgate.logs import event

log = logging.getLogger("mssgate.supervisor")

TaskFactory = Callable[[], Awaitable[None]]


@dataclass
class _Supervised:
    name: str
    factory: TaskFactory
    crashes: deque[float] = field(default_factory=deque)
    last_error: str | None = None
    # What /healthz says of it: the class only (an exception's text may quote SQL
    # parameters or addresses, and /healthz answers anyone); the log has the text.
    last_class: str | None = None
    task: asyncio.Task[None] | None = None


class TaskExited(RuntimeError):
    """A supervised task returned, which none of them should."""


class PassHealth:
    """The health of a task that catches its own footing failures (the database away or
    refusing writes) and tries again at its next pass. Such a task never crashes, so the
    supervisor alone would call it healthy while it gets nothing done: `failed_after`
    passes failed in a row make it failing (registered with `Supervisor.check`), one pass
    that goes through clears it. Called from the event loop, read from the API's threads."""

    def __init__(self, failed_after: int = 3) -> None:
        self._after = failed_after
        self._in_a_row = 0
        self._last: str | None = None

    def failed(self, why: str) -> None:
        """`why`: a word for /healthz, never an exception's text (it may quote SQL
        parameters, addresses); the log has the rest."""
        self._in_a_row += 1
        self._last = why

    def succeeded(self) -> None:
        self._in_a_row = 0

    def probe(self) -> str | None:
        if self._in_a_row < self._after:
            return None
        return f"{self._in_a_row} passes in a row failed; last: {self._last}"


async def run_in_passes(
    name: str,
    run_once: Callable[[], Awaitable[int]],
    *,
    wake: asyncio.Event,
    poll_seconds: float,
    health: PassHealth,
    transient: tuple[type[BaseException], ...],
    logger: logging.Logger,
) -> None:
    """A worker's loop: a pass at once again while passes find work, else after `wake` or
    `poll_seconds`. A pass that fails on the footing (`transient`: the database away or
    busy, the disk) is logged as `<name>.pass_failed`, told to `health` and tried again after
    a poll; anything else is a bug, for the supervisor to log and restart."""
    while True:
        try:
            done = await run_once()
        except transient as exc:
            event(logger, f"{name}.pass_failed", level=logging.ERROR,
                  error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            health.failed(type(exc).__name__)
            done = 0
            await asyncio.sleep(poll_seconds)
        else:
            health.succeeded()
        if done:
            continue
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=poll_seconds)


class Supervisor:
    def __init__(
        self,
        *,
        backoff_first: float = 1.0,
        backoff_max: float = 60.0,
        unhealthy_after: int = 3,
        window: float = 300.0,
    ) -> None:
        self._first = backoff_first
        self._max = backoff_max
        self._threshold = unhealthy_after
        self._window = window
        self._tasks: dict[str, _Supervised] = {}
        self._checks: dict[str, Callable[[], str | None]] = {}

    def spawn(self, name: str, factory: TaskFactory) -> asyncio.Task[None]:
        """Runs `factory()` under supervision, as a task named `name`."""
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is supervised already")
        entry = _Supervised(name, factory)
        self._tasks[name] = entry
        entry.task = asyncio.create_task(self._keep(entry), name=name)
        return entry.task

    def check(self, name: str, probe: Callable[[], str | None]) -> None:
        """A condition that is not a task (a listener still serving, say): `probe` returns
        None when all is well, else why not."""
        self._checks[name] = probe

    async def _keep(self, entry: _Supervised) -> None:
        delay = self._first
        while True:
            started = time.monotonic()
            try:
                await entry.factory()
                raise TaskExited(f"task {entry.name} returned")
            except (Exception, asyncio.CancelledError) as exc:
                current = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and (
                    current is None or current.cancelling()
                ):
                    raise  # stop(): the one normal end
                # Any other CancelledError came from something the task awaited (a future
                # another component cancelled): the task ended all the same, so it crashed.
                stamp = time.monotonic()
                if stamp - started >= self._window:
                    delay = self._first  # it ran long enough: a fresh failure, not a loop
                entry.crashes.append(stamp)
                entry.last_error = f"{type(exc).__name__}: {exc}"[:300]
                entry.last_class = type(exc).__name__
                metrics.task_crashed(entry.name)
                event(
                    log,
                    "task.crashed",
                    level=logging.ERROR,
                    task=entry.name,
                    error=entry.last_error,
                    restart_in_seconds=delay,
                    traceback="".join(traceback.format_exception(exc)),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max)

    def failing(self) -> dict[str, str]:
        """Name -> reason, for each task that keeps crashing and each failed check."""
        horizon = time.monotonic() - self._window
        out: dict[str, str] = {}
        for entry in self._tasks.values():
            while entry.crashes and entry.crashes[0] < horizon:
                entry.crashes.popleft()
            if len(entry.crashes) >= self._threshold:
                out[entry.name] = (
                    f"crashed {len(entry.crashes)} times in {self._window:.0f} s;"
                    f" last: {entry.last_class} (task.crashed in the log)"
                )
        for name, probe in self._checks.items():
            why = probe()
            if why is not None:
                out[name] = why
        return out

    def crash_counts(self) -> dict[str, int]:
        return {name: len(e.crashes) for name, e in self._tasks.items()}

    async def stop(self) -> None:
        """Cancels every task and waits for each to end."""
        tasks = [e.task for e in self._tasks.values() if e.task is not None]
        for task in reversed(tasks):
            task.cancel()
        for task in reversed(tasks):
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # a task's own clean-up failed: say so, go on
                event(log, "task.stop_failed", level=logging.ERROR, task=task.get_name(),
                      error=f"{type(exc).__name__}: {exc}")  # fmt: skip
