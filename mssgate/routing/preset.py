"""The built-in rule set of the breast-cancer screening second reading (`mssgate route
preset d2lm --crcdc DEPT=ADDRESS ...`), written into the stored rules as ordinary rules
named `d2lm-...`, so that `route list`, `route test` and the audit show them like any other.

In the order they run (after the operator's rules of the default order 100):
- `d2lm-from-crcdc`: a CANCER-D2LM form sent BY a configured CRCDC is an L2 result coming
  back, not an L1 submission: tagged `d2lm-l2-result`, and no rule after it runs (it is
  never sent to L2 again). mssgate.screening closes its case.
- `d2lm-l2-DEPT`, one per département: an interpretation form eligible for L2 (decide_l2:
  the final L1-side classification is ACR 1 or 2 for both breasts) of a woman living in
  DEPT goes to its CRCDC: `copy-to` when the CRCDC's mailbox is hosted here, else `forward`
  (a new signed MSSanté message, [routing] forward_from); the addressed RIS keeps its own
  entry. Tagged `d2lm-l2`.
- `d2lm-no-crcdc`: an eligible form of a département without a CRCDC is held, the reason
  naming the département.
- `d2lm-not-l2`: any other form (ACR 0/3/4/5, a deferred work-up form, anything unreadable)
  is tagged `d2lm-not-l2` and goes nowhere else.

Running the preset again replaces all the stored `d2lm-` rules in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from pydantic import ValidationError
from sqlalchemy import Engine, delete
from sqlalchemy.exc import IntegrityError

from mssgate import audit
from mssgate.db.schema import routing_rules
from mssgate.db.tx import write
from mssgate.errors import Conflict, ValidationFailed, describe_validation
from mssgate.identifiers import normalize_address
from mssgate.routing.model import Match, Rule, parse_action

PREFIX: Final = "d2lm-"
RESULT_RULE: Final = "d2lm-from-crcdc"
# A rule sending eligible forms to one département's CRCDC is named this and the département.
L2_RULE_PREFIX: Final = "d2lm-l2-"
NO_CRCDC_RULE: Final = "d2lm-no-crcdc"
NOT_L2_RULE: Final = "d2lm-not-l2"
ORDER: Final = 900
TAG_RESULT: Final = "d2lm-l2-result"
TAG_SENT: Final = "d2lm-l2"
TAG_NOT_L2: Final = "d2lm-not-l2"
NO_CRCDC_REASON: Final = (
    "eligible for the second reading (L2), but no CRCDC is configured for département"
    " {departement} (mssgate route preset d2lm --crcdc DEPT=ADDRESS)"
)
_MAX_CRCDC: Final = 50


def parse_crcdc(items: Sequence[str]) -> dict[str, str]:
    """`DEPT=ADDRESS` items (75, 2A, 2B, 971...), into {département: address};
    ValidationFailed with one readable line otherwise."""
    found: dict[str, str] = {}
    for item in items:
        dept, sep, address = item.partition("=")
        dept = dept.strip().upper()
        if not sep or not dept or not address.strip():
            raise ValidationFailed(f"--crcdc {item[:60]!r}: expected DEPT=ADDRESS (75=crcdc@...)")
        try:
            Match(departement=(dept,))
        except ValidationError:
            raise ValidationFailed(
                f"--crcdc {item[:60]!r}: {dept[:10]!r} is no département (75, 2A, 2B, 971...)"
            ) from None
        target = normalize_address(address.strip())
        if found.get(dept, target) != target:
            raise ValidationFailed(f"--crcdc: département {dept} given two CRCDCs")
        found[dept] = target
    if not found:
        raise ValidationFailed("the d2lm preset needs at least one --crcdc DEPT=ADDRESS")
    if len(set(found.values())) > _MAX_CRCDC:
        raise ValidationFailed(f"more than {_MAX_CRCDC} CRCDC addresses")
    return found


def d2lm_rules(crcdc: Mapping[str, str], *, hosted: Callable[[str], bool]) -> list[Rule]:
    """The preset's rules for {département: CRCDC address}; `hosted(address)`: whether the
    address is a mailbox of this gateway (a `copy-to`) rather than elsewhere (a `forward`)."""
    addresses = tuple(sorted(set(crcdc.values())))

    def rule(name: str, order: int, match: dict[str, object], actions: list[str]) -> Rule:
        try:
            return Rule.model_validate(
                {
                    "name": name,
                    "order": order,
                    "match": match,
                    "actions": [parse_action(a) for a in actions],
                }
            )
        except ValidationError as exc:
            raise ValidationFailed(f"{name}: {describe_validation(exc)}") from None
        except ValueError as exc:
            raise ValidationFailed(f"{name}: {exc}") from None

    rules = [
        rule(RESULT_RULE, ORDER, {"d2lm": ("fin", "fidd"), "sender": addresses},
             [f"tag {TAG_RESULT}", "stop"]),
    ]  # fmt: skip
    for dept in sorted(crcdc, key=_dept_key):
        address = crcdc[dept]
        # A copy to a mailbox not hosted here would wait in a queue nobody leases.
        send = f"copy-to {address}" if hosted(address) else f"forward {address}"
        rules.append(
            rule(f"{L2_RULE_PREFIX}{dept}", ORDER + 10,
                 {"d2lm": ("l2-eligible",), "departement": (dept,)},
                 [send, f"tag {TAG_SENT}", "stop"])
        )  # fmt: skip
    rules.append(
        rule(NO_CRCDC_RULE, ORDER + 20, {"d2lm": ("l2-eligible",)}, [f"hold {NO_CRCDC_REASON}"])
    )
    rules.append(rule(NOT_L2_RULE, ORDER + 30, {"d2lm": ("not-l2",)}, [f"tag {TAG_NOT_L2}"]))
    return rules


def _dept_key(dept: str) -> tuple[int, str]:
    # 2A and 2B between 19 and 21, as the French number them; overseas after 95.
    return (20, dept) if dept in ("2A", "2B") else (int(dept), dept)


def is_preset(name: str) -> bool:
    return name.startswith(PREFIX)


def crcdc_of(rules: Sequence[Rule]) -> dict[str, tuple[str, str]]:
    """{département: (address, how)} of the stored preset: `how` is copy-to or forward."""
    found: dict[str, tuple[str, str]] = {}
    for rule in rules:
        if not rule.name.startswith(L2_RULE_PREFIX):
            continue
        for action in rule.actions:
            if action.kind in ("copy-to", "forward") and action.value is not None:
                address = action.value.partition(" from ")[0]
                for dept in rule.match.departement:
                    found[dept] = (address, action.kind)
    return dict(sorted(found.items(), key=lambda item: _dept_key(item[0])))


def install(
    engine: Engine, rules: Sequence[Rule], *, actor: str, config_rules: Sequence[Rule] = ()
) -> int:
    """Replaces every stored `d2lm-` rule with `rules` in one transaction (no ingest sees
    half a preset), one audit entry; returns how many stored preset rules were replaced.
    An empty `rules` removes the preset."""
    clash = [r.name for r in config_rules if is_preset(r.name)]
    if clash:
        raise Conflict(
            f"routing rule {clash[0]!r} is in the configuration file: the d2lm preset owns"
            " the names d2lm-..., rename it there"
        )
    now = datetime.now(UTC)
    try:
        return _replace(engine, rules, actor=actor, now=now)
    except IntegrityError:
        # Another operator or node stored the preset meanwhile (PostgreSQL: our DELETE did
        # not see its new rows, our INSERT then waited on their keys).
        raise Conflict("the d2lm preset was changed meanwhile: run the command again") from None


def _replace(engine: Engine, rules: Sequence[Rule], *, actor: str, now: datetime) -> int:
    with write(engine) as conn:
        gone = conn.execute(
            delete(routing_rules).where(routing_rules.c.name.like(f"{PREFIX}%"))
        ).rowcount
        for rule in rules:
            conn.execute(
                routing_rules.insert().values(
                    name=rule.name,
                    position=rule.order,
                    enabled=rule.enabled,
                    rule=rule.model_dump_json(),
                    created_at=now,
                    updated_at=now,
                )
            )
        audit.append(
            conn,
            actor=actor,
            action="routing.preset" if rules else "routing.preset_remove",
            subject="d2lm",
            detail={"rules": [r.name for r in rules], "replaced": gone,
                    "crcdc": {d: a for d, (a, _) in crcdc_of(rules).items()}},
        )  # fmt: skip
    return int(gone or 0)
