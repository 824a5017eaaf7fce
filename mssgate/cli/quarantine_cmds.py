"""`mssgate quarantine ...`: documents held back from the queue, with their ANS code."""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from sqlalchemy import Engine

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.config import Config, DocumentsConfig
from mssgate.db.ids import resolve_id
from mssgate.db.schema import quarantine
from mssgate.documents.isolation import Failed, PipelinePool
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.record import PipelineResult
from mssgate.documents.signed import process_signed_message
from mssgate.errors import Conflict
from mssgate.queue import DocumentQueue, QuarantineEntry, release
from mssgate.routing.engine import needs_cda
from mssgate.routing.router import Router
from mssgate.server_policy import DocumentPolicy, newest_policy

if TYPE_CHECKING:
    from mssgate.outbound.forward import Forwarder

app = typer.Typer(help="Documents held for an operator (codes 903-906).", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _queue(ctx: typer.Context) -> DocumentQueue:
    st = state(ctx)
    return DocumentQueue.from_config(st.config(), st.engine())


def _held_id(ctx: typer.Context, given: str) -> str:
    """The whole ID of the entry `given` (an ID or a unique prefix of one) names."""
    return resolve_id(state(ctx).engine(), quarantine.c.id, given, what="quarantined document")


def _when(entry: QuarantineEntry) -> str:
    return f"{entry.received_at:%Y-%m-%d %H:%M:%S}"


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List quarantined documents, oldest first."""
    rows = _queue(ctx).quarantine.entries()
    if json_out:
        emit_json(rows)
        return
    emit_table(
        "Quarantine",
        ["id", "received_at", "mailbox", "sender", "code", "reason", "state"],
        [(e.id, _when(e), e.mailbox, e.sender, e.code, e.reason, e.state.value) for e in rows],
    )


@app.command("show")
def show(ctx: typer.Context, held_id: str, json_out: JsonFlag = False) -> None:
    """Show one quarantined document (its ID, or any unique prefix of 6 or more)."""
    entry = _queue(ctx).quarantine.get(_held_id(ctx, held_id))
    if json_out:
        emit_json(entry)
        return
    lines = [
        ("id", entry.id),
        ("state", entry.state.value),
        ("code", entry.code),
        ("reason", entry.reason),
        ("mailbox", entry.mailbox),
        ("sender", entry.sender),
        ("received", _when(entry)),
        ("message-id", entry.message_id),
        ("origin", entry.origin),
        ("content type", entry.content_type),
        ("size", entry.size),
        ("sha256", entry.sha256),
        ("type", entry.document.type_code if entry.document else None),
    ]
    for name, value in lines:
        if value is not None:
            say(f"{name:>12}: {value}")


@app.command("release")
def release_(ctx: typer.Context, held_id: str) -> None:
    """Run the pipeline again on the message it came in, with the running server's policy
    (test INS, birthplace, limits; this command's configuration when no server has published
    one); what now passes is queued. Fails, leaving it held, if it still fails.
    """
    held_id = _held_id(ctx, held_id)
    st = state(ctx)
    policy, whose = _policy(st.config(), st.engine())
    arguments = {
        "limits": DocumentLimits.from_config(policy.documents),
        "allow_test_oids": policy.allow_test_ins,
        "require_birthplace": policy.require_birthplace,
    }
    # Tags and copies as at ingest; a rule's hold no longer holds what is released. A rule
    # that reads the CDA does so in a worker process under its budget, as in serve.
    router = Router.from_config(st.config(), st.engine(), holds=False)
    pool = None
    if needs_cda(router.rules())[0]:
        pool = PipelinePool(1, memory_bytes=policy.documents.worker_memory_bytes)
        pool.start()
        router = router.with_pool(pool)
    try:
        queued = release(
            _queue(ctx),
            held_id,
            actor=actor(),
            pipeline=lambda message: _isolated(message, policy.documents, arguments),
            router=router,
            forwarder=_forwarder(ctx),
            **arguments,  # type: ignore[arg-type]
        )
    except Conflict as exc:
        raise Conflict(f"{exc} ({whose})") from None
    finally:
        if pool is not None:
            pool.stop()
    say(f"released {held_id} {whose}: queued {', '.join(queued) if queued else 'nothing new'}")


def _forwarder(ctx: typer.Context) -> Forwarder:
    """The rules' forwards of a released document, spooled as serve spools them: in this
    data folder's spool, under this node, whose serve sends them at its next poll."""
    from mssgate.outbound.forward import Forwarder
    from mssgate.outbound.service import Outbound
    from mssgate.spool import Spool

    st = state(ctx)
    config = st.config()
    spool = Spool(st.engine(), config.server.data_dir / "spool", node=config.node.name)
    dkim = config.dkim.key.read_bytes() if config.dkim.key and config.dkim.key.exists() else None
    outbound = Outbound(config, st.directory(), spool, dkim_key=dkim)
    return Forwarder(outbound, forward_from=config.routing.forward_from)


def _policy(config: Config, engine: Engine) -> tuple[DocumentPolicy, str]:
    """The policy of the newest server to start on this database, and words saying whose it
    is; this command's own when none has published one (said on stderr)."""
    published = newest_policy(engine)
    if published is None:
        sys.stderr.write(
            "mssgate: notice: no server has published its policy in this database:"
            " releasing with this command's configuration\n"
        )
        return DocumentPolicy.of(config), "with this command's policy"
    since = published.published_at.astimezone(UTC)
    return published.policy, (
        f"with the policy of the server running on {published.node}"
        f" since {since:%Y-%m-%d %H:%M:%S} UTC"
    )


def _isolated(message: bytes, config: DocumentsConfig, arguments: dict[str, Any]) -> PipelineResult:
    """The pipeline over `message` in a worker process, as serve runs it: under the time
    budget and memory cap of one message, never in this process without either (a message
    is often held whole for running over them)."""
    pool = PipelinePool(1, memory_bytes=config.worker_memory_bytes)
    pool.start()
    try:
        # The worker reads a file (0600, removed at once), as it reads the spool in serve.
        with tempfile.NamedTemporaryFile(prefix="mssgate-release-", suffix=".eml") as file:
            file.write(message)
            file.flush()
            outcome = pool.run(
                process_signed_message, Path(file.name), config.time_budget_seconds, **arguments
            )
    finally:
        pool.stop()
    if isinstance(outcome, Failed):
        raise Conflict(f"still held: {outcome.reason}")
    return outcome.result


@app.command("delete")
def delete(ctx: typer.Context, held_id: str) -> None:
    """Delete a quarantined document and its bytes for good (the audit keeps its digest)."""
    entry = _queue(ctx).quarantine.delete(_held_id(ctx, held_id), actor=actor())
    say(f"deleted {entry.id} ({entry.code}, {entry.mailbox})")
