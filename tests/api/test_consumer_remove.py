"""`mssgate consumer remove` beside a running API (issue 18 item 9): the removed token is
refused at the next request, even on an open connection, and a new consumer of the same
name gets its own token, told apart from the old one in the audit."""

from __future__ import annotations

import json
from pathlib import Path

from tests.api.conftest import Api
from tests.queue.helpers import RIS_A
from tests.test_cli_ids_spool_audit import run


def test_removed_token_refused_at_once_and_name_reused(api: Api, datadir: Path) -> None:
    with api.client(api.token_a) as client:
        assert client.post("/v1/leases", json={}).status_code == 200
        removed = run(datadir, "consumer", "remove", "ris-a")
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.startswith("removed consumer ris-a (id ")
        refused = client.post("/v1/leases", json={})
        assert refused.status_code == 401
        assert refused.json()["detail"] == "a valid consumer token is required"
    added = run(datadir, "consumer", "add", "ris-a", "--mailbox", RIS_A, "--json")
    assert added.returncode == 0, added.stderr
    new_token = json.loads(added.stdout)["token"]
    with api.client(new_token) as client:
        assert client.post("/v1/leases", json={}).status_code == 200
    with api.client(api.token_a) as client:
        assert client.post("/v1/leases", json={}).status_code == 401
    trail = json.loads(
        run(datadir, "audit", "--subject", "ris-a", "--action", "consumer.*", "--json").stdout
    )
    actions = [(e["action"], e["detail"]["id"]) for e in trail]
    assert actions[-2][0] == "consumer.remove" and actions[-1][0] == "consumer.add"
    assert actions[-2][1] != actions[-1][1]
