"""`mssgate domain ...`: local domains and the trust list of peer operators."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.directory.trustlist import (
    DEFAULT_RELAY,
    TrustListRefused,
    apply_trust_list,
    check_relay_template,
    read_trust_list,
)
from mssgate.errors import NotFound
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


@app.command("import-trust-list")
def import_trust_list(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The national list (listeblanchemssante.xml).")],
    allow_unsigned: Annotated[
        bool,
        typer.Option("--allow-unsigned", help="Accept a list that carries no signature."),
    ] = False,
    ca: Annotated[
        Path | None,
        typer.Option("--ca", help="CA bundle (PEM) for the signature; default: [tls] ca."),
    ] = None,
    signer_cn: Annotated[
        str | None,
        typer.Option("--signer-cn", help="Require this common name on the signing certificate."),
    ] = None,
    relay: Annotated[
        str,
        typer.Option(
            "--relay",
            help="Relay of a newly trusted domain ({domain} is replaced); the list has none.",
        ),
    ] = DEFAULT_RELAY,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Make the trust list equal to the MSSanté national list (signed XML "liste blanche").

    Domains of the list become trusted, trusted domains absent from it are removed; each
    change is audited. A list whose signature does not verify is refused; an unsigned one
    too, unless --allow-unsigned. Idempotent: a second run changes nothing.
    """
    st = state(ctx)
    template = check_relay_template(relay)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no such file: {file}") from None
    except OSError as exc:
        raise TrustListRefused(f"cannot read {file}: {exc.strerror}") from None
    ca_file = ca if ca is not None else st.config().tls.ca
    trust_list = read_trust_list(
        data, ca_file=ca_file, allow_unsigned=allow_unsigned, signer_cn=signer_cn
    )
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        disable=json_out or not sys.stderr.isatty(),
        transient=True,
    )
    with progress:
        task = progress.add_task("applying", total=None)
        report = apply_trust_list(
            st.engine(),
            trust_list,
            actor=actor(),
            relay_template=template,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if json_out:
        emit_json(report)
        return
    origin = f"signed by {report.signer}" if report.signed else "UNSIGNED"
    say(
        f"trust list ({origin}): {len(report.added)} added, {len(report.removed)} removed,"
        f" {len(report.updated)} updated, {len(report.unchanged)} unchanged,"
        f" {len(report.skipped)} skipped"
    )
    for name in report.added:
        say(f"  + {name}")
    for name in report.removed:
        say(f"  - {name}")
    for name in report.updated:
        say(f"  ~ {name}")
    for skipped in report.skipped:
        say(f"  ! {skipped.name}: {skipped.reason}")
