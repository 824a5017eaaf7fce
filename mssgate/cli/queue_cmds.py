"""`mssgate queue ...`: documents waiting for, held by, or done with RIS consumers."""

from __future__ import annotations

from typing import Annotated

import typer

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.db.ids import resolve_id
from mssgate.db.schema import queue_documents
from mssgate.queue import DocumentQueue, QueueEntry, QueueState

app = typer.Typer(help="The RIS integration queue.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _queue(ctx: typer.Context) -> DocumentQueue:
    st = state(ctx)
    return DocumentQueue.from_config(st.config(), st.engine())


def _document_id(ctx: typer.Context, given: str) -> str:
    """The whole ID of the document `given` (an ID or a unique prefix of one) names."""
    return resolve_id(state(ctx).engine(), queue_documents.c.id, given, what="queued document")


def _when(entry: QueueEntry) -> str:
    return f"{entry.received_at:%Y-%m-%d %H:%M:%S}"


@app.command("list")
def list_(
    ctx: typer.Context,
    state_: Annotated[
        QueueState | None, typer.Option("--state", help="Only documents in this state.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """List queued documents, oldest first."""
    queue = _queue(ctx)
    queue.reap()  # an expired lease is shown as what it now is
    rows = queue.entries(state=state_)
    if json_out:
        emit_json(rows)
        return
    emit_table(
        "Queue",
        [
            "id",
            "received",
            "mailbox",
            "sender",
            "state",
            "attempts",
            "type",
            "last code",
            "resend of",
        ],
        [
            (
                e.id,
                _when(e),
                e.mailbox,
                e.sender,
                e.state.value,
                e.attempts,
                e.record.document.type_code or e.record.document.format,
                e.last_code,
                e.duplicate_of,
            )
            for e in rows
        ],
        ids=("id", "resend of"),
    )


@app.command("show")
def show(ctx: typer.Context, document_id: str, json_out: JsonFlag = False) -> None:
    """Show one queued document and its delivery state (ID or unique prefix of 6 or more)."""
    entry = _queue(ctx).entry(_document_id(ctx, document_id))
    if json_out:
        emit_json(entry)
        return
    doc = entry.record.document
    lines = [
        ("id", entry.id),
        ("state", entry.state.value),
        ("attempts", entry.attempts),
        ("mailbox", entry.mailbox),
        ("sender", entry.sender),
        ("received", _when(entry)),
        ("message-id", entry.record.message_id),
        ("format", doc.format),
        ("type", doc.type_code),
        ("unique id", doc.unique_id),
        ("replaces", doc.replaces),
        ("size", entry.size),
        ("sha256", entry.sha256),
        ("duplicate of", entry.duplicate_of),
        ("encrypted", "yes" if entry.encrypted else "no"),
        ("leased by", entry.lease_consumer),
        ("lease expires", entry.lease_expires_at),
        ("last code", entry.last_code),
        ("last reason", entry.last_reason),
        ("receipt to", entry.receipt_to),
    ]
    for name, value in lines:
        if value is not None:
            say(f"{name:>14}: {value}")


@app.command("requeue")
def requeue(ctx: typer.Context, document_id: str) -> None:
    """Send a document back to ready with a fresh attempt count (after fixing the cause)."""
    entry = _queue(ctx).requeue(_document_id(ctx, document_id), actor=actor())
    say(f"requeued {entry.id} ({entry.mailbox})")
