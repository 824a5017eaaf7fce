"""The node link's commands for moving a mailbox (mssgate.mailmove has the steps):
`XMOVE <user> <node>`, which `directory move` sends to the mailbox's home node and whose
reply is the outcome, and `XDSYNC <user>`, which the moving node's dsync sends to the target
and after which the connection carries the dsync stream to the target's
`doveadm dsync-server -u <user>`. Only a node (the pinned certificate) may send either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import ssl
from pathlib import Path
from typing import cast

from aiosmtpd.lmtp import LMTP
from sqlalchemy.exc import SQLAlchemyError

from mssgate.childpipes import PipedChild, spawn
from mssgate.config import parse_lmtp_target
from mssgate.dovecot.logpump import pump
from mssgate.dovecot.supervisor import _die_with_parent
from mssgate.errors import MssgateError
from mssgate.identifiers import normalize_address
from mssgate.imap.relay import relay
from mssgate.logs import event
from mssgate.mailmove import Doveadm, MailboxMover, MoveOutcome, MoveRefused
from mssgate.nodelink import (
    _SPENT,
    Homes,
    _der,
    _from_a_node,
    _is_node,
    _LmtpOverTls,
    _node_client_context,
)

log = logging.getLogger("mssgate.nodelink")


async def serve_move(server: LMTP, arg: str | None, *, own: bytes,
                      mover: MailboxMover | None) -> None:  # fmt: skip
    if not _from_a_node(server, own):
        await server.push("530 5.7.0 only the nodes of this installation may move mailboxes")
        return
    if mover is None:
        await server.push("502 5.5.1 this node moves no mailboxes")
        return
    user, _, rest = (arg or "").partition(" ")
    target, _, mode = rest.strip().partition(" ")
    try:
        user = normalize_address(user)
        # Anything but "finish" after the node was read as a whole move, switch included.
        if not target or mode.strip() not in ("", "finish"):
            raise ValueError(mode)
    except ValueError:
        await server.push("501 5.5.4 Syntax: XMOVE <user> <node> [finish]")
        return
    # A move takes as long as its mail: the LMTP idle timer is for commands.
    timer = getattr(server, "_timeout_handle", None)
    if timer is not None:
        timer.cancel()
    try:
        outcome = await mover.request(user, target, finish=mode.strip() == "finish")
    except MoveRefused as exc:
        await server.push(f"{exc.code} {_one_line(str(exc))}")
        return
    except (MssgateError, SQLAlchemyError, OSError) as exc:
        event(log, "move.failed", level=logging.ERROR, user=user,
              error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        await server.push(f"451 4.3.0 the move failed: {type(exc).__name__}")
        return
    await server.push(f"250 {outcome.model_dump_json()}")


# The outcome is one line of JSON (MoveOutcome) or one refusal.
_REPLY_LINE = 8192


class MoveTimedOut(MssgateError):
    """The home node did not answer within the requester's timeout (the move goes on)."""


