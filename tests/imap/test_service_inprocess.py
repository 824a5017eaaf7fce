"""`start_imap` in-process with a stand-in engine: the entry point `mssgate serve` wires."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.directory import Directory
from mssgate.imap.backend import BackendSession, BackendUnavailable
from mssgate.imap.server import start_imap
from mssgate.smtp.limits import AuthPenalty, ConnectionLimiter
from tests.conftest import DOMAIN, Cli

PASSWORD = "a long enough password"
USER = f"dora@{DOMAIN}"


class DownBackend:
    async def open(self, user: str, *, peer_ip: str, local_ip: str) -> BackendSession:
        raise BackendUnavailable("restarting")


def test_port_zero_stop_and_an_unavailable_engine(cli: Cli, datadir: Path, monkeypatch) -> None:
    cli.ok(
        "directory",
        "add",
        USER,
        "--name",
        "dora",
        "--rpps",
        "99700367909",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    monkeypatch.setenv("MSSGATE_IMAP__PORT", "0")
    monkeypatch.setenv("MSSGATE_IMAP__IMAPS_PORT", "0")
    monkeypatch.setenv("MSSGATE_SMTP__MAX_CONNECTIONS_PER_IP", "1")
    config = load_config()
    engine = open_engine(config.database_url)
    directory = Directory(engine, actor="test")

    async def scenario() -> None:
        service = await start_imap(
            config,
            directory,
            DownBackend(),
            penalty=AuthPenalty(3, 0.1),
            limiter=ConnectionLimiter(config.smtp.max_connections_per_ip),
        )
        ports = service.ports
        assert set(ports) == {"imap", "imaps"} and all(ports.values())
        ctx = ssl.create_default_context(cafile=datadir / "certs" / "ca.crt.pem")
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", ports["imaps"], ssl=ctx, server_hostname="localhost"
        )
        assert (await reader.readline()).startswith(b"* OK [CAPABILITY IMAP4rev1")
        # A second connection from the same address is over the limit of one.
        r2, w2 = await asyncio.open_connection("127.0.0.1", ports["imap"])
        assert (await r2.readline()).startswith(b"* BYE Too many connections")
        w2.close()
        writer.write(f'a LOGIN "{USER}" "{PASSWORD}"\r\n'.encode())
        assert await reader.readline() == b"a NO [UNAVAILABLE] Mailbox temporarily unavailable.\r\n"
        assert await reader.read() == b""
        writer.close()
        # A session left open is ended by stop().
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", ports["imaps"], ssl=ctx, server_hostname="localhost"
        )
        await reader.readline()
        await asyncio.wait_for(service.stop(), 10)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        for w in (w2, writer):
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await w.wait_closed()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()
