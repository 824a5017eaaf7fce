"""Review of issue 12 D.13: a document worker never outlives the gateway that started it.

Killed hard (SIGKILL, the OOM killer, systemd past its stop timeout), `serve` cannot stop its
workers; an idle worker sees its pipe close and exits, but one busy with a hostile message
went on burning a core for as long as the message lasted, every restart adding another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mssgate.documents.record import PipelineResult

_GATEWAY = """
import sys
from pathlib import Path
from mssgate.documents.isolation import PipelinePool
from tests.documents.test_review_issue12_orphans import spin
pool = PipelinePool(1)
pool.start()
pool.run(spin, Path(sys.argv[1]), 600.0)
"""


def spin(raw: bytes, **_: object) -> PipelineResult:
    """A pipeline that never ends, after saying which process runs it."""
    Path(raw.decode()).write_text(str(os.getpid()))
    while True:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_a_busy_worker_dies_with_its_gateway(tmp_path: Path) -> None:
    marker = tmp_path / "worker.pid"
    message = tmp_path / "message"
    message.write_bytes(str(marker).encode())
    root = Path(__file__).resolve().parents[2]
    gateway = subprocess.Popen([sys.executable, "-c", _GATEWAY, str(message)], cwd=root)
    worker = 0
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline, "the worker never started its job"
            assert gateway.poll() is None, "the gateway exited"
            time.sleep(0.1)
        worker = int(marker.read_text())
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
        deadline = time.monotonic() + 5
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its gateway"
    finally:
        if gateway.poll() is None:
            gateway.kill()
        if worker and _alive(worker):
            os.kill(worker, signal.SIGKILL)
