"""`mssgate directory ...`: mailboxes of the local domains and known correspondents."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from mssgate.cli.context import actor, emit_json, emit_table, read_secret_stdin, say, state
from mssgate.directory.annuaire import import_annuaire
from mssgate.directory.models import MailboxKind, NewProfessional, Professional
from mssgate.errors import (
    Conflict,
    MssgateError,
    NotFound,
    UsageFailed,
    ValidationFailed,
    describe_validation,
)
from mssgate.nodes import Nodes

app = typer.Typer(help="Mailboxes of the local domains.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _show(p: Professional) -> None:
    say(f"{p.address}  {p.display_name}")
    say(f"  kind {p.kind.value}, {p.state.value}, idnat {p.idnat or '-'}")
    say(f"  profession {p.profession_code or '-'}, password {'set' if p.has_password else '-'}")


@app.command("add")
def add(
    ctx: typer.Context,
    email: str,
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    rpps: Annotated[str | None, typer.Option("--rpps", help="RPPS (11) or ADELI (9).")] = None,
    profession: Annotated[str | None, typer.Option("--profession")] = None,
    kind: Annotated[str, typer.Option("--kind", help="person|organisation|application")] = (
        "person"
    ),
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
    json_out: JsonFlag = False,
    node: Annotated[
        str | None,
        typer.Option("--node", help="Home node of the mailbox (default: this config's node)."),
    ] = None,
) -> None:
    """Add a mailbox on a local domain."""
    try:
        mailbox_kind = MailboxKind.from_cli(kind)
    except ValueError as exc:
        raise UsageFailed(f"--kind: {exc}") from None
    try:
        new = NewProfessional(
            address=email,
            display_name=name,
            idnat=rpps,
            profession_code=profession,
            kind=mailbox_kind,
        )
    except ValueError as exc:
        message = describe_validation(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ValidationFailed(message) from None
    password = read_secret_stdin("password") if password_stdin else None
    st = state(ctx)
    home = node or st.config().node.name
    if node is not None and not Nodes(st.engine(), actor=actor()).exists(node):
        raise ValidationFailed(f"no node named {node!r} (mssgate node list)")
    created = st.directory().professionals.add(new, password=password, node=home)
    if json_out:
        emit_json(created)
    else:
        say(f"added {created.address}")


@app.command("move")
def move(
    ctx: typer.Context,
    email: str,
    node: Annotated[str, typer.Option("--node", help="The mailbox's new home node.")],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the outcome.", min=1)
    ] = 600.0,
    json_out: JsonFlag = False,
    from_node: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="The node holding the mail (default: the home); with the home already"
            " --node, finishes a move whose source stopped after the switch.",
        ),
    ] = None,
) -> None:
    """Move a mailbox and its mail to another node (both nodes must be up)."""
    # Here, not at the top: the node link brings the LMTP, IMAP and S/MIME stacks, which
    # every other directory command (`list` the first) would pay for at start-up.
    from mssgate.mailmove import MoveRefused
    from mssgate.nodemove import request_move

    st = state(ctx)
    cfg = st.config()
    found = st.directory().professionals.get(email)
    down_after = timedelta(seconds=cfg.node.down_after_seconds)
    listed = {n.name: n for n in Nodes(st.engine(), actor=actor()).list(down_after=down_after)}
    if node not in listed:
        raise NotFound(f"no node named {node!r} (mssgate node list)")
    # A mailbox made before nodes existed has no home: it is this config's node's.
    home = found.node or cfg.node.name
    source = from_node or home
    # The home switched already and `--from` names another node: take what it still holds.
    finish = home == node and from_node is not None and from_node != node
    if source == node or (home == node and not finish):
        raise Conflict(
            f"{found.address} is homed on node {node} already (a move whose source stopped"
            " after the switch: --from SOURCE takes what that node still holds)"
        )
    if from_node is not None and from_node not in listed:
        raise NotFound(f"no node named {from_node!r} (mssgate node list)")
    if not finish and source != home:
        raise Conflict(f"{found.address} is homed on node {home}, not {source}")
    if source not in listed:
        raise Conflict(f"the home node of {found.address}, {source!r}, is not registered")
    for name in (source, node):
        info = listed[name]
        if not info.up:
            silent = "never served" if info.silent_seconds is None else (
                f"silent for {info.silent_seconds:.0f} s")  # fmt: skip
            raise Conflict(f"node {name} is down ({silent}): both nodes must be up to move mail")
    assert cfg.tls.cert is not None and cfg.tls.key is not None and cfg.tls.ca is not None
    try:
        outcome = request_move(listed[source].address, found.address, node, cert=cfg.tls.cert,
                               key=cfg.tls.key, ca=cfg.tls.ca, timeout=timeout,
                               finish=finish)  # fmt: skip
    except MoveRefused as exc:
        raise MssgateError(f"node {source} refused the move: {exc}") from None
    if json_out:
        emit_json(outcome)
        return
    say(
        f"moved {outcome.address} from {outcome.source} to {outcome.target}:"
        f" {outcome.messages} messages in {outcome.folders} folders, {outcome.seconds} s;"
        f" the copy on {outcome.source} {outcome.source_copy}"
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    json_out: JsonFlag = False,
    correspondents: Annotated[
        bool, typer.Option("--correspondents", help="Include known correspondents.")
    ] = False,
) -> None:
    """List mailboxes."""
    rows = list(state(ctx).directory().professionals.list(include_correspondents=correspondents))
    if json_out:
        emit_json(rows)
        return
    emit_table(
        "Directory",
        ["address", "name", "kind", "state", "idnat", "local", "node"],
        [
            (p.address, p.display_name, p.kind.value, p.state.value, p.idnat, p.local, p.node)
            for p in rows
        ],
    )


@app.command("show")
def show(ctx: typer.Context, email: str, json_out: JsonFlag = False) -> None:
    """Show one mailbox."""
    found = state(ctx).directory().professionals.get(email)
    if json_out:
        emit_json(found)
    else:
        _show(found)


@app.command("suspend")
def suspend(ctx: typer.Context, email: str) -> None:
    """Suspend a mailbox: it can no longer log in, send or receive."""
    say(f"suspended {state(ctx).directory().professionals.suspend(email).address}")


@app.command("reactivate")
def reactivate(ctx: typer.Context, email: str) -> None:
    """Reactivate a suspended mailbox."""
    say(f"reactivated {state(ctx).directory().professionals.reactivate(email).address}")


@app.command("remove")
def remove(ctx: typer.Context, email: str) -> None:
    """Remove a mailbox and its registered certificates."""
    state(ctx).directory().professionals.remove(email)
    say(f"removed {email.lower()}")


@app.command("passwd")
def passwd(
    ctx: typer.Context,
    email: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Set a mailbox's password (read from standard input)."""
    if not password_stdin:
        # Nothing else can carry the password (never argv, where `ps` shows it): a usage error.
        raise UsageFailed("give the password on standard input with --password-stdin")
    password = read_secret_stdin("password")
    changed = state(ctx).directory().professionals.set_password(email, password)
    say(f"password set for {changed.address}")


