"""Two nodes on one PostgreSQL database: the professional's FIN accepted on one, the patient's
reply on the other, their acceptance transactions open at the same time. Neither would see the
other's uncommitted row, and both commit: the reply taken after the FIN had been taken. The
conversation (INS, professional mailbox) is locked in both transactions, so the second waits
for the first: a reply after the FIN is refused, a FIN after the reply waits for it.

Two levels: the spool's acceptance (where the audit chain's head row happened to order the two
already: each acceptance takes it before its patient rows), and the conversation functions
alone (record, check_in_acceptance), whose ordering must not rest on what their caller wrote
before."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select, text

from mssgate.db.schema import patient_messages, spool_messages
from mssgate.db.tx import write
from mssgate.patients.conversations import (
    ConversationRefused,
    PatientMessage,
    PatientReply,
    Refusal,
    check_in_acceptance,
    record,
)
from mssgate.spool.store import Spool
from tests.conftest import pg_engine_for
from tests.patients.acceptances import acceptance, fin_acceptance
from tests.patients.test_conversations import DR_X, DR_Y, INS, send

pytestmark = pytest.mark.postgres

# Long enough for a loaded machine; reached only if the second neither commits nor waits.
_WAIT_SECONDS = 30.0

FIN = PatientMessage("<fin@h>", INS, DR_X, ends_conversation=True)
REPLY = PatientReply(INS, (DR_X,), ("<open@h>",))


def _waits_on_a_lock(engine: Engine, pid: int) -> bool:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).one_or_none()
    return row is not None and row.wait_event_type == "Lock"


def _interleave(
    first: Engine,
    first_work: Callable[[Connection], None],
    second: Engine,
    second_work: Callable[[Connection], None],
) -> tuple[BaseException | None, bool]:
    """Runs `first_work` in a transaction on `first` and, while it is open, `second_work` in
    a transaction on `second` (another node's engine, one connection). The first commits once
    the second committed or waits on a lock. Returns what the second raised and whether it
    waited."""
    # The one connection of the second's pool (it makes none while one is idle): its backend
    # is the one whose wait is watched.
    with second.connect() as conn:
        pid = int(conn.scalar(select(func.pg_backend_pid())) or 0)
    started, done = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []

    def run_second() -> None:
        started.wait(_WAIT_SECONDS)
        try:
            with write(second) as conn:
                second_work(conn)
        except BaseException as exc:  # returned to the test
            outcome.append(exc)
        else:
            outcome.append(None)
        finally:
            done.set()

    thread = threading.Thread(target=run_second)
    thread.start()
    waited = False
    try:
        with write(first) as conn:
            first_work(conn)
            started.set()
            deadline = time.monotonic() + _WAIT_SECONDS
            while not done.is_set():
                if _waits_on_a_lock(first, pid):
                    waited = True
                    break
                assert time.monotonic() < deadline, "the second neither committed nor waited"
                time.sleep(0.02)
    finally:
        thread.join(_WAIT_SECONDS)
    assert outcome, "the second transaction never ended"
    return outcome[0], waited


@pytest.fixture
def nodes(pg_engine: Engine, pg_schema: str, tmp_path: Path) -> Any:
    other = pg_engine_for(pg_schema)
    node_a, node_b = Spool(pg_engine, tmp_path / "a", node="a"), Spool(other, tmp_path / "b")
    send(node_a, DR_X, INS, "<open@h>")
    yield node_a, node_b
    other.dispose()


def _spooled(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(spool_messages.c.id)))


def test_spool_a_reply_on_another_node_waits_for_the_fin_and_is_refused(nodes: Any) -> None:
    node_a, node_b = nodes
    fin, reply = fin_acceptance(FIN.message_id), acceptance(patient_reply=REPLY)
    raised, _ = _interleave(
        node_a._engine, lambda conn: node_a._insert_rows(conn, [fin]),
        node_b._engine, lambda conn: node_b._insert_rows(conn, [reply]),
    )  # fmt: skip
    assert isinstance(raised, ConversationRefused) and raised.refusal is Refusal.ENDED
    ids = _spooled(node_a._engine)
    assert fin.queue_id in ids and reply.queue_id not in ids


def test_spool_a_fin_on_another_node_waits_for_the_reply(nodes: Any) -> None:
    node_a, node_b = nodes
    fin, reply = fin_acceptance(FIN.message_id), acceptance(patient_reply=REPLY)
    raised, waited = _interleave(
        node_b._engine, lambda conn: node_b._insert_rows(conn, [reply]),
        node_a._engine, lambda conn: node_a._insert_rows(conn, [fin]),
    )  # fmt: skip
    assert raised is None and waited
    assert {fin.queue_id, reply.queue_id} <= _spooled(node_a._engine)


def test_the_reply_check_waits_for_a_fin_being_recorded(nodes: Any) -> None:
    """record and check_in_acceptance alone, nothing else written before them: the check
    read the pair before the FIN committed, found it open, and the reply was taken."""
    node_a, node_b = nodes
    raised, waited = _interleave(
        node_a._engine,
        lambda conn: record(conn, spool_id="fin", at=datetime.now(UTC), messages=[FIN]),
        node_b._engine,
        lambda conn: check_in_acceptance(conn, REPLY),
    )
    assert waited, "the reply's check did not wait for the FIN's transaction"
    assert isinstance(raised, ConversationRefused) and raised.refusal is Refusal.ENDED


def test_a_fin_being_recorded_waits_for_the_reply_check(nodes: Any) -> None:
    node_a, node_b = nodes
    raised, waited = _interleave(
        node_b._engine,
        lambda conn: check_in_acceptance(conn, REPLY),
        node_a._engine,
        lambda conn: record(conn, spool_id="fin", at=datetime.now(UTC), messages=[FIN]),
    )
    assert raised is None and waited


def test_other_conversations_do_not_wait(nodes: Any) -> None:
    """The lock is the pair's: another professional's FIN to the same patient goes on."""
    node_a, node_b = nodes
    other_fin = PatientMessage("<fin-y@h>", INS, DR_Y, ends_conversation=True)
    raised, waited = _interleave(
        node_b._engine,
        lambda conn: check_in_acceptance(conn, REPLY),
        node_a._engine,
        lambda conn: record(conn, spool_id="y", at=datetime.now(UTC), messages=[other_fin]),
    )
    assert raised is None and not waited
    with node_a._engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(patient_messages)) == 2
