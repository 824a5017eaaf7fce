"""uvicorn serving the API over TLS from our one TLS factory, inside the caller's loop.

The gateway owns signals and logging: uvicorn's signal capture is switched off (SIGTERM is
`mssgate serve`'s to handle) and `log_config=None` leaves our handlers alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine
from uvicorn.protocols.http.h11_impl import H11Protocol

from mssgate import metrics
from mssgate.api.admin import TaskCounts
from mssgate.api.app import HealthProbe, NodesDown, create_app
from mssgate.config import Config
from mssgate.errors import StorageError
from mssgate.listen import bind_failed
from mssgate.outbound.service import Outbound
from mssgate.queue.service import DocumentQueue, ReceiptCallback
from mssgate.tls import server_context


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _CountingH11(H11Protocol):
    """uvicorn's h11 protocol, counting the TLS version of each connection: the ASGI scope
    does not carry it, and asyncio calls connection_made once the handshake is done."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        obj = transport.get_extra_info("ssl_object")
        if isinstance(obj, ssl.SSLObject):
            metrics.tls_session("api", obj.version())


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelt out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and accepted sockets inherit it. With proto 0, Nagle held each response's body (a
    # second write after the headers) for the client's delayed ACK: 40 ms per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise bind_failed("the RIS API", host, port, "api.port", exc) from None
    sock.setblocking(False)
    return sock


class ApiServer:
    def __init__(
        self, server: uvicorn.Server, sock: socket.socket, task: asyncio.Task[None]
    ) -> None:
        self._server = server
        self._sock = sock
        self._task = task
        self.host, self.port = sock.getsockname()[:2]

    @property
    def app(self) -> FastAPI:
        app = self._server.config.app
        assert isinstance(app, FastAPI)
        return app

    @property
    def serving(self) -> bool:
        """False once the server's task has ended (it should run until `stop`)."""
        return not self._task.done()

    async def stop(self, *, grace_seconds: float = 10.0) -> None:
        """Stops accepting, lets requests in flight finish (up to the grace), closes."""
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace_seconds)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        finally:
            self._sock.close()


async def start_api(
    config: Config,
    engine: Engine,
    *,
    queue: DocumentQueue | None = None,
    on_receipt: ReceiptCallback | None = None,
    host: str | None = None,
    port: int | None = None,
    tls: ssl.SSLContext | None = None,
    health: HealthProbe | None = None,
    tasks: TaskCounts | None = None,
    nodes_down: NodesDown | None = None,
    outbound: Outbound | None = None,
) -> ApiServer:
    """Starts serving on [api] bind:port (or `host`/`port`; port 0 picks a free one)."""
    assert config.tls.cert is not None and config.tls.key is not None  # set by Config
    context = tls or server_context(config.tls.cert, config.tls.key)
    app = create_app(
        config,
        engine,
        queue=queue,
        on_receipt=on_receipt,
        health=health,
        tasks=tasks,
        nodes_down=nodes_down,
        outbound=outbound,
    )
    sock = _bind(host or config.api.bind, config.api.port if port is None else port)
    uv_config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        lifespan="off",
        timeout_keep_alive=30,
        limit_concurrency=256,
        timeout_graceful_shutdown=10,
        ssl_context_factory=lambda _cfg, _default: context,
        http=_CountingH11,
    )
    server = _EmbeddedServer(uv_config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises what stopped it
            raise StorageError("the API server stopped while starting")
        await asyncio.sleep(0.01)
    return ApiServer(server, sock, task)