def request_move(address: str, user: str, target: str, *, cert: Path, key: Path, ca: Path,
                 timeout: float, finish: bool = False) -> MoveOutcome:  # fmt: skip
    """`directory move`'s side: asks the home node at `address` to move `user` to `target`
    and waits for the outcome (MoveRefused with the node's reply, or MoveTimedOut)."""
    host, port = parse_lmtp_target(address)
    if port is None:
        raise MoveRefused(451, f"the home node announces no usable address {address!r}")
    try:
        client = _LmtpOverTls(host, port, timeout=timeout,
                              context=_node_client_context(cert, key, ca))  # fmt: skip
    except (OSError, smtplib.SMTPException) as exc:
        raise MoveRefused(451, f"the home node is unreachable at {address}: {exc}") from None
    try:
        sock = client.sock
        peer = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if not _is_node(peer, _der(cert)):
            raise MoveRefused(451, f"{address} is not a node of this installation")
        client.ehlo()
        client.putcmd("XMOVE", f"{user} {target}{' finish' if finish else ''}")
        # Read here rather than by smtplib, which turns a timeout into "connection closed".
        line = client.file.readline(_REPLY_LINE) if client.file else b""
        if not line.endswith(b"\n"):
            raise smtplib.SMTPServerDisconnected("the home node closed the link")
        code, reply = int(line[:3]) if line[:3].isdigit() else 0, line[4:].strip()
    except TimeoutError:
        raise MoveTimedOut(
            f"no outcome within {timeout:.0f} s: the move of {user} goes on on its home node"
            f" (its log says move.done; another move of {user} is refused until then)"
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise MoveRefused(451, f"the home node closed the link: {exc}") from None
    finally:
        client.close()
    text = reply.decode("utf-8", "replace")
    if code != 250:
        raise MoveRefused(code, text)
    return MoveOutcome.model_validate_json(text)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


# What asyncio's own subprocess streams used: the relay reads in chunks, and this bounds
# only a line read by readline/readuntil (dsync-server's stderr, read by the log pump).
_DSYNC_LIMIT = 64 * 1024


class _DsyncServer:
    """This node's `doveadm dsync-server -u <user>` as a byte stream (BackendSession)."""

    def __init__(self, child: PipedChild, logs: asyncio.Task[None]) -> None:
        self._child = child
        self._proc = child.proc
        self._stdin = child.stdin
        self._stdout = child.stdout
        self._logs = logs

    @property
    def capabilities(self) -> str:
        return ""

    @property
    def reader(self) -> asyncio.StreamReader:
        return self._stdout

    async def write(self, data: bytes) -> None:
        self._stdin.write(data)
        await self._stdin.drain()

    async def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self._stdin.close()
        # EOF ends dsync-server once it has written what it received; a hung one is killed.
        try:
            await asyncio.wait_for(self._proc.wait(), 60)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._logs
        self._child.close()


async def serve_dsync(server: LMTP, arg: str | None, *, homes: Homes, own: bytes,
                       doveadm: Doveadm | None) -> None:  # fmt: skip
    if not _from_a_node(server, own):
        await server.push("530 5.7.0 only the nodes of this installation may sync mail here")
        return
    if doveadm is None:
        await server.push("502 5.5.1 this node serves no Dovecot")
        return
    try:
        user = normalize_address(arg or "")
    except ValueError:
        await server.push("501 5.5.4 Syntax: XDSYNC <user>")
        return
    try:
        known = await asyncio.to_thread(homes.homed_here, user)
    except SQLAlchemyError:
        await server.push("451 4.3.0 directory unavailable")
        return
    if known is None:
        await server.push("550 5.1.1 no mailbox of this installation")
        return
    try:
        # Real pipes on either event loop (mssgate/childpipes.py), as for IMAP sessions.
        child = await spawn(
            doveadm.argv("dsync-server", "-u", user),
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            limit=_DSYNC_LIMIT,
            preexec_fn=_die_with_parent,  # dies with this node, as its Dovecot does
        )
    except OSError as exc:
        await server.push(f"451 4.3.0 cannot start dsync-server: {exc.strerror}")
        return
    proc = child.proc
    session = _DsyncServer(child, asyncio.create_task(pump(child.stderr, source="dsync-server")))
    # As for XIMAP: what follows is dsync's stream, never LMTP with a node's authority.
    setattr(server, _SPENT, True)
    try:
        await server.push("250 2.0.0 dsync")
        event(log, "node.dsync_open", user=user)
        timer = getattr(server, "_timeout_handle", None)
        if timer is not None:
            timer.cancel()
        await relay(server._reader, server._writer, session)
    finally:
        await session.close()
        event(log, "node.dsync_closed", user=user, code=proc.returncode)
        transport = cast(asyncio.Transport | None, server.transport)
        if transport is not None:
            transport.abort()