@app.command("import-annuaire")
def import_annuaire_cmd(
    ctx: typer.Context,
    file: Path,
    domain: Annotated[
        list[str] | None,
        typer.Option("--domain", help="Import only addresses of this domain (repeatable)."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Import the Annuaire Santé MSSanté extract (.txt or the published .zip).

    Addresses of the local domains become mailboxes; the others are kept as known
    correspondents. Idempotent: a second run adds and updates nothing.
    """
    from rich.console import Console  # here: the other commands start without rich.progress
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    st = state(ctx)
    cfg = st.config()
    directory = st.directory()
    only = {d.lower() for d in domain} if domain else None
    show_progress = sys.stderr.isatty() and not json_out
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        # On stderr, which is what was checked for a terminal: stdout keeps the report only,
        # for scripts that read it.
        console=Console(stderr=True),
        disable=not show_progress,
        transient=True,
    )
    with progress:
        task = progress.add_task("importing", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = import_annuaire(
            directory.engine,
            file,
            local_domains=directory.domains.local_names(),
            only_domains=only,
            actor=actor(),
            max_line_bytes=cfg.annuaire.max_line_bytes,
            max_rejects_reported=cfg.annuaire.max_rejects_reported,
            on_progress=on_progress,
            home_node=cfg.node.name,
        )
    if json_out:
        emit_json(report)
        return
    say(
        f"{report.lines} lines: {report.added} added, {report.updated} updated,"
        f" {report.unchanged} unchanged, {report.merged} merged (same address),"
        f" {report.skipped_other_domains} other domains, {report.rejected} rejected;"
        f" {report.local_mailboxes} local mailboxes"
    )
    for rej in report.rejects:
        say(f"  line {rej.number}: {rej.reason}")
    if report.rejected > len(report.rejects):
        say(f"  ... and {report.rejected - len(report.rejects)} more rejected lines")
