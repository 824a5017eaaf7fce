"""The remote side of a mailbox move's dsync, as a command `doveadm sync` runs: it opens the
node link to the target node (implicit TLS, the installation's pinned server certificate both
ways), asks `XDSYNC <user>` and then carries the dsync stream between its standard input and
output and that connection. The target answers with its `doveadm dsync-server -u <user>`.

    python -m mssgate.nodesync ADDRESS USER CERT KEY CA

Started by `doveadm sync` before it drops privileges (the key is readable by the gateway
only); arguments, never a shell. Exit 0 when either side ended the stream; 75 when the link
could not be opened (dsync then fails and the move says why).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mssgate.childpipes import read_pipe, write_pipe
from mssgate.config import parse_lmtp_target
from mssgate.imap.backend import BackendUnavailable
from mssgate.imap.relay import CHUNK, carry, sender

# The opening (TLS, greeting, LHLO, XDSYNC and the target's dsync-server start) is bounded;
# the stream itself is bounded by doveadm's own stalled-I/O timeout (-T).
OPEN_SECONDS = 30.0
EXIT_UNAVAILABLE = 75


async def _carry(address: str, user: str, cert: Path, key: Path, ca: Path) -> int:
    from mssgate.nodelink import _der, _expect, _is_node, _node_client_context

    host, port = parse_lmtp_target(address)
    if port is None:
        raise ValueError(f"no port in {address!r}")
    ctx = _node_client_context(cert, key, ca)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, limit=CHUNK), OPEN_SECONDS
    )
    ssl_object = writer.get_extra_info("ssl_object")
    peer = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not _is_node(peer, _der(cert)):
        raise BackendUnavailable(f"{address} is not a node of this installation")

    async def opening() -> None:
        await _expect(reader, 220)
        writer.write(b"LHLO nodesync\r\n")
        await _expect(reader, 250)
        writer.write(f"XDSYNC {user}\r\n".encode())
        await _expect(reader, 250)

    await asyncio.wait_for(opening(), OPEN_SECONDS)
    stdin, _ = await read_pipe(sys.stdin.buffer, CHUNK)
    stdout = await write_pipe(sys.stdout.buffer)

    try:
        # Either end closing ends the stream: dsync's own protocol says whether it finished.
        await carry(stdin, sender(stdout), reader, sender(writer))
    finally:
        writer.close()
        stdout.close()
    return 0


def main(argv: list[str]) -> int:
    # doveadm appends the words of a remote dsync-server command ("dsync-server"): the
    # target node runs its own, so they are ignored.
    if len(argv) < 5:
        sys.stderr.write("usage: python -m mssgate.nodesync ADDRESS USER CERT KEY CA\n")
        return 2
    address, user, cert, key, ca = argv[:5]
    try:
        return asyncio.run(_carry(address, user, Path(cert), Path(key), Path(ca)))
    except (OSError, TimeoutError, ValueError, BackendUnavailable,
            asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:  # fmt: skip
        # doveadm logs this line (our stderr) and fails the sync.
        sys.stderr.write(f"mssgate.nodesync: node link to {address}: {type(exc).__name__}: {exc}\n")
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
