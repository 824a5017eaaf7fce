"""The `mssgate` command tree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mssgate import __version__
from mssgate.cli import (
    admin_cmds,
    audit_cmds,
    cert_cmds,
    console_cmds,
    consumer_cmds,
    directory_cmds,
    domain_cmds,
    node_cmds,
    quarantine_cmds,
    queue_cmds,
    sample_cmds,
    spool_cmds,
)
from mssgate.cli import flags as _flags  # noqa: F401  (help: no <bool> after plain flags)
from mssgate.cli import helptext as _helptext  # noqa: F401  (help: a command's line unbroken)
from mssgate.cli.context import State

app = typer.Typer(
    name="mssgate",
    help="mssgate: a secure health messaging gateway (MSSanté-style).",
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
    ctx.obj = State(config_path=config)
    ctx.call_on_close(ctx.obj.close)


app.command("init")(admin_cmds.init)
app.command("check")(admin_cmds.check)
app.command("serve")(admin_cmds.serve)
app.command("demo")(admin_cmds.demo)
app.command("sample")(sample_cmds.sample)
app.add_typer(directory_cmds.app, name="directory")
app.add_typer(cert_cmds.app, name="cert")
app.add_typer(domain_cmds.app, name="domain")
app.add_typer(consumer_cmds.app, name="consumer")
app.add_typer(console_cmds.app, name="admin")
app.add_typer(audit_cmds.app, name="audit")
app.add_typer(node_cmds.app, name="node")
app.add_typer(spool_cmds.app, name="spool")
app.add_typer(queue_cmds.app, name="queue")
app.add_typer(quarantine_cmds.app, name="quarantine")
