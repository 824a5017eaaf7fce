"""`mssgate spool list|flush|release|delete|bounce`: mail accepted and not yet delivered
everywhere."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from sqlalchemy import select

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.db.ids import resolve_id
from mssgate.db.schema import spool_messages
from mssgate.errors import Conflict
from mssgate.nodes import Nodes
from mssgate.spool import Spool
from mssgate.spool.store import DeliveryDue, SetAside

app = typer.Typer(help="Mail waiting for delivery.", no_args_is_help=True)

QueueId = Annotated[
    str,
    typer.Argument(help="Queue id of the message as `spool list` shows it, or a unique prefix."),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Even with a delivery due now: only when no gateway is running (refused while"
        " the message's node is up: it may be making that delivery).",
    ),
]


def _spool(ctx: typer.Context) -> Spool:
    st = state(ctx)
    # What the CLI spools (a DSN from `spool bounce`) is written in this data folder: the
    # row names this folder's node, whose serve delivers it.
    config = st.config()
    return Spool(st.engine(), config.server.data_dir / "spool", node=config.node.name)


def _queue_id(ctx: typer.Context, given: str) -> str:
    """The whole queue id `given` (an id or a unique prefix of one) names."""
    return resolve_id(
        state(ctx).engine(), spool_messages.c.id, given, what="spooled message", case="upper"
    )


def _set_aside(
    ctx: typer.Context,
    spool: Spool,
    queue_id: str,
    *,
    reason: str,
    force: bool,
    recipients_only: bool = False,
) -> SetAside:
    """`Spool.set_aside`, with --force taken only when no gateway that could be making the
    due delivery is serving: one that is would deliver it anyway (its delivered mark does not
    ask), and the message would be both delivered and deleted or bounced."""
    try:
        return spool.set_aside(queue_id, reason=reason, recipients_only=recipients_only)
    except DeliveryDue:
        if not force:
            raise
    st = state(ctx)
    with st.engine().connect() as conn:
        owner = conn.execute(
            select(spool_messages.c.node).where(spool_messages.c.id == queue_id)
        ).scalar_one_or_none()
    down_after = timedelta(seconds=st.config().node.down_after_seconds)
    for node in Nodes(st.engine(), actor=actor()).list(down_after=down_after):
        # A row naming no node is adopted by whichever node serves.
        if node.up and owner in (None, node.name):
            raise Conflict(
                f"--force refused: node {node.name!r} is serving (heartbeat"
                f" {node.silent_seconds:.0f} s ago) and may be making the delivery due now;"
                " wait for the attempt to end, or stop it (node list shows it down) first"
            )
    return spool.set_aside(queue_id, reason=reason, force=True, recipients_only=recipients_only)


def _recipient_cell(r: dict[str, object]) -> str:
    if r["state"] == "held":
        return f"{r['recipient']} (held: {r['last_error']})"
    return f"{r['recipient']} ({r['state']}, {r['attempts']} attempt(s))"


@app.command("list")
def list_(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Include completed messages.")] = False,
) -> None:
    """List spooled messages, the state of each recipient and the last error."""
    entries = list(_spool(ctx).entries(include_done=all_))
    if json_out:
        emit_json(entries)
        return
    emit_table(
        "Spool",
        ["queue id", "received", "sender", "size", "recipients", "last error"],
        [
            (
                e.id,
                f"{e.received_at:%Y-%m-%d %H:%M:%S}",
                e.sender,
                e.size,
                ", ".join(_recipient_cell(r) for r in e.recipients),
                e.last_error,
            )
            for e in entries
        ],
        ids=("queue id",),
    )


@app.command("flush")
def flush(ctx: typer.Context) -> None:
    """Retry every pending delivery now."""
    say(f"{_spool(ctx).flush()} deliveries due now")


@app.command("release")
def release(ctx: typer.Context, queue_id: QueueId) -> None:
    """Retry the held deliveries of a message (set aside after an unexpected error)."""
    queue_id = _queue_id(ctx, queue_id)
    count = _spool(ctx).release(queue_id, actor=actor())
    say(f"{count} held deliveries of {queue_id} due now")


@app.command("delete")
def delete(ctx: typer.Context, queue_id: QueueId, force: Force = False) -> None:
    """Take a message off the pending list and delete it, without telling its sender."""
    queue_id = _queue_id(ctx, queue_id)
    spool = _spool(ctx)
    who = actor()
    aside = _set_aside(ctx, spool, queue_id, reason=f"being deleted by {who}", force=force)
    spool.withdraw(aside, actor=who, action="spool.delete", detail={})
    say(f"deleted {queue_id}: {_undelivered(aside.recipients, aside.documents)}")


@app.command("bounce")
def bounce(ctx: typer.Context, queue_id: QueueId, force: Force = False) -> None:
    """Take a message off the pending list and return it to its sender with a DSN."""
    from mssgate.directory.timeutil import now
    from mssgate.integration import BounceSpooler, NotificationSigner
    from mssgate.relay.dsn import RecipientFailure, build_dsn
    from mssgate.relay.worker import postmaster_for

    st = state(ctx)
    config = st.config()
    queue_id = _queue_id(ctx, queue_id)
    spool = _spool(ctx)
    envelope = spool.envelope(queue_id)
    if not envelope.sender:
        # RFC 5321 4.5.5: a notification (null sender) is never answered by another.
        raise Conflict(
            f"spooled message {queue_id} has a null sender (it is a notification): nobody to"
            " bounce it to; use `mssgate spool delete`"
        )
    directory = st.directory()
    dkim_key = (
        config.dkim.key.read_bytes() if config.dkim.key and config.dkim.key.exists() else None
    )
    signer = NotificationSigner(
        config.certs_dir / "mailboxes", dkim_selector=config.dkim.selector, dkim_key=dkim_key
    )
    bounces = BounceSpooler(spool, directory, [], signer)
    if bounces.route(envelope.sender) is None:
        raise Conflict(
            f"cannot bounce {queue_id}: the sender's domain ({envelope.sender}) is neither"
            " hosted here nor on the trust list, so no DSN can reach it; use `mssgate spool"
            " delete`"
        )
    who = actor()
    aside = _set_aside(
        ctx, spool, queue_id, reason=f"being bounced by {who}", force=force, recipients_only=True
    )
    try:
        content = spool.read(queue_id)
    except Exception:  # the headers are a courtesy: the DSN goes without them
        content = b""
    # RFC 3461: only the recipients whose NOTIFY asks for failures (or gave none) are reported.
    failures = [
        RecipientFailure(
            r,
            "5.0.0",
            explanation="returned to the sender by the gateway's administrator",
            original_recipient=aside.dsn[r].orcpt_text() if r in aside.dsn else None,
        )
        for r in aside.recipients
        if r not in aside.dsn or aside.dsn[r].wants_failure
    ]
    if not failures:
        spool.withdraw(aside, actor=who, action="spool.bounce", detail={"dsn": None})
        say(
            f"bounced {queue_id}: no DSN (NOTIFY asks for none),"
            f" {_undelivered(aside.recipients, aside.documents)}"
        )
        return
    dsn = build_dsn(
        content,
        reporting_mta=config.server.hostname,
        failures=failures,
        postmaster=postmaster_for(directory, config.server.hostname, envelope.sender),
        arrival=envelope.received_at,
        envelope_sender=envelope.sender,
        date=now(),
        mss_nil=config.policy.mss_nil,
        envid=aside.envelope.envid,
    )
    notice = bounces.prepare(dsn, envelope.sender)
    if notice is None:  # the trust list changed since the check above
        raise Conflict(f"cannot bounce {queue_id}: no DSN can reach {envelope.sender} any more")
    # The DSN and the failures commit together: a crash or an error leaves either both or
    # neither (then the deliveries stay held, "being bounced by", and the bounce can be run
    # again); never a sender told of a message that `spool release` then delivers.
    dsn_id = spool.withdraw(aside, actor=who, action="spool.bounce", detail={}, notice=notice)
    say(
        f"bounced {queue_id} to {envelope.sender} (DSN {dsn_id}):"
        f" {_undelivered(aside.recipients, aside.documents)}"
    )


def _undelivered(recipients: list[str], documents: list[str]) -> str:
    parts = [f"{len(recipients)} recipient(s) not delivered"]
    if documents:
        parts.append(f"{len(documents)} document job(s) dropped")
    return ", ".join(parts)
