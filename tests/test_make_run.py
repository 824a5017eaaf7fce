"""`make run`, as the README tells a newcomer: it answers on every port, and stops cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from mssgate.dovecot.paths import STATE_ROOT, instance_key, runtime_dir
from tests.conftest import REPO

# The default ports are one machine-wide resource: under pytest-xdist these tests run on one
# worker, one after the other, with the README tour's (which holds the same ports).
pytestmark = pytest.mark.xdist_group("default-ports")

DEFAULT_PORTS = {
    "submission": 10587,
    "smtps": 10465,
    "mta": 10025,
    "api": 10443,
    "imaps": 10993,
    "imap": 10143,
}


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_make_run_answers_on_every_port() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    busy = [name for name, port in DEFAULT_PORTS.items() if answers(port)]
    if busy:
        pytest.skip(f"default ports already in use on this machine: {busy}")
    ports = dict(DEFAULT_PORTS)
    if shutil.which("dovecot", path="/usr/sbin:/usr/bin") is None:
        ports.pop("imaps")
        ports.pop("imap")
    # A clone in a private folder (0700, as /root is and as `mktemp -d` makes): as root,
    # Dovecot's mail user cannot traverse it, and the mail store goes where it can.
    top = Path(tempfile.mkdtemp(prefix="mssgate-make-run-"))
    data = top / "clone" / "var"  # `mssgate init` creates it
    outside = STATE_ROOT / instance_key(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    if "imaps" not in ports:
        env["MSSGATE_IMAP__ENABLED"] = "false"
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"DATA={data}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so that the whole make/serve group gets the SIGTERM
    )
    try:
        deadline = time.monotonic() + 120
        # run/serve.json is serve's readiness signal: the ports of the serve process answer
        # before its acceptance children (serve --workers) have started, and a SIGTERM then
        # is an orderly stop before the banner (tests/smtp/test_serve_workers.py).
        ready = data / "run" / "serve.json"
        while time.monotonic() < deadline and not (
            ready.exists() and all(answers(p) for p in ports.values())
        ):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.2)
        silent = [name for name, port in ports.items() if not answers(port)]
        assert silent == []
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)
    # The group's SIGTERM reached Dovecot before serve stopped it: its sockets go all the same.
    assert not runtime_dir(data).exists()
    assert "mssgate serving hopital-a.test" in output
    assert "SMTP submission  127.0.0.1:10587" in output
