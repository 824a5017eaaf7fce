"""`mssgate screening ...`: the second readings (L2) the d2lm preset sent to a CRCDC."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import typer

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.errors import UsageFailed
from mssgate.screening.cases import (
    MAX_LIST,
    MAX_REASON,
    OVERDUE_DAYS,
    WARNING_DAYS,
    ScreeningCases,
    shown,
)
from mssgate.screening.localday import local_date

app = typer.Typer(
    help="Breast-cancer screening second readings (L2) sent to a CRCDC, and their deadline.",
    no_args_is_help=True,
)


@app.command("list")
def list_(
    ctx: typer.Context,
    overdue: Annotated[
        bool,
        typer.Option(
            "--overdue", help=f"Only open cases more than {OVERDUE_DAYS} days after the exam."
        ),
    ] = False,
    due_soon: Annotated[
        bool,
        typer.Option(
            "--due-soon",
            help=f"Only open cases more than {WARNING_DAYS} days after the exam (the warning).",
        ),
    ] = False,
    all_: Annotated[bool, typer.Option("--all", help="Closed cases too.")] = False,
    mailbox: Annotated[
        str | None, typer.Option("--mailbox", help="Only the cases of this mailbox.")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="The day to count from, YYYY-MM-DD (default: today, the woman's local date).",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_LIST)] = MAX_LIST,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the open L2 cases, oldest exam first, with the days since the mammogram (a
    negative result must reach the woman within 15 days of it)."""
    if overdue and due_soon:
        raise UsageFailed("--overdue or --due-soon, not both")
    cases = ScreeningCases(state(ctx).engine())
    day = _day(as_of) if as_of is not None else cases.as_of()
    # Printed as one date: the one given, else metropolitan France's (overseas cases count
    # from their own, each case's `counted_on`).
    shown_day = local_date(None, day).isoformat()
    past = OVERDUE_DAYS if overdue else WARNING_DAYS if due_soon else None
    from mssgate.identifiers import normalize_address

    box = normalize_address(mailbox) if mailbox is not None else None
    found = cases.list(mailbox=box, past_days=past, as_of=day, include_closed=all_, limit=limit)
    if json_out:
        emit_json({"as_of": shown_day, "cases": [shown(c, day) for c in found]})
        return
    if not found:
        say(f"no {'overdue ' if overdue else ''}screening case (as of {shown_day})")
        return
    emit_table(
        f"Screening cases (L2), as of {shown_day}"
        + ("" if as_of is not None else " (overseas: the local date)"),
        ["id", "exam", "days", "due", "dept", "crcdc", "mailbox", "l1 rpps", "state"],
        [
            (
                c.id,
                c.exam_date.isoformat() + ("" if c.exam_date_known else " (received)"),
                c.days(day),
                c.due_at(day),
                c.departement or "-",
                c.crcdc,
                c.mailbox,
                c.l1_rpps or "-",
                c.state,
            )
            for c in found
        ],
    )


@app.command("close")
def close(
    ctx: typer.Context,
    case_id: Annotated[str, typer.Argument(help="The case's id (`screening list`).")],
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help=f"Why, for the audit (at most {MAX_REASON} characters): the result will "
            "never match the case (the INS changed, it came by post...).",
        ),
    ],
) -> None:
    """Close an open L2 case by hand (state closed-by-operator, audited with the reason): it
    leaves the open and overdue counts."""
    case = ScreeningCases(state(ctx).engine()).close(case_id.strip(), reason=reason,
                                                      actor=actor())  # fmt: skip
    say(f"screening case {case.id} closed ({case.state})")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise UsageFailed(f"--as-of {text[:40]!r}: expected a date, YYYY-MM-DD") from None
