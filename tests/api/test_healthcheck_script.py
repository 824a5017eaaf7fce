"""docker/healthcheck.py (the container's HEALTHCHECK) against a real API over HTTPS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.api.conftest import Api

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"


def run_check(datadir: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env |= {"MSSGATE_SERVER__DATA_DIR": str(datadir), "MSSGATE_API__PORT": str(port)}
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )


def test_healthy_api_passes(api: Api, datadir: Path) -> None:
    port = int(api.base_url.rsplit(":", 1)[1])
    result = run_check(datadir, port)
    assert result.returncode == 0, result.stderr


def test_untrusted_certificate_or_no_listener_fails(
    api: Api, datadir: Path, tmp_path: Path
) -> None:
    port = int(api.base_url.rsplit(":", 1)[1])
    (tmp_path / "certs").mkdir()
    other_ca = (datadir / "certs" / "server.crt.pem").read_bytes()  # a leaf, not the issuer
    (tmp_path / "certs" / "ca.crt.pem").write_bytes(other_ca)
    assert run_check(tmp_path, port).returncode == 1
    assert run_check(datadir, 1).returncode == 1
