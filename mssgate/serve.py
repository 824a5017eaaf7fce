"""`mssgate serve`: every listener of the embedded default in one process.

Start: lock the data folder (one serve per folder), migrate, recover the spool, listen, then
write `run/serve.json` (pid and bound ports: tests and scripts use port 0 and read it).
SIGTERM or SIGINT: stop accepting, let sessions in the middle of a transaction finish within
`smtp.drain_seconds`, close the rest, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import ssl
import sys
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from mssgate import eventloop, metrics
from mssgate.api.server import ApiServer, start_api
from mssgate.config import Config
from mssgate.db import open_engine, upgrade
from mssgate.directory import Directory
from mssgate.directory.models import EncryptionPolicy
from mssgate.documents.isolation import PipelinePool
from mssgate.documents_worker import DocumentWorker
from mssgate.dovecot.paths import placed_mail_root
from mssgate.dovecot.supervisor import DovecotError, DovecotSupervisor, find_dovecot
from mssgate.errors import Conflict, MssgateError
from mssgate.fsutil import ensure_dir, write_durably
from mssgate.imap.server import ImapService, start_imap
from mssgate.integration import (
    BounceSpooler,
    DocumentFeed,
    MailboxSealer,
    NotificationSigner,
    ReceiptSpooler,
)
from mssgate.logincache import LoginCache
from mssgate.logs import event
from mssgate.mailmove import Doveadm, MailboxGates, MailboxMover, TrackedBackend
from mssgate.mailstore.base import MailStore
from mssgate.mailstore.lmtp import LmtpStore
from mssgate.mailstore.maildir import MaildirStore
from mssgate.malloc import tune_malloc
from mssgate.mllp.listener import MllpListener
from mssgate.mllp.push import MllpPush
from mssgate.nodelink import (
    CrossNodeDelivery,
    Homes,
    NodeHandOff,
    NodeImap,
    start_node_listener,
)
from mssgate.nodes import Heartbeat, Nodes
from mssgate.outbound.forward import Forwarder
from mssgate.outbound.service import Outbound
from mssgate.outbound.zamqueue import sweep_forever
from mssgate.passwords import configure as configure_passwords
from mssgate.queue.service import DocumentQueue
from mssgate.relay import RelayWorker
from mssgate.relay.encryption import OutgoingEncryption
from mssgate.server_policy import DocumentPolicy, publish_policy
from mssgate.smime.pathcache import PATH_CACHE
from mssgate.smtp.body import MemoryBudget
from mssgate.smtp.limits import AuthPenalty, ConnectionLimiter
from mssgate.smtp.server import Sessions, bound_port, drain, start_smtp
from mssgate.spool import Spool
from mssgate.spool.delivery import DeliveryWorker, Notifications
from mssgate.spool.jobs import DocumentJobs
from mssgate.supervisor import PassHealth, Supervisor
from mssgate.workers import AcceptanceWorkers

log = logging.getLogger("mssgate.serve")


@contextlib.contextmanager
def data_dir_lock(run_dir: Path) -> Iterator[int]:
    """Yields the lock's descriptor: the acceptance children inherit it (mssgate.workers), so
    that the folder stays locked while any process of this serve runs on it."""
    path = run_dir / "serve.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise Conflict(
                f"another 'mssgate serve' (pid {other}) is running on {run_dir.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield fd
    finally:
        os.close(fd)


def _banner(config: Config, ports: dict[str, int]) -> str:
    ca = config.tls.ca
    return "\n".join(
        [
            f"mssgate serving {config.server.domain} as {config.server.hostname}",
            f"  SMTP submission  {config.smtp.bind}:{ports['submission']}  (STARTTLS, AUTH)",
            f"  SMTPS            {config.smtp.bind}:{ports['smtps']}  (implicit TLS, AUTH)",
            f"  SMTP for peers   {config.smtp.bind}:{ports['mta']}  (STARTTLS, client cert)",
            f"  RIS HTTPS API    https://{config.api.bind}:{ports['api']}/v1/  (bearer token)",
            (
                f"  RIS HL7 MLLP     {config.hl7.bind}:{ports['hl7']}  (TLS, consumer certificate)"
                if "hl7" in ports
                else "  RIS HL7 MLLP     off (hl7.enabled = false)"
            ),
            (
                f"  IMAP             {config.imap.bind}:{ports['imaps']} (TLS),"
                f" {ports['imap']} (STARTTLS)"
                if "imaps" in ports
                else "  IMAP             off (imap.enabled = false)"
            ),
            f"  dev CA           {ca}",
            f"  data             {config.server.data_dir}",
            "  stop with Ctrl-C or SIGTERM",
        ]
    )


async def queue_maintenance(
    queue: DocumentQueue, interval: float, health: PassHealth | None = None
) -> None:
    """Reaps expired leases and resends receipts left in the outbox, every `interval` s.

    Without it an expired lease waits for the next lease on its mailbox (a RIS that went
    away never sends one, so a dead document's error MDN would never leave), and a receipt
    whose hand-over failed, or was cut by a crash after its commit, would stay pending.
    """
    while True:
        try:
            reaped = await asyncio.to_thread(queue.reap)
            resent = await asyncio.to_thread(queue.drain_receipts)
        except (MssgateError, SQLAlchemyError, OSError) as exc:
            # The database may be away for a while: the next round tries again. Anything
            # else is a bug, for the supervisor to log and restart.
            event(log, "queue.maintenance_failed", level=logging.ERROR,
                  error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            if health is not None:
                health.failed(type(exc).__name__)
        else:
            if health is not None:
                health.succeeded()
            if reaped or resent:
                event(log, "queue.maintenance", leases_reaped=reaped, receipts_resent=resent)
        await asyncio.sleep(interval)


def _loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """What asyncio would print about a callback or a forgotten task, as one event.

    The `asyncio` logger stays quiet (a TLS scan makes it print a traceback per probe), so
    without this handler a failure outside any supervised task would leave no trace.
    """
    exc = context.get("exception")
    if isinstance(exc, ssl.SSLError | ConnectionError):
        return  # one peer's broken connection: the protocol classes log those
    fields: dict[str, object] = {"message": str(context.get("message", ""))[:300]}
    if isinstance(exc, BaseException):
        fields["error"] = f"{type(exc).__name__}: {exc}"[:300]
        fields["traceback"] = "".join(traceback.format_exception(exc))
    task = context.get("task") or context.get("future")
    if isinstance(task, asyncio.Task):
        fields["task"] = task.get_name()
    event(log, "loop.error", level=logging.ERROR, **fields)


def _watch_listeners(
    supervisor: Supervisor,
    servers: dict[str, asyncio.Server],
    api: ApiServer,
    dovecot: DovecotSupervisor | None,
) -> None:
    def serving(server: asyncio.Server) -> Callable[[], str | None]:
        return lambda: None if server.is_serving() else "not accepting connections"

    for name, server in servers.items():
        supervisor.check(f"listener.{name}", serving(server))
    supervisor.check("listener.api", lambda: None if api.serving else "the API server stopped")
    if dovecot is not None and dovecot.managed:
        supervisor.check(
            "dovecot", lambda: None if dovecot.pid is not None else "Dovecot is not running"
        )


async def run_gateway(config: Config) -> int:
    asyncio.get_running_loop().set_exception_handler(_loop_error)
    data = config.server.data_dir
    run_dir = ensure_dir(data / "run")
    configure_passwords(config.auth)
    with data_dir_lock(run_dir) as folder_lock:
        engine = open_engine(config.database_url)
        upgrade(engine)
        # Before any listener: a release from the CLI applies this server's policy.
        publish_policy(engine, config.node.name, DocumentPolicy.of(config))
        directory = Directory(engine, actor="serve")
        node = config.node
        registry = Nodes(engine, actor="serve")
        registry.claim_folder(node.name, data)
        registry.start(
            node.name,
            # Port 0 (tests): the address is known once the node listener is bound.
            address=None if node.port == 0 and node.address is None else node.announced_address,
            data_dir=data,
            down_after=timedelta(seconds=node.down_after_seconds),
        )
        # Each node delivers, relays and recovers only the entries whose files it holds.
        spool = Spool(engine, data / "spool", node=node.name)
        recovered = spool.recover(only_node=registry.names() == {node.name})
        PATH_CACHE.configure(
            max_entries=config.policy.smime_path_cache_entries,
            ttl=timedelta(seconds=config.policy.smime_path_cache_seconds),
        )
        wakers: list[object] = []
        dkim_key = (
            config.dkim.key.read_bytes() if config.dkim.key and config.dkim.key.exists() else None
        )
        signer = NotificationSigner(
            config.certs_dir / "mailboxes", dkim_selector=config.dkim.selector, dkim_key=dkim_key
        )
        queue = DocumentQueue.from_config(
            config, engine, on_receipt=ReceiptSpooler(spool, directory, wakers, signer)
        )
        dovecot: DovecotSupervisor | None = None
        store: MailStore = MaildirStore(placed_mail_root(data))
        if config.imap.enabled:
            if find_dovecot() is None and not config.imap.external_dovecot:
                raise DovecotError(
                    "IMAP needs Dovecot: apt-get install dovecot-imapd dovecot-lmtpd"
                    " (or set imap.enabled = false)"
                )
            dovecot = DovecotSupervisor(config, data_dir=data)
            await dovecot.start()
            store = LmtpStore(dovecot.lmtp_socket, timeout=config.delivery.lmtp_timeout_seconds)
        # Whole-message work (SMTP checks, the delivery's document pipeline) shares one memory
        # budget: it bounds the process's peak whatever the number of large messages.
        budget = MemoryBudget(config.smtp.processing_memory)
        # The document pipeline runs apart from delivery, in killable worker processes
        # under a time budget per message: one slow message never holds a mailbox.
        pipeline_pool = PipelinePool(
            config.documents.workers, memory_bytes=config.documents.worker_memory_bytes
        )
        pipeline_pool.start()
        # The RIS's sending (issue 15): its copies are spooled like a submission's; read
        # receipts coming back to its mailbox are seen by the document feed.
        outbound = Outbound(
            config, directory, spool, on_spooled=lambda: accepted(""), dkim_key=dkim_key
        )
        documents = DocumentWorker(
            DocumentJobs(engine, node=node.name),
            spool,
            DocumentFeed(
                queue,
                spool,
                directory,
                config,
                on_message=outbound.observe,
                forwarder=Forwarder(outbound, forward_from=config.routing.forward_from),
            ),
            pipeline_pool,
            config=config.documents,
        )
        assert config.tls.cert is not None and config.tls.key is not None
        assert config.tls.ca is not None
        # Several nodes need PostgreSQL: on SQLite there is one node and nothing to hand over.
        several = not config.database_url.startswith("sqlite")
        homes = Homes(engine, node.name)
        # Moving a mailbox to another node (mssgate.mailmove): its local deliveries and
        # its Dovecot sessions here are held while its home switches.
        gates = MailboxGates() if several else None
        tracked: TrackedBackend | None = None
        mover = doveadm = None
        if dovecot is not None:
            tracked = TrackedBackend(dovecot.imap_backend) if several else None
            dovecot_conf = dovecot.layout.config_file if dovecot.managed else None
            dovecot_conf = dovecot_conf or config.imap.dovecot_config
            doveadm = Doveadm(dovecot_conf) if several and dovecot_conf is not None else None
        if several and gates is not None:
            mover = MailboxMover(
                engine, me=node.name, doveadm=doveadm,
                mail_root=dovecot.layout.mail_root if dovecot and dovecot.managed else None,
                gates=gates, sessions=tracked,
                link=(config.tls.cert, config.tls.key, config.tls.ca),
                down_after=timedelta(seconds=node.down_after_seconds),
            )  # fmt: skip
        worker = DeliveryWorker(
            spool,
            store,
            config=config.delivery,
            documents=documents,
            budget=budget,
            seal=MailboxSealer(queue),
            cross_node=CrossNodeDelivery(
                homes,
                NodeHandOff(
                    cert=config.tls.cert,
                    key=config.tls.key,
                    ca=config.tls.ca,
                    timeout=config.delivery.lmtp_timeout_seconds,
                ),
            )
            if several
            else None,
            give_up_after=timedelta(seconds=config.relay.max_age_seconds),
            gates=gates,
            # RFC 3461 DSNs of local deliveries (NOTIFY=SUCCESS, failures), spooled as the
            # relay's bounces are.
            notifications=Notifications(
                BounceSpooler(spool, directory, wakers, signer),
                hostname=config.server.hostname,
                mss_nil=config.policy.mss_nil,
            ),
        )
        wakers.append(worker.wake)
        relay = RelayWorker(
            spool,
            directory,
            our_cert=config.tls.cert,
            our_key=config.tls.key,
            config_relay=config.relay,
            hostname=config.server.hostname,
            on_dsn=BounceSpooler(spool, directory, wakers, signer),
            mss_nil=config.policy.mss_nil,
            encryption=OutgoingEncryption(
                directory,
                default=EncryptionPolicy(config.policy.encryption),
                dkim_selector=config.dkim.selector,
                dkim_key_pem=dkim_key,
            ),
        )
        wakers.append(relay.wake)
        sessions = Sessions()

        def accepted(_queue_id: str) -> None:
            worker.wake()
            relay.wake()

        smtp = config.smtp
        penalty = AuthPenalty.from_config(smtp)
        # Held here for every acceptance process (mssgate.workers): never N limits.
        smtp_limiter = ConnectionLimiter(smtp.max_connections_per_ip)
        # One for SMTP and IMAP: a login verified on one protocol serves the other.
        login_cache = LoginCache.from_config(config.auth)
        processes = config.server.acceptance_processes
        servers = await start_smtp(
            config, directory, spool, sessions, on_accepted=accepted, penalty=penalty,
            budget=budget, login_cache=login_cache, limiter=smtp_limiter,
            # Only with children: SO_REUSEPORT would let a second serve (another data
            # folder, the same ports) share the ports silently instead of failing to bind.
            reuse_port=processes > 1,
        )  # fmt: skip
        imap: ImapService | None = None
        # Every long-running task runs under it: none may end silently (mssgate.supervisor).
        supervisor = Supervisor()
        if dovecot is not None:
            imap = await start_imap(
                config,
                directory,
                # On several nodes a mailbox homed elsewhere is relayed to its home node.
                NodeImap(
                    tracked or dovecot.imap_backend,
                    homes,
                    cert=config.tls.cert,
                    key=config.tls.key,
                    ca=config.tls.ca,
                    hostname=config.server.hostname,
                )
                if several
                else dovecot.imap_backend,
                penalty=penalty,
                limiter=ConnectionLimiter(smtp.max_connections_per_ip),
                login_cache=login_cache,
            )
            supervisor.spawn("dovecot", dovecot.run)
        heartbeat = Heartbeat(
            registry,
            node.name,
            every=node.heartbeat_seconds,
            down_after=node.down_after_seconds,
            # Rows that name no node (written by an older `mssgate` beside this serve, or
            # by a script) would otherwise wait for the next start.
            on_beat=lambda alone: spool.adopt_unowned(only_node=alone),
        )
        supervisor.spawn("node-heartbeat", heartbeat.run)
        if several:

            async def node_link() -> None:
                # Opened once another node is registered: one node alone on PostgreSQL keeps
                # the ports it had.
                while len(await asyncio.to_thread(registry.names)) < 2:
                    await asyncio.sleep(node.heartbeat_seconds)
                assert config.tls.cert and config.tls.key and config.tls.ca
                server = await start_node_listener(
                    bind=node.bind, port=node.port, cert=config.tls.cert, key=config.tls.key,
                    ca=config.tls.ca, hostname=config.server.hostname, spool=spool,
                    homes=homes, max_size=config.smtp.max_message_size,
                    on_accepted=lambda _queue_id: worker.wake(),
                    imap_backend=tracked,
                    mover=mover, doveadm=doveadm,
                    max_connections=node.max_connections,
                )  # fmt: skip
                if node.address is None and node.port == 0:  # tests: the port bound
                    bound = f"127.0.0.1:{bound_port(server)}"
                    await asyncio.to_thread(registry.set_address, node.name, bound)
                event(log, "node.listening", port=bound_port(server))
                try:
                    await server.serve_forever()
                finally:
                    server.close()

            supervisor.spawn("node-link", node_link)
        supervisor.check("node-heartbeat", heartbeat.health.probe)
        supervisor.spawn("delivery", worker.run)
        supervisor.spawn("documents", documents.run)
        supervisor.spawn("relay", relay.run)
        maintenance = PassHealth()
        supervisor.spawn(
            "queue-maintenance",
            lambda: queue_maintenance(
                queue, config.queue.maintenance_interval_seconds, maintenance
            ),
        )
        # Tasks that catch their own footing failures never crash: their passes are watched.
        supervisor.check("delivery", worker.health.probe)
        supervisor.check("relay", relay.health.probe)
        supervisor.check("documents", documents.health.probe)
        supervisor.check("queue-maintenance", maintenance.probe)
        # The ZAMs owed to the RIS as items of kind `ack` that no request made in line.
        zam_sweep = PassHealth()
        supervisor.spawn(
            "outbound-acks",
            lambda: sweep_forever(
                outbound.zams, config.queue.maintenance_interval_seconds, zam_sweep
            ),
        )
        supervisor.check("outbound-acks", zam_sweep.probe)
        # A consumer's queue pushed to its RIS over MLLP (consumer add --push): lanes follow
        # the consumers table, so the CLI's changes need no restart.
        pusher = MllpPush(config, directory, queue)
        supervisor.spawn("mllp-push", pusher.run)
        supervisor.check("mllp-push", pusher.health.probe)
        api = await start_api(
            config,
            engine,
            queue=queue,
            health=supervisor.failing,
            tasks=supervisor.crash_counts,
            nodes_down=heartbeat.silent,
            outbound=outbound,
        )
        listening: dict[str, asyncio.Server] = {k.value: v for k, v in servers.items()}
        mllp: MllpListener | None = None
        hl7_port = 0
        if config.hl7.enabled:
            slots = api.app.state.outbound_slots  # one bound on submissions, API and MLLP
            mllp = MllpListener(config, directory.consumers, outbound, slots)
            hl7_port = await mllp.start()
            assert mllp.server is not None
            listening["hl7"] = mllp.server
        if imap is not None:
            listening.update({f"imap.{k}": v for k, v in imap.servers.items()})
        _watch_listeners(supervisor, listening, api, dovecot)
        ports = {listener.value: bound_port(s) for listener, s in servers.items()}
        ports["api"] = api.port
        if mllp is not None:
            ports["hl7"] = hl7_port
        if imap is not None:
            ports.update(imap.ports)
        # Before serve.json says we are up: a SIGTERM sent as soon as it appears (a test, a
        # script, systemd) found Python's default handler and killed serve undrained.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        workers: AcceptanceWorkers | None = None
        start_error: MssgateError | None = None
        status = run_dir / "serve.json"

        def write_status() -> None:
            write_durably(
                status,
                json.dumps(
                    {"pid": os.getpid(), "ports": ports, "workers": workers.pids if workers else []}
                ).encode(),
                tmp_dir=run_dir,
                mode=0o644,
            )

        if processes > 1:
            workers = AcceptanceWorkers(
                config, processes - 1,
                ports={listener: bound_port(s) for listener, s in servers.items()},
                limiter=smtp_limiter, penalty=penalty, on_accepted=lambda: accepted(""),
                folder_lock=folder_lock,
                # A restarted child has a new pid: serve.json stays true.
                on_restarted=write_status,
            )  # fmt: skip
            # serve.json (below) says every acceptance process listens.
            try:
                await workers.start()
            except MssgateError as exc:
                # Stopped the orderly way either way: Dovecot, its runtime folder, the
                # pipeline's processes and the children that did start are not left behind.
                # A SIGTERM meanwhile (make run's group signal reaches the children too) is
                # a stop, not a failure.
                start_error = None if stop.is_set() else exc
                event(log, "serve.start_interrupted", level=logging.WARNING,
                      reason="stop asked" if start_error is None else str(exc))  # fmt: skip
                stop.set()
            else:
                metrics.default().add_counts(workers.counts)
                supervisor.spawn("acceptance-workers", workers.run)
                supervisor.check("acceptance-workers", workers.probe)
        if not stop.is_set():
            write_status()
            event(log, "serve.started", ports=ports, spool_orphans_removed=recovered,
                  workers=workers.pids if workers else [])  # fmt: skip
            print(_banner(config, ports), flush=True)
        await stop.wait()
        event(log, "serve.stopping", open_sessions=len(sessions.open), busy=sessions.busy())
        # The children drain as this process does, at the same time.
        stopped = (
            asyncio.create_task(workers.stop(config.smtp.drain_seconds + 15))
            if workers is not None
            else None
        )
        await drain(servers, sessions, config.smtp.drain_seconds)
        if mllp is not None:
            await mllp.stop()
        await api.stop()
        if imap is not None:
            await imap.stop()
        await supervisor.stop()
        pipeline_pool.stop()
        if dovecot is not None:
            await dovecot.stop()
        if stopped is not None:
            await stopped
        status.unlink(missing_ok=True)
        engine.dispose()
        # Every listener serve.started named (SMTP, API, IMAP...), not only the SMTP ones.
        event(log, "serve.stopped", listeners=list(ports))
    if start_error is not None:
        raise start_error
    return 0


def serve(config: Config) -> int:
    import warnings

    from mssgate.logs import configure

    configure()
    # aiosmtpd 1.4 warns on its own AUTH path; stderr carries JSON events only.
    warnings.filterwarnings("ignore", "Session.login_data is deprecated", DeprecationWarning)
    tune_malloc()  # before any worker thread exists: arenas are made per thread
    try:
        return eventloop.run(run_gateway(config), config.server.event_loop)
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        print("interrupted", file=sys.stderr)
        return 130
