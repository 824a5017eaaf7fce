"""sslyze against every TLS listener of a live gateway: TLS 1.2/1.3 only, the configured
suites only, no compression, no insecure renegotiation, a chain that verifies.

sslyze pins an older `cryptography` than pyHanko needs, so it lives in its own virtualenv
(`.venv-sslyze`, made here on first use from PyPI) and runs as a command.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DOMAIN, REPO, Cli, install_lock
from tests.smtp.conftest import Gateway, free_env

SSLYZE_VENV = REPO / ".venv-sslyze"
ALLOWED_TLS12 = {
    f"TLS_ECDHE_{auth}_WITH_{suite}"
    for auth in ("ECDSA", "RSA")
    for suite in (
        "AES_256_GCM_SHA384",
        "AES_128_GCM_SHA256",
        "CHACHA20_POLY1305_SHA256",
        "AES_256_CBC_SHA384",
        "AES_128_CBC_SHA256",
    )
}


@pytest.fixture(scope="module")
def sslyze() -> Path:
    binary = SSLYZE_VENV / "bin" / "sslyze"
    with install_lock(SSLYZE_VENV):  # one install when test processes run side by side
        if not binary.exists():
            subprocess.run([sys.executable, "-m", "venv", str(SSLYZE_VENV)], check=True)
            subprocess.run(
                [SSLYZE_VENV / "bin" / "pip", "install", "--quiet", "sslyze>=6.3,<7"],
                check=True,
                timeout=600,
            )
    return binary


@pytest.fixture
def scanned_gateway(cli: Cli) -> Iterator[Gateway]:
    root = Path(tempfile.mkdtemp(prefix="mssgate-tls-scan-"))
    root.chmod(0o711)  # Dovecot's mail user must reach the data folder
    data = root / "data"
    try:
        cli.ok("init", "--data", str(data), "--domain", DOMAIN)
        gateway = Gateway(data=data, env=free_env(data))
        imap = shutil.which("dovecot", path="/usr/sbin:/usr/bin") is not None
        gateway.env.update(
            # A scanner opens many connections at once; the per-address cap would refuse them.
            MSSGATE_SMTP__MAX_CONNECTIONS_PER_IP="1000",
            MSSGATE_IMAP__ENABLED="true" if imap else "false",
            MSSGATE_IMAP__PORT="0",
            MSSGATE_IMAP__IMAPS_PORT="0",
        )
        gateway.start()
        try:
            yield gateway
        finally:
            gateway.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def scan(sslyze: Path, gateway: Gateway, port: int, starttls: str | None) -> dict[str, object]:
    out = gateway.data / f"scan-{port}.json"
    args = [
        str(sslyze), "--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3",
        "--compression", "--reneg", "--certinfo", "--certinfo_ca_file", str(gateway.ca),
        "--json_out", str(out), "--quiet",
    ]  # fmt: skip
    if starttls:
        args += ["--starttls", starttls]
    subprocess.run([*args, f"127.0.0.1:{port}"], check=True, timeout=300, capture_output=True)
    result = json.loads(out.read_text())["server_scan_results"][0]
    assert result["scan_status"] == "COMPLETED", result.get("connectivity_error_trace")
    return result["scan_result"]  # type: ignore[no-any-return]


def accepted(result: dict[str, object], key: str) -> set[str]:
    section = result[key]
    assert isinstance(section, dict) and section["status"] == "COMPLETED", section
    return {c["cipher_suite"]["name"] for c in section["result"]["accepted_cipher_suites"]}


@pytest.mark.slow
def test_every_tls_listener(sslyze: Path, scanned_gateway: Gateway) -> None:
    gw = scanned_gateway
    targets = [
        ("smtps", None),
        ("submission", "smtp"),
        ("mta", "smtp"),
        ("api", None),
    ]
    if "imaps" in gw.ports:
        targets += [("imaps", None), ("imap", "imap")]
    for name, starttls in targets:
        result = scan(sslyze, gw, gw.ports[name], starttls)
        for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
            assert accepted(result, f"{old}_cipher_suites") == set(), (name, old)
        tls12 = accepted(result, "tls_1_2_cipher_suites")
        assert tls12 and tls12 <= ALLOWED_TLS12, (name, tls12 - ALLOWED_TLS12)
        assert accepted(result, "tls_1_3_cipher_suites"), name
        compression = result["tls_compression"]["result"]  # type: ignore[index]
        assert compression["supports_compression"] is False, name
        reneg = result["session_renegotiation"]["result"]  # type: ignore[index]
        assert reneg["is_vulnerable_to_client_renegotiation_dos"] is False, name
        deployment = result["certificate_info"]["result"]["certificate_deployments"][0]  # type: ignore[index]
        ours = [
            v
            for v in deployment["path_validation_results"]
            if v["trust_store"]["name"] == "Supplied CA file"
        ]
        assert ours and ours[0]["was_validation_successful"] is True, name
