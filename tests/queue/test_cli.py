"""`mssgate queue ...` and `mssgate quarantine ...` through the real CLI."""

from __future__ import annotations

from pathlib import Path

from mssgate.config import load_config
from mssgate.db import open_engine, upgrade
from mssgate.queue import DocumentQueue
from tests.documents.factory import CdaSpec, make_cda
from tests.queue.helpers import RIS_A, SENDER, add_consumer, add_mailboxes, cda, deliver, mail


def _queue(datadir: Path) -> DocumentQueue:
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)
    return DocumentQueue.from_config(config, engine)


def test_queue_list_show_requeue(cli, datadir: Path) -> None:  # type: ignore[no-untyped-def]
    queue = _queue(datadir)
    add_mailboxes(queue.engine, RIS_A)
    consumer, _ = add_consumer(queue.engine, "ris-a", RIS_A)
    first, second = deliver(queue, mail([cda(1), cda(2)]))
    [lease] = queue.lease(consumer)
    for _ in range(queue.settings.max_attempts):
        queue.nack(consumer, first, lease.lease_id, code=906, reason="down")
        leases = queue.lease(consumer)
        lease = leases[0] if leases else lease
    listed = cli.ok("queue", "list", "--json").json()
    assert [(r["id"], r["state"]) for r in listed] == [(first, "dead"), (second, "leased")]
    assert [r["id"] for r in cli.ok("queue", "list", "--state", "dead", "--json").json()] == [first]
    table = cli.ok("queue", "list").out
    assert first in table and "dead" in table and SENDER in table
    shown = cli.ok("queue", "show", first).out
    assert "last code: 906" in shown and "down" in shown
    assert cli.ok("queue", "show", first, "--json").json()["record"]["ins"]["value"]
    # A resend of the first document: its own entry, which says whose copy it is.
    [resent] = deliver(queue, mail([cda(1)], n=2))
    assert "duplicate of: " + first in cli.ok("queue", "show", resent).out
    listed = {r["id"]: r for r in cli.ok("queue", "list", "--json").json()}
    assert listed[resent]["duplicate_of"] == first and listed[first]["duplicate_of"] is None
    assert listed[resent]["record"]["duplicate_of"] == first
    cli.ok("queue", "requeue", first)
    assert queue.entry(first).state.value == "ready"
    assert cli("queue", "requeue", first).code == 1  # ready already
    missing = cli("queue", "show", "nope00")
    assert missing.code == 1 and "no queued document" in missing.err
    assert cli("queue", "show", "nope").code == 2  # shorter than any prefix taken
    assert f"id: {first}" in cli.ok("queue", "show", first[:8]).out
    assert cli("queue", "list", "--state", "bogus").code == 2
    queue.engine.dispose()


def test_quarantine_list_show_release_delete(cli, datadir: Path) -> None:  # type: ignore[no-untyped-def]
    queue = _queue(datadir)
    add_mailboxes(queue.engine, RIS_A)
    raw = mail([make_cda(CdaSpec(include_ins=False))])
    [held] = deliver(queue, raw)
    rows = cli.ok("quarantine", "list", "--json").json()
    assert [(r["id"], r["code"], r["mailbox"], r["sender"]) for r in rows] == [
        (held, 903, RIS_A, SENDER)
    ]
    assert {"id", "received_at", "mailbox", "sender", "code", "reason"} <= set(rows[0])
    assert "903" in cli.ok("quarantine", "list").out
    assert "origin" in cli.ok("quarantine", "show", held).out
    # The cause is still there: release refuses and the document stays held.
    refused = cli("quarantine", "release", held)
    assert refused.code == 1 and "still quarantined (903)" in refused.err
    assert cli.ok("quarantine", "show", held, "--json").json()["state"] == "held"
    cli.ok("quarantine", "delete", held)
    assert cli.ok("quarantine", "list", "--json").json() == []
    assert cli("quarantine", "delete", held).code == 1
    queue.engine.dispose()


def test_release_after_the_operator_allows_test_ins(  # type: ignore[no-untyped-def]
    cli, datadir: Path, monkeypatch
) -> None:
    queue = _queue(datadir)
    add_mailboxes(queue.engine, RIS_A)
    # Received while test INS were refused: held.
    [held] = deliver(queue, mail([cda(4)]), allow_test_oids=False)
    assert queue.quarantine.get(held).state.value == "held"
    monkeypatch.setenv("MSSGATE_POLICY__ALLOW_TEST_INS", "true")
    out = cli.ok("quarantine", "release", held).out
    assert "queued" in out
    [entry] = queue.entries()
    assert entry.id in out and entry.state.value == "ready"
    assert cli.ok("quarantine", "show", held, "--json").json()["state"] == "released"
    queue.engine.dispose()
