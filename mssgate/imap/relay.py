"""After login: bytes both ways between the client and its engine session, until either
side closes. Chunks are bounded and each write waits for the reader (drain), so a slow
client slows the engine instead of growing a buffer."""

from __future__ import annotations

import asyncio
import contextlib

from mssgate.imap.backend import BackendSession

CHUNK = 64 * 1024


async def relay(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: BackendSession
) -> tuple[int, int]:
    """Returns (bytes from the client, bytes to the client)."""
    counts = [0, 0]

    async def up() -> None:
        while data := await reader.read(CHUNK):
            counts[0] += len(data)
            await session.write(data)

    async def down() -> None:
        while data := await session.reader.read(CHUNK):
            counts[1] += len(data)
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await task
    return counts[0], counts[1]
