"""Group commit: the acceptances that arrive while one transaction commits share the next.

Every acceptance must be committed (the audit row and the spool rows, then the WAL's fsync)
before its 250. One transaction per message made twenty sessions queue behind each other's
commits; here the first waiting thread commits for everyone that queued meanwhile, each
caller still returning only once its own rows are durable. A group that fails is retried one
acceptance at a time, so that one bad row cannot fail the messages committed beside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")

_IDLE_SECONDS = 2.0


class GroupCommitter(Generic[T]):
    def __init__(self, write: Callable[[Sequence[T]], None]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._jobs: list[tuple[T, Future[None]]] = []
        self._running = False

    def commit(self, item: T) -> None:
        """Returns once `item` is committed; raises what its transaction raised."""
        done: Future[None] = Future()
        with self._cond:
            self._jobs.append((item, done))
            if self._running:
                self._cond.notify()
            else:
                # A thread of our own, started on demand and gone when idle: a Spool made
                # for one CLI command does not leave a thread behind.
                self._running = True
                threading.Thread(target=self._run, name="spool-commit", daemon=True).start()
        done.result()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._jobs:
                    self._cond.wait(timeout=_IDLE_SECONDS)
                    if not self._jobs:
                        self._running = False
                        return
                group, self._jobs = self._jobs, []
            self._commit(group)

    def _commit(self, group: list[tuple[T, Future[None]]]) -> None:
        try:
            self._write([item for item, _ in group])
        except Exception as exc:
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            for item, done in group:
                try:
                    self._write([item])
                except Exception as single:
                    done.set_exception(single)
                else:
                    done.set_result(None)
            return
        for _, done in group:
            done.set_result(None)
