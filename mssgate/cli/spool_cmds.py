"""`mssgate spool list|flush|release`: mail accepted and not yet delivered everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.spool import Spool

app = typer.Typer(help="Mail waiting for delivery.", no_args_is_help=True)


def _spool(ctx: typer.Context) -> Spool:
    st = state(ctx)
    return Spool(st.engine(), st.config().server.data_dir / "spool")


def _recipient_cell(r: dict[str, object]) -> str:
    if r["state"] == "held":
        return f"{r['recipient']} (held: {r['last_error']})"
    return f"{r['recipient']} ({r['state']})"


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
                ", ".join(_recipient_cell(r) for r in e.recipients),
            )
            for e in entries
        ],
    )


@app.command("flush")
def flush(ctx: typer.Context) -> None:
    """Retry every pending delivery now."""
    say(f"{_spool(ctx).flush()} deliveries due now")


@app.command("release")
def release(
    ctx: typer.Context,
    queue_id: Annotated[
        str, typer.Argument(help="Queue id of the message, as `spool list` shows it.")
    ],
) -> None:
    """Retry the held deliveries of a message (set aside after an unexpected error)."""
    count = _spool(ctx).release(queue_id, actor=actor())
    say(f"{count} held deliveries of {queue_id} due now")
