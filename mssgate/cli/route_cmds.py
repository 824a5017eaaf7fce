"""`mssgate route ...`: routing rules stored in the database, and a dry run of all of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.errors import NotFound, UsageFailed, ValidationFailed
from mssgate.routing.model import Rule, match_items, parse_action, parse_match
from mssgate.routing.preset import is_preset
from mssgate.routing.store import RuleStore, StoredRule, unknown_copy_targets, validated

app = typer.Typer(
    help="Routing rules: copy, tag or hold received documents by what they are.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _store(ctx: typer.Context) -> RuleStore:
    st = state(ctx)
    return RuleStore(st.engine(), st.config().routing.rule)


def _shown(found: StoredRule) -> dict[str, Any]:
    rule = found.rule
    return {
        "name": rule.name,
        "order": rule.order,
        "enabled": rule.enabled,
        "source": found.source,
        "match": match_items(rule.match),
        "actions": [a.text() for a in rule.actions],
    }


@app.command("add")
def add(
    ctx: typer.Context,
    name: str,
    match: Annotated[
        list[str] | None,
        typer.Option(
            "--match",
            help="FIELD=VALUE[,VALUE...] (any value); several --match must all hold. Fields: "
            "mailbox, domain, sender, sender-domain, format, code, template-id, "
            "service-event, practice-setting, confidentiality, departement, d2lm "
            "(fin, fidd, l2-eligible, not-l2, l2-read), xpath.",
        ),
    ] = None,
    copy_to: Annotated[
        list[str] | None,
        typer.Option("--copy-to", help="Queue a copy for this mailbox's RIS too."),
    ] = None,
    forward: Annotated[
        list[str] | None,
        typer.Option(
            "--forward",
            help="ADDRESS [from APP-MAILBOX]: send the CDA on as a new signed message "
            "(from [routing] forward_from unless given).",
        ),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Label the entry.")] = None,
    hold: Annotated[
        str | None, typer.Option("--hold", help="Quarantine the document with this reason.")
    ] = None,
    stop: Annotated[bool, typer.Option("--stop", help="No further rules.")] = False,
    action: Annotated[
        list[str] | None,
        typer.Option(
            "--action",
            help="An action as [[routing.rule]] writes it: 'copy-to ADDRESS', "
            "'forward ADDRESS [from APP]', 'tag LABEL', 'hold REASON', 'stop'.",
        ),
    ] = None,
    order: Annotated[int, typer.Option("--order", help="Lower runs first.")] = 100,
    disabled: Annotated[bool, typer.Option("--disabled", help="Stored, not applied.")] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the stored rule of this name.")
    ] = False,
) -> None:
    """Add a routing rule; the running gateway applies it to the next message it ingests."""
    try:
        actions = [parse_action(f"copy-to {a}") for a in copy_to or ()]
        actions += [parse_action(f"forward {f}") for f in forward or ()]
        actions += [parse_action(f"tag {t}") for t in tag or ()]
        if hold is not None:
            actions.append(parse_action(f"hold {hold}"))
        if stop:
            actions.append(parse_action("stop"))
        actions += [parse_action(a) for a in action or ()]
        parsed = parse_match(match or [])
    except ValidationFailed:
        raise
    except ValueError as exc:
        raise UsageFailed(_one_line(exc)) from None
    if not actions:
        raise UsageFailed(
            "a rule needs an action: --copy-to, --forward, --tag, --hold, --stop or --action"
        )
    try:
        rule = validated(
            {
                "name": name,
                "order": order,
                "enabled": not disabled,
                "match": parsed,
                "actions": actions,
            }
        )
    except ValidationFailed as exc:
        raise UsageFailed(str(exc)) from None
    directory = state(ctx).directory()
    for _, unknown in unknown_copy_targets(state(ctx).engine(), [rule]):
        raise NotFound(f"copy-to {unknown}: no mailbox of this gateway (directory add)")
    from mssgate.outbound.forward import forward_issues

    for _, to, problem in forward_issues(state(ctx).config(), directory, [rule]):
        raise UsageFailed(f"forward {to}: {problem}")
    active = {c.mailbox for c in directory.consumers.list() if c.active}
    unconsumed = [a.value for a in rule.actions if a.kind == "copy-to" and a.value not in active]
    _store(ctx).add(rule, actor=actor(), replace=replace)
    say(f"routing rule {rule.name} {'replaced' if replace else 'added'}")
    for target in unconsumed:
        # Not refused: the consumer may come next; its copies wait in the queue till then.
        say(f"note: no RIS consumes {target} yet: its copies wait in its queue")


def _one_line(exc: ValueError) -> str:
    from pydantic import ValidationError

    from mssgate.errors import describe_validation

    if isinstance(exc, ValidationError):
        return describe_validation(exc)
    return str(exc).splitlines()[0]


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List the routing rules in the order they run (configuration and database)."""
    # Which rules `route preset d2lm` wrote (it replaces them all when run again).
    rules = [
        _shown(r) | {"preset": "d2lm" if is_preset(r.rule.name) else None}
        for r in _store(ctx).listing()
    ]
    if json_out:
        emit_json({"rules": rules})
        return
    emit_table(
        "Routing rules",
        ["name", "order", "enabled", "source", "match", "actions"],
        [
            (
                r["name"],
                r["order"],
                "yes" if r["enabled"] else "no",
                r["source"],
                " ".join(r["match"]) or "(every document)",
                "; ".join(r["actions"]),
            )
            for r in rules
        ],
        ids=("name",),
    )


