"""Two `route add` of one name at once on PostgreSQL (two nodes, two operators): the second
is told the rule exists (exit 1, one line), not an internal error (issue 16 review)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from mssgate.db.schema import routing_rules
from mssgate.errors import Conflict
from mssgate.routing.model import Rule, parse_action
from mssgate.routing.store import RuleStore


@pytest.mark.postgres
def test_a_rule_added_twice_at_once_is_a_conflict(pg_engine: Engine) -> None:
    rule = Rule(name="archive", actions=(parse_action("tag x"),))
    now = datetime.now(UTC)
    failure: list[BaseException] = []
    with pg_engine.connect() as first:
        # The other operator's add, inserted and not yet committed: ours reads no rule of
        # the name and waits on its key.
        first.execute(routing_rules.insert().values(
            name="archive", position=1, enabled=True, rule=rule.model_dump_json(),
            created_at=now, updated_at=now,
        ))  # fmt: skip

        def add() -> None:
            try:
                RuleStore(pg_engine).add(rule, actor="test")
            except BaseException as exc:
                failure.append(exc)

        adding = threading.Thread(target=add)
        adding.start()
        adding.join(1.0)
        assert adding.is_alive()  # waiting on the key
        first.commit()
    adding.join(10)
    assert len(failure) == 1 and isinstance(failure[0], Conflict), failure
    assert "exists" in str(failure[0])
