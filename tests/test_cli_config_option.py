"""`--config FILE` wherever a user puts it (the README: "every command takes --config FILE"),
run as a user runs the command: a subprocess with no MSSGATE_CONFIG, from another folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

MSSGATE = Path(sys.executable).parent / "mssgate"


def mssgate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    return subprocess.run(
        [str(MSSGATE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("gw")
    ran = mssgate("init", "--data", str(data), "--domain", "hopital-a.test", cwd=data)
    assert ran.returncode == 0, ran.stderr
    return data / "mssgate.toml"


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda c: ["--config", c, "domain", "list", "--json"], id="before"),
        pytest.param(lambda c: ["domain", "list", "--json", "--config", c], id="after"),
        pytest.param(lambda c: ["domain", "--config", c, "list", "--json"], id="between"),
        pytest.param(lambda c: ["domain", "list", f"--config={c}", "--json"], id="equals"),
    ],
)
def test_config_is_taken_before_or_after_the_command(
    config: Path, tmp_path: Path, where: Callable[[str], list[str]]
) -> None:
    ran = mssgate(*where(str(config)), cwd=tmp_path)  # no ./mssgate.toml here
    assert ran.returncode == 0, ran.stderr
    assert [d["name"] for d in json.loads(ran.stdout)] == ["hopital-a.test"]


def test_a_config_after_a_double_dash_is_an_argument_not_the_option(
    config: Path, tmp_path: Path
) -> None:
    ran = mssgate("--config", str(config), "directory", "show", "--", "--config", cwd=tmp_path)
    assert ran.returncode == 1, ran
    assert ran.stderr.strip().splitlines()[-1].startswith("mssgate: error: "), ran.stderr
    assert "--config" in ran.stderr
