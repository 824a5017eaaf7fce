"""A start cancelled half-way leaves no process behind (issue 13, review): the task starting
a node's Dovecot (serve stopping during its start) or a post-login session (the client or
the node link gone while the engine starts) may be cancelled before the process is ready;
nobody would then stop it, and a Dovecot master kept the data folder's sockets busy."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from mssgate.config import load_config
from mssgate.dovecot.backend import DovecotBackend
from mssgate.dovecot.supervisor import DovecotSupervisor
from tests.imap.test_supervisor import _dovecot_pids_for


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie is dead, only not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_session_cancelled_while_the_engine_starts_leaves_no_process(tmp_path: Path) -> None:
    """The engine here never greets (a real process standing in for a slow `imap`)."""
    pid_file = tmp_path / "pid"
    backend = DovecotBackend(
        None, command=("/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 300")
    )

    async def scenario() -> int:
        opening = asyncio.create_task(backend.open("x@h.test", peer_ip="192.0.2.1", local_ip="::1"))
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.01)
        assert not opening.done()
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        pid = int(pid_file.read_text())
        # Checked with the loop still running: closing the loop would kill it anyway.
        try:
            assert not _running(pid), "the engine process outlived its cancelled start"
        finally:
            if _running(pid):
                os.kill(pid, 9)
        return pid

    asyncio.run(scenario())


def test_a_session_cancelled_while_its_pipes_connect_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test above, made deterministic: under load its cancel could land after the child
    was created but inside spawn, while the pipes were being handed to the loop; the child
    was then sent SIGKILL and not waited for, and outlived the call (or stayed unreaped).
    Here the stderr pipe's connection is held until the cancel lands in it; stdout's transport,
    made already, must be closed too (pytest reports an unclosed one as an error)."""
    from mssgate import childpipes

    pid_file = tmp_path / "pid"
    backend = DovecotBackend(
        None, command=("/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 300")
    )
    real_read_pipe = childpipes.read_pipe
    calls = 0

    async def held_read_pipe(file: BinaryIO, limit: int) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # stdout's pipe connected, stderr's not yet: the cancel lands here
            await asyncio.sleep(3600)
        return await real_read_pipe(file, limit)

    monkeypatch.setattr(childpipes, "read_pipe", held_read_pipe)

    async def scenario() -> None:
        opening = asyncio.create_task(backend.open("x@h.test", peer_ip="192.0.2.1", local_ip="::1"))
        while calls < 2 or not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.01)
        assert not opening.done()
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        pid = int(pid_file.read_text())
        try:
            # Killed and reaped before the cancelled call returned: not even a zombie.
            assert not Path(f"/proc/{pid}").exists(), "the child outlived its cancelled spawn"
        finally:
            if _running(pid):
                os.kill(pid, 9)

    asyncio.run(scenario())


def test_dovecot_cancelled_during_its_start_is_stopped(imap_datadir: Path) -> None:
    config = load_config(imap_datadir / "mssgate.toml")
    supervisor = DovecotSupervisor(config, data_dir=imap_datadir)
    conf = imap_datadir / "dovecot" / "dovecot.conf"

    async def scenario() -> int:
        starting = asyncio.create_task(supervisor.start())
        # The master is spawned, not ready yet (its LMTP socket does not greet yet).
        while supervisor.pid is None and not starting.done():
            await asyncio.sleep(0)
        assert not starting.done(), "Dovecot was ready before the test could cancel its start"
        pid = supervisor.pid
        assert pid is not None
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        return pid

    master = asyncio.run(scenario())
    try:
        assert not _running(master), "the Dovecot master outlived its cancelled start"
        assert supervisor.pid is None
        # Its children (started by the master before the cancel) end with it.
        deadline = time.monotonic() + 10
        while _dovecot_pids_for(conf) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _dovecot_pids_for(conf) == []
    finally:
        for pid in _dovecot_pids_for(conf):
            os.kill(pid, 9)


def test_stop_during_a_restart_leaves_no_dovecot_and_no_runtime_folder(
    imap_datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make run's SIGTERM reaches Dovecot and serve at once: Dovecot dies first, its watcher
    starts a restart, and serve stops (cancelling the watcher, then stop()) while the restart
    is still preparing. The restart must not spawn a Dovecot, nor leave its runtime folder,
    after stop() returned (clean-clone CI: /run/mssgate/<key> was left behind)."""
    config = load_config(imap_datadir / "mssgate.toml")
    supervisor = DovecotSupervisor(config, data_dir=imap_datadir)
    conf = imap_datadir / "dovecot" / "dovecot.conf"
    preparing = supervisor._prepare
    entered = asyncio.Event()
    loop: asyncio.AbstractEventLoop | None = None

    def slow_prepare() -> Path:
        # The restart's first step made slow, as a loaded machine makes it: the stop lands
        # inside it. The real preparation then runs (it writes the runtime folder).
        assert loop is not None
        loop.call_soon_threadsafe(entered.set)
        time.sleep(1.0)
        return preparing()

    async def scenario() -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        await supervisor.start()
        watcher = asyncio.create_task(supervisor.run())
        monkeypatch.setattr(supervisor, "_prepare", slow_prepare)
        assert supervisor.pid is not None
        os.kill(supervisor.pid, 15)
        await asyncio.wait_for(entered.wait(), 30)
        watcher.cancel()  # serve's task supervisor stops its tasks first
        with pytest.raises(asyncio.CancelledError):
            await watcher
        await supervisor.stop()

    try:
        asyncio.run(scenario())
        assert not supervisor.layout.base_dir.exists(), "runtime folder left after stop"
        assert _dovecot_pids_for(conf) == [], "a Dovecot spawned after stop"
    finally:
        for pid in _dovecot_pids_for(conf):
            os.kill(pid, 9)


def test_a_restart_that_fails_while_serve_stops_is_logged(
    imap_datadir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher is cancelled while its restart runs on (serve stopping): a restart that
    then fails has nobody else to say so."""
    from mssgate.dovecot.supervisor import DovecotError

    config = load_config(imap_datadir / "mssgate.toml")
    supervisor = DovecotSupervisor(config, data_dir=imap_datadir)
    conf = imap_datadir / "dovecot" / "dovecot.conf"
    entered = asyncio.Event()
    loop: asyncio.AbstractEventLoop | None = None

    def failing_prepare() -> Path:
        assert loop is not None
        loop.call_soon_threadsafe(entered.set)
        time.sleep(0.5)
        raise DovecotError("the binary went away")

    async def scenario() -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        await supervisor.start()
        watcher = asyncio.create_task(supervisor.run())
        monkeypatch.setattr(supervisor, "_prepare", failing_prepare)
        assert supervisor.pid is not None
        os.kill(supervisor.pid, 15)
        await asyncio.wait_for(entered.wait(), 30)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        await supervisor.stop()

    caplog.set_level("INFO", logger="mssgate")
    try:
        asyncio.run(scenario())
        failed = [r for r in caplog.records if r.getMessage() == "dovecot.restart_failed"]
        assert len(failed) == 1, "a failed restart went unsaid"
        assert failed[0].__dict__["fields"]["error"] == "the binary went away"
    finally:
        for pid in _dovecot_pids_for(conf):
            os.kill(pid, 9)
