"""`mssgate init --port-base N`: a second gateway on one machine, beside one on the default
ports (`make run`), with ports that read like the defaults (issue 18 item 1)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from mssgate.config import load_config
from tests.conftest import DOMAIN, Cli


def test_port_base_moves_every_listener(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "gw"
    out = cli.ok("init", "--data", str(data), "--domain", DOMAIN, "--port-base", "20000").out
    assert (
        "ports          submission 20587, SMTPS 20465, peers 20025, IMAP 20143/20993,"
        " RIS API 20443, nodes 20024"
    ) in out
    written = tomllib.loads((data / "mssgate.toml").read_text())
    assert written["smtp"] == {"submission_port": 20587, "smtps_port": 20465, "mta_port": 20025}
    assert written["imap"] == {"port": 20143, "imaps_port": 20993}
    assert written["api"] == {"port": 20443} and written["node"]["port"] == 20024
    config = load_config(data / "mssgate.toml")
    assert (config.smtp.submission_port, config.api.port, config.imap.imaps_port) == (
        20587,
        20443,
        20993,
    )


def test_without_port_base_the_file_keeps_the_defaults(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "gw"
    cli.ok("init", "--data", str(data), "--domain", DOMAIN)
    written = tomllib.loads((data / "mssgate.toml").read_text())
    assert "smtp" not in written and "api" not in written
    assert load_config(data / "mssgate.toml").smtp.submission_port == 10587


def test_a_port_base_out_of_range_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    for bad in ("80", "65000"):
        result = cli("init", "--data", str(tmp_path / bad), "--domain", DOMAIN, "--port-base", bad)
        assert result.code == 2
        assert f"--port-base {bad}: must be between 1024 and 64542" in result.err
        assert not (tmp_path / bad).exists()
