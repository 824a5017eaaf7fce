"""Moving a mailbox, mail included, to another node (`mssgate directory move`).

The CLI asks the mailbox's home node over the node link (`XMOVE <user> <target>`); the home
node pushes the mailbox with Dovecot's own replication, dsync: `doveadm sync -u USER -- CMD`
where CMD (`python -m mssgate.nodesync`) carries the dsync stream over the node link to the
target (`XDSYNC <user>`), whose `doveadm dsync-server -u USER` answers. The mail travels
between the nodes' servers inside the installation's pinned TLS, never through a shared
filesystem. Steps on the home node (docs/architecture.md, "Moving a mailbox"):

1. a two-way sync while mail still arrives here (the bulk);
2. under the mailbox's gate (this node's local deliveries for it wait) and with its IMAP
   sessions here closed and new ones refused: the home switches to the target in one write
   transaction, with its audit row; from then on every node hands its mail to the target;
3. a second two-way sync (what arrived or changed during the first; two-way, so that mail
   the target received since the switch is kept);
4. only once that sync succeeded, this node's copy is removed. If it fails, the home goes
   back to this node (nothing removed anywhere; a later move merges what the target got).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine, and_, or_, select, text, update

from mssgate import audit
from mssgate.db.schema import professionals
from mssgate.db.tx import write
from mssgate.dovecot.logpump import pump
from mssgate.dovecot.supervisor import _die_with_parent
from mssgate.errors import MssgateError
from mssgate.imap.backend import Backend, BackendSession, BackendUnavailable
from mssgate.logs import event
from mssgate.nodes import Nodes

log = logging.getLogger("mssgate.mailmove")

# One dsync pass (a whole mailbox over the link): generous, but a hung pass ends.
SYNC_SECONDS = 3600.0
# doveadm's own stalled-I/O bound (its -T): a silent link fails the pass long before that.
STALL_SECONDS = 120
# dsync exits 2 when it synced without error but not perfectly ("running again usually
# fixes this", doveadm-sync(1)): a pass is tried this many times.
SYNC_ATTEMPTS = 3
# What is kept of a doveadm command's standard output (a mailbox status line per folder).
_OUTPUT_LIMIT = 1 << 20


class MoveRefused(MssgateError):
    """A move that cannot be done (or finished): `code` is the node link's reply code."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class MoveOutcome(BaseModel):
    """What `directory move` prints (its --json shape, docs/operator-guide.md)."""

    model_config = ConfigDict(frozen=True)

    address: str
    source: str
    target: str
    messages: int
    folders: int
    seconds: float
    # "removed": the source's copy is gone; "kept": the source has no managed mail store
    # whose folder this node may remove (an operator's own Dovecot).
    source_copy: str


@dataclass
class _Gate:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


# Whether a move's lock (MailboxMover._LOCK) is held, read without taking it: a delivery's
# shared lock, even for a moment, would make a move starting then refuse itself.
_HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid = hashtext('mssgate.move:' || current_schema())::oid"
    " AND objid = hashtext(:user)::oid AND objsubid = 2)"
)


class MailboxGates:
    """One lock per mailbox between this node's local deliveries and a move's switch: a
    delivery reads the home and writes to the local store under it, so none lands here after
    the final sync read this node's copy."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, _Gate] = {}
        self._engine: Engine | None = None
        self._moving_here: set[str] = set()

    def attach(self, engine: Engine, moving_here: set[str]) -> None:
        """This node's mover: the shared database and the moves this node runs."""
        if engine.dialect.name == "postgresql":
            self._engine = engine
            self._moving_here = moving_here

    def moving_elsewhere(self, address: str) -> bool:
        """Whether another node is moving this mailbox (holds its move lock, MailboxMover).
        Its target must not write to the mailbox meanwhile: the final sync runs two-way into
        it, and a delivery landing in the same Maildir during the sync's UID-conflict
        resolution is seen by dsync as an expunged message reappearing, kept twice."""
        key = address.lower()
        if self._engine is None or key in self._moving_here:
            return False
        with self._engine.connect() as conn:
            return bool(conn.execute(text(_HELD), {"user": key}).scalar())

    def _take(self, key: str) -> threading.Lock:
        with self._guard:
            gate = self._locks.setdefault(key, _Gate())
            gate.users += 1
            return gate.lock

    def _give(self, key: str) -> None:
        with self._guard:
            gate = self._locks[key]
            gate.users -= 1
            if gate.users == 0:
                del self._locks[key]

    @contextlib.contextmanager
    def hold(self, address: str) -> Iterator[None]:
        key = address.lower()
        lock = self._take(key)
        try:
            with lock:
                yield
        finally:
            self._give(key)

    @contextlib.asynccontextmanager
    async def hold_async(self, address: str) -> AsyncIterator[None]:
        key = address.lower()
        lock = self._take(key)
        try:
            # The waiting thread cannot be stopped: cancelled (serve stopping), the lock it
            # takes afterwards is given back. Before, it kept it, and this mailbox's next
            # deliveries waited for it for ever (their threads too, holding up the stop).
            acquiring = asyncio.ensure_future(asyncio.to_thread(lock.acquire))
            try:
                await asyncio.shield(acquiring)
            except asyncio.CancelledError:
                acquiring.add_done_callback(lambda _: lock.release())
                raise
            try:
                yield
            finally:
                lock.release()
        finally:
            self._give(key)


