"""`mssgate consumer ...`: RIS systems that poll the integration queue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mssgate.cli.context import emit_json, emit_table, say, state
from mssgate.errors import ValidationFailed

app = typer.Typer(help="RIS consumers of the integration queue.", no_args_is_help=True)

MAX_PGP_KEY_BYTES = 256 * 1024


@app.command("add")
def add(
    ctx: typer.Context,
    name: str,
    mailbox: Annotated[str, typer.Option("--mailbox", help="The mailbox it consumes.")],
    pgp_key: Annotated[
        Path | None, typer.Option("--pgp-key", help="OpenPGP public key (armoured).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Register a consumer; its API token is printed once, now."""
    key_text = None
    if pgp_key is not None:
        try:
            data = pgp_key.read_bytes()
        except OSError as exc:
            raise ValidationFailed(f"cannot read {pgp_key}: {exc.strerror}") from None
        if len(data) > MAX_PGP_KEY_BYTES or b"BEGIN PGP PUBLIC KEY BLOCK" not in data:
            raise ValidationFailed(f"{pgp_key} is not an armoured OpenPGP public key")
        key_text = data.decode("ascii", errors="replace")
    consumer, token = state(ctx).directory().consumers.add(name, mailbox=mailbox, pgp_key=key_text)
    if json_out:
        emit_json({"name": consumer.name, "mailbox": consumer.mailbox, "token": token})
        return
    say(f"consumer {consumer.name} added for {consumer.mailbox}")
    say(f"token (shown once, keep it secret): {token}")


@app.command("list")
def list_(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List consumers."""
    rows = state(ctx).directory().consumers.list()
    if json_out:
        emit_json(rows)
        return
    emit_table(
        "Consumers",
        ["name", "mailbox", "pgp", "state"],
        [
            (
                c.name,
                c.mailbox,
                "yes" if c.has_pgp_key else "no",
                "active" if c.active else "revoked",
            )
            for c in rows
        ],
    )


@app.command("revoke")
def revoke(ctx: typer.Context, name: str) -> None:
    """Revoke a consumer's token at once (the consumer stays listed as revoked; its name
    can be given to a new consumer)."""
    say(f"revoked {state(ctx).directory().consumers.revoke(name).name}")


@app.command("remove")
def remove(ctx: typer.Context, name: str) -> None:
    """Remove a consumer (active or revoked): its token stops working at once and its name
    can be given to a new consumer; the audit keeps both apart by id."""
    removed = state(ctx).directory().consumers.remove(name)
    say(f"removed consumer {removed.name} (id {removed.id}, {removed.mailbox})")
