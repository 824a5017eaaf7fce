"""Queue transitions that arrive together share one write transaction.

A lease or an ack is a few row changes and an audit entry; alone, each pays a whole commit
(SQLite's WAL fsync; PostgreSQL's WAL flush) and takes the audit head row for the length of
that commit, so concurrent consumers queued behind one another's commits. Here the first
caller with no group running leads: it runs its own transition, every one queued meanwhile,
and every one queued while those run, in one transaction, with their audit entries written
by one `audit.append_many` (the same chain, entry for entry), then commits once. Every caller
returns only when its own change is committed, with its own result or exception.

A transition that raises is rolled back alone (and its audit entries dropped); the others
commit. Savepoints are taken only when needed (one is a round trip on PostgreSQL): when the
first transition fails, the transaction, which holds nothing else, is rolled back and the
others run in the next one; when a later one fails, the transaction is rolled back and run
again with a savepoint per transition after the first. If the group itself fails (the audit
write, the commit), each transition that had succeeded runs again alone, so one bad row
cannot fail its neighbours; if its transaction could not even be opened (no connection, no
write slot), each caller gets that error at once. A caller is never left waiting: one whose
transition a leader could not run (the leader interrupted) is told its change was not
committed. Leadership passes on after one group, so no caller serves others for ever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine

from mssgate import audit
from mssgate.db.tx import in_write, savepoint, write
from mssgate.errors import StorageError

T = TypeVar("T")

# Bounds one transaction's length (and the time its leader spends on others' work).
MAX_GROUP = 64


@dataclass
class _Job(Generic[T]):
    run: Callable[[], T]
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class _FirstFailed(Exception):
    """The group's first transition failed: its transaction is rolled back (nothing else ran)."""


class _Careful(Exception):
    """A transition other than the first failed in a transaction without savepoints."""


class TransitionGroup:
    def __init__(
        self,
        engine: Engine,
        *,
        max_group: int = MAX_GROUP,
        on_rollback: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._max_group = max_group
        # What the transitions noted in memory inside a transaction that was then rolled
        # back (the queue's expiry scan times) is forgotten: a scan rolled back is owed.
        self._on_rollback = on_rollback
        self._cond = threading.Condition()
        self._queue: list[_Job[Any]] = []
        self._leading = False

    def run(self, transition: Callable[[], T]) -> T:
        """Runs `transition` (which opens `write(engine)` itself: inside a group that joins
        the group's transaction) and returns once it is committed."""
        if in_write(self._engine):
            # The caller's own transaction: the change commits with it, not with a group.
            return transition()
        job: _Job[T] = _Job(transition)
        with self._cond:
            self._queue.append(job)
        while True:
            with self._cond:
                while self._leading and not job.done:
                    self._cond.wait()
                if job.done:
                    break
                self._leading = True
                group = self._queue[: self._max_group]
                del self._queue[: self._max_group]
            try:
                self._commit(group)
            finally:
                # Whatever stopped this leader (an interruption in another caller's
                # transition), no caller of its group may wait for ever: each not answered
                # is told its change was not committed.
                for other in group:
                    if not other.done:
                        other.error = StorageError(
                            "interrupted before this change was committed; try again"
                        )
                        other.done = True
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def _commit(self, group: list[_Job[Any]]) -> None:
        start, careful = 0, False
        while start < len(group):
            start, careful = self._transaction(group, start, careful)

    def _transaction(self, group: list[_Job[Any]], start: int, careful: bool) -> tuple[int, bool]:
        """Runs `group[start:]`, and every transition queued while they run, in one
        transaction; returns where the next transaction starts, and whether it must be
        careful: after the first job when it failed (alone in the transaction then, its
        failure rolled the transaction back); the same jobs again, carefully, when another
        failed in a transaction that was not; else the end. `group` grows in place: the
        caller answers every job in it that is not done if this is interrupted.

        Not careful, the transitions after the first run without a savepoint each: one round
        trip less per transition on PostgreSQL, and transitions seldom fail. When one does,
        the transaction is rolled back and run again with a savepoint per transition, so
        that the failure is rolled back alone."""
        first = group[start]
        opened = False
        try:
            with write(self._engine) as conn, audit.batched(conn) as pending:
                opened = True
                # No savepoint for the first: nothing else is in the transaction when it runs,
                # so its failure rolls back the transaction (a savepoint is a round trip on
                # PostgreSQL, the whole cost of grouping for a consumer alone).
                try:
                    first.result = first.run()
                except Exception as exc:
                    first.error = exc
                    raise _FirstFailed from exc
                ran = start + 1
                while True:
                    for job in group[ran:]:
                        if not careful:
                            try:
                                job.result = job.run()
                            except Exception as exc:
                                raise _Careful from exc
                            continue
                        held = len(pending)
                        try:
                            with savepoint(conn):
                                job.result = job.run()
                        except Exception as exc:
                            del pending[held:]
                            job.error = exc
                    ran = len(group)
                    # Transitions queued while these ran join them: their callers would
                    # otherwise wait for this commit, then pay one of their own.
                    with self._cond:
                        more = self._queue[: self._max_group - len(group)]
                        del self._queue[: len(more)]
                    if not more:
                        break
                    group.extend(more)
        except _FirstFailed:
            self._rolled_back()
            first.done = True
            return start + 1, False
        except _Careful:
            self._rolled_back()
            # Rolled back, nothing of theirs committed: all run again, carefully.
            for job in group[start:]:
                job.result, job.error = None, None
            return start, True
        except Exception as exc:
            self._rolled_back()
            for job in group[start:]:
                if not opened or len(group) - start == 1:
                    # No connection or no write slot: nothing of theirs ran, and each alone
                    # would wait as long again, one after another. Or the transition was
                    # alone already: its caller gets the error, as without a group.
                    job.error = exc
                elif job.error is None:
                    self._alone(job)
                job.done = True
            return len(group), False
        except BaseException as exc:
            self._rolled_back()
            # Interrupted (KeyboardInterrupt...): nothing committed; no waiter waits for ever.
            for job in group[start:]:
                job.error, job.done = exc, True
            raise
        for job in group[start:]:
            job.done = True
        return len(group), False

    def _rolled_back(self) -> None:
        if self._on_rollback is not None:
            self._on_rollback()

    def _alone(self, job: _Job[Any]) -> None:
        try:
            job.result = job.run()
        except Exception as exc:
            self._rolled_back()
            job.error = exc
        job.done = True