class _Tracked:
    def __init__(self, inner: BackendSession, on_close: Callable[[_Tracked], None]) -> None:
        self._inner = inner
        self._on_close = on_close

    @property
    def capabilities(self) -> str:
        return self._inner.capabilities

    @property
    def reader(self) -> asyncio.StreamReader:
        return self._inner.reader

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def close(self) -> None:
        self._on_close(self)
        await self._inner.close()


class TrackedBackend:
    """This node's Dovecot sessions by user, so that a move can end a mailbox's sessions
    here and refuse new ones while its home switches (a client then logs in again and is
    relayed to the new home)."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner
        self._open: dict[str, set[_Tracked]] = {}
        self._closing: set[str] = set()

    async def open(self, user: str, *, peer_ip: str, local_ip: str) -> BackendSession:
        key = user.lower()
        if key in self._closing:
            raise BackendUnavailable("this mailbox is moving to another node")
        session = await self._inner.open(user, peer_ip=peer_ip, local_ip=local_ip)
        if key in self._closing:
            await session.close()
            raise BackendUnavailable("this mailbox is moving to another node")
        tracked = _Tracked(session, lambda t: self._open.get(key, set()).discard(t))
        self._open.setdefault(key, set()).add(tracked)
        return tracked

    @contextlib.asynccontextmanager
    async def closed_for(self, user: str) -> AsyncIterator[int]:
        """Ends `user`'s sessions here and refuses new ones until the block ends."""
        key = user.lower()
        self._closing.add(key)
        try:
            sessions = list(self._open.pop(key, set()))
            for session in sessions:
                await session.close()
            yield len(sessions)
        finally:
            self._closing.discard(key)


class Doveadm:
    """`doveadm -c <this node's Dovecot config>`."""

    def __init__(self, config_file: Path, *, binary: str | None = None) -> None:
        self.config_file = config_file
        self.binary = binary or shutil.which("doveadm", path="/usr/bin:/usr/sbin:/bin") or "doveadm"

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "-c", str(self.config_file), *args]

    async def run(self, *args: str, timeout: float = 120.0) -> tuple[int, str]:
        """Exit status and standard output; stderr goes to the log."""
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            # A node killed outright mid-move must not leave its dsync running on: after the
            # restart it would sync (and read a copy being removed) beside the next attempt.
            preexec_fn=_die_with_parent,
        )
        assert proc.stdout is not None and proc.stderr is not None
        logs = asyncio.create_task(pump(proc.stderr, source="doveadm"))
        stdout = proc.stdout

        async def output() -> bytes:
            # Until EOF (read(n) returns what is there now), kept up to _OUTPUT_LIMIT.
            kept = bytearray()
            while chunk := await stdout.read(65536):
                kept += chunk[: max(0, _OUTPUT_LIMIT - len(kept))]
            return bytes(kept)

        try:
            out = await asyncio.wait_for(output(), timeout)
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            code = -1
            out = b""
        with contextlib.suppress(asyncio.CancelledError):
            await logs
        return code, out.decode("utf-8", "replace")


