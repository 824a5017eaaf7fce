"""`mssgate spool list|flush`: mail accepted and not yet delivered everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

from mssgate.cli.context import emit_json, emit_table, say, state
from mssgate.spool import Spool

app = typer.Typer(help="Mail waiting for delivery.", no_args_is_help=True)


def _spool(ctx: typer.Context) -> Spool:
    st = state(ctx)
    return Spool(st.engine(), st.config().server.data_dir / "spool")


@app.command("list")
def list_(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Include completed messages.")] = False,
) -> None:
    """List spooled messages and the state of each recipient."""
    entries = list(_spool(ctx).entries(include_done=all_))
    if json_out:
        emit_json(entries)
        return
    emit_table(
        "Spool",
        ["queue id", "received", "sender", "size", "recipients"],
        [
            (
                e.id,
                f"{e.received_at:%Y-%m-%d %H:%M:%S}",
                e.sender,
                e.size,
                ", ".join(f"{r['recipient']} ({r['state']})" for r in e.recipients),
            )
            for e in entries
        ],
    )


@app.command("flush")
def flush(ctx: typer.Context) -> None:
    """Retry every pending delivery now."""
    say(f"{_spool(ctx).flush()} deliveries due now")
