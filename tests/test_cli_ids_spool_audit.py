"""Issue 18 items 6 and 9, run as an operator runs them: the `mssgate` program in a
subprocess, 80 columns wide, real output read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import update

from mssgate.config import load_config
from mssgate.db import open_engine, upgrade
from mssgate.db.schema import spool_recipients
from mssgate.queue import DocumentQueue
from mssgate.spool import Spool
from tests.conftest import DOMAIN, Cli
from tests.documents.factory import CdaSpec, make_cda
from tests.queue.helpers import RIS_A, add_mailboxes, deliver, mail

MSSGATE = Path(sys.executable).parent / "mssgate"


def run(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env.update(COLUMNS="80", MSSGATE_CONFIG=str(data / "mssgate.toml"))
    return subprocess.run(
        [str(MSSGATE), *args], capture_output=True, text=True, env=env, timeout=120
    )


def held_ids(datadir: Path, count: int) -> list[str]:
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)
    queue = DocumentQueue.from_config(config, engine)
    add_mailboxes(engine, RIS_A)
    for n in range(count):
        deliver(queue, mail([make_cda(CdaSpec(include_ins=False, title=f"report {n}"))]))
    ids = [e.id for e in queue.quarantine.entries()]
    engine.dispose()
    return ids


def test_quarantine_ids_whole_at_80_columns_and_taken_by_prefix(datadir: Path) -> None:
    [held] = held_ids(datadir, 1)
    listed = run(datadir, "quarantine", "list")
    assert listed.returncode == 0, listed.stderr
    assert held in listed.stdout  # whole, on one line, at 80 columns
    assert "…" not in listed.stdout  # and no other cell cut either
    reason = json.loads(run(datadir, "quarantine", "list", "--json").stdout)[0]["reason"]
    assert f"reason: {reason}" in listed.stdout  # too wide for 80: one line per column
    shown = run(datadir, "quarantine", "show", held[:9])
    assert shown.returncode == 0, shown.stderr
    assert f"id: {held}" in shown.stdout
    upper = run(datadir, "quarantine", "show", held[:9].upper())
    assert f"id: {held}" in upper.stdout
    short = run(datadir, "quarantine", "show", held[:5])
    assert short.returncode == 2
    assert short.stderr == (
        f"mssgate: error: quarantined document ID {held[:5]!r} is too short:"
        " give at least 6 characters\n"
    )
    missing = run(datadir, "quarantine", "show", "zz" + held[:6])
    assert missing.returncode == 1
    assert "no quarantined document" in missing.stderr
    # LIKE's wildcards are literal in a prefix.
    wild = run(datadir, "quarantine", "show", "______")
    assert wild.returncode == 1 and "no quarantined document" in wild.stderr


def test_an_ambiguous_prefix_says_how_many_match(datadir: Path) -> None:
    ids = held_ids(datadir, 1)
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    from mssgate.db.schema import quarantine
    from mssgate.db.tx import write

    with write(engine) as conn:  # two more ids sharing a 7-character start
        row = conn.execute(quarantine.select()).mappings().one()
        for n, suffix in enumerate(("a", "b")):
            conn.execute(
                quarantine.insert().values(
                    {**row, "id": "abcdef0" + suffix * 25, "dedup_key": f"{n}" * 64}
                )
            )
    engine.dispose()
    assert len(ids) == 1
    result = run(datadir, "quarantine", "delete", "abcdef0")
    assert result.returncode == 1
    assert result.stderr == (
        "mssgate: error: quarantined document ID prefix 'abcdef0' matches 2 entries:"
        " give more characters\n"
    )
    assert run(datadir, "quarantine", "delete", "abcdef0a").returncode == 0


def spool_one(
    datadir: Path, recipient: str, route: str = "local", sender: str = f"dr.x@{DOMAIN}"
) -> str:
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    spool = Spool(engine, datadir / "spool")
    from mssgate.spool import new_queue_id

    queue_id = new_queue_id()
    spool.accept(
        queue_id=queue_id,
        content=b"From: a@clinique-b.test\r\nSubject: x\r\n\r\nx\r\n",
        listener="mta",
        sender=sender,
        identity=None,
        peer="127.0.0.1",
        recipients=[(recipient, route)],  # type: ignore[list-item]
    )
    engine.dispose()
    return queue_id


def fail_once(datadir: Path, queue_id: str, error: str, *, due: bool = False) -> None:
    from datetime import timedelta

    from mssgate.db.tx import write
    from mssgate.directory.timeutil import now

    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    with write(engine) as conn:
        conn.execute(
            update(spool_recipients)
            .where(spool_recipients.c.spool_id == queue_id)
            .values(
                last_error=error,
                attempts=1,
                next_attempt_at=now() + timedelta(seconds=-5 if due else 600),
            )
        )
    engine.dispose()


def test_spool_list_delete_and_bounce(datadir: Path, cli: Cli) -> None:
    cli.ok("directory", "add", f"dr.x@{DOMAIN}", "--name", "X", "--kind", "organisation")
    first = spool_one(datadir, "dr.y@clinique-b.test", "relay")
    second = spool_one(datadir, "dr.z@clinique-b.test", "relay")
    fail_once(datadir, first, "451 4.3.0 peer busy")
    fail_once(datadir, second, "421 4.7.0 try later", due=True)

    listed = run(datadir, "spool", "list")
    assert first in listed.stdout and second in listed.stdout
    assert "peer busy" in listed.stdout
    entries = {e["id"]: e for e in json.loads(run(datadir, "spool", "list", "--json").stdout)}
    assert entries[first]["last_error"] == "451 4.3.0 peer busy"

    # A delivery due now may be under way: refused, and nothing changed. Prefixes of 16: the
    # first 11 characters are the arrival's milliseconds, and the two may share them.
    refused = run(datadir, "spool", "delete", second[:16])
    assert refused.returncode == 1
    assert "due now" in refused.stderr and refused.stderr.count("\n") == 1
    assert (datadir / "spool" / "msg" / f"{second}.eml").exists()

    deleted = run(datadir, "spool", "delete", first[:16].lower())
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.startswith(f"deleted {first}: 1 recipient(s) not delivered")
    assert not (datadir / "spool" / "msg" / f"{first}.eml").exists()
    after = run(datadir, "spool", "list").stdout
    assert first not in after and second in after

    bounced = run(datadir, "spool", "bounce", second, "--force")
    assert bounced.returncode == 0, bounced.stderr
    assert f"bounced {second} to dr.x@{DOMAIN}" in bounced.stdout
    dsn_id = bounced.stdout.split("(DSN ", 1)[1].split(")", 1)[0]
    dsn = (datadir / "spool" / "msg" / f"{dsn_id}.eml").read_bytes()
    assert b"multipart/report" in dsn and b"dr.z@clinique-b.test" in dsn
    spooled = json.loads(run(datadir, "spool", "list", "--json").stdout)
    assert [(e["id"], e["sender"]) for e in spooled] == [(dsn_id, "")]

    audit = json.loads(run(datadir, "audit", "--action", "spool.*", "--json").stdout)
    assert [(e["action"], e["subject"]) for e in audit] == [
        ("spool.delete", first),
        ("spool.bounce", second),
    ]
    assert audit[1]["detail"]["dsn"] == dsn_id
    assert run(datadir, "audit", "verify").returncode == 0


def test_consumer_remove_and_name_reuse_audited_apart(datadir: Path, cli: Cli) -> None:
    cli.ok("directory", "add", RIS_A, "--name", "RIS", "--kind", "application")
    assert run(datadir, "consumer", "add", "ris", "--mailbox", RIS_A).returncode == 0
    again = run(datadir, "consumer", "add", "ris", "--mailbox", RIS_A)
    assert again.returncode == 1 and "consumer remove ris" in again.stderr
    assert run(datadir, "consumer", "revoke", "ris").returncode == 0
    # A revoked name is reusable; the removed one's id is never given again.
    assert run(datadir, "consumer", "add", "ris", "--mailbox", RIS_A).returncode == 0
    removed = run(datadir, "consumer", "remove", "ris")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f"removed consumer ris (id 2, {RIS_A})\n"
    assert run(datadir, "consumer", "list", "--json").stdout.strip() == "[]"
    assert run(datadir, "consumer", "add", "ris", "--mailbox", RIS_A).returncode == 0
    entries = json.loads(
        run(datadir, "audit", "--action", "consumer.*", "--subject", "ris", "--json").stdout
    )
    assert [(e["action"], e["detail"].get("id")) for e in entries] == [
        ("consumer.add", 1),
        ("consumer.revoke", 1),
        ("consumer.add", 2),
        ("consumer.remove", 2),
        ("consumer.add", 3),
    ]
    assert entries[2]["detail"]["replaces"] == 1
    last = json.loads(
        run(datadir, "audit", "--actor", entries[0]["actor"], "--limit", "2", "--json").stdout
    )
    assert [e["seq"] for e in last] == [entries[3]["seq"], entries[4]["seq"]]
    table = run(datadir, "audit", "--action", "consumer.remove")
    assert "consumer.remove" in table.stdout and "consumer.add" not in table.stdout


def test_bounce_refused_when_no_dsn_could_reach_the_sender(datadir: Path) -> None:
    stranger = spool_one(datadir, f"dr.y@{DOMAIN}", sender="dr.q@untrusted.test")
    notification = spool_one(datadir, f"dr.y@{DOMAIN}", sender="")
    for queue_id in (stranger, notification):
        fail_once(datadir, queue_id, "452 4.2.2 mailbox full")
    refused = run(datadir, "spool", "bounce", stranger)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"mssgate: error: cannot bounce {stranger}: the sender's domain (dr.q@untrusted.test)"
        " is neither hosted here nor on the trust list, so no DSN can reach it; use"
        " `mssgate spool delete`\n"
    )
    null = run(datadir, "spool", "bounce", notification)
    assert null.returncode == 1 and "null sender" in null.stderr
    left = json.loads(run(datadir, "spool", "list", "--json").stdout)
    assert {e["id"]: e["recipients"][0]["state"] for e in left} == {
        stranger: "pending",
        notification: "pending",
    }


def test_a_bounce_that_fails_tells_the_sender_nothing(datadir: Path, cli: Cli) -> None:
    """The DSN and the recipients' failure commit together: when recording the failure
    fails (here a trigger refuses the audit row, as a full disk or a lost connection
    would), no DSN is left spooled to tell the sender while the delivery stays held, ready
    for `spool release` to deliver after all."""
    import sqlite3

    cli.ok("directory", "add", f"dr.x@{DOMAIN}", "--name", "X", "--kind", "organisation")
    queue_id = spool_one(datadir, "dr.z@clinique-b.test", "relay")
    fail_once(datadir, queue_id, "421 4.7.0 try later")
    db = sqlite3.connect(datadir / "mssgate.db")
    with db:
        db.execute(
            "CREATE TRIGGER refuse_bounce BEFORE INSERT ON audit"
            " WHEN NEW.action = 'spool.bounce' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    failed = run(datadir, "spool", "bounce", queue_id)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    left = json.loads(run(datadir, "spool", "list", "--json").stdout)
    assert [(e["id"], e["recipients"][0]["state"]) for e in left] == [(queue_id, "held")]
    assert sorted(p.name for p in (datadir / "spool" / "msg").iterdir()) == [f"{queue_id}.eml"]

    with db:
        db.execute("DROP TRIGGER refuse_bounce")
    db.close()
    again = run(datadir, "spool", "bounce", queue_id)  # held, not due: no --force needed
    assert again.returncode == 0, again.stderr
    dsn_id = again.stdout.split("(DSN ", 1)[1].split(")", 1)[0]
    left = json.loads(run(datadir, "spool", "list", "--json").stdout)
    assert [(e["id"], e["sender"]) for e in left] == [(dsn_id, "")]
    [bounce] = json.loads(run(datadir, "audit", "--action", "spool.bounce", "--json").stdout)
    assert bounce["detail"]["dsn"] == dsn_id


def test_force_is_refused_while_the_messages_node_serves(datadir: Path, cli: Cli) -> None:
    """--force is for a stopped gateway: a serving one may be making the due delivery, and
    its delivered mark would stand beside the bounce's DSN."""
    from datetime import timedelta

    from mssgate.db.schema import nodes
    from mssgate.db.tx import write
    from mssgate.directory.timeutil import now
    from mssgate.nodes import Nodes

    cli.ok("directory", "add", f"dr.x@{DOMAIN}", "--name", "X", "--kind", "organisation")
    queue_id = spool_one(datadir, "dr.z@clinique-b.test", "relay")
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    Nodes(engine, actor="test").beat(config.node.name)  # as a serving node does
    for command in ("delete", "bounce"):
        refused = run(datadir, "spool", command, queue_id, "--force")
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr.startswith(
            f"mssgate: error: --force refused: node {config.node.name!r} is serving"
        ), refused.stderr
        assert refused.stderr.count("\n") == 1
    left = json.loads(run(datadir, "spool", "list", "--json").stdout)
    assert [(e["id"], e["recipients"][0]["state"]) for e in left] == [(queue_id, "pending")]

    with write(engine) as conn:  # the node stopped: silent past node.down_after_seconds
        conn.execute(nodes.update().values(heartbeat_at=now() - timedelta(minutes=5)))
    engine.dispose()
    deleted = run(datadir, "spool", "delete", queue_id, "--force")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.startswith(f"deleted {queue_id}: 1 recipient(s) not delivered")


