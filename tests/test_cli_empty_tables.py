"""A list with nothing in it says so in words (`Spool: 0`), at any terminal width, run as a
user runs it: an empty bordered table (header, no row) read as something gone wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MSSGATE = Path(sys.executable).parent / "mssgate"


def mssgate(*args: str, config: Path | None = None, columns: int = 200) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env["COLUMNS"] = str(columns)
    if config is not None:
        env["MSSGATE_CONFIG"] = str(config)
    ran = subprocess.run(
        [str(MSSGATE), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("gw")
    mssgate("init", "--data", str(data), "--domain", "hopital-a.test")
    return data / "mssgate.toml"


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize(
    ("command", "said"),
    [
        (("spool", "list"), "Spool: 0"),
        (("quarantine", "list"), "Quarantine: 0"),
        (("consumer", "list"), "Consumers: 0"),
        (("audit", "--action", "no.such"), "Audit: 0"),
    ],
)
def test_an_empty_list_prints_its_count(
    config: Path, command: tuple[str, ...], said: str, columns: int
) -> None:
    assert mssgate(*command, config=config, columns=columns) == said + "\n"
