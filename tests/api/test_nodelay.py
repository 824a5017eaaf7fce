"""The API's connections send without Nagle's delay: a response is written in two parts
(headers, then body), and with Nagle on the body waited for the client's delayed ACK,
40 ms on every request (seen measuring the admin console, bench/admin_console.py)."""

from __future__ import annotations

import socket
from pathlib import Path

from mssgate.config import load_config
from mssgate.db import open_engine, upgrade
from tests.api.test_admin_console import _start


def test_accepted_connections_have_tcp_nodelay(datadir: Path) -> None:
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)
    running, console = _start(config, engine, datadir)
    try:
        with console.client() as client:
            assert client.get("/healthz").status_code in (200, 503)
            # The connection stays open (keep-alive): read its option on the server's side.
            connections = list(running.server._server.server_state.connections)
            sockets = [c.transport.get_extra_info("socket") for c in connections]
            assert sockets
            for sock in sockets:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        running.stop()
        engine.dispose()
