"""`mssgate admin token`: the bearer token of the read-only admin console (/admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from mssgate.cli.context import actor, emit_json, say, state
from mssgate.directory.admin_token import AdminToken

app = typer.Typer(help="The read-only admin console (/admin on the API port).",
                  no_args_is_help=True)  # fmt: skip


@app.command("token")
def token(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Make a new console token, printed once; the previous one and its sessions stop
    working at once."""
    st = state(ctx)
    value, replaced = AdminToken(st.engine(), actor=actor()).rotate()
    enabled = st.config().admin.enabled
    if json_out:
        emit_json({"token": value, "replaced": replaced, "console_enabled": enabled})
        return
    say(f"admin token (shown once, keep it secret): {value}")
    if replaced:
        say("the previous admin token and its console sessions no longer work")
    if not enabled:
        say("the console is off: set [admin] enabled = true (MSSGATE_ADMIN__ENABLED=true)"
            " and restart serve")  # fmt: skip
