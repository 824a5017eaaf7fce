"""Literal announcements before login, against the front door in-process (no Dovecot needed):
whatever the count's spelling, a literal beyond the budget is refused and its bytes are never
read as commands."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.directory import Directory
from mssgate.imap.backend import BackendSession, BackendUnavailable
from mssgate.imap.server import start_imap
from mssgate.smtp.limits import AuthPenalty, ConnectionLimiter

Exchange = Callable[[bytes], Awaitable[tuple[list[bytes], bool]]]


class DownBackend:
    async def open(self, user: str, *, peer_ip: str, local_ip: str) -> BackendSession:
        raise BackendUnavailable("not needed before login")


def _run(
    datadir: Path, monkeypatch: pytest.MonkeyPatch, body: Callable[[Exchange], Awaitable[None]]
) -> None:
    monkeypatch.setenv("MSSGATE_IMAP__PORT", "0")
    monkeypatch.setenv("MSSGATE_IMAP__IMAPS_PORT", "0")
    config = load_config()
    engine = open_engine(config.database_url)

    async def scenario() -> None:
        service = await start_imap(
            config,
            Directory(engine, actor="test"),
            DownBackend(),
            penalty=AuthPenalty(3, 0.1),
            limiter=ConnectionLimiter(50),
        )

        async def exchange(data: bytes) -> tuple[list[bytes], bool]:
            """The server's lines after its greeting, and whether it hung up within 5 s."""
            reader, writer = await asyncio.open_connection("127.0.0.1", service.ports["imap"])
            assert (await reader.readline()).startswith(b"* OK")
            writer.write(data)
            lines: list[bytes] = []
            closed = False
            with contextlib.suppress(TimeoutError, ConnectionError):
                while line := await asyncio.wait_for(reader.readline(), 5):
                    lines.append(line.rstrip(b"\r\n"))
                closed = True
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return lines, closed

        try:
            await body(exchange)
        finally:
            await service.stop()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()


def test_oversized_counts_are_refused_and_what_follows_is_not_a_command(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(exchange: Exchange) -> None:
        # Eleven digits used to be taken for no literal at all: "a BAD", then the literal's
        # bytes ran as the next command ("b OK Logout completed.").
        for count in (b"99999999999", b"9" * 25, b"9" * 5000):
            lines, closed = await exchange(b"a LOGIN {" + count + b"+}\r\nb LOGOUT\r\n")
            assert lines == [b"a BAD Literal too big before login"], (count[:12], lines)
            assert closed

    _run(datadir, monkeypatch, body)


def test_a_small_literal_spelt_with_leading_zeros_is_read(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(exchange: Exchange) -> None:
        lines, _ = await exchange(b"a NOOP {000000000000000000000005+}\r\nb NOP\r\nc LOGOUT\r\n")
        # The five bytes "b NOP" are the literal: one NOOP, never a command "b".
        assert lines == [b"a OK NOOP completed.", b"* BYE Logging out", b"c OK Logout completed."]

    _run(datadir, monkeypatch, body)
