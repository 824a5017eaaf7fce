"""The IMAP listeners: implicit TLS (`imaps`) and STARTTLS (`imap`), on our TLS factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mssgate import eventloop
from mssgate.authn import DirectoryAuthenticator
from mssgate.bearer import from_config as bearer_from_config
from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.imap.backend import Backend
from mssgate.imap.session import Authenticator, Limits, PreauthSession
from mssgate.listen import bind_failed
from mssgate.logincache import LoginCache
from mssgate.logs import event
from mssgate.smtp.limits import AuthPenalty, ConnectionLimiter
from mssgate.tls import server_context

log = logging.getLogger("mssgate.imap")

IMAPS = "imaps"
IMAP = "imap"


@dataclass
class ImapService:
    servers: dict[str, asyncio.Server]
    sessions: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def ports(self) -> dict[str, int]:
        return {name: _bound_port(server) for name, server in self.servers.items()}

    async def stop(self) -> None:
        """Stops listening and ends every session (logged-in ones lose their engine)."""
        for server in self.servers.values():
            server.close()
        for task in list(self.sessions):
            task.cancel()
        for task in list(self.sessions):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self.servers.values():
            await server.wait_closed()
        event(log, "imap.stopped")


def _bound_port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def start_imap(
    config: Config,
    directory: Directory,
    backend: Backend,
    *,
    penalty: AuthPenalty,
    limiter: ConnectionLimiter,
    authenticator: Authenticator | None = None,
    login_cache: LoginCache | None = None,
) -> ImapService:
    """Listens on `imap.imaps_port` and `imap.port` (0: any free port; see `.ports`)."""
    imap = config.imap
    assert config.tls.cert is not None and config.tls.key is not None
    assert config.tls.ca is not None
    tls = server_context(
        config.tls.cert,
        config.tls.key,
        client_cas=[config.tls.ca.read_text()],
        request_client_cert=True,
    )
    limits = Limits(
        max_command=imap.max_preauth_line,
        idle_timeout=imap.idle_timeout_seconds,
        max_commands=imap.max_preauth_commands,
    )
    service = ImapService(servers={})
    bearer = bearer_from_config(directory, config.oidc)  # None without [oidc]
    login_cache = login_cache or LoginCache.from_config(config.auth)

    def handler(
        listener: str,
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        auth = authenticator or DirectoryAuthenticator(directory, f"imap:{listener}", login_cache)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            service.sessions.add(task)
            peer = str((writer.get_extra_info("peername") or ("?",))[0])
            try:
                if not limiter.acquire(peer):
                    event(log, "imap.reject", listener=listener, peer=peer,
                          reason="too_many_connections")  # fmt: skip
                    with contextlib.suppress(OSError, ConnectionError):
                        writer.write(b"* BYE Too many connections from your address\r\n")
                        await writer.drain()
                    return
                try:
                    event(log, "imap.connect", listener=listener, peer=peer)
                    await PreauthSession(
                        reader,
                        writer,
                        listener=listener,
                        tls_context=tls,
                        limits=limits,
                        authenticator=auth,
                        penalty=penalty,
                        backend=backend,
                        bearer=bearer,
                    ).run()
                finally:
                    limiter.release(peer)
            finally:
                service.sessions.discard(task)
                writer.close()
                with contextlib.suppress(OSError, ConnectionError, ssl.SSLError):
                    await asyncio.wait_for(writer.wait_closed(), 5)

        return handle

    for listener, port, ctx in ((IMAPS, imap.imaps_port, tls), (IMAP, imap.port, None)):
        try:
            service.servers[listener] = await asyncio.start_server(
                handler(listener),
                host=imap.bind,
                port=port,
                ssl=ctx,
                ssl_handshake_timeout=imap.idle_timeout_seconds if ctx is not None else None,
                limit=imap.max_preauth_line,
                reuse_address=True,
            )
        except OSError as exc:
            for started in service.servers.values():
                started.close()
            setting = "imap.imaps_port" if ctx is not None else "imap.port"
            raise bind_failed(f"IMAP ({listener})", imap.bind, port, setting, exc) from None
    event(log, "imap.started", ports=service.ports, loop=eventloop.running())
    return service
