"""`serve --workers N`: SMTP acceptance in N processes on the same ports.

One process runs Python code one thread at a time: under load its acceptance (TLS, S/MIME,
DKIM, the spool's commit) kept one core busy and left the others partly idle
(docs/performance.md, "Acceptance in several processes"). The parent (`mssgate serve`) keeps
everything it ran (delivery, relay, the document pipeline, the API, IMAP, MLLP, Dovecot,
maintenance) and its own three SMTP listeners; N - 1 children run only the three SMTP
listeners, bound to the same ports with SO_REUSEPORT, so that the kernel spreads the
connections over the N processes. Each child has its own event loop, database engine, spool
writer (its own group commit), directory and login cache.

What must not be multiplied by N lives in the parent, and a child asks it over a control
channel (a socketpair, one JSON object a line) - one round trip per connection and per AUTH
outcome, small beside a TLS handshake:
- the per-address connection limit (`admit`, `release`): whichever process the kernel picks,
  an address holds at most smtp.max_connections_per_ip connections in all;
- the AUTH failure penalty (`auth_delay`, `auth_failed`, `auth_ok`), shared with IMAP;
- `accepted`: a message committed by a child wakes the parent's delivery and relay at once;
- `metrics`: a child's counters, added into the parent's GET /metrics.

A child refuses to start when its parent is gone, and stops (draining like the parent) when
the parent dies: PR_SET_PDEATHSIG sends it SIGTERM, and the control channel's end of file
says so too. The parent restarts a child that dies, and stops every child before its own
`serve.stopped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from mssgate import metrics
from mssgate.config import Config, SmtpConfig
from mssgate.db import open_engine
from mssgate.directory import Directory
from mssgate.errors import MssgateError
from mssgate.logincache import LoginCache
from mssgate.logs import event
from mssgate.metrics import CounterKey
from mssgate.smime.pathcache import PATH_CACHE
from mssgate.smtp import replies
from mssgate.smtp.body import MemoryBudget
from mssgate.smtp.limits import AuthPenalty, ConnectionLimiter
from mssgate.smtp.policy import Listener
from mssgate.smtp.server import Sessions, drain, start_smtp
from mssgate.spool import Spool

log = logging.getLogger("mssgate.workers")

# A child that does not listen within this long after its start fails serve's start.
START_SECONDS = 60.0
# How often a child sends its counters (when they changed): a scrape is at most this late.
METRICS_SECONDS = 1.0
# A child that dies is started again after this long, doubled while it keeps dying at once.
RESTART_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
# The parent pings each child this often; one silent this long (stopped, its loop stuck) is
# killed and replaced: alive, it would keep its SO_REUSEPORT socket, and the kernel would go
# on giving it its share of the connections, never answered.
PING_SECONDS = 2.0
# How long a child waits for the parent's answer (connection limit, AUTH penalty) before it
# refuses; the parent answers at once unless its loop is stalled.
ASK_SECONDS = 30.0
UNRESPONSIVE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _wire_counts(counts: dict[CounterKey, float]) -> list[list[Any]]:
    return [[name, [list(kv) for kv in labels], value] for (name, labels), value in counts.items()]


def _read_counts(wire: list[list[Any]]) -> dict[CounterKey, float]:
    return {
        (str(name), tuple((str(k), str(v)) for k, v in labels)): float(value)
        for name, labels, value in wire
    }


# ------------------------------------------------------------------------------ parent side


@dataclass
class _Slot:
    number: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    listening: asyncio.Future[None] | None = None
    # Connections this child holds in the parent's limiter: given back if it dies.
    held: dict[str, int] = field(default_factory=dict)
    counts: dict[CounterKey, float] = field(default_factory=dict)
    channel: asyncio.Task[None] | None = None
    last_pong: float = 0.0


class AcceptanceWorkers:
    """The parent's side: starts, serves, restarts and stops the acceptance children."""

    def __init__(
        self,
        config: Config,
        children: int,
        *,
        ports: dict[Listener, int],
        limiter: ConnectionLimiter,
        penalty: AuthPenalty,
        on_accepted: Callable[[], None],
        folder_lock: int | None = None,
        on_restarted: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        # serve rewrites run/serve.json with the new pids (scripts read them from it).
        self._on_restarted = on_restarted
        # serve's flock on run/serve.lock, inherited by every child: a lock belongs to the
        # open file, so the folder stays locked until the last process holding it exits. A
        # serve killed -9 leaves children draining (committing acceptances) for up to
        # smtp.drain_seconds; a new serve started meanwhile would recover the spool under
        # them (remove a message file whose row a child is about to commit).
        self._folder_lock = folder_lock
        self._ports = {listener.value: port for listener, port in ports.items()}
        self._limiter = limiter
        self._penalty = penalty
        self._on_accepted = on_accepted
        self._slots = [_Slot(n) for n in range(1, children + 1)]
        # Counters of children that exited: a counter never goes back.
        self._retired: dict[CounterKey, float] = {}
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process is not None]

    def probe(self) -> str | None:
        """For serve's supervisor (/healthz): None while every child runs, else which do not."""
        if self._stopping:
            return None
        down = [
            str(s.number)
            for s in self._slots
            if s.process is None or s.process.returncode is not None
        ]
        return f"acceptance worker(s) {', '.join(down)} not running" if down else None

    def counts(self) -> dict[CounterKey, float]:
        total = dict(self._retired)
        for slot in self._slots:
            for key, value in slot.counts.items():
                total[key] = total.get(key, 0.0) + value
        return total

    async def start(self) -> None:
        """Returns once every child listens on the three ports."""
        await asyncio.gather(*(self._spawn(slot) for slot in self._slots))

    async def _spawn(self, slot: _Slot) -> None:
        ours, theirs = socket.socketpair()
        slot.held, slot.counts = {}, {}
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from mssgate.workers import main; main()",
                str(slot.number),
                str(theirs.fileno()),
                str(os.getpid()),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),)
                + (() if self._folder_lock is None else (self._folder_lock,)),
            )
        finally:
            theirs.close()
        slot.process = process
        if self._stopping:  # started again while serve began to stop: it stops at once
            process.send_signal(signal.SIGTERM)
        assert process.stdin is not None
        # Pickled, not re-read: the child runs with exactly the parent's settings (the file
        # may have changed since, and --workers or the environment changed them).
        process.stdin.write(pickle.dumps({"config": self._config, "ports": self._ports}))
        await process.stdin.drain()
        process.stdin.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        slot.writer = writer
        slot.listening = asyncio.get_running_loop().create_future()
        slot.channel = asyncio.create_task(
            self._serve(slot, reader, writer), name=f"acceptance-worker-{slot.number}-channel"
        )
        exited: asyncio.Future[Any] = asyncio.ensure_future(process.wait())
        listening: asyncio.Future[Any] = slot.listening
        try:
            done, _ = await asyncio.wait(
                {listening, exited}, timeout=START_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not exited.done():
                exited.cancel()
        slot.last_pong = time.monotonic()
        if slot.listening not in done:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise MssgateError(
                f"acceptance worker {slot.number} did not start (exit code {process.returncode});"
                " its error is logged above"
            )
        event(log, "serve.worker_started", worker=slot.number, pid=process.pid)

    async def _serve(
        self, slot: _Slot, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                    if not isinstance(message, dict):
                        raise ValueError("not a JSON object")
                    reply = self._handle(slot, message)
                except Exception as exc:  # a child's bug must not end the parent's channel
                    # Logged and skipped: a child that asked and got no answer fails closed
                    # (its connection or AUTH is refused when its question times out).
                    error = f"{type(exc).__name__}: {exc}"[:300]
                    event(log, "serve.worker_message_invalid", level=logging.ERROR,
                          worker=slot.number, error=error)  # fmt: skip
                    continue
                if reply is not None:
                    writer.write(_encode(reply))
        except (ConnectionError, ValueError) as exc:
            event(log, "serve.worker_channel_failed", level=logging.WARNING,
                  worker=slot.number, error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        finally:
            writer.close()

    def _handle(self, slot: _Slot, message: dict[str, Any]) -> dict[str, Any] | None:
        op = message.get("op")
        ip = str(message.get("ip", "?"))
        if op == "admit":
            ok = self._limiter.acquire(ip)
            if ok:
                slot.held[ip] = slot.held.get(ip, 0) + 1
            return {"id": message["id"], "ok": ok}
        if op == "release":
            if slot.held.get(ip, 0) > 0:
                slot.held[ip] -= 1
                if not slot.held[ip]:
                    del slot.held[ip]
                self._limiter.release(ip)
            return None
        if op == "auth_delay":
            return {"id": message["id"], "delay": self._penalty.delay_for(ip)}
        if op == "auth_failed":
            return {"id": message["id"], "failures": self._penalty.failed(ip)}
        if op == "auth_ok":
            self._penalty.succeeded(ip)
        elif op == "accepted":
            self._on_accepted()
        elif op == "pong":
            slot.last_pong = time.monotonic()
        elif op == "metrics":
            slot.counts = _read_counts(message["counts"])
        elif op == "listening" and slot.listening is not None and not slot.listening.done():
            slot.listening.set_result(None)
        return None

    def _retire(self, slot: _Slot) -> None:
        for ip, count in slot.held.items():
            for _ in range(count):
                self._limiter.release(ip)
        slot.held = {}
        for key, value in slot.counts.items():
            self._retired[key] = self._retired.get(key, 0.0) + value
        slot.counts = {}

    async def run(self) -> None:
        """Watches the children (a task of serve's supervisor): one that exits is logged and
        started again. Never returns: the supervisor would count that as a crash; stop()
        ends the watch and the supervisor's stop cancels this task."""
        await asyncio.gather(self._ping(), *(self._watch(slot) for slot in self._slots))
        await asyncio.get_running_loop().create_future()

    async def _ping(self) -> None:
        tick = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(PING_SECONDS)
            now = time.monotonic()
            late = now - tick > 2 * PING_SECONDS
            tick = now
            if late:
                # This loop stalled (a long callback, the machine swapping): the children's
                # pongs may be waiting unread. Not their silence: counted again from now.
                for slot in self._slots:
                    slot.last_pong = max(slot.last_pong, now)
            for slot in self._slots:
                process, writer = slot.process, slot.writer
                if process is None or process.returncode is not None or writer is None:
                    continue
                if now - slot.last_pong > UNRESPONSIVE_SECONDS and not self._stopping:
                    event(log, "serve.worker_unresponsive", level=logging.ERROR,
                          worker=slot.number, pid=process.pid,
                          silent_seconds=round(now - slot.last_pong, 1))  # fmt: skip
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()  # the watch logs its exit and starts another
                    continue
                if not writer.is_closing():
                    writer.write(_encode({"op": "ping"}))

    async def _watch(self, slot: _Slot) -> None:
        pause = RESTART_SECONDS
        while True:
            if slot.process is not None:
                started = time.monotonic()
                code = await slot.process.wait()
                if slot.channel is not None:
                    await slot.channel
                self._retire(slot)
                if self._stopping:
                    return
                event(log, "serve.worker_exited", level=logging.ERROR, worker=slot.number,
                      pid=slot.process.pid, exit_code=code)  # fmt: skip
                if time.monotonic() - started > 60:
                    pause = RESTART_SECONDS  # it ran a while: a fresh failure, not a loop
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_MAX_SECONDS)
            if self._stopping:
                return
            try:
                await self._spawn(slot)
                if self._on_restarted is not None:
                    self._on_restarted()
            except (MssgateError, OSError) as exc:
                slot.process = None  # tried again after the next pause
                event(log, "serve.worker_restart_failed", level=logging.ERROR,
                      worker=slot.number, error=str(exc))  # fmt: skip

    async def stop(self, timeout: float) -> None:
        """SIGTERM to every child (each drains as the parent does), then waits for them all;
        one still there after `timeout` is killed."""
        self._stopping = True
        running = [s.process for s in self._slots if s.process and s.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                event(log, "serve.worker_killed", level=logging.ERROR, pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for slot in self._slots:
            if slot.process is not None and slot.process not in running:
                # Started again by the watch while this began: it got its SIGTERM there.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(slot.process.wait(), timeout)
            if slot.channel is not None:
                with contextlib.suppress(Exception):
                    await slot.channel
            self._retire(slot)


# ------------------------------------------------------------------------------- child side


class ParentLink:
    """The child's end of the control channel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self.gone = asyncio.Event()

    def send(self, op: str, **fields: Any) -> None:
        if not self.gone.is_set():
            self._writer.write(_encode({"op": op, **fields}))

    async def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        if self.gone.is_set():
            raise ConnectionError("serve (the parent process) is gone")
        self._next += 1
        ident = self._next
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = answer
        self.send(op, id=ident, **fields)
        try:
            return await asyncio.wait_for(answer, ASK_SECONDS)
        except TimeoutError:
            # Closed, never open: no connection or AUTH goes unchecked for want of an answer.
            self._pending.pop(ident, None)
            raise ConnectionError(f"serve did not answer within {ASK_SECONDS:.0f} s") from None

    async def run(self) -> None:
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                if message.get("op") == "ping":
                    self.send("pong")
                    continue
                answer = self._pending.pop(int(message["id"]), None)
                if answer is not None and not answer.done():
                    answer.set_result(message)
        except (ConnectionError, ValueError):
            pass
        finally:
            self.gone.set()
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(ConnectionError("serve (the parent process) is gone"))
            self._pending.clear()
            self._writer.close()


class RemoteLimiter(ConnectionLimiter):
    """A child's limiter: `Admission` asked the parent before the session began; the slot
    goes back to the parent when the session ends."""

    def __init__(self, link: ParentLink) -> None:
        super().__init__(max_per_ip=1)
        self._link = link

    def acquire(self, ip: str) -> bool:
        return True  # admitted by the parent already (Admission)

    def release(self, ip: str) -> None:
        self._link.send("release", ip=ip)


class RemotePenalty(AuthPenalty):
    """A child's AUTH penalty: the parent's, the one SMTP and IMAP of every process share."""

    def __init__(self, link: ParentLink, smtp: SmtpConfig) -> None:
        base = AuthPenalty.from_config(smtp)
        super().__init__(base.free_failures, base.max_delay, base.forget_after)
        self._link = link

    async def wait_for(self, ip: str) -> float:
        return float((await self._link.ask("auth_delay", ip=ip))["delay"])

    async def failure(self, ip: str) -> int:
        return int((await self._link.ask("auth_failed", ip=ip))["failures"])

    async def success(self, ip: str) -> None:
        self._link.send("auth_ok", ip=ip)


class Admission(asyncio.Protocol):
    """A child's connection before its session: reading paused while the parent says whether
    the address is under its connection limit; then the transport goes to the session."""

    def __init__(self, link: ParentLink, make: Callable[[], asyncio.Protocol]) -> None:
        self._link = link
        self._session = make()
        self._lost = False

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports are no asyncio.Transport subclasses, yet have every method.
        transport = cast(asyncio.Transport, base)
        transport.pause_reading()
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        task = asyncio.get_running_loop().create_task(self._admit(transport, ip))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    async def _admit(self, transport: asyncio.Transport, ip: str) -> None:
        try:
            ok = bool((await self._link.ask("admit", ip=ip))["ok"])
        except ConnectionError as exc:
            # The parent is gone (this child is stopping) or did not answer: refused.
            if not (self._lost or transport.is_closing()):
                event(logging.getLogger("mssgate.smtp.protocol"), "smtp.refused",
                      peer=ip, reason=str(exc))  # fmt: skip
                transport.write(f"{replies.SHUTTING_DOWN}\r\n".encode())
                transport.close()
            return
        if self._lost or transport.is_closing():
            if ok:
                self._link.send("release", ip=ip)
            return
        if not ok:
            listener = getattr(self._session, "listener", "?")
            event(logging.getLogger("mssgate.smtp.protocol"), "smtp.refused",
                  listener=listener, peer=ip, reason="too many connections")  # fmt: skip
            transport.write(f"{replies.TOO_MANY_CONNECTIONS}\r\n".encode())
            transport.close()
            return
        transport.set_protocol(self._session)
        self._session.connection_made(transport)
        transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True

    def eof_received(self) -> bool | None:
        return False


_tasks: set[asyncio.Task[None]] = set()


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the control channel's end of file stops the child all the same
    if os.getppid() != parent:
        # The parent died before the prctl: nobody would ever stop this process.
        print("mssgate acceptance worker: serve is gone, not starting", file=sys.stderr)
        raise SystemExit(1)


async def run_child(
    config: Config, number: int, channel: socket.socket, ports: dict[str, int]
) -> int:
    from mssgate.serve import _loop_error  # serve imports this module

    # A failure in a callback (a connection's) logged as serve logs its own.
    asyncio.get_running_loop().set_exception_handler(_loop_error)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    link = ParentLink(reader, writer)
    link_task = asyncio.create_task(link.run(), name="parent-link")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = open_engine(config.database_url)
    directory = Directory(engine, actor="serve")
    spool = Spool(engine, config.server.data_dir / "spool", node=config.node.name)
    PATH_CACHE.configure(
        max_entries=config.policy.smime_path_cache_entries,
        ttl=timedelta(seconds=config.policy.smime_path_cache_seconds),
    )
    sessions = Sessions()
    servers = await start_smtp(
        config, directory, spool, sessions,
        on_accepted=lambda _queue_id: link.send("accepted"),
        penalty=RemotePenalty(link, config.smtp),
        budget=MemoryBudget(config.smtp.processing_memory),
        login_cache=LoginCache.from_config(config.auth),
        limiter=RemoteLimiter(link),
        ports={Listener(name): port for name, port in ports.items()},
        reuse_port=True,
        admission=lambda make: lambda: Admission(link, make),
    )  # fmt: skip
    link.send("listening")
    event(log, "worker.started", pid=os.getpid())
    counters = metrics.default()

    def push_counts(last: dict[CounterKey, float]) -> dict[CounterKey, float]:
        now = counters.counts()
        if now != last:
            link.send("metrics", counts=_wire_counts(now))
        return now

    async def push_forever() -> None:
        last: dict[CounterKey, float] = {}
        while True:
            last = push_counts(last)
            await asyncio.sleep(METRICS_SECONDS)

    pusher = asyncio.create_task(push_forever(), name="metrics-push")
    gone = asyncio.create_task(link.gone.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({gone, stopping}, return_when=asyncio.FIRST_COMPLETED)
    event(log, "worker.stopping", open_sessions=len(sessions.open), busy=sessions.busy(),
          parent_gone=link.gone.is_set())  # fmt: skip
    await drain(servers, sessions, config.smtp.drain_seconds)
    pusher.cancel()
    push_counts({})  # the last ones, which the parent keeps once this process is gone
    if not link.gone.is_set():
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    for task in (gone, stopping, link_task):
        task.cancel()
    writer.close()
    engine.dispose()
    event(log, "worker.stopped")
    return 0


def main() -> None:
    """The child's entry: argv = worker number, control channel fd, parent pid; stdin = the
    pickled settings."""
    import warnings

    from mssgate import eventloop
    from mssgate.logs import configure
    from mssgate.malloc import tune_malloc

    number, fd, parent = (int(arg) for arg in sys.argv[1:4])
    _die_with_parent(parent)
    # From our parent through a pipe only it holds, never from a client.
    payload = pickle.loads(sys.stdin.buffer.read())  # noqa: S301
    config: Config = payload["config"]
    configure(worker=number)
    warnings.filterwarnings("ignore", "Session.login_data is deprecated", DeprecationWarning)
    tune_malloc()
    channel = socket.socket(fileno=fd)
    try:
        code = eventloop.run(
            run_child(config, number, channel, payload["ports"]), config.server.event_loop
        )
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
