"""Rules stored in the database (`mssgate route add|remove`), and all the rules a gateway
applies: the configuration's `[[routing.rule]]` and the stored ones.

Read at each ingest (one small SELECT): a rule added on any node applies to the next
message every node ingests, with no restart and no cache to go stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError

from mssgate import audit
from mssgate.db.schema import routing_rules
from mssgate.db.tx import write
from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.routing.model import Rule

Source = Literal["config", "database", "database (shadowed)"]


@dataclass(frozen=True)
class StoredRule:
    rule: Rule
    source: Source


class RuleStore:
    def __init__(self, engine: Engine, config_rules: Sequence[Rule] = ()) -> None:
        self._engine = engine
        self._config = tuple(config_rules)

    @property
    def engine(self) -> Engine:
        return self._engine

    def stored(self) -> list[Rule]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(routing_rules.c.rule)).all()
        return [Rule.model_validate_json(r.rule) for r in rows]

    def all(self) -> list[StoredRule]:
        """Every rule, in the order they run; a stored rule named like one of the
        configuration's is shadowed by it (`add` refuses that name, but a rule may be added
        to the file after)."""
        from mssgate.routing.engine import ordered

        names = {r.name for r in self._config}
        found = [StoredRule(r, "config") for r in self._config]
        found += [StoredRule(r, "database") for r in self.stored() if r.name not in names]
        by_name = {s.rule.name: s for s in found}
        return [by_name[r.name] for r in ordered([s.rule for s in found])]

    def listing(self) -> list[StoredRule]:
        """`all()`, then the stored rules a file rule of the same name shadows: they do not
        run, but an operator must see them (they run again once the file's rule is gone)."""
        names = {r.name for r in self._config}
        shadowed = [StoredRule(r, "database (shadowed)") for r in self.stored() if r.name in names]
        return self.all() + shadowed

    def rules(self) -> list[Rule]:
        return [s.rule for s in self.all()]

    def get(self, name: str) -> StoredRule:
        for found in self.all():
            if found.rule.name == name:
                return found
        raise NotFound(f"no routing rule {name!r}")

    def add(self, rule: Rule, *, actor: str, replace: bool = False) -> None:
        if any(r.name == rule.name for r in self._config):
            raise Conflict(
                f"routing rule {rule.name!r} is in the configuration file: change it there"
            )
        now = datetime.now(UTC)
        with write(self._engine) as conn:
            existing = conn.execute(
                select(routing_rules.c.created_at).where(routing_rules.c.name == rule.name)
            ).first()
            if existing is not None and not replace:
                raise Conflict(f"routing rule {rule.name!r} exists (--replace to change it)")
            values = {
                "position": rule.order,
                "enabled": rule.enabled,
                "rule": rule.model_dump_json(),
                "updated_at": now,
            }
            if existing is None:
                try:
                    conn.execute(
                        routing_rules.insert().values(name=rule.name, created_at=now, **values)
                    )
                except IntegrityError:
                    # Added on another node since the read above (PostgreSQL: we waited on
                    # its key): the same answer as had it been there, not an internal error.
                    raise Conflict(
                        f"routing rule {rule.name!r} exists"
                        + (
                            " (added meanwhile: run again)"
                            if replace
                            else " (--replace to change it)"
                        )
                    ) from None
            else:
                conn.execute(
                    routing_rules.update().where(routing_rules.c.name == rule.name).values(values)
                )
            audit.append(
                conn,
                actor=actor,
                action="routing.rule_replace" if existing is not None else "routing.rule_add",
                subject=rule.name,
                detail=rule.model_dump(mode="json", exclude_defaults=True),
            )

    def remove(self, name: str, *, actor: str) -> bool:
        """Removes the stored rule `name`, shadowed by a file rule or not; True when a file
        rule of that name remains (and runs)."""
        in_file = any(r.name == name for r in self._config)
        with write(self._engine) as conn:
            gone = conn.execute(delete(routing_rules).where(routing_rules.c.name == name)).rowcount
            if gone != 1:
                if in_file:
                    raise Conflict(
                        f"routing rule {name!r} is in the configuration file: remove it there"
                    )
                raise NotFound(f"no routing rule {name!r}")
            audit.append(conn, actor=actor, action="routing.rule_remove", subject=name)
        return in_file


def validated(data: object) -> Rule:
    """A rule from the CLI's pieces, or ValidationFailed with one readable line."""
    from pydantic import ValidationError

    from mssgate.errors import describe_validation

    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(describe_validation(exc)) from None


def unknown_copy_targets(engine: Engine, rules: Sequence[Rule]) -> list[tuple[str, str]]:
    """(rule, mailbox) for each `copy-to` naming no mailbox of this gateway: its copies
    would wait in a queue no consumer can be given."""
    from mssgate.directory import Directory

    professionals = Directory(engine, actor="routing").professionals
    return [
        (rule.name, action.value)
        for rule in rules
        for action in rule.actions
        if action.kind == "copy-to"
        and action.value is not None
        and ((found := professionals.find(action.value)) is None or not found.local)
    ]
