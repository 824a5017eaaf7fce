"""What every command needs: the configuration, the database, the directory, output."""

from __future__ import annotations

import getpass
import json
import re
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine

from mssgate.config import Config, load_config
from mssgate.db import open_engine, upgrade
from mssgate.directory import Directory
from mssgate.errors import ValidationFailed
from mssgate.passwords import configure as configure_passwords


@dataclass
class State:
    config_path: Path | None
    _config: Config | None = None
    _engine: Engine | None = field(default=None, repr=False)

    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
            # New passwords (directory add, passwd) are hashed at the configured cost.
            configure_passwords(self._config.auth)
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


# A column wider than this is given no more when deciding whether a table fits: its text
# wraps inside the table.
_WRAP_AT = 40


def emit_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    ids: Collection[str] = ("id",),
) -> None:
    """A table whose first column of `ids` present is never shortened nor wrapped: an
    operator copies an ID from here into the next command. Every other cell wraps, and a
    word longer than its column folds onto the next line rather than being cut (nothing
    hidden behind an ellipsis).

    On a terminal too narrow for the table (80 columns and a queue's nine), each row is
    printed as lines of `column: value` instead, as `show` prints one entry: a table
    squeezed to two letters a column would be complete but unreadable."""
    if not rows:
        # An empty bordered box read as an error; the count says what the records form says.
        say(f"{title}: 0")
        return
    cells = [["" if v is None else _printable(str(v)) for v in row] for row in rows]
    widths = [
        max([len(col), *(len(row[index]) for row in cells)]) for index, col in enumerate(columns)
    ]
    natural = sum(min(w, _WRAP_AT) for w in widths) + 3 * len(columns) + 1
    if cells and natural > stdout.width:
        _emit_records(title, columns, cells)
        return
    whole = next((col for col in columns if col in ids), None)
    table = Table(title=title, show_lines=False)
    for col, widest in zip(columns, widths, strict=True):
        # Past _WRAP_AT characters it is no ID of ours (an address in an audit subject, say):
        # kept on one line it would squeeze the other columns out.
        if col == whole and widest <= _WRAP_AT:
            table.add_column(col, no_wrap=True, overflow="fold", min_width=widest)
        else:
            table.add_column(col, overflow="fold")
    for row in cells:
        # Text, not markup: a cell's "[/b]" (in a peer's reply, say) made rich raise and the
        # command die, and a "[link=...]" became a hyperlink on the operator's terminal.
        table.add_row(*(Text(cell) for cell in row))
    stdout.print(table)


# Control characters but the line feed. Cells hold text from outside: a peer's SMTP reply is
# a spool entry's last error, and its escape sequences reached the operator's terminal
# as they came (colours, a changed title, text hidden, the clipboard written).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _emit_records(title: str, columns: Sequence[str], cells: Sequence[Sequence[str]]) -> None:
    width = max(len(col) for col in columns)
    say(f"{title}: {len(cells)}")
    for row in cells:
        say("")
        for col, value in zip(columns, row, strict=True):
            if value:
                # A value's further lines are indented under it: at the margin, a line of
                # it could pass for another field, "queue id: ..." included.
                value = value.replace("\n", "\n" + " " * (width + 2))
                say(f"{col:>{width}}: {value}")


def say(message: str) -> None:
    stdout.print(message, highlight=False, markup=False)


def read_secret_stdin(what: str) -> str:
    """One line from standard input, without its line end (for --password-stdin)."""
    line = sys.stdin.readline()
    value = line.rstrip("\r\n")
    if not value:
        raise ValidationFailed(f"no {what} on standard input")
    return value
