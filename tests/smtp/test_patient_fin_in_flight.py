"""A patient's reply in flight while the professional's FIN is accepted: the conversation is
checked again in the reply's acceptance transaction, so a reply whose DATA check passed but
which commits after the FIN is refused (the S/MIME, DKIM and spool steps between the two can
take seconds; the first check alone let such a reply in after the professional was told 250
for the FIN)."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime

from tests.smtp import test_patient_conversations as conversations
from tests.smtp.conftest import ALICE, Gateway
from tests.smtp.test_patient_conversations import (
    INS,
    PatientOperator,
    reply,
    submit,
    to_patient,
)

# The live patient-conversation fixtures (gateway and capture patient operator), by name.
world = conversations.world
patient_pki = conversations.patient_pki


def test_a_reply_checked_before_the_fin_and_committed_after_it_is_refused(
    world: tuple[Gateway, PatientOperator],
) -> None:
    gateway, operator = world
    assert submit(gateway, to_patient("<race-1@hopital-a.test>"))[0] == 250
    operator.wait_received(1)

    # Hold the database's write lock (as a long commit would): the reply passes its DATA
    # check, then waits for the lock to be spooled.
    db = sqlite3.connect(gateway.data / "mssgate.db", timeout=30, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    answer: list[tuple[int, bytes]] = []
    sending = threading.Thread(
        target=lambda: answer.append(
            operator.send(gateway, reply(In_Reply_To="<race-1@hopital-a.test>"))
        )
    )
    sending.start()
    time.sleep(2)
    assert not answer, "the reply was answered while the spool could not commit"
    # Meanwhile the professional's FIN is accepted (its row, as its acceptance writes it).
    db.execute(
        "INSERT INTO patient_messages (message_id, ins, mailbox, spool_id, sent_at,"
        " ends_conversation) VALUES (?, ?, ?, ?, ?, 1)",
        ("<race-fin@hopital-a.test>", INS, ALICE, "RACEFIN", datetime.now(UTC).isoformat()),
    )
    db.execute("COMMIT")
    db.close()
    sending.join(timeout=30)
    [(code, text)] = answer
    assert (code, text) == (
        550,
        b"5.7.1 Message refused: the professional ended this conversation",
    )
    assert gateway.mailbox(ALICE) == []
