"""Conversation records written with the spool's acceptance, and the reply check, on SQLite
and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from mssgate.db.schema import audit, patient_messages
from mssgate.patients.conversations import (
    PatientMessage,
    Refusal,
    ends_conversation,
    outgoing,
    patient_ins,
    reply_refusal,
)
from mssgate.spool.store import Spool, new_queue_id

PATIENTS = "patient.test"
INS = "279035121518989"
INS_2A = "188102B17295165"
DR_X = "dr.x@hopital-a.test"
DR_Y = "dr.y@hopital-a.test"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    engine: Engine = request.getfixturevalue(name)
    return engine


def send(spool: Spool, sender: str, ins: str, message_id: str, *, fin: bool = False) -> str:
    queue_id = new_queue_id()
    spool.accept(
        queue_id=queue_id, content=b"Subject: x\r\n\r\nx\r\n", listener="submission",
        sender=sender, identity=sender, peer=None,
        recipients=[(f"{ins.lower()}@{PATIENTS}", "relay")],
        patients=[PatientMessage(message_id, ins, sender, ends_conversation=fin)],
    )  # fmt: skip
    return queue_id


def check(engine: Engine, ins: str, to: list[str], irt: str = "", refs: str = "") -> Refusal | None:
    return reply_refusal(
        engine, ins=ins, recipients=to, in_reply_to=[irt] if irt else [], references=[refs]
    )


def test_a_reply_needs_a_message_sent_to_that_patient_by_that_mailbox(
    engine: Engine, tmp_path: Path
) -> None:
    spool = Spool(engine, tmp_path / "spool")
    queue_id = send(spool, DR_X, INS, "<m1@hopital-a.test>")
    with engine.connect() as conn:
        row = conn.execute(select(patient_messages)).one()
    assert (row.message_id, row.ins, row.mailbox, row.spool_id) == (
        "<m1@hopital-a.test>", INS, DR_X, queue_id,
    )  # fmt: skip
    assert row.ends_conversation is False
    assert check(engine, INS, [DR_X], irt="<m1@hopital-a.test>") is None
    assert check(engine, INS, [DR_X], refs="<root@x> <m1@hopital-a.test>") is None
    assert check(engine, INS, [DR_X]) is Refusal.NO_CONVERSATION
    assert check(engine, INS, [DR_X], irt="<unknown@x>") is Refusal.NO_CONVERSATION
    # Another patient who learnt the id is in no conversation.
    assert check(engine, INS_2A, [DR_X], irt="<m1@hopital-a.test>") is Refusal.NO_CONVERSATION
    # The same patient writing to a professional who did not write to them.
    assert check(engine, INS, [DR_Y], irt="<m1@hopital-a.test>") is Refusal.OTHER_PROFESSIONAL
    assert check(engine, INS, [DR_X, DR_Y], irt="<m1@hopital-a.test>") is (
        Refusal.OTHER_PROFESSIONAL
    )


def test_fin_ends_the_pair_and_a_new_message_starts_it_again(
    engine: Engine, tmp_path: Path
) -> None:
    spool = Spool(engine, tmp_path / "spool")
    send(spool, DR_X, INS, "<m1@h>")
    send(spool, DR_Y, INS, "<y1@h>")
    fin_id = send(spool, DR_X, INS, "<m2@h>", fin=True)
    assert check(engine, INS, [DR_X], irt="<m1@h>") is Refusal.ENDED
    assert check(engine, INS, [DR_X], irt="<m2@h>") is Refusal.ENDED
    # Only that pair: the patient's conversation with DR_Y goes on.
    assert check(engine, INS, [DR_Y], irt="<y1@h>") is None
    with engine.connect() as conn:
        entry = conn.execute(
            select(audit).where(audit.c.action == "patient.conversation_ended")
        ).one()
    assert entry.subject == fin_id and INS not in entry.detail
    send(spool, DR_X, INS, "<m3@h>")
    assert check(engine, INS, [DR_X], irt="<m3@h>") is None


def test_outgoing_rules() -> None:
    to = [f"{INS}@{PATIENTS}", "dr.z@clinique-b.test", f"{INS_2A.lower()}@{PATIENTS}"]
    records, refusal = outgoing(
        recipients=to, sender=DR_X, message_id="<a@b>", mes_values=[], patient_domain=PATIENTS
    )
    assert refusal is None
    assert [(r.ins, r.mailbox, r.ends_conversation) for r in records] == [
        (INS, DR_X, False),
        (INS_2A, DR_X, False),
    ]
    # No patient among the recipients: nothing to record, nothing to check.
    assert outgoing(
        recipients=[DR_Y], sender=DR_X, message_id=None, mes_values=["x"], patient_domain=PATIENTS
    ) == ([], None)
    for message_id, mes, expected in [
        (None, [], Refusal.MESSAGE_ID_REQUIRED),
        ("<a@b>", ["FINN"], Refusal.BAD_END_VALUE),
        ("<a@b>", ["FIN", "no"], Refusal.BAD_END_VALUE),
    ]:
        assert outgoing(
            recipients=to, sender=DR_X, message_id=message_id, mes_values=mes,
            patient_domain=PATIENTS,
        ) == ([], expected)  # fmt: skip
    # A patient does not start a conversation with another patient.
    assert outgoing(
        recipients=to, sender=f"{INS}@{PATIENTS}", message_id="<a@b>", mes_values=[],
        patient_domain=PATIENTS,
    ) == ([], Refusal.NOT_A_PROFESSIONAL)  # fmt: skip


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], False),
        (["FIN"], True),
        (["fin"], True),
        ([" FIN "], True),
        (["\r\n FIN"], True),
        (["FIN", "FIN"], True),
        ([""], None),
        (["FIN, OUI"], None),
        (["FIN\r\nBcc: x@y"], None),
        (["F IN"], None),
    ],
)
def test_x_mss_mes_values(values: list[str], expected: bool | None) -> None:
    assert ends_conversation(values) is expected


def test_patient_ins() -> None:
    assert patient_ins(f"{INS_2A.lower()}@PATIENT.test", PATIENTS) == INS_2A
    assert patient_ins(f"279035121518988@{PATIENTS}", PATIENTS) is None  # bad key
    assert patient_ins(f"{INS}@elsewhere.test", PATIENTS) is None
