"""After login: bytes both ways between the client and its engine session, until either
side closes. Chunks are bounded and each write waits for the reader (drain), so a slow
client slows the engine instead of growing a buffer.

`carry` is the one byte pump of the gateway: the IMAP front door, the node link's relayed
IMAP and dsync sessions (`relay`) and `mssgate.nodesync`'s stdin/stdout bridge all use it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from mssgate.imap.backend import BackendSession

CHUNK = 64 * 1024

Send = Callable[[bytes], Awaitable[None]]


def sender(writer: asyncio.StreamWriter) -> Send:
    """Writes to `writer` and waits until its buffer is below the high-water mark."""

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    return send


async def carry(
    a: asyncio.StreamReader, to_a: Send, b: asyncio.StreamReader, to_b: Send
) -> tuple[int, int]:
    """Copies `a` into `to_b` and `b` into `to_a` until either reader ends (EOF, error) or
    either send fails; returns (bytes from a, bytes from b). The other direction is then
    cancelled: whoever called closes both ends."""
    counts = [0, 0]

    async def pump(reader: asyncio.StreamReader, send: Send, index: int) -> None:
        while data := await reader.read(CHUNK):
            counts[index] += len(data)
            await send(data)

    tasks = [asyncio.create_task(pump(a, to_b, 0)), asyncio.create_task(pump(b, to_a, 1))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await task
    return counts[0], counts[1]


async def relay(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: BackendSession
) -> tuple[int, int]:
    """Returns (bytes from the client, bytes to the client)."""
    return await carry(reader, sender(writer), session.reader, session.write)
