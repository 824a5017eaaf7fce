"""A received message body, and the memory budget for working on whole messages.

DATA of a 25 MB message arrives in 64 KB chunks. Twenty such sessions at once would hold
500 MB if each body stayed in memory until its final dot, so a body moves to an anonymous
temporary file (unlinked at creation: nothing is left behind by a crash) once it passes
`spill_threshold`. Small bodies never touch the disk before the spool.

The checks after DATA (S/MIME, DKIM, documents) need the whole message in memory, several
times over while parsers walk it. `MemoryBudget` admits messages to that work by size, so
that the peak stays bounded whatever the number of sessions: a large message waits for
others to finish, small ones pass side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO


class MessageBody:
    def __init__(self, *, spill_threshold: int = 1 << 20, spill_dir: Path | None = None) -> None:
        self._threshold = spill_threshold
        self._dir = spill_dir
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._memory += data
        if len(self._memory) > self._threshold:
            self._file = tempfile.TemporaryFile(dir=self._dir)  # noqa: SIM115 - see close()
            self._file.write(self._memory)
            self._memory = bytearray()

    def discard(self) -> None:
        """Drops what was written (the message is refused; only its size still matters)."""
        self._memory = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def read(self) -> bytes:
        if self._file is None:
            return bytes(self._memory)
        self._file.flush()
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        self.discard()


# Peak memory of whole-message work, per byte of message: the stdlib's MIME parser holds
# the message as str, as a list of lines and as joined payloads (measured: 130-160 MB for a
# 25 MB message, with or without a base64 attachment), besides the bytes themselves.
EXPANSION = 6


class MemoryBudget:
    """Estimated memory of the messages under whole-message processing, at most `limit`.

    A message is estimated at EXPANSION times its size. One whose estimate exceeds the limit
    is admitted alone rather than refused: max_message_size, not this budget, says what is
    too big.
    """

    def __init__(self, limit: int, *, expansion: int = EXPANSION) -> None:
        self._limit = limit
        self._expansion = expansion
        self._used = 0
        self._changed = asyncio.Condition()

    @property
    def used(self) -> int:
        return self._used

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        weight = min(size * self._expansion, self._limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self._used + weight <= self._limit)
            self._used += weight
        try:
            yield
        finally:
            async with self._changed:
                self._used -= weight
                self._changed.notify_all()
