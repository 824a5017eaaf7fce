"""`mssgate consumer token` (token rotation) beside a running API over real HTTPS: the new
token acts as the same consumer id, so what the old token made (outbound statuses, ZAM items,
their leases, the MLLP certificate binding) is the new token's; the old token works until its
grace ends, on the server's clock read at every request, then gets 401."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from mssgate.cli.durations import parse_duration
from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.directory.consumers import INVALID_TOKEN, Consumers, token_digest
from mssgate.directory.models import Consumer
from mssgate.errors import UsageFailed
from mssgate.queue import DocumentQueue, QueueSettings
from tests.api.conftest import Running
from tests.api.test_outbound_ack_leases import (  # noqa: F401 (the fixture, used by name)
    Sending,
    _deliver,
    sending,
)
from tests.conftest import Cli
from tests.queue.helpers import RIS_A, RIS_B, add_consumer


class Clock:
    """The server's clock, set by the test: a grace ends when the test says, not when a slow
    machine happens to get there."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def served(gateway: tuple[Config, Engine]) -> Iterator[tuple[Running, Clock, ssl.SSLContext]]:
    config, engine = gateway
    queue = DocumentQueue(engine, settings=QueueSettings(), data_dir=config.server.data_dir)
    running = Running(config, engine, queue)
    clock = Clock()
    # The API's own Consumers, with a clock the test sets; everything else is as served.
    running.server.app.state.consumers = Consumers(engine, actor="api", clock=clock)
    ca = ssl.create_default_context(cafile=str(config.server.data_dir / "certs" / "ca.crt.pem"))
    try:
        yield running, clock, ca
    finally:
        running.stop()


