"""What the administrator's commands of issue 18 (items 6, 9) need from the database, on
SQLite and PostgreSQL: one ID resolver (LIKE with its wildcards escaped, one case), the
spool's set-aside under a delivery's lock rules, consumer ids never given twice, audit
filters."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.exc import SQLAlchemyError

from mssgate import audit
from mssgate.db.ids import AmbiguousId, resolve_id
from mssgate.db.schema import consumers as consumers_table
from mssgate.db.schema import spool_messages, spool_recipients
from mssgate.db.tx import write
from mssgate.directory import Directory
from mssgate.directory.timeutil import now
from mssgate.errors import Conflict, NotFound, UsageFailed
from mssgate.spool import Spool
from mssgate.spool.jobs import DocumentJob, DocumentJobs, add_document_job
from mssgate.spool.store import DeliveryDue, Notice, PendingDelivery
from tests.queue.helpers import RIS_A, add_mailboxes


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    engine: Engine = request.getfixturevalue(name)
    return engine


def accept(spool: Spool, queue_id: str, recipient: str = "dr.y@clinique-b.test") -> None:
    spool.accept(
        queue_id=queue_id, content=b"Subject: x\r\n\r\nx\r\n", listener="mta",
        sender="dr.x@hopital-a.test", identity=None, peer=None, recipients=[(recipient, "relay")],
    )  # fmt: skip


def test_resolver(engine: Engine, tmp_path: Path) -> None:
    spool = Spool(engine, tmp_path / "spool")
    for queue_id in ("0123456789AB", "0123456789AC", "0123456789ABCD"):
        accept(spool, queue_id)

    def resolve(given: str) -> str:
        return resolve_id(engine, spool_messages.c.id, given, what="spooled message", case="upper")

    assert resolve("0123456789AB") == "0123456789AB"  # whole wins over its longer twin
    assert resolve("0123456789abc") == "0123456789ABCD"  # either case
    with pytest.raises(AmbiguousId, match=r"'0123456' matches 3 entries"):
        resolve("0123456")
    with pytest.raises(UsageFailed, match="too short"):
        resolve("01234")
    with pytest.raises(NotFound):
        resolve("0123456789AD")


def test_resolver_takes_like_wildcards_literally(engine: Engine) -> None:
    add_mailboxes(engine, RIS_A)
    consumers = Directory(engine, actor="cli:test").consumers
    for name in ("ris_a0001", "risxa0002", "risya0003"):
        consumers.add(name, mailbox=RIS_A)

    def resolve(given: str) -> str:
        return resolve_id(engine, consumers_table.c.name, given, what="consumer")

    assert resolve("ris_a0") == "ris_a0001"  # _ matched any character: 2 entries
    with pytest.raises(NotFound):
        resolve("ris%a0")  # % matched anything: 3 entries


def test_set_aside_refuses_a_due_delivery_and_withdraws_the_rest(
    engine: Engine, tmp_path: Path
) -> None:
    spool = Spool(engine, tmp_path / "spool")
    accept(spool, "0000000000AA")
    with pytest.raises(DeliveryDue, match="1 delivery"):
        spool.set_aside("0000000000AA", reason="x")  # due at once: a worker may have it
    with write(engine) as conn:
        conn.execute(
            update(spool_recipients).values(
                next_attempt_at=now() + timedelta(minutes=5), last_error="451 busy"
            )
        )
    aside = spool.set_aside("0000000000AA", reason="being deleted by cli:test")
    assert aside.recipients == ["dr.y@clinique-b.test"]
    assert spool.due(route="relay") == []
    spool.withdraw(aside, actor="cli:test", action="spool.delete", detail={})
    assert [e.id for e in spool.entries()] == []
    assert not spool.path("0000000000AA").exists()
    # A worker that had it (--force) cannot bring it back as pending.
    item = PendingDelivery(
        spool_id="0000000000AA", recipient="dr.y@clinique-b.test", route="relay", attempts=1
    )
    spool.attempt_failed(item, error="451 again", permanent=False, retry_in=timedelta(0))
    assert spool.recipient_state(item.spool_id, item.recipient).state == "failed"
    [entry] = audit.entries(engine, action="spool.delete")
    assert entry.detail == {
        "sender": "dr.x@hopital-a.test",
        "recipients": ["dr.y@clinique-b.test"],
        "documents": [],
    }


def test_consumer_ids_never_given_twice(engine: Engine) -> None:
    add_mailboxes(engine, RIS_A)
    consumers = Directory(engine, actor="cli:test").consumers
    first, _ = consumers.add("ris", mailbox=RIS_A)
    assert consumers.remove("ris").id == first.id  # the last row: SQLite would reuse its id
    second, token = consumers.add("ris", mailbox=RIS_A)
    consumers.revoke("ris")
    third, _ = consumers.add("ris", mailbox=RIS_A)
    assert (first.id, second.id, third.id) == (1, 2, 3)
    assert consumers.authenticate(token).__class__.__name__ == "TokenRefused"
    trail = list(audit.entries(engine, action="consumer.*", subject="ris"))
    assert [(e.action, e.detail.get("id"), e.detail.get("replaces")) for e in trail] == [
        ("consumer.add", 1, None),
        ("consumer.remove", 1, None),
        ("consumer.add", 2, None),
        ("consumer.revoke", 2, None),
        ("consumer.add", 3, 2),
    ]
    last_two = list(audit.entries(engine, actor="cli:test", limit=2))
    assert [e.seq for e in last_two] == [trail[-2].seq, trail[-1].seq]
    assert list(audit.entries(engine, action="consumer_*")) == []  # _ is literal
    assert audit.verify(engine).ok


def test_a_dropped_document_job_stays_dropped(engine: Engine, tmp_path: Path) -> None:
    spool = Spool(engine, tmp_path / "spool")
    accept(spool, "0000000000BB", recipient=RIS_A)
    with write(engine) as conn:
        conn.execute(update(spool_recipients).values(state="delivered"))
        add_document_job(conn, "0000000000BB", RIS_A)
    with pytest.raises(Conflict, match="nothing to bounce"):
        spool.set_aside("0000000000BB", reason="x", force=True, recipients_only=True)
    with pytest.raises(DeliveryDue):
        spool.set_aside("0000000000BB", reason="x")  # the job is due: the pipeline may run it
    aside = spool.set_aside("0000000000BB", reason="being deleted by cli:test", force=True)
    assert (aside.recipients, aside.documents) == ([], [RIS_A])
    spool.withdraw(aside, actor="cli:test", action="spool.delete", detail={})
    jobs = DocumentJobs(engine)
    jobs.hold(DocumentJob(spool_id="0000000000BB", mailbox=RIS_A, attempts=0), reason="boom")
    assert jobs.pending() == 0 and jobs.due() == []
    assert [e.id for e in spool.entries()] == []
    [done] = spool.entries(include_done=True)
    assert {r["route"]: r["state"] for r in done.recipients} == {
        "relay": "delivered",
        "documents": "done",
    }
    assert list(audit.entries(engine, action="documents.held")) == []


def _refuse_audit(engine: Engine, action: str) -> None:
    """A real database error on one audit action: what a full disk or a dropped
    connection does to the transaction that writes it."""
    if engine.dialect.name == "sqlite":
        sql = [
            "CREATE TRIGGER refuse BEFORE INSERT ON audit"
            f" WHEN NEW.action = '{action}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ]
    else:
        sql = [
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
            "CREATE TRIGGER refuse BEFORE INSERT ON audit FOR EACH ROW"
            f" WHEN (NEW.action = '{action}') EXECUTE FUNCTION refuse()",
        ]
    with write(engine) as conn:
        for statement in sql:
            conn.execute(text(statement))


def test_a_bounce_dsn_commits_with_the_failures_or_not_at_all(
    engine: Engine, tmp_path: Path
) -> None:
    spool = Spool(engine, tmp_path / "spool", node="n1")
    accept(spool, "0000000000AB")
    with write(engine) as conn:
        conn.execute(update(spool_recipients).values(next_attempt_at=now() + timedelta(minutes=5)))
    aside = spool.set_aside("0000000000AB", reason="being bounced by cli:test")
    notice = Notice(
        content=b"From: mailer-daemon@hopital-a.test\r\n\r\nreport\r\n",
        recipient="Dr.X@hopital-a.test",
        route="local",
        listener="bounces",
    )
    _refuse_audit(engine, "spool.bounce")
    with pytest.raises(SQLAlchemyError, match="refused"):
        spool.withdraw(aside, actor="cli:test", action="spool.bounce", detail={}, notice=notice)
    assert [e.id for e in spool.entries()] == ["0000000000AB"]
    assert [p.name for p in (tmp_path / "spool" / "msg").iterdir()] == ["0000000000AB.eml"]
    state = spool.recipient_state("0000000000AB", "dr.y@clinique-b.test")
    assert state.state == "held"

    with write(engine) as conn:
        conn.execute(
            text("DROP TRIGGER refuse" + ("" if engine.dialect.name == "sqlite" else " ON audit"))
        )
    dsn_id = spool.withdraw(
        aside, actor="cli:test", action="spool.bounce", detail={}, notice=notice
    )
    assert dsn_id is not None
    [entry] = spool.entries()
    assert (entry.id, entry.sender, entry.listener, entry.node) == (dsn_id, "", "bounces", "n1")
    assert entry.recipients[0]["recipient"] == "dr.x@hopital-a.test"
    assert spool.read(dsn_id) == notice.content
    assert not spool.path("0000000000AB").exists()
    [bounced] = audit.entries(engine, action="spool.bounce")
    assert bounced.detail["dsn"] == dsn_id


def test_a_delivery_falling_due_within_the_margin_counts_as_due(
    engine: Engine, tmp_path: Path
) -> None:
    """A worker may take a delivery that falls due while set_aside runs (its query sees the
    row pending until set_aside commits), or first on a node whose clock is a little
    ahead: both would deliver a message the operator withdraws."""
    spool = Spool(engine, tmp_path / "spool")
    accept(spool, "0000000000AC")
    with write(engine) as conn:
        conn.execute(update(spool_recipients).values(next_attempt_at=now() + timedelta(seconds=3)))
    with pytest.raises(DeliveryDue, match="within 10 s"):
        spool.set_aside("0000000000AC", reason="being deleted by cli:test")
    assert spool.recipient_state("0000000000AC", "dr.y@clinique-b.test").state == "pending"
    with write(engine) as conn:
        conn.execute(update(spool_recipients).values(next_attempt_at=now() + timedelta(seconds=30)))
    assert spool.set_aside("0000000000AC", reason="x").recipients == ["dr.y@clinique-b.test"]


def test_an_action_family_matches_the_same_entries_on_both_databases(engine: Engine) -> None:
    with write(engine) as conn:
        for action in ("consumer.add", "consumer.remove", "consumers.x", "queue.ack"):
            audit.append(conn, actor="cli:test", action=action, subject="s")
    assert [e.action for e in audit.entries(engine, action="consumer.*")] == [
        "consumer.add",
        "consumer.remove",
    ]
    # SQLite's LIKE ignored case: the upper-case family matched there and not on PostgreSQL.
    assert list(audit.entries(engine, action="CONSUMER.*")) == []
    assert [e.action for e in audit.entries(engine, action="consumer_*")] == []  # _ is no joker
    assert len(list(audit.entries(engine, action="*"))) == 4
    assert [e.action for e in audit.entries(engine, action="queue.*", limit=1)] == ["queue.ack"]


def test_a_message_withdrawn_meanwhile_is_not_withdrawn_twice(
    engine: Engine, tmp_path: Path
) -> None:
    """Two commands on one message (an operator's two terminals, or a bounce run again
    while the first still runs): both set it aside, since held deliveries are no obstacle
    (that is how a failed bounce is run again); the second withdrawal must change nothing,
    above all send no second DSN nor one after a delete."""
    spool = Spool(engine, tmp_path / "spool")
    accept(spool, "0000000000AD")
    with write(engine) as conn:
        conn.execute(update(spool_recipients).values(next_attempt_at=now() + timedelta(minutes=5)))
    first = spool.set_aside("0000000000AD", reason="being deleted by cli:a")
    second = spool.set_aside("0000000000AD", reason="being deleted by cli:b")
    spool.withdraw(first, actor="cli:a", action="spool.delete", detail={})
    with pytest.raises(Conflict, match="changed while being withdrawn"):
        spool.withdraw(second, actor="cli:b", action="spool.delete", detail={})
    assert [e.actor for e in audit.entries(engine, action="spool.delete")] == ["cli:a"]
    assert list(spool.entries()) == []

    accept(spool, "0000000000AE")
    with write(engine) as conn:
        conn.execute(update(spool_recipients).values(next_attempt_at=now() + timedelta(minutes=5)))
    first = spool.set_aside("0000000000AE", reason="being bounced by cli:a")
    second = spool.set_aside("0000000000AE", reason="being bounced by cli:b")
    notice = Notice(content=b"DSN\r\n", recipient="dr.x@hopital-a.test", route="local",
                    listener="bounces")  # fmt: skip
    dsn_id = spool.withdraw(first, actor="cli:a", action="spool.bounce", detail={}, notice=notice)
    with pytest.raises(Conflict, match="changed while being withdrawn"):
        spool.withdraw(second, actor="cli:b", action="spool.bounce", detail={}, notice=notice)
    assert [e.id for e in spool.entries()] == [dsn_id]  # one DSN
    assert sorted(p.name for p in (tmp_path / "spool" / "msg").iterdir()) == [f"{dsn_id}.eml"]


@pytest.mark.postgres
def test_consumers_added_at_once_get_their_own_ids(pg_engine: Engine) -> None:
    """Each `consumer add` takes the highest id ever given plus one: two at once on
    PostgreSQL both read the same highest and the second died on the primary key
    ("internal error"). SQLite has one writer, so only PostgreSQL can show it."""
    import threading

    add_mailboxes(pg_engine, RIS_A)
    consumers = Directory(pg_engine, actor="cli:test").consumers
    errors: list[BaseException] = []
    for round_ in range(10):
        start = threading.Barrier(4)

        def add(name: str, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                consumers.add(name, mailbox=RIS_A)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(f"ris-{round_}-{n}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    ids = [c.id for c in consumers.list()]
    assert sorted(ids) == list(range(1, 41))
