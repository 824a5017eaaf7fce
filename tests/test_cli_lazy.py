"""The command tree imports a command's module only when that command runs (issue 17): what a
start-up imports is counted in a fresh interpreter, as an operator's `mssgate` starts."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mssgate.cli.app import COMMANDS, app

MSSGATE = Path(sys.executable).parent / "mssgate"

# Run one command in a fresh interpreter, then print the modules it imported.
_PROBE = """
import json, sys
from mssgate.cli import run
code = run(sys.argv[1:])
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
sys.exit(code)
"""


def imported_by(*args: str, config: Path | None = None) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    if config is not None:
        env["MSSGATE_CONFIG"] = str(config)
    ran = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    line = next(x for x in ran.stderr.splitlines() if x.startswith("MODULES "))
    return set(json.loads(line.removeprefix("MODULES ")))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("gw")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    ran = subprocess.run(
        [str(MSSGATE), "init", "--data", str(data), "--domain", "hopital-a.test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    return data / "mssgate.toml"


def _command_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith("mssgate.cli.") and m.endswith("_cmds")}


HEAVY = (
    "fastapi",
    "pyhanko",
    "lxml",
    "alembic",
    "aiohttp",
    "pypdf",
    "aiosmtpd",
    "uvicorn",
    "cryptography",
    "prometheus_client",
)


def test_version_imports_no_command_and_no_database() -> None:
    modules = imported_by("--version")
    assert _command_modules(modules) == set()
    assert {"mssgate.cli.context", "sqlalchemy", "pydantic", "rich"}.isdisjoint(modules)


def test_help_lists_every_command_without_importing_one() -> None:
    assert _command_modules(imported_by("--help")) == set()


def test_directory_list_imports_its_own_module_and_nothing_heavy(config: Path) -> None:
    modules = imported_by("directory", "list", config=config)
    assert _command_modules(modules) == {"mssgate.cli.directory_cmds"}
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []
    assert "mssgate.smime.verify" not in modules


def test_a_new_database_is_still_migrated_on_first_use(tmp_path: Path, config: Path) -> None:
    """The Alembic-free check answers "at the newest revision" only when it is."""
    fresh = tmp_path / "fresh.toml"
    database = tmp_path / "fresh.db"
    text = config.read_text(encoding="utf-8")
    assert "[database]" not in text
    fresh.write_text(f'{text}\n[database]\nurl = "sqlite:///{database}"\n', encoding="utf-8")
    modules = imported_by("directory", "list", config=fresh)
    assert "alembic" in modules  # a database with no schema: Alembic made it
    assert database.exists()
    assert "alembic" not in imported_by("directory", "list", config=fresh)  # and now at head


def test_the_declared_head_is_alembics() -> None:
    from mssgate.db.migrate import declared_head, head_revision

    assert declared_head() == head_revision()


def test_each_short_help_in_the_table_is_its_commands_first_paragraph() -> None:
    """The root's --help shows COMMANDS' text; the command's own --help its docstring."""
    import typer

    group = typer.main.get_command(app)
    for name, entry in COMMANDS.items():
        real = group.commands[name]  # type: ignore[attr-defined]
        first = inspect.cleandoc(real.help or "").split("\n\n")[0]
        assert entry.help == " ".join(first.split("\n")), name
    assert list(group.commands) == list(COMMANDS)  # type: ignore[attr-defined]


def test_a_mistyped_command_is_still_suggested() -> None:
    ran = subprocess.run([str(MSSGATE), "directry"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 2
    assert "Did you mean 'directory'?" in ran.stderr
