"""What every command needs: the configuration, the database, the directory, output."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from mssgate.config import Config, load_config
from mssgate.db import open_engine, upgrade
from mssgate.directory import Directory
from mssgate.errors import ValidationFailed


@dataclass
class State:
    config_path: Path | None
    _config: Config | None = None
    _engine: Engine | None = field(default=None, repr=False)

    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def engine(self) -> Engine:
        if self._engine is None:
            engine = open_engine(self.config().database_url)
            upgrade(engine)
            self._engine = engine
        return self._engine

    def directory(self) -> Directory:
        return Directory(self.engine(), actor=actor())

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}"


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


stdout = Console(soft_wrap=True)


def emit_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [v.model_dump(mode="json") for v in value]
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def emit_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    stdout.print(table)


def say(message: str) -> None:
    stdout.print(message, highlight=False, markup=False)


def read_secret_stdin(what: str) -> str:
    """One line from standard input, without its line end (for --password-stdin)."""
    line = sys.stdin.readline()
    value = line.rstrip("\r\n")
    if not value:
        raise ValidationFailed(f"no {what} on standard input")
    return value
