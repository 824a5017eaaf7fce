"""Post-login sessions: Dovecot's `imap` binary started pre-authenticated for one user.

`imap -c CONFIG -u USER` asks the running Dovecot's auth-userdb socket for the user, drops
to the mail uid and speaks IMAP on stdin/stdout, starting with `* PREAUTH [CAPABILITY ...]`.
No password ever reaches Dovecot: our front door has authenticated the user already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path

from mssgate.childpipes import PipedChild, spawn
from mssgate.dovecot.logpump import pump
from mssgate.imap.backend import BackendUnavailable
from mssgate.logs import event

log = logging.getLogger("mssgate.dovecot")

IMAP_BINARY = Path("/usr/lib/dovecot/imap")
_GREETING = re.compile(rb"^\* PREAUTH \[CAPABILITY ([\x21-\x7e ]+)\]")
# The relay reads in chunks; the limit only bounds the greeting line we parse.
_STREAM_LIMIT = 64 * 1024


class DovecotSession:
    def __init__(self, child: PipedChild, capabilities: str, logs: asyncio.Task[None]) -> None:
        self._child = child
        self._proc = child.proc
        self._stdin = child.stdin
        self._stdout = child.stdout
        self._logs = logs
        self._capabilities = capabilities

    @property
    def capabilities(self) -> str:
        return self._capabilities

    @property
    def reader(self) -> asyncio.StreamReader:
        return self._stdout

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def write(self, data: bytes) -> None:
        self._stdin.write(data)
        await self._stdin.drain()

    async def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self._stdin.close()
        # EOF on stdin makes imap log out; one that hangs is not allowed to linger.
        try:
            await asyncio.wait_for(self._proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._logs
        self._child.close()


class DovecotBackend:
    """Starts pre-authenticated sessions against the Dovecot configured by `config_file`."""

    def __init__(
        self,
        config_file: Path | None,
        *,
        imap_binary: Path = IMAP_BINARY,
        greeting_timeout: float = 30,
        command: tuple[str, ...] = (),
    ) -> None:
        if config_file is None and not command:
            raise ValueError("a Dovecot backend needs a config file or a command")
        self.config_file = config_file
        self.imap_binary = imap_binary
        self._greeting_timeout = greeting_timeout
        # `imap.backend_command`: an operator's own way to reach its Dovecot (another
        # binary, another config, ssh to the mail host), "{user}" standing for the login.
        self._command = command

    def command(self, user: str) -> list[str]:
        if self._command:
            # The user is an address from the directory (checked syntax, no spaces): it is
            # passed as one argument, never through a shell.
            return [arg.replace("{user}", user) for arg in self._command]
        return [str(self.imap_binary), "-c", str(self.config_file), "-u", user]

    async def open(self, user: str, *, peer_ip: str, local_ip: str) -> DovecotSession:
        # Dovecot reads the client's addresses from IP/LOCAL_IP for its logs and plugins.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "IP": peer_ip, "LOCAL_IP": local_ip}
        try:
            child = await spawn(self.command(user), env=env, limit=_STREAM_LIMIT)
        except OSError as exc:
            program = self.command(user)[0]
            raise BackendUnavailable(f"cannot start {program}: {exc.strerror}") from exc
        proc = child.proc
        logs = asyncio.create_task(pump(child.stderr, source="imap"), name="dovecot-imap-log")
        try:
            try:
                line = await asyncio.wait_for(child.stdout.readline(), self._greeting_timeout)
            except (TimeoutError, ValueError, OSError):
                line = b""
        except BaseException:
            # Cancelled while the engine starts (the client went away, the node link closed,
            # serve stopping): nobody will ever close this session, so the process goes now.
            await asyncio.shield(_end(child, logs))
            raise
        match = _GREETING.match(line)
        if match is None:
            await _end(child, logs)
            event(log, "dovecot.session_failed", level=logging.WARNING, code=proc.returncode)
            raise BackendUnavailable("the mailbox engine refused the session")
        return DovecotSession(child, match.group(1).decode("ascii"), logs)


async def _end(child: PipedChild, logs: asyncio.Task[None]) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.proc.kill()
    await child.proc.wait()
    with contextlib.suppress(asyncio.CancelledError):
        await logs
    child.close()
