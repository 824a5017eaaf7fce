"""`--help` as a user reads it (a subprocess, a wide terminal): each command's line in its
group's list is one sentence run on, not broken where its docstring's source line ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MSSGATE = Path(sys.executable).parent / "mssgate"


@pytest.mark.parametrize(
    ("group", "line"),
    [
        ((), "admin       The read-only admin console (/admin on the API port)."),
        (("admin",), "token  Make a new console token, printed once; the previous one and its "
                     "sessions stop working at once."),
        (("quarantine",), "release  Run the pipeline again on the message it came in, with the "
                          "running server's policy (test INS, birthplace, limits;"),
    ],
)  # fmt: skip
def test_a_command_line_in_the_list_is_not_broken_mid_sentence(
    group: tuple[str, ...], line: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env["COLUMNS"] = "300"
    ran = subprocess.run(
        [str(MSSGATE), *group, "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert line in ran.stdout, ran.stdout