def _client(base_url: str, ca: ssl.SSLContext, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, verify=ca, timeout=30,
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip


def _leases(client: httpx.Client) -> int:
    return client.post("/v1/leases", json={}).status_code


def test_old_token_works_during_its_grace_then_is_refused(
    gateway: tuple[Config, Engine], served: tuple[Running, Clock, ssl.SSLContext], cli: Cli
) -> None:
    _, engine = gateway
    running, clock, ca = served
    base = f"https://127.0.0.1:{running.server.port}"
    consumer, first = add_consumer(engine, "ris-a", RIS_A)
    rotated = cli.ok("consumer", "token", "ris-a", "--grace", "2h", "--json").json()
    assert set(rotated) == {"name", "id", "token", "old_token_until"}
    assert rotated["name"] == "ris-a" and rotated["id"] == consumer.id
    second = rotated["token"]
    assert second.startswith("mssg_") and second != first
    until = datetime.fromisoformat(rotated["old_token_until"])
    assert timedelta(hours=2) - (until - datetime.now(UTC)) < timedelta(minutes=5)

    with _client(base, ca, first) as old, _client(base, ca, second) as new:
        clock.at = until - timedelta(seconds=1)
        assert _leases(old) == 200 and _leases(new) == 200
        # The same open connection, the next request: the grace is over.
        clock.at = until
        refused = old.post("/v1/leases", json={})
        assert refused.status_code == 401 and refused.json()["detail"] == INVALID_TOKEN
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="mssgate"'
        assert _leases(new) == 200

    # Another rotation while `second` is in its grace: `first`, its predecessor, stays
    # refused even on a clock inside its old grace; a consumer has two tokens at most.
    clock.at = datetime.now(UTC)
    third = cli.ok("consumer", "token", "ris-a", "--grace", "30m", "--json").json()["token"]
    fourth_answer = cli.ok("consumer", "token", "ris-a", "--grace", "1h", "--json").json()
    fourth = fourth_answer["token"]
    with _client(base, ca, first) as a, _client(base, ca, second) as b:
        assert _leases(a) == 401 and _leases(b) == 401
    with _client(base, ca, third) as c, _client(base, ca, fourth) as d:
        assert _leases(c) == 200 and _leases(d) == 200
    # Without --grace the old token is refused at once.
    plain = cli.ok("consumer", "token", "ris-a")
    lines = plain.out.splitlines()
    assert lines[0] == f"consumer ris-a (id {consumer.id}) has a new token"
    fifth = lines[1].removeprefix("token (shown once, keep it secret): ")
    assert fifth.startswith("mssg_") and lines[2] == "the old token is refused from now on"
    with _client(base, ca, fourth) as d, _client(base, ca, fifth) as e:
        assert _leases(d) == 401 and _leases(e) == 200
    # `consumer revoke` ends a token in its grace too, at once.
    sixth = cli.ok("consumer", "token", "ris-a", "--grace", "1h", "--json").json()["token"]
    with _client(base, ca, fifth) as e, _client(base, ca, sixth) as f:
        assert _leases(e) == 200 and _leases(f) == 200
        cli.ok("consumer", "revoke", "ris-a")
        assert _leases(e) == 401 and _leases(f) == 401

    [listed] = cli.ok("consumer", "list", "--json").json()
    assert (listed["id"], listed["name"]) == (consumer.id, "ris-a")
    assert listed["old_token_until"] is not None and listed["revoked_at"] is not None
    trail = cli.ok("audit", "--action", "consumer.token", "--json").json()
    assert [e["actor"].startswith("cli:") for e in trail] == [True] * 5
    assert [e["subject"] for e in trail] == ["ris-a"] * 5
    assert [e["detail"]["id"] for e in trail] == [consumer.id] * 5
    assert [e["detail"]["grace_seconds"] for e in trail] == [7200, 1800, 3600, 0, 3600]
    ended = [e["detail"]["ended_earlier_grace"] for e in trail]
    assert ended == [False, True, True, True, False]
    assert trail[0]["detail"]["old_token_until"] == rotated["old_token_until"]
    everything = cli.ok("audit", "--json").out
    for token in (first, second, third, fourth, fifth, sixth):
        assert token not in everything and token_digest(token) not in everything


def test_a_new_token_keeps_the_consumers_outbound_history(
    sending: Sending,  # noqa: F811
) -> None:
    s = sending
    outbound_id = s.submit("ROT-1", RIS_B)
    _deliver(s.spool, RIS_B)
    [lease] = s.lease_acks()  # leased with the old token
    item = lease["ack"]
    status = s.api.get(f"/v1/outbound/{outbound_id}").json()
    consumers = Directory(s.engine, actor="cli:test").consumers
    consumers.bind_certificate("ris-a", "ab" * 32)
    before = {c.name: c.id for c in consumers.list()}

    rotated = consumers.rotate_token("ris-a")
    assert rotated.consumer.id == before["ris-a"] and rotated.old_token_until is None
    assert s.api.get(f"/v1/outbound/{outbound_id}").status_code == 401
    ca = ssl.create_default_context(cafile=str(s.config.server.data_dir / "certs" / "ca.crt.pem"))
    with _client(str(s.api.base_url), ca, rotated.token) as new:
        assert new.get(f"/v1/outbound/{outbound_id}").json() == status
        assert new.get(f"/v1/outbound/{outbound_id}/acks").json() == [item["content"]]
        # The old token's lease is the consumer's: the new token acknowledges it.
        acked = new.post(f"/v1/acks/{item['id']}/ack", json={"lease_id": lease["lease_id"]})
        assert acked.status_code == 200 and acked.json() == {"id": item["id"], "state": "done"}
        assert new.get(f"/v1/acks/{item['id']}").json()["state"] == "done"
        # The same MSH-10 is still this consumer's: its first answer again, nothing sent.
        as_new = Sending(s.config, s.engine, s.spool, s.outbound, new, s.other)
        assert as_new.submit("ROT-1", RIS_B) == outbound_id
    assert s.other.get(f"/v1/outbound/{outbound_id}").status_code == 404
    assert {c.name: c.id for c in consumers.list()} == before
    bound = consumers.by_certificate("ab" * 32)
    assert isinstance(bound, Consumer) and bound.id == before["ris-a"]


def test_cli_refusals_are_one_line(cli: Cli, datadir: Path, gateway: tuple[Config, Engine]) -> None:
    _, engine = gateway
    add_consumer(engine, "ris-a", RIS_A)
    unknown = cli("consumer", "token", "nobody")
    assert unknown.code == 1 and unknown.out == ""
    assert unknown.err.strip() == "mssgate: error: no active consumer 'nobody'"
    for grace in ("8d", "169h", "-1", "1x", "1h30m", "", "7 d"):
        bad = cli("consumer", "token", "ris-a", "--grace", grace)
        assert bad.code == 2 and bad.out == "", grace
        assert len(bad.err.strip().splitlines()) == 1 and "--grace" in bad.err, grace
    assert cli.ok("consumer", "token", "ris-a", "--grace", "7d", "--json").json()["token"]
    cli.ok("consumer", "revoke", "ris-a")
    revoked = cli("consumer", "token", "ris-a")
    assert revoked.code == 1 and revoked.out == ""
    assert revoked.err.strip() == "mssgate: error: no active consumer 'ris-a'"
    assert json.loads(cli.ok("consumer", "list", "--json").out)[0]["revoked_at"] is not None


@given(st.text(max_size=40))
def test_parse_duration_answers_a_duration_or_a_usage_error(text: str) -> None:
    try:
        parsed = parse_duration(text, "--grace")
    except UsageFailed as exc:
        assert "--grace" in str(exc) and "\n" not in str(exc).strip()
    else:
        assert parsed >= timedelta(0)


@given(st.integers(0, 10**9 - 1), st.sampled_from(["", "s", "m", "h", "d", "H", "D"]))
def test_parse_duration_reads_each_unit(number: int, unit: str) -> None:
    seconds = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit.lower()]
    if number * seconds > 999_999_999 * 86400:
        return
    assert parse_duration(f"{number}{unit}", "--grace") == timedelta(seconds=number * seconds)