def test_audit_limit_past_what_a_database_takes_is_a_usage_error(datadir: Path) -> None:
    # Past 2^63 it reached the database driver: "internal error (OverflowError)", exit 1.
    huge = run(datadir, "audit", "--limit", str(10**20))
    assert huge.returncode == 2 and "--limit" in huge.stderr, huge.stderr
    assert run(datadir, "audit", "--limit", str(10**9), "--json").returncode == 0


def test_a_peers_reply_in_spool_list_is_shown_as_text(datadir: Path) -> None:
    """A last error is a peer's SMTP reply: its rich markup killed `spool list` ("[/b]": a
    MarkupError, internal error) or made links, its escape sequences reached the terminal,
    and in the narrow layout a line of it could pass for another field."""
    queue_id = spool_one(datadir, "dr.z@clinique-b.test", "relay")
    reply = "550 5.1.1 [/b] [link=http://evil.example]x[/link] \x1b]0;owned\x07\n  queue id: FAKE"
    fail_once(datadir, queue_id, reply)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env["MSSGATE_CONFIG"] = str(datadir / "mssgate.toml")
    for columns in ("80", "400"):  # one row as lines of fields; a table
        env["COLUMNS"] = columns
        shown = subprocess.run(
            [str(MSSGATE), "spool", "list"], capture_output=True, text=True, env=env, timeout=60
        )
        assert shown.returncode == 0, shown.stderr
        assert "[/b] [link=http://evil.example]x[/link] \\x1b]0;owned\\x07" in shown.stdout
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
        assert "\n  queue id: FAKE" not in shown.stdout
