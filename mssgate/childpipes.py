"""Child processes spoken to over real pipes, on either event loop.

uvloop (libuv) gives a child socketpairs for its standard streams where asyncio gives pipes.
Dovecot's `imap` takes a socket on its stdin for inetd and refuses to serve ("imap binary
must not be started from inetd"), so the pipes are made here and handed to the loop. They
keep the kernel's default size: a 1 MiB pipe for the engine's output was measured and made
the relay no faster (docs/performance.md, "IMAP relay").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO


@dataclass
class PipedChild:
    proc: asyncio.subprocess.Process
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    readers: tuple[asyncio.BaseTransport, ...]

    def close(self) -> None:
        """Closes our ends (idempotent). uvloop leaves a pipe open at EOF, asyncio does not:
        each owner closes them once the child is done with."""
        self.stdin.close()
        for transport in self.readers:
            transport.close()


async def spawn(
    argv: list[str],
    *,
    env: dict[str, str],
    limit: int,
    preexec_fn: Callable[[], object] | None = None,
) -> PipedChild:
    """Starts `argv` with three pipes; raises OSError when it cannot be started."""
    ours: list[int] = []
    theirs: list[int] = []
    try:
        for _ in range(3):
            r, w = os.pipe()  # both ends close-on-exec: the child gets its dup2'd copies
            ours.append(r)
            theirs.append(w)
        # stdin: the child reads the first pipe's read end, we write its write end.
        ours[0], theirs[0] = theirs[0], ours[0]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=theirs[0],
            stdout=theirs[1],
            stderr=theirs[2],
            env=env,
            preexec_fn=preexec_fn,
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    # Each end in a file object at once: whatever fails below closes them with the child.
    stdin_file = os.fdopen(ours[0], "wb", buffering=0)
    stdout_file = os.fdopen(ours[1], "rb", buffering=0)
    stderr_file = os.fdopen(ours[2], "rb", buffering=0)
    made: list[asyncio.BaseTransport] = []
    try:
        stdout, out_transport = await read_pipe(stdout_file, limit)
        made.append(out_transport)
        stderr, err_transport = await read_pipe(stderr_file, limit)
        made.append(err_transport)
        stdin = await write_pipe(stdin_file)
    except BaseException:
        # Failed, or cancelled (a session's client gone while its engine starts): the child
        # exists and nobody else holds it. A connected pipe's transport is closed (closing
        # only its file would leave the fd watched by the loop), and the child is killed and
        # waited for before this returns, neither alive nor a zombie afterwards.
        for transport in made:
            transport.close()
        for file in (stdin_file, stdout_file, stderr_file):
            file.close()
        await _kill_and_reap(proc)
        raise
    return PipedChild(proc, stdin, stdout, stderr, (out_transport, err_transport))


async def _kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    # Shielded: a second cancellation ends our wait, not the reaping (SIGKILL is prompt).
    await asyncio.shield(proc.wait())


async def read_pipe(
    file: BinaryIO, limit: int
) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """A stream reading the pipe `file`, and its transport (closing it closes the file)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), file
    )
    return reader, transport


async def write_pipe(file: BinaryIO) -> asyncio.StreamWriter:
    """A stream writing the pipe `file`, with flow control (`drain`)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, file)
    return asyncio.StreamWriter(transport, protocol, None, loop)
