"""The gateway's private Dovecot: configured under the data folder, started, watched,
restarted when it dies, stopped with the gateway.

With an existing Dovecot configured (`imap.dovecot_config`, `imap.lmtp_target`,
`imap.backend_command`) nothing is started or written: delivery goes to that LMTP target and
post-login sessions come from that backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from mssgate.config import Config, parse_lmtp_target
from mssgate.dovecot.backend import DovecotBackend
from mssgate.dovecot.conf import Layout, Users, render, resolve_users
from mssgate.dovecot.logpump import pump
from mssgate.dovecot.paths import (
    mail_root,
    make_outside_mail_root,
    runtime_dir,
    unreachable_parent,
)
from mssgate.errors import MssgateError
from mssgate.logs import event

log = logging.getLogger("mssgate.dovecot")

_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 30.0
# A run this long resets the backoff: the last crash is history, not a loop.
_STABLE_AFTER = 60.0


class DovecotError(MssgateError):
    """Dovecot is missing, misconfigured or would not start."""


def find_dovecot() -> Path | None:
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/sbin")
    return Path(found) if found else None


def _die_with_parent() -> None:
    # If the gateway is killed outright, its Dovecot must not outlive it and keep the data
    # folder's sockets busy. Runs in the child between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _unreachable_parent(path: Path, users: Users) -> Path | None:
    return unreachable_parent(path, users.mail_uid, users.mail_gid)


def _doveconf_value(config_file: Path, key: str) -> str:
    doveconf = shutil.which("doveconf") or "/usr/bin/doveconf"
    try:
        out = subprocess.run(  # noqa: S603 - fixed binary, our own arguments
            [doveconf, "-c", str(config_file), "-h", key],
            capture_output=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DovecotError(f"cannot read {key} from {config_file}: {exc}") from None
    return out.stdout.decode().strip()


class DovecotSupervisor:
    def __init__(self, config: Config, *, data_dir: Path) -> None:
        imap = config.imap
        self._external = imap.external_dovecot
        self.layout = Layout(data_dir, runtime_dir(data_dir), data_dir / "mail")
        self._instance = f"mssgate-{config.server.domain}"
        self._proc: asyncio.subprocess.Process | None = None
        self._logs: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # A restart in progress (prepare, spawn), shielded from the cancellation of run():
        # stop() waits for it, else a restart under way when serve stopped (Dovecot died
        # first: make run's SIGTERM to the process group) spawned a Dovecot, and made its
        # runtime folder, after stop() had cleaned up.
        self._restart: asyncio.Task[bool] | None = None
        self._started_at = 0.0
        self.restarts = 0
        if self._external:
            # An existing Dovecot: its LMTP target and its post-login sessions, each from the
            # setting of its own or else from that Dovecot's config file.
            if imap.lmtp_target is not None:
                self.lmtp_socket: str | Path = imap.lmtp_target
            else:
                assert imap.dovecot_config is not None  # the config model checked it
                self.lmtp_socket = Path(_doveconf_value(imap.dovecot_config, "base_dir")) / "lmtp"
            self.imap_backend = DovecotBackend(imap.dovecot_config, command=imap.backend_command)
        else:
            self.lmtp_socket = self.layout.lmtp_socket
            self.imap_backend = DovecotBackend(self.layout.config_file)

    @property
    def managed(self) -> bool:
        return not self._external

    @property
    def pid(self) -> int | None:
        """The Dovecot master's pid while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    # ----------------------------------------------------------------- set-up
    def _prepare(self) -> Path:
        binary = find_dovecot()
        if binary is None:
            raise DovecotError(
                "dovecot is not installed (Debian: apt-get install dovecot-imapd dovecot-lmtpd)"
            )
        if not self.layout.data_dir.is_dir():
            raise DovecotError(f"data folder {self.layout.data_dir} does not exist")
        users = resolve_users(self.layout.data_dir)
        layout = self.layout
        for path in (layout.root, layout.state_dir):
            path.mkdir(mode=0o755, exist_ok=True)
        runtime_dir(layout.data_dir, create=True)
        data = layout.data_dir
        mail = mail_root(
            data, mail_uid=users.mail_uid, mail_gid=users.mail_gid, privileged=users.privileged
        )
        if mail != data / "mail" and make_outside_mail_root(data):
            event(log, "dovecot.mail_moved", source=str(data / "mail"), path=str(mail))
        self.layout = layout = replace(layout, mail_root=mail)
        layout.mail_root.mkdir(mode=0o700, exist_ok=True)
        # Named at each start: outside the data folder it must be in the backups too.
        event(log, "dovecot.mail_root", path=str(mail), in_data_folder=mail == data / "mail")
        if users.privileged:
            self._hand_mail_to(users)
        render_text = render(layout, users, instance=self._instance)
        tmp = layout.config_file.with_suffix(".tmp")
        tmp.write_text(render_text)
        tmp.chmod(0o644)
        tmp.replace(layout.config_file)
        return binary

    def _hand_mail_to(self, users: Users) -> None:
        mail = self.layout.mail_root
        data = self.layout.data_dir
        if _unreachable_parent(mail, users) == data and data.stat().st_gid == 0:
            # `mssgate init` makes the data folder 0700: let the mail user's group (only)
            # traverse it. Its files keep their own modes.
            os.chown(data, -1, users.mail_gid)
            data.chmod(data.stat().st_mode | stat.S_IXGRP)
            event(log, "dovecot.data_dir_group", group_id=users.mail_gid)
        blocked = _unreachable_parent(mail, users)
        if blocked is not None:
            raise DovecotError(
                f"mail user {users.mail_user!r} cannot reach {mail}: {blocked} lacks its "
                "execute (search) permission; 'chmod o+x' it or make that user own the data "
                "folder"
            )
        if mail.stat().st_uid == users.mail_uid:
            return
        # First start as root over mail written by another uid (e.g. MaildirStore): give it
        # all to the mail user once; later starts find the top folder right and skip this.
        for root, dirs, files in os.walk(mail):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), users.mail_uid, users.mail_gid)
        os.chown(mail, users.mail_uid, users.mail_gid)
        event(log, "dovecot.mail_owner", user=users.mail_user)

    def _clear_stale_pid(self) -> None:
        # Dovecot refuses to start while master.pid names a live process; after a SIGKILL
        # that pid may since belong to an unrelated process.
        pid_file = self.layout.pid_file
        try:
            pid = int(pid_file.read_text().strip() or "0")
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if str(self.layout.config_file).encode() not in cmdline:
            pid_file.unlink(missing_ok=True)
            return
        # Our own Dovecot, orphaned by a gateway that died: stop it the way Dovecot's own
        # `dovecot stop` does, then take over.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        event(log, "dovecot.orphan_stopped", pid=pid)

    # ----------------------------------------------------------------- running
    async def _spawn(self, binary: Path) -> None:
        await asyncio.to_thread(self._clear_stale_pid)
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "-F",
            "-c",
            str(self.layout.config_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # one prctl call between fork and exec
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        assert proc.stdout is not None
        self._proc = proc
        self._logs = asyncio.create_task(pump(proc.stdout, source="master"), name="dovecot-log")
        self._started_at = time.monotonic()
        try:
            await self._wait_ready(proc)
        except BaseException:
            # Not ready in time, or the start cancelled (serve stopping during its start):
            # `stop()` may never run, so this Dovecot is stopped here rather than left
            # holding the data folder's sockets. `run()` then sees it ended.
            await asyncio.shield(self._end(proc))
            raise
        event(log, "dovecot.started", pid=proc.pid, lmtp=str(self.lmtp_socket))

    async def _end(self, proc: asyncio.subprocess.Process) -> None:
        """Stops a Dovecot master the way `stop()` does: SIGTERM first, so that it takes its
        children (auth, lmtp, imap) with it; SIGKILL if it does not end in time."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._logs is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._logs
        event(log, "dovecot.start_abandoned", level=logging.WARNING, code=proc.returncode)

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        userdb = self.layout.base_dir / "auth-userdb"
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise DovecotError(f"dovecot exited with status {proc.returncode} at start")
            if userdb.exists() and await _lmtp_greets(self.lmtp_socket):
                return
            await asyncio.sleep(0.05)
        raise DovecotError(f"dovecot not ready after {_READY_TIMEOUT:.0f}s")

    async def start(self) -> None:
        if not self.managed:
            if not await _lmtp_greets(self.lmtp_socket):
                raise DovecotError(f"no LMTP service answers on {self.lmtp_socket}")
            event(log, "dovecot.external", lmtp=str(self.lmtp_socket))
            return
        binary = await asyncio.to_thread(self._prepare)
        self._stopping.clear()
        await self._spawn(binary)

    async def run(self) -> None:
        """Watches Dovecot until `stop()`; restarts it, with a growing delay, if it dies."""
        if not self.managed:
            await self._stopping.wait()
            return
        backoff = _BACKOFF_FIRST
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            code = await proc.wait()
            if self._logs is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._logs
            if self._stopping.is_set():
                return
            if time.monotonic() - self._started_at > _STABLE_AFTER:
                backoff = _BACKOFF_FIRST
            event(log, "dovecot.died", level=logging.ERROR, code=code, restart_in=backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            if self._stopping.is_set():
                return
            backoff = min(backoff * 2, _BACKOFF_MAX)
            self._restart = asyncio.create_task(self._respawn(), name="dovecot-restart")
            if not await asyncio.shield(self._restart):
                continue
            self.restarts += 1
            event(log, "dovecot.restarted", pid=self.pid, restarts=self.restarts)

    async def _respawn(self) -> bool:
        """False when the restart failed, logged here: the watcher may have been cancelled
        while it ran (serve stopping), and nobody else would say so."""
        try:
            binary = await asyncio.to_thread(self._prepare)
            await self._spawn(binary)
        except (MssgateError, OSError) as exc:
            event(log, "dovecot.restart_failed", level=logging.ERROR, error=str(exc))
            return False
        return True

    async def stop(self) -> None:
        self._stopping.set()
        restart = self._restart
        if restart is not None and not restart.done():
            with contextlib.suppress(Exception):  # an unexpected one ends the watcher
                await restart
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            if self._logs is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._logs
            event(log, "dovecot.stopped", code=proc.returncode)
        if self.managed and proc is not None:
            # Only sockets and a pid file, left behind too by a Dovecot that died first (a
            # SIGTERM to the whole process group): the next start makes them again.
            shutil.rmtree(self.layout.base_dir, ignore_errors=True)


async def _lmtp_greets(target: str | Path) -> bool:
    host, port = parse_lmtp_target(target)
    try:
        opening = (
            asyncio.open_unix_connection(host)
            if port is None
            else asyncio.open_connection(host, port)
        )
        reader, writer = await asyncio.wait_for(opening, 2)
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), 2)
        writer.write(b"QUIT\r\n")
        return line.startswith(b"220")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
