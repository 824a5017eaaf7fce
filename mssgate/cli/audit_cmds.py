"""`mssgate audit [verify]`: read and check the hash-chained audit trail."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from mssgate import audit
from mssgate.cli.context import emit_json, emit_table, say, state
from mssgate.errors import MssgateError, UsageFailed

app = typer.Typer(help="The audit trail.", invoke_without_command=True)


class AuditBroken(MssgateError):
    pass


def _parse_since(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageFailed(f"invalid --since {value!r}: use an ISO date or date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.callback()
def show(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--since", help="ISO date or date-time.")] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", help="One action (spool.delete), or a family: 'consumer.*'."),
    ] = None,
    actor_: Annotated[
        str | None, typer.Option("--actor", help="Who, whole: cli:alice, consumer:ris, spool.")
    ] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", help="What, whole: a queue id, an address.")
    ] = None,
    limit: Annotated[
        # The bound keeps the number within both databases' LIMIT (beyond 2^63 it was an
        # internal error): no audit holds a billion entries to page through.
        int | None,
        typer.Option("--limit", min=1, max=10**9, help="Only the last N matching entries."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List audit entries (oldest first), all or those matching every filter given."""
    if ctx.invoked_subcommand is not None:
        return
    engine = state(ctx).engine()
    rows = list(
        audit.entries(
            engine,
            since=_parse_since(since) if since else None,
            action=action,
            actor=actor_,
            subject=subject,
            limit=limit,
        )
    )
    if json_out:
        emit_json(rows)
        return
    emit_table(
        "Audit",
        ["seq", "at", "actor", "action", "subject"],
        [(e.seq, f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.subject) for e in rows],
        ids=("seq",),
    )


@app.command("verify")
def verify(
    ctx: typer.Context,
    expect_head: Annotated[
        str | None, typer.Option("--expect-head", help="Head hash recorded earlier.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check every link of the chain; exit 1 if any entry was edited or deleted."""
    report = audit.verify(state(ctx).engine(), expect_head=expect_head)
    if json_out:
        emit_json(report)
    else:
        for problem in report.problems:
            say(f"  {problem}")
    if not report.ok:
        raise AuditBroken(
            f"audit trail broken: {len(report.problems)} problem(s), first: {report.problems[0]}"
        )
    if not json_out:
        say(f"audit trail intact: {report.entries} entries, head {report.head_hash}")
