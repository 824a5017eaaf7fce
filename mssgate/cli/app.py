"""The `mssgate` command tree.

Each command's module is imported only when that command runs: importing them all took
1.7 s before any command did anything (FastAPI, pyHanko, lxml, Alembic... for
`mssgate --version`). The root group knows its commands from `COMMANDS` below, a static
table; `--help` lists them from the short help kept there (tests/test_cli_lazy.py checks it
against each command's docstring), without importing any of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command_from_info, get_group_from_info
from typer.models import CommandInfo, TyperInfo

from mssgate import __version__
from mssgate.cli import flags as _flags  # noqa: F401  (help: no <bool> after plain flags)
from mssgate.cli import helptext as _helptext  # noqa: F401  (help: a command's line unbroken)


class Entry(NamedTuple):
    module: str
    attr: str  # a Typer app (a group of commands) or a function (one command)
    help: str  # the first paragraph of its help, on one line, for the root's --help


COMMANDS: dict[str, Entry] = {
    "init": Entry(
        "admin_cmds",
        "init",
        "Create a data folder: configuration, database, dev PKI, first local domain, first node.",
    ),
    "check": Entry(
        "admin_cmds",
        "check",
        "Validate the configuration, certificates (expiry) and the database.",
    ),
    "serve": Entry(
        "admin_cmds", "serve", "Run every listener (SMTP submission, SMTPS, MTA) until SIGTERM."
    ),
    "demo": Entry(
        "admin_cmds",
        "demo",
        "Two gateways in a temporary folder: a signed imaging report from clinic to RIS.",
    ),
    "sample": Entry(
        "sample_cmds",
        "sample",
        "Write a small fictitious sample: an Annuaire extract, a peer CA certificate, an IHE XDM "
        "archive, a CDA or a mail with a D2LM screening form (test patient, test INS: a "
        "deployment takes its documents only with policy.allow_test_ins = true).",
    ),
    "directory": Entry("directory_cmds", "app", "Mailboxes of the local domains."),
    "cert": Entry("cert_cmds", "app", "S/MIME certificates."),
    "domain": Entry("domain_cmds", "app", "Local domains and trusted peer domains."),
    "consumer": Entry("consumer_cmds", "app", "RIS consumers of the integration queue."),
    "admin": Entry("console_cmds", "app", "The read-only admin console (/admin on the API port)."),
    "audit": Entry("audit_cmds", "app", "The audit trail."),
    "node": Entry("node_cmds", "app", "Nodes sharing one database (several machines)."),
    "spool": Entry("spool_cmds", "app", "Mail waiting for delivery."),
    "queue": Entry("queue_cmds", "app", "The RIS integration queue."),
    "quarantine": Entry(
        "quarantine_cmds", "app", "Documents held for an operator (codes 903-906)."
    ),
    "route": Entry(
        "route_cmds",
        "app",
        "Routing rules: copy, tag or hold received documents by what they are.",
    ),
    "screening": Entry(
        "screening_cmds",
        "app",
        "Breast-cancer screening second readings (L2) sent to a CRCDC, and their deadline.",
    ),
}


class _LazyCommands(MutableMapping[str, Any]):
    """The root's commands by name, each built on first access. Iterating gives the names
    without importing anything (Typer lists and suggests commands from the keys); a value is
    the real command, so code that walks the tree sees every parameter."""

    def __init__(self, group: LazyGroup) -> None:
        self._group = group
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            self._loaded[name] = self._group.build(name, COMMANDS[name])
        return self._loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        raise TypeError("the command table is static")

    def __contains__(self, name: object) -> bool:  # Mapping's would build the command
        return name in COMMANDS or name in self._loaded

    def __iter__(self) -> Iterator[str]:
        return iter([*COMMANDS, *(n for n in self._loaded if n not in COMMANDS)])

    def __len__(self) -> int:
        return len(COMMANDS) + sum(1 for n in self._loaded if n not in COMMANDS)

    def loaded(self, name: str) -> Any | None:
        return self._loaded.get(name)


class LazyGroup(TyperGroup):
    """The root group: commands from `COMMANDS`, their modules imported on use. While it
    formats its help, a command not yet imported is shown by a stand-in holding its name and
    short help."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lazy = _LazyCommands(self)
        self.commands = self._lazy
        self._listing = False

    def build(self, name: str, entry: Entry) -> Any:
        target = getattr(importlib.import_module(f"mssgate.cli.{entry.module}"), entry.attr)
        # As `add_typer` and `command` would have: the settings of this root reach them.
        if isinstance(target, typer.Typer):
            return get_group_from_info(
                TyperInfo(target, name=name),
                pretty_exceptions_short=True,
                suggest_commands=self.suggest_commands,
                rich_markup_mode=self.rich_markup_mode,
            )
        return get_command_from_info(
            CommandInfo(name=name, callback=target),
            pretty_exceptions_short=True,
            rich_markup_mode=self.rich_markup_mode,
        )

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands:
            return None
        if self._listing:
            loaded = self._lazy.loaded(cmd_name)
            if loaded is None and cmd_name in COMMANDS:
                return TyperCommand(name=cmd_name, help=COMMANDS[cmd_name].help)
            return loaded
        return self.commands[cmd_name]

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="mssgate",
    help="mssgate: a secure health messaging gateway (MSSanté-style).",
    cls=LazyGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mssgate {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Configuration file (default: $MSSGATE_CONFIG, then ./mssgate.toml).",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    # Here, not at the top: `--version` and `--help` never reach this callback.
    from mssgate.cli.context import State

    ctx.obj = State(config_path=config)
    ctx.call_on_close(ctx.obj.close)
