"""`mssgate route preset d2lm`: the built-in rules of the screening second reading (L2)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.errors import UsageFailed, ValidationFailed
from mssgate.routing import preset

app = typer.Typer(help="Built-in rule sets, stored as ordinary rules.", no_args_is_help=True)


@app.command("d2lm")
def d2lm(
    ctx: typer.Context,
    crcdc: Annotated[
        list[str] | None,
        typer.Option(
            "--crcdc",
            help="DEPT=ADDRESS: the CRCDC (regional screening centre) of the women living "
            "in département DEPT (75, 2A, 2B, 971...). One per département; several "
            "départements may share an address.",
        ),
    ] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="Show the stored preset (no change).")
    ] = False,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the preset's rules.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Send CANCER-D2LM interpretation forms eligible for the second reading (ACR 1 or 2,
    both breasts) to the CRCDC of the woman's département; tag the others d2lm-not-l2; hold
    an eligible form of a département with no CRCDC. Running it again replaces the
    preset's rules (all named d2lm-...)."""
    st = state(ctx)
    engine, config = st.engine(), st.config()
    if sum((bool(crcdc), list_, remove)) != 1:
        raise UsageFailed("give --crcdc DEPT=ADDRESS (one or more), or --list, or --remove")
    if list_:
        _list(engine, json_out)
        return
    if remove:
        gone = preset.install(engine, [], actor=actor(), config_rules=config.routing.rule)
        say(f"d2lm preset removed ({gone} rule(s))")
        return
    assert crcdc
    directory = st.directory()

    def hosted(address: str) -> bool:
        found = directory.professionals.find(address)
        return found is not None and found.local

    try:
        rules = preset.d2lm_rules(preset.parse_crcdc(crcdc), hosted=hosted)
    except ValidationFailed as exc:
        raise UsageFailed(str(exc)) from None
    forwards = [r for r in rules if any(a.kind == "forward" for a in r.actions)]
    if forwards:
        # As `route add --forward`: refused now rather than hold every form at run time.
        from mssgate.outbound.forward import forward_problems

        for _, problem in forward_problems(config, directory, forwards):
            raise UsageFailed(f"a CRCDC outside this gateway is forwarded to: {problem}")
    replaced = preset.install(engine, rules, actor=actor(), config_rules=config.routing.rule)
    if json_out:
        emit_json({"rules": [r.name for r in rules], "replaced": replaced,
                   "crcdc": _crcdc(preset.crcdc_of(rules))})  # fmt: skip
        return
    say(f"d2lm preset: {len(rules)} rule(s) stored (replacing {replaced})")
    for dept, (address, how) in preset.crcdc_of(rules).items():
        say(f"  {dept:>3} -> {address} ({how})")
    active = {c.mailbox for c in directory.consumers.list() if c.active}
    for address in sorted({a for a, how in preset.crcdc_of(rules).values() if how == "copy-to"}):
        if address not in active:
            # As `route add --copy-to`: a CRCDC read with a mail client never sees the forms.
            say(f"note: no RIS consumes {address} yet: its copies wait in its queue")


def _crcdc(found: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"departement": d, "address": a, "action": how} for d, (a, how) in found.items()]


def _list(engine: Any, json_out: bool) -> None:
    from mssgate.routing.store import RuleStore

    rules = [r for r in RuleStore(engine).stored() if preset.is_preset(r.name)]
    found = preset.crcdc_of(rules)
    if json_out:
        emit_json({"rules": sorted(r.name for r in rules), "crcdc": _crcdc(found)})
        return
    if not rules:
        say("no d2lm preset (mssgate route preset d2lm --crcdc DEPT=ADDRESS)")
        return
    emit_table(
        "d2lm preset: CRCDC by département",
        ["departement", "crcdc", "action"],
        [(d, a, how) for d, (a, how) in found.items()],
        ids=("departement",),
    )
