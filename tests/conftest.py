"""Shared fixtures: a real data folder made by `mssgate init`, and the CLI run in-process.

The CLI runs through `mssgate.cli.run`, the same function the console script calls, so exit
codes and error lines are the real ones; a few tests also run the installed script itself.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mssgate.cli import run

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self._capsys = capsys
        self._monkeypatch = monkeypatch

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        self._capsys.readouterr()
        self._monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        code = run([str(a) for a in args])
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str, stdin: str | None = None) -> Result:
        result = self(*args, stdin=stdin)
        assert result.code == 0, f"exit {result.code}: {result.err}{result.out}"
        return result


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables must not truncate what tests read
    for key in list(os.environ):
        if key.startswith("MSSGATE_") and key != "MSSGATE_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)
    return Cli(capsys, monkeypatch)


DOMAIN = "hopital-a.test"


@pytest.fixture
def datadir(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An initialised data folder, selected through $MSSGATE_CONFIG."""
    data = tmp_path / "data"
    cli.ok("init", "--data", str(data), "--domain", DOMAIN)
    monkeypatch.setenv("MSSGATE_CONFIG", str(data / "mssgate.toml"))
    yield data


def shared_fixture(*parts: str) -> Path:
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/fixtures not present ({path}): conformance corpus skipped")
    return path
