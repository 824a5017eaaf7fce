"""Hostile variants of a patient's message on the live MTA port (the patient operator's
certificate, mutual TLS): a null sender with a patient's From:, the patient's address in
other cases or behind a display name, an encoded In-Reply-To, an id lost in the middle of a
long References, several recipients of whom one is not in the conversation. Each is refused
with the reason, and nothing reaches a mailbox."""

from __future__ import annotations

import smtplib

from tests.smtp import test_patient_conversations as conversations
from tests.smtp.conftest import ALICE, BOB, Gateway
from tests.smtp.test_patient_conversations import (
    INS,
    PATIENT,
    PATIENT_DOMAIN,
    PATIENT_HOST,
    PatientOperator,
    reply,
    submit,
    to_patient,
)

# The live patient-conversation fixtures (gateway and capture patient operator), by name.
world = conversations.world
patient_pki = conversations.patient_pki

NO_CONVERSATION = (
    b"5.7.1 Message refused: no conversation with this patient started by a professional"
)
OTHER = b"5.7.1 Message refused: this patient's conversation is with another professional"


def send_to_many(
    gateway: Gateway, operator: PatientOperator, raw: bytes, recipients: list[str]
) -> tuple[int, bytes]:
    ctx = gateway.client_context()
    ctx.load_cert_chain(operator.pki["cert"], operator.pki["key"])
    client = smtplib.SMTP("127.0.0.1", gateway.ports["mta"], timeout=20)
    try:
        client.ehlo(PATIENT_HOST)
        client.starttls(context=ctx)
        client.ehlo(PATIENT_HOST)
        assert client.mail(PATIENT)[0] == 250
        for rcpt in recipients:
            assert client.rcpt(rcpt)[0] == 250
        return client.data(raw)
    finally:
        client.close()


def test_hostile_variants_of_a_patients_message_are_refused(
    world: tuple[Gateway, PatientOperator],
) -> None:
    gateway, operator = world
    assert submit(gateway, to_patient("<h1@hopital-a.test>"))[0] == 250
    operator.wait_received(1)

    # A null sender does not make a patient's message a notice: the conversation is checked.
    code, text = operator.send(gateway, reply(), sender="")
    assert (code, text) == (550, NO_CONVERSATION)
    code, text = operator.send(gateway, reply(In_Reply_To="<h1@hopital-a.test>"), sender="",
                               to=BOB)  # fmt: skip
    assert code == 550 and text.startswith(OTHER)
    # The patient's address in upper case, behind a display name naming someone else, with
    # a comment: still that patient, still checked.
    shout = f"{INS}@{PATIENT_DOMAIN.upper()}"
    for author in (
        f'"mailer-daemon@{PATIENT_DOMAIN}" <{shout}>',
        f"=?utf-8?q?Service_postmaster?= <{PATIENT}>",
        f"{PATIENT} (mailer-daemon)",
    ):
        code, text = operator.send(gateway, reply(author=author), sender="")
        assert (code, text) == (550, NO_CONVERSATION), author
        code, text = operator.send(gateway, reply(author=author, In_Reply_To="<h1@hopital-a.test>"),
                                   to=BOB)  # fmt: skip
        assert code == 550 and text.startswith(OTHER), author
    # An id encoded as a word names the conversation (decoded, then looked up), but only with
    # the mailbox that wrote it.
    encoded = "=?utf-8?q?=3Ch1=40hopital-a.test=3E?="
    code, text = operator.send(gateway, reply(In_Reply_To=encoded), to=BOB)
    assert code == 550 and text.startswith(OTHER)
    # The id in the middle of a long References: not among the 40 ids looked up.
    refs = " ".join(
        [f"<r{i}@x.test>" for i in range(10)]
        + ["<h1@hopital-a.test>"]
        + [f"<s{i}@x.test>" for i in range(30)]
    )
    assert operator.send(gateway, reply(References=refs)) == (550, NO_CONVERSATION)
    # Two recipients, one of whom never wrote to this patient: refused for both.
    code, text = send_to_many(
        gateway, operator, reply(In_Reply_To="<h1@hopital-a.test>"), [ALICE, BOB]
    )
    assert code == 550 and text.startswith(OTHER)
    assert gateway.mailbox(ALICE) == [] and gateway.mailbox(BOB) == []
    # The same reply, rightly addressed, is accepted.
    assert operator.send(gateway, reply(In_Reply_To="<h1@hopital-a.test>"))[0] == 250
    gateway.wait_delivered(ALICE, 1)
