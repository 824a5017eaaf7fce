"""Patient mailboxes (Mon espace santé) on a live gateway: a practitioner's message to
`<INS>@patient.mssante.fr` goes through submission and the relay to the patient domain's
operator (a capture SMTP server asking for our gateway's certificate); that operator, over
mutual TLS on the MTA port, delivers the patient's replies, which are accepted only within a
conversation the practitioner started and has not ended (X-MSS-MES: FIN)."""

from __future__ import annotations

import asyncio
import email
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiosmtpd.smtp import SMTP

from mssgate.pki import create_dev_ca, issue_server_cert, write_certificate, write_private_key
from mssgate.tls import server_context
from tests.conftest import Cli
from tests.relay.conftest import PeerHandler, Received
from tests.smtp.conftest import ALICE, BOB, Gateway
from tests.smtp.test_outbound_gateway import mdm

PATIENT_DOMAIN = "patient.mssante.fr"
INS = "279035121518989"
PATIENT = f"{INS}@{PATIENT_DOMAIN}"
PATIENT_HOST = "mx.patient.mssante.fr"


class PatientOperator:
    """The patient domain's operator: it takes what our relay sends (capture), and sends the
    patients' messages to our MTA port with its own certificate."""

    def __init__(self, pki: dict[str, Path], our_ca: Path) -> None:
        self.pki = pki
        self.handler = PeerHandler()
        ctx = server_context(
            pki["cert"], pki["key"], client_cas=[our_ca.read_text()], request_client_cert=True
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        def protocol() -> SMTP:
            return SMTP(self.handler, hostname=PATIENT_HOST, tls_context=ctx,
                        require_starttls=True, decode_data=False)  # fmt: skip

        self.server = asyncio.run_coroutine_threadsafe(
            self.loop.create_server(protocol, "127.0.0.1", 0), self.loop
        ).result()
        self.port = int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def wait_received(self, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.handler.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the patient operator got {len(self.handler.messages)}")
            time.sleep(0.05)
        return self.handler.messages

    def send(self, gateway: Gateway, raw: bytes, *, sender: str = PATIENT, to: str = ALICE
             ) -> tuple[int, bytes]:  # fmt: skip
        """One patient message to our MTA port: the reply to its DATA."""
        ctx = gateway.client_context()
        ctx.load_cert_chain(self.pki["cert"], self.pki["key"])
        client = smtplib.SMTP("127.0.0.1", gateway.ports["mta"], timeout=20)
        try:
            client.ehlo(PATIENT_HOST)
            client.starttls(context=ctx)
            client.ehlo(PATIENT_HOST)
            assert client.mail(sender)[0] == 250
            assert client.rcpt(to)[0] == 250
            return client.data(raw)
        finally:
            client.close()


def reply(*, to: str = ALICE, author: str = PATIENT, **headers: str) -> bytes:
    lines = [f"From: {author}", f"To: {to}", "Subject: Re: resultats"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    lines.append(f"Message-ID: <r{time.monotonic_ns()}@{PATIENT_DOMAIN}>")
    return ("\r\n".join(lines) + "\r\n\r\nMerci docteur.\r\n").encode()


def to_patient(message_id: str, *extra: str, sender: str = ALICE) -> bytes:
    lines = [f"From: {sender}", f"To: {PATIENT}", "Subject: Vos resultats"]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\nBonjour, vos resultats sont normaux.\r\n").encode()


def submit(gateway: Gateway, raw: bytes, to: str = PATIENT, who: str = ALICE
           ) -> tuple[int, bytes]:  # fmt: skip
    client = gateway.login(who)
    try:
        client.mail(who)
        code, text = client.rcpt(to)
        if code != 250:
            return code, text
        return client.data(raw)
    finally:
        client.close()


@pytest.fixture
def patient_pki(tmp_path: Path) -> dict[str, Path]:
    ca_key, ca_cert = create_dev_ca("patient operator CA")
    key, cert = issue_server_cert(ca_key, ca_cert, PATIENT_HOST)
    paths = {"ca": tmp_path / "pat-ca.pem", "cert": tmp_path / "pat.pem", "key": tmp_path / "pk"}
    write_certificate(paths["ca"], ca_cert)
    write_certificate(paths["cert"], cert)
    write_private_key(paths["key"], key)
    return paths


@pytest.fixture
def world(
    cli: Cli, gateway_setup: Gateway, patient_pki: dict[str, Path]
) -> Iterator[tuple[Gateway, PatientOperator]]:
    operator = PatientOperator(patient_pki, gateway_setup.ca)
    cli.ok("domain", "trust", PATIENT_DOMAIN, "--relay", f"127.0.0.1:{operator.port}",
           "--ca", str(patient_pki["ca"]))  # fmt: skip
    gateway_setup.env["MSSGATE_RELAY__POLL_SECONDS"] = "0.2"
    gateway_setup.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"  # the RIS's MDM: test OID
    gateway_setup.start()
    yield gateway_setup, operator
    gateway_setup.stop()
    operator.close()


def test_a_conversation_started_replied_to_and_ended(
    world: tuple[Gateway, PatientOperator],
) -> None:
    gateway, operator = world
    # The practitioner starts it: relayed to the patient's operator.
    assert submit(gateway, to_patient("<m1@hopital-a.test>"))[0] == 250
    [sent] = operator.wait_received(1)
    assert sent.rcpt_tos == [PATIENT] and b"Message-ID: <m1@hopital-a.test>" in sent.content
    assert b"X-MSS-MES" not in sent.content

    # The patient replies within it: accepted and delivered to the practitioner.
    code, text = operator.send(gateway, reply(In_Reply_To="<m1@hopital-a.test>"))
    assert code == 250, text
    # References folded, the root first, as a mail client writes them.
    refs = "<root@elsewhere.test>\r\n <m1@hopital-a.test>"
    assert operator.send(gateway, reply(References=refs))[0] == 250
    delivered = gateway.wait_delivered(ALICE, 2)
    assert b"Merci docteur." in delivered[0].read_bytes()

    # No conversation named, or one the patient is not in: refused, and why.
    code, text = operator.send(gateway, reply())
    assert (code, text) == (
        550,
        b"5.7.1 Message refused: no conversation with this patient started by a professional",
    )
    code, text = operator.send(gateway, reply(In_Reply_To="<unknown@hopital-a.test>"))
    assert code == 550 and b"no conversation with this patient" in text
    # Bob never wrote to this patient: the conversation is with Alice only.
    code, text = operator.send(gateway, reply(to=BOB, In_Reply_To="<m1@hopital-a.test>"), to=BOB)
    assert (code, text.split(b" ")[0]) == (550, b"5.7.1"), text
    assert b"another professional" in text
    # Another patient who learnt the Message-ID is in no conversation either.
    other = f"188102b17295165@{PATIENT_DOMAIN}"
    code, text = operator.send(
        gateway, reply(author=other, In_Reply_To="<m1@hopital-a.test>"), sender=other
    )
    assert code == 550 and b"no conversation with this patient" in text
    event = gateway.wait_event("smtp.reject", check="patient-conversation")
    assert event["status"] == "5.7.1" and INS not in gateway.logs()

    # The practitioner ends it, with the header written loosely (case, folding): what
    # leaves is the one spelling the patient's operator reads.
    code, _ = submit(gateway, to_patient("<m2@hopital-a.test>", "x-mss-mes:\r\n fin"))
    assert code == 250
    _, fin = operator.wait_received(2)
    head = fin.content.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nX-MSS-MES: FIN\r\n" in head and b"x-mss-mes" not in head
    for refs in ("<m1@hopital-a.test>", "<m2@hopital-a.test>"):
        code, text = operator.send(gateway, reply(In_Reply_To=refs))
        assert (code, text) == (
            550,
            b"5.7.1 Message refused: the professional ended this conversation",
        )
    assert len(gateway.mailbox(ALICE)) == 2 and gateway.mailbox(BOB) == []
    ended = "Message refused: the professional ended this conversation"
    gateway.wait_event("smtp.reject", check="patient-conversation", reason=ended)

    # A new message from the practitioner starts the conversation again.
    assert submit(gateway, to_patient("<m3@hopital-a.test>"))[0] == 250
    assert operator.send(gateway, reply(In_Reply_To="<m3@hopital-a.test>"))[0] == 250
    gateway.wait_delivered(ALICE, 3)


def test_what_is_refused_on_the_way_to_a_patient(world: tuple[Gateway, PatientOperator]) -> None:
    gateway, operator = world
    # A bad INS key: refused at RCPT.
    code, text = submit(gateway, to_patient("<k@h>"), to=f"279035121518988@{PATIENT_DOMAIN}")
    assert (code, text.split(b" ")[0]) == (553, b"5.1.3")
    # No Message-ID: the patient's reply could not refer to it.
    code, text = submit(gateway, to_patient(""))
    assert (code, text.split(b" ")[0]) == (550, b"5.6.0") and b"Message-ID" in text
    # An X-MSS-MES the professional mistyped does not leave as if it ended nothing.
    code, text = submit(gateway, to_patient("<t@h>", "X-MSS-MES: FINI"))
    assert (code, text.split(b" ")[0]) == (550, b"5.6.0") and b"FIN" in text
    time.sleep(1)
    assert operator.handler.messages == []


def test_the_patient_operators_own_notices_and_forged_senders(
    world: tuple[Gateway, PatientOperator],
) -> None:
    gateway, operator = world
    assert submit(gateway, to_patient("<n1@hopital-a.test>"))[0] == 250
    operator.wait_received(1)
    # A DSN of the operator's mail system (null sender, not a patient) reaches the sender.
    dsn = reply(author=f"mailer-daemon@{PATIENT_DOMAIN}")
    assert operator.send(gateway, dsn, sender="")[0] == 250
    # The envelope says one patient, From: another: refused.
    code, text = operator.send(
        gateway,
        reply(In_Reply_To="<n1@hopital-a.test>"),
        sender=f"188102b17295165@{PATIENT_DOMAIN}",
    )
    assert code == 550 and b"envelope sender" in text
    # An author at the patient domain that is no INS, with a sender: not a patient mailbox.
    robot = f"robot@{PATIENT_DOMAIN}"
    code, text = operator.send(gateway, reply(author=robot), sender=robot)
    assert code == 550 and b"not a patient mailbox" in text
    gateway.wait_delivered(ALICE, 1)


def test_a_ris_copy_to_the_patient_starts_a_conversation_with_its_application_mailbox(
    cli: Cli, world: tuple[Gateway, PatientOperator]
) -> None:
    gateway, operator = world
    # Bob's mailbox is a RIS's: its copy for the patient (DESTMSSANTEPAT) starts the
    # conversation as a practitioner's message does, and the patient's reply is delivered to
    # the application mailbox as any message is.
    token = cli.ok("consumer", "add", "ris-a", "--mailbox", BOB, "--json").json()["token"]
    base = f"https://127.0.0.1:{gateway.ports['api']}"
    with httpx.Client(base_url=base, verify=gateway.client_context(), timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as api:  # fmt: skip
        body = mdm("PAT-1", recipients=(), flags=(("DESTMSSANTEPAT", "Y"),))
        response = api.post("/v1/outbound", content=body,
                            headers={"Content-Type": "application/hl7-v2"})  # fmt: skip
    assert response.status_code == 202, response.text
    [sent] = operator.wait_received(1)
    assert sent.rcpt_tos == [PATIENT]
    message_id = email.message_from_bytes(sent.content)["Message-ID"]
    assert message_id and message_id.endswith(f"@{BOB.split('@')[1]}>")
    assert operator.send(gateway, reply(to=BOB, In_Reply_To=message_id), to=BOB)[0] == 250
    [delivered] = gateway.wait_delivered(BOB, 1)
    assert b"Merci docteur." in delivered.read_bytes()
    # Alice never wrote to this patient.
    code, text = operator.send(gateway, reply(In_Reply_To=message_id))
    assert code == 550 and b"another professional" in text
