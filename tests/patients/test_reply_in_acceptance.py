"""A patient's reply is checked again in its acceptance transaction (the spool's), on SQLite
and PostgreSQL: refused there, nothing of it is kept; accepted, it is spooled as any message.
The live race (a FIN accepted while the reply waits for its commit) is
tests/smtp/test_patient_fin_in_flight.py."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from mssgate.db.schema import spool_messages
from mssgate.patients.conversations import (
    ConversationRefused,
    PatientReply,
    Refusal,
)
from mssgate.spool.store import Spool, new_queue_id
from tests.patients.acceptances import acceptance, fin_acceptance
from tests.patients.test_conversations import DR_X, INS, engine, send

__all__ = ["engine"]  # the SQLite/PostgreSQL fixture, used by its name


def _reply(spool: Spool, irt: str) -> str:
    queue_id = new_queue_id()
    spool.accept(
        queue_id=queue_id, content=b"Subject: Re\r\n\r\nMerci\r\n", listener="mta",
        sender=f"{INS.lower()}@patient.test", identity=None, peer="127.0.0.1",
        recipients=[(DR_X, "local")],
        patient_reply=PatientReply(INS, (DR_X,), (irt,)),
    )  # fmt: skip
    return queue_id


def test_the_acceptance_checks_the_conversation_again(engine: Engine, tmp_path: Path) -> None:
    spool = Spool(engine, tmp_path / "spool")
    send(spool, DR_X, INS, "<a1@h>")
    accepted = _reply(spool, "<a1@h>")
    assert spool.read(accepted).endswith(b"Merci\r\n")
    send(spool, DR_X, INS, "<a2@h>", fin=True)
    with pytest.raises(ConversationRefused) as refused:
        _reply(spool, "<a1@h>")
    assert refused.value.refusal is Refusal.ENDED
    with pytest.raises(ConversationRefused) as refused:
        _reply(spool, "<unknown@h>")
    assert refused.value.refusal is Refusal.NO_CONVERSATION
    with engine.connect() as conn:
        # The two messages to the patient and the one reply accepted: nothing of the others.
        assert conn.scalar(select(func.count()).select_from(spool_messages)) == 3
    # and no file left behind by the refused ones.
    assert len([p for p in (tmp_path / "spool").rglob("*") if p.is_file()]) == 3


@pytest.mark.parametrize("fin_first", [True, False])
def test_a_fin_and_a_reply_committed_in_one_group_follow_their_order(
    engine: Engine, tmp_path: Path, fin_first: bool
) -> None:
    """One group commit holding the professional's FIN and the patient's reply: the reply
    that came after the FIN is refused, the one that came before it is taken (the committer
    retries a failed group one acceptance at a time, in order)."""
    spool = Spool(engine, tmp_path / "spool")
    send(spool, DR_X, INS, "<g1@h>")
    fin = fin_acceptance("<g2@h>")
    reply = acceptance(patient_reply=PatientReply(INS, (DR_X,), ("<g1@h>",)))
    done: dict[str, Future[None]] = {fin.queue_id: Future(), reply.queue_id: Future()}
    group = [fin, reply] if fin_first else [reply, fin]
    spool._committer._commit([(a, done[a.queue_id]) for a in group])
    assert done[fin.queue_id].result() is None
    if fin_first:
        with pytest.raises(ConversationRefused):
            done[reply.queue_id].result()
    else:
        assert done[reply.queue_id].result() is None
    with engine.connect() as conn:
        ids = set(conn.scalars(select(spool_messages.c.id)))
    assert fin.queue_id in ids and (reply.queue_id in ids) is not fin_first