@app.command("show")
def show(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Show one routing rule."""
    shown = _shown(_store(ctx).get(name))
    if json_out:
        emit_json(shown)
        return
    say(f"{'name':>8}: {shown['name']}")
    say(f"{'order':>8}: {shown['order']}")
    say(f"{'enabled':>8}: {'yes' if shown['enabled'] else 'no'}")
    say(f"{'source':>8}: {shown['source']}")
    for item in shown["match"] or ["(every document)"]:
        say(f"{'match':>8}: {item}")
    for action in shown["actions"]:
        say(f"{'action':>8}: {action}")


@app.command("remove")
def remove(ctx: typer.Context, name: str) -> None:
    """Remove a stored routing rule (one of the configuration file's stays: edit the file)."""
    if _store(ctx).remove(name, actor=actor()):
        say(f"stored routing rule {name} removed (the configuration file's rule {name} stays)")
    else:
        say(f"stored routing rule {name} removed")


@dataclass(frozen=True)
class _Holder:
    name: str
    mailbox: str


@app.command("test")
def test(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(help="A message file (.eml), or the ID of a queued document.")
    ],
    mailbox: Annotated[
        str | None,
        typer.Option("--mailbox", help="The recipient (default: the message's first To)."),
    ] = None,
    sender: Annotated[
        str | None,
        typer.Option("--sender", help="The envelope sender (default: the message's From)."),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Show which rules match each document of a message and what they would do, doing
    none of it."""
    from mssgate.documents.isolation import Failed, PipelinePool
    from mssgate.documents.limits import DocumentLimits
    from mssgate.documents.record import Accepted, PipelineResult
    from mssgate.documents.signed import process_signed_message
    from mssgate.queue.ingest import routing_sender
    from mssgate.routing.engine import explain
    from mssgate.routing.router import Router
    from mssgate.server_policy import DocumentPolicy, newest_policy

    st = state(ctx)
    config, engine = st.config(), st.engine()
    published = newest_policy(engine)
    policy = published.policy if published is not None else DocumentPolicy.of(config)
    pool = PipelinePool(1, memory_bytes=policy.documents.worker_memory_bytes)
    pool.start()
    try:
        router = Router.from_config(config, engine, pool=pool)
        path = Path(source)
        outcomes: list[Any]
        if path.is_file():
            raw = path.read_bytes()
            box, who = _envelope(raw, mailbox, sender)
            who = routing_sender(raw, who)  # what ingest routes by (the From: when it differs)
            # As serve runs it: in a worker process, under the message's budgets.
            ran = pool.run(
                process_signed_message,
                raw,
                policy.documents.time_budget_seconds,
                limits=DocumentLimits.from_config(policy.documents),
                allow_test_oids=policy.allow_test_ins,
                require_birthplace=policy.require_birthplace,
            )
            result: PipelineResult = (
                ran.result if not isinstance(ran, Failed) else _failed(raw, ran.reason)
            )
            outcomes = list(result.outcomes)
        else:
            outcomes, box, who = _stored(ctx, source)
            box, who = mailbox or box, sender or who
        rules = router.rules()
        budget = router.budget()  # one per message, as at ingest
        from mssgate.outbound.forward import forward_issues

        unsendable = {
            (name, to): problem
            for name, to, problem in forward_issues(config, st.directory(), rules)
        }
        forward_from = config.routing.forward_from
        report: list[dict[str, Any]] = []
        for index, outcome in enumerate(outcomes, 1):
            # Every key in every entry (null when it does not apply): a stable shape.
            entry: dict[str, Any] = dict.fromkeys(
                ("pipeline", "format", "code", "result"), None
            ) | {"document": index, "rules": [], "tags": [], "copies": [], "forwards": []}
            entry["d2lm"] = []  # the `d2lm` match's values, and why not L2
            if not isinstance(outcome, Accepted):
                entry["origin"] = outcome.origin
                entry["pipeline"] = f"held ({int(outcome.code)}): {outcome.reason}"
                report.append(entry)
                continue
            plan = router.plan(rules, outcome, mailbox=box, sender=who, budget=budget)
            for forward in plan.forwards:
                # As ingest would: a forward that cannot be sent holds the document.
                problem = unsendable.get((forward.rule, forward.to))
                if problem is not None:
                    plan.hold = (
                        f"routing rule {forward.rule!r} cannot forward to {forward.to}: {problem}"
                    )
                    plan.held_by = forward.rule
                    break
            if plan.hold is not None:
                plan.copies.clear()
                plan.forwards.clear()
            doc = outcome.record.document
            entry["origin"] = outcome.record.origin
            entry["format"] = doc.format
            entry["code"] = doc.type_code
            entry["d2lm"] = _d2lm(router, plan, outcome, budget)
            entry["rules"] = [{"name": r.name, "outcome": what} for r, what in explain(rules, plan)]
            if plan.hold is not None:
                entry["result"] = f"held: {plan.hold}"
            else:
                entry["result"] = f"queued for {box}"
                entry["tags"] = list(plan.tags)
                entry["copies"] = list(plan.copies)
                entry["forwards"] = [
                    {"rule": f.rule, "to": f.to, "from": f.sender or forward_from}
                    for f in plan.forwards
                ]
            report.append(entry)
    finally:
        pool.stop()
    if json_out:
        emit_json({"mailbox": box, "sender": who, "documents": report, "rules": len(rules)})
        return
    say(f"message to {box} from {who}: {len(report)} document(s), {len(rules)} rule(s)")
    for entry in report:
        say(f"document {entry['document']} ({entry['origin']})")
        if entry["pipeline"] is not None:
            say(f"  pipeline: {entry['pipeline']} (no rule applies)")
            continue
        say(f"  format {entry['format']}, code {entry['code'] or '-'}")
        if entry["d2lm"]:
            say(f"  d2lm: {', '.join(entry['d2lm'])}")
        for rule in entry["rules"]:
            say(f"  rule {rule['name']}: {rule['outcome']}")
        extra = ""
        if entry["tags"]:
            extra += f", tags {', '.join(entry['tags'])}"
        if entry["copies"]:
            extra += f", copies to {', '.join(entry['copies'])}"
        say(f"  => {entry['result']}{extra}")
        for forward in entry["forwards"]:
            say(
                f"  => would forward to {forward['to']} as a new message signed by"
                f" {forward['from']} (rule {forward['rule']})"
            )


def _envelope(raw: bytes, mailbox: str | None, sender: str | None) -> tuple[str, str]:
    from email.utils import getaddresses

    from mssgate.headers import read_headers
    from mssgate.identifiers import normalize_address

    headers = read_headers(raw)

    def first(name: str) -> str | None:
        found = getaddresses([str(v) for v in headers.get_all(name) or []])
        return found[0][1] if found and found[0][1] else None

    box, who = mailbox or first("To"), sender or first("From")
    if box is None or who is None:
        raise UsageFailed("the message names no To or From: give --mailbox and --sender")
    return normalize_address(box), normalize_address(who)


def _failed(raw: bytes, reason: str) -> Any:
    from mssgate.documents.errors import QuarantineCode
    from mssgate.documents.pipeline import hold_message

    return hold_message(raw, QuarantineCode.OTHER, reason)


def _stored(ctx: typer.Context, given: str) -> tuple[list[Any], str, str]:
    """A queued document as the rules see it: its record and bytes (ciphertext, for a RIS
    that registered a key: the rules that read the CDA then cannot be decided)."""
    from mssgate.db.ids import resolve_id
    from mssgate.db.schema import queue_documents
    from mssgate.documents.record import Accepted
    from mssgate.queue import DocumentQueue

    st = state(ctx)
    try:
        doc_id = resolve_id(st.engine(), queue_documents.c.id, given, what="queued document")
    except NotFound:
        raise NotFound(f"{given!r} is neither a file nor a queued document") from None
    queue = DocumentQueue.from_config(st.config(), st.engine())
    entry = queue.entry(doc_id)
    blob, _ = queue.content(_Holder("cli", entry.mailbox), doc_id)
    # The rules the entry got are not applied again: its tags are the test's own.
    record = entry.record.model_copy(update={"tags": ()})
    content = b"" if blob.encrypted else blob.data
    return [Accepted(record=record, content=content)], entry.mailbox, entry.sender


def _d2lm(router: Any, plan: Any, outcome: Any, budget: Any) -> list[str]:
    """The `d2lm` match's values for a document, and why a form is not sent to L2; the CDA
    probed here when no rule needed it (the operator asks what a form is)."""
    from mssgate.documents.d2lm import decide_l2
    from mssgate.routing.engine import CDA_FORMATS

    facts = plan.facts
    if facts is None and outcome.record.document.format in CDA_FORMATS:
        facts = router.probe(outcome.content, (), budget)
    if facts is None or facts.d2lm is None:
        return []
    return [*facts.d2lm_labels, *decide_l2(facts.d2lm).reasons]


from mssgate.cli.preset_cmds import app as _preset_app  # noqa: E402  (after the commands)

app.add_typer(_preset_app, name="preset")

__all__ = ["Rule", "app"]
