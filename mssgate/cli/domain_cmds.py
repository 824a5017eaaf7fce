"""`mssgate domain ...`: local domains and the trust list of peer operators."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mssgate.cli.context import emit_json, emit_table, say, state
from mssgate.pki import load_certificate

app = typer.Typer(help="Local domains and trusted peer domains.", no_args_is_help=True)


@app.command("add")
def add(ctx: typer.Context, domain: str) -> None:
    """Add a local domain (one whose mailboxes this gateway hosts)."""
    say(f"added local domain {state(ctx).directory().domains.add_local(domain).name}")


@app.command("trust")
def trust(
    ctx: typer.Context,
    domain: str,
    relay: Annotated[str, typer.Option("--relay", help="HOST:PORT of the peer's MTA.")],
    ca: Annotated[
        Path | None, typer.Option("--ca", help="CA certificate of the peer operator (PEM).")
    ] = None,
    operator_dn: Annotated[
        str | None, typer.Option("--operator-dn", help="Expected subject DN of the peer.")
    ] = None,
) -> None:
    """Put a peer operator's domain on the trust list (or update it)."""
    ca_cert = load_certificate(ca) if ca is not None else None
    result = (
        state(ctx)
        .directory()
        .domains.trust(domain, relay=relay, ca=ca_cert, operator_dn=operator_dn)
    )
    say(f"trusted {result.name} via {result.relay_host}:{result.relay_port}")


@app.command("untrust")
def untrust(ctx: typer.Context, domain: str) -> None:
    """Remove a peer domain from the trust list."""
    state(ctx).directory().domains.untrust(domain)
    say(f"untrusted {domain.lower()}")


@app.command("list")
def list_(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List local and trusted domains."""
    rows = state(ctx).directory().domains.list()
    if json_out:
        emit_json(rows)
        return
    emit_table(
        "Domains",
        ["domain", "kind", "relay", "CA"],
        [
            (
                d.name,
                d.kind.value,
                f"{d.relay_host}:{d.relay_port}" if d.relay_host else None,
                d.ca_subject,
            )
            for d in rows
        ],
    )