class MailboxMover:
    """The home node's side of `XMOVE` (module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        me: str,
        doveadm: Doveadm | None,
        mail_root: Path | None,
        gates: MailboxGates,
        sessions: TrackedBackend | None,
        link: tuple[Path, Path, Path],
        down_after: timedelta,
    ) -> None:
        self._engine = engine
        self._me = me
        self._doveadm = doveadm
        self._mail_root = mail_root
        self._gates = gates
        self._sessions = sessions
        self._cert, self._key, self._ca = link
        self._down_after = down_after
        self._moving: set[str] = set()
        self._tasks: set[asyncio.Task[MoveOutcome]] = set()
        gates.attach(engine, self._moving)

    async def request(self, user: str, target: str, *, finish: bool = False) -> MoveOutcome:
        """Runs the move in a task of its own: a requester that goes away (its timeout) does
        not stop it halfway."""
        task = asyncio.create_task(self.move(user, target, finish=finish), name=f"move-{user}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    def _check(self, user: str, target: str, finish: bool) -> str:
        """The target's announced address, or MoveRefused."""
        if target == self._me:
            raise MoveRefused(550, f"{user} is homed on node {target} already")
        with self._engine.connect() as conn:
            row = conn.execute(
                select(professionals.c.node).where(
                    professionals.c.address == user, professionals.c.local.is_(True)
                )
            ).first()
        if row is None:
            raise MoveRefused(550, f"no mailbox {user}")
        if finish and row.node != target:
            raise MoveRefused(550, f"{user} is homed on node {row.node}, not on {target}: no"
                              " move to finish")  # fmt: skip
        if finish and self._mail_root is not None and not self._home(user).exists():
            raise MoveRefused(550, f"node {self._me} holds no copy of {user}")
        if not finish and row.node not in (None, self._me):
            raise MoveRefused(550, f"{user} is homed on node {row.node}, not on {self._me}")
        # Up or down as `node list` says (heartbeats read with the database's clock).
        listed = {n.name: n for n in Nodes(self._engine, actor="serve").list(
            down_after=self._down_after)}  # fmt: skip
        found = listed.get(target)
        if found is None:
            raise MoveRefused(550, f"no node named {target!r}")
        if not found.up:
            raise MoveRefused(451, f"node {target} is down: both nodes must be up to move mail")
        return found.address

    async def move(self, user: str, target: str, *, finish: bool = False) -> MoveOutcome:
        """`finish`: the home is the target already (a move whose source stopped after the
        switch): only the final sync and the removal of this node's copy."""
        if self._doveadm is None:
            raise MoveRefused(502, f"node {self._me} serves no Dovecot: it cannot move mail")
        if user in self._moving:
            raise MoveRefused(451, f"a move of {user} is under way already")
        self._moving.add(user)
        started = time.monotonic()
        locked: Connection | None = None
        try:
            locked = await asyncio.to_thread(self._lock, user)
            address = await asyncio.to_thread(self._check, user, target, finish)
            event(log, "move.started", user=user, target=target, finish=finish)
            if not finish:
                await self._sync(user, address, "first")
            async with self._gates.hold_async(user), self._closed_for(user) as closed:
                if not finish:
                    await asyncio.to_thread(self._switch, user, target, closed)
                try:
                    await self._sync(user, address, "final")
                except MoveRefused as exc:
                    if finish:
                        raise MoveRefused(
                            exc.code, f"{exc}; nothing was removed: run it again"
                        ) from None
                    await asyncio.to_thread(self._undo, user, target, str(exc))
                    raise MoveRefused(
                        exc.code,
                        f"{exc}; the home of {user} is {self._me} again and nothing was"
                        " removed: run the move again",
                    ) from None
                if finish:
                    await asyncio.to_thread(self._audit_finish, user, target, closed)
                messages, folders = await self._count(user)
                kept = await self._remove_copy(user)
        finally:
            if locked is not None:
                await asyncio.to_thread(self._unlock, locked, user)
            self._moving.discard(user)
        outcome = MoveOutcome(address=user, source=self._me, target=target, messages=messages,
                              folders=folders, seconds=round(time.monotonic() - started, 1),
                              source_copy="kept" if kept else "removed")  # fmt: skip
        event(log, "move.done", **outcome.model_dump())
        return outcome

    # One move of a mailbox at a time in the installation, whichever node runs it. The home
    # switches before the final sync: without it, a second move asked meanwhile (by another
    # operator, or by one whose first `directory move` gave up waiting and who read the new
    # home in `directory show`) ran on the target, which removed its copy while the first
    # move's final sync was still bringing it the last mail. A session lock of PostgreSQL's:
    # a node killed mid-move loses its connection and, with it, the lock.
    _LOCK = (
        "SELECT pg_try_advisory_lock(hashtext('mssgate.move:' || current_schema()),"
        " hashtext(:user))"
    )
    _UNLOCK = (
        "SELECT pg_advisory_unlock(hashtext('mssgate.move:' || current_schema()), hashtext(:user))"
    )

    def _lock(self, user: str) -> Connection | None:
        if self._engine.dialect.name != "postgresql":
            return None  # SQLite: one node
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.execute(text(self._LOCK), {"user": user}).scalar()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            raise MoveRefused(451, f"a move of {user} is under way on another node")
        return conn

    def _unlock(self, conn: Connection, user: str) -> None:
        try:
            conn.execute(text(self._UNLOCK), {"user": user})
        except Exception:
            # Never back in the pool still holding the lock: the connection is dropped.
            conn.invalidate()
        finally:
            conn.close()

    @contextlib.asynccontextmanager
    async def _closed_for(self, user: str) -> AsyncIterator[int]:
        if self._sessions is None:
            yield 0
            return
        async with self._sessions.closed_for(user) as closed:
            yield closed

    async def _sync(self, user: str, address: str, which: str) -> None:
        assert self._doveadm is not None
        helper = [sys.executable, "-m", "mssgate.nodesync", address, user,
                  str(self._cert), str(self._key), str(self._ca)]  # fmt: skip
        code = -1
        for attempt in range(1, SYNC_ATTEMPTS + 1):
            code, _ = await self._doveadm.run(
                "sync", "-u", user, "-T", str(STALL_SECONDS), "--", *helper,
                timeout=SYNC_SECONDS,
            )  # fmt: skip
            event(log, "move.sync", user=user, which=which, attempt=attempt, code=code)
            if code == 0:
                return
            if code != 2:
                break
        raise MoveRefused(451, f"the {which} sync of {user} failed (doveadm exit {code})")

    def _switch(self, user: str, target: str, closed: int) -> None:
        with write(self._engine) as conn:
            changed = conn.execute(
                update(professionals)
                .where(
                    and_(
                        professionals.c.address == user,
                        professionals.c.local.is_(True),
                        or_(professionals.c.node.is_(None), professionals.c.node == self._me),
                    )
                )
                .values(node=target)
            ).rowcount
            if changed != 1:
                raise MoveRefused(451, f"the home of {user} changed during the move")
            detail = {"from": self._me, "to": target, "sessions_closed": closed}
            audit.append(conn, actor="serve", action="directory.move", subject=user,
                         detail=detail)  # fmt: skip

    def _audit_finish(self, user: str, target: str, closed: int) -> None:
        with write(self._engine) as conn:
            detail = {"from": self._me, "to": target, "sessions_closed": closed}
            audit.append(conn, actor="serve", action="directory.move_finished", subject=user,
                         detail=detail)  # fmt: skip

    def _undo(self, user: str, target: str, reason: str) -> None:
        with write(self._engine) as conn:
            conn.execute(
                update(professionals)
                .where(professionals.c.address == user, professionals.c.node == target)
                .values(node=self._me)
            )
            detail = {"from": self._me, "to": target, "reason": reason[:300]}
            audit.append(conn, actor="serve", action="directory.move_undone", subject=user,
                         detail=detail)  # fmt: skip

    async def _count(self, user: str) -> tuple[int, int]:
        assert self._doveadm is not None
        code, out = await self._doveadm.run("-f", "flow", "mailbox", "status", "-u", user,
                                            "messages", "*")  # fmt: skip
        if code != 0:
            return 0, 0
        messages = folders = 0
        # One line per folder: "messages=N".
        for line in out.splitlines():
            for item in line.split():
                if item.startswith("messages=") and item[9:].isdigit():
                    folders += 1
                    messages += int(item[9:])
        return messages, folders

    def _home(self, user: str) -> Path:
        """The home the private Dovecot's userdb gives (mssgate.dovecot.conf: mail_root/%d/%n)."""
        assert self._mail_root is not None
        local, _, domain = user.rpartition("@")
        return self._mail_root / domain / (local or "-")

    async def _remove_copy(self, user: str) -> bool:
        """True when the copy is kept (not a mail store this node manages)."""
        if self._mail_root is None:
            return True
        home = self._home(user)
        if home.parent.parent != self._mail_root or "/" in user or ".." in user:
            return True
        await asyncio.to_thread(shutil.rmtree, home, ignore_errors=True)
        event(log, "move.source_removed", user=user, path=str(home))
        return False
