"""The RIS sends through the gateway (issue 15, first part): POST /v1/outbound over real
HTTPS to a running `mssgate serve`, the copy delivered to a local practitioner, its signature
checked by openssl, its XDM read by our own pipeline; refusals with AE/AR and nothing sent;
the same MSH-10 twice sent once; the status of another consumer's message is 404."""

from __future__ import annotations

import base64
import email
import email.policy
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hl7  # type: ignore[import-untyped]
import httpx
import pytest

from mssgate.documents import process_message
from mssgate.documents.samples import CdaSpec, make_cda, make_pdf
from tests.conftest import Cli
from tests.smtp.conftest import ALICE, BOB, PEER_DOMAIN, Gateway

INS = "279035121518989"
OID = "1.2.250.1.213.1.4.10"


def mdm(
    control: str = "CTL-0001",
    *,
    event: str = "MDM^T02^MDM_T02",
    ins: str = INS,
    cda: bytes | None = None,
    cda_b64: str | None = None,
    recipients: tuple[str, ...] = (ALICE,),
    flags: tuple[tuple[str, str], ...] = (),
    pdf: bytes | None = None,
    oid: str = OID,
) -> bytes:
    """An MDM^T02 as a RIS writes it (test data, written as ER7 text on purpose)."""
    payload = cda_b64 if cda_b64 is not None else base64.b64encode(cda or make_cda()).decode()
    # OBX-11 as the guide pairs it with the event (an ORU's F: a new document).
    status = {"MDM^T10": "C", "MDM^T04": "D"}.get(event[:7], "F")
    segments = [
        f"MSH|^~\\&|RIS|CENTRE|MSSGATE|GW|20240116151112||{event}|{control}|P|2.6"
        "|||||FRA|UNICODE UTF-8",
        "EVN||20240116151112",
        f"PID|1||{ins}^^^ASIP-SANTE-INS-NIR&{oid}&ISO^INS||PAT-TROIS^DOMINIQUE^^^^^L||19790328|F",
        "PV1|1|N",
        "TXA|1|18748-4|TEXT|20240116||||||||1.2.250.1.999.1.1.45.1||||||AU|||||801234560801^DOC^KIT",
        f"OBX|1|ED|18748-4^CR d'imagerie^LN||^text^XML^Base64^{payload}||||||{status}",
    ]
    if pdf is not None:
        segments.append(
            f"OBX|2|ED|18748-4^CR^LN||^application^PDF^Base64^{base64.b64encode(pdf).decode()}"
            f"||||||{status}"
        )
    for address in recipients:
        segments.append(f"PRT|1|UC||RCT^^participation|||||||||||^^X.400^{address}")
    for n, (code, flag) in enumerate(flags, start=3):
        segments.append(
            f"OBX|{n}|CWE|{code}^{code}^MetaDMPMSS||{flag}^^expandedYes-NoIndicator||||||F"
        )
    return "\r".join(segments).encode()


@pytest.fixture
def live(cli: Cli, gateway_setup: Gateway) -> Iterator[tuple[Gateway, httpx.Client, httpx.Client]]:
    ris = cli.ok("consumer", "add", "ris-a", "--mailbox", BOB, "--json").json()["token"]
    other = cli.ok("consumer", "add", "ris-b", "--mailbox", BOB, "--json").json()["token"]
    gateway_setup.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    gateway_setup.start()
    base = f"https://127.0.0.1:{gateway_setup.ports['api']}"
    clients = [
        httpx.Client(base_url=base, verify=gateway_setup.client_context(), timeout=60,
                     headers={"Authorization": f"Bearer {t}"})
        for t in (ris, other)
    ]  # fmt: skip
    try:
        yield gateway_setup, clients[0], clients[1]
    finally:
        for c in clients:
            c.close()
        gateway_setup.stop()


def post(api: httpx.Client, body: bytes) -> tuple[httpx.Response, hl7.Message]:
    response = api.post("/v1/outbound", content=body,
                        headers={"Content-Type": "application/hl7-v2"})  # fmt: skip
    return response, hl7.parse(response.text)


def test_mdm_t02_reaches_a_local_practitioner_signed_and_readable_by_our_pipeline(
    live: tuple[Gateway, httpx.Client, httpx.Client], tmp_path: Path
) -> None:
    gateway, api, other = live
    pdf = make_pdf(["Compte rendu PAT-TROIS"])
    response, ack = post(api, mdm(pdf=pdf))
    assert response.status_code == 202, response.text
    assert str(ack.segment("MSA")[1]) == "AA" and str(ack.segment("MSA")[2]) == "CTL-0001"
    location = response.headers["Location"]
    assert location.startswith("/v1/outbound/")

    [delivered] = gateway.wait_delivered(ALICE, 1)
    raw = delivered.read_bytes()
    verified = subprocess.run(
        ["openssl", "smime", "-verify", "-in", str(delivered), "-CAfile", str(gateway.ca),
         "-out", str(tmp_path / "content.eml")],
        capture_output=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["From"] == BOB and parsed["Disposition-Notification-To"] == BOB
    assert parsed["Subject"].startswith("XDM/1.0/DDM+")
    assert parsed["Subject"].endswith("PAT-TROIS DOMINIQUE 28/03/1979")
    assert parsed["X-MSS-CODECDA"] == "18748-4" and parsed["X-MSS-INS"] == "O"

    result = process_message(raw, allow_test_oids=True)
    assert not result.quarantined, result.quarantined
    [cda, _pdf_doc] = sorted(result.accepted, key=lambda a: a.record.content_type)
    assert cda.record.ins.value == INS
    assert {a.record.content_type for a in result.accepted} == {"application/pdf", "text/xml"}

    status = api.get(location).json()
    assert status["event"] == "MDM^T02"
    assert status["recipients"] == [
        {"address": ALICE, "status": "delivered", "code": None, "detail": None}
    ]
    # The reception acknowledgement: ZAM^Z02, OBX-4 the MDM's MSH-10, Y, the recipient.
    [zam] = api.get(f"{location}/acks").json()
    zam_message = hl7.parse(zam)
    assert str(zam_message.segment("MSH")[9]) == "ZAM^Z02^ZAM_Z01"
    assert str(zam_message.segment("MSH")[5]) == "RIS"
    [reception, recipient] = zam_message.segments("OBX")
    assert str(reception[3]) == "ACK_RECEPTION_MSS^Accusé de réception MSSanté^AckMetierZAM"
    assert str(reception[4]) == "CTL-0001" and str(reception[5]) == "Y^^expandedYes-NoIndicator"
    assert str(recipient[5]) == f"^^X.400^{ALICE}"
    # Another consumer (even of the same mailbox) does not see it.
    assert other.get(location).status_code == 404
    assert other.get(f"{location}/acks").status_code == 404
    assert api.get("/v1/outbound/NOSUCHID").status_code == 404

    # The same MSH-10 again: the same answer, nothing spooled.
    again, ack_again = post(api, mdm(pdf=pdf))
    assert again.status_code == 202 and again.headers["Location"] == location
    assert str(ack_again.segment("MSA")[1]) == "AA"
    gateway.wait_event("outbound.repeated")
    assert len([e for e in gateway.events() if e.get("event") == "outbound.accepted"]) == 1
    # A different MSH-10 is a new message.
    third, _ = post(api, mdm("CTL-0002"))
    assert third.status_code == 202 and third.headers["Location"] != location
    gateway.wait_delivered(ALICE, 2)


def _refused(api: httpx.Client, body: bytes, ack_code: str, err_code: str) -> None:
    response, ack = post(api, body)
    assert response.status_code in (400, 422), response.text
    assert "Location" not in response.headers
    msa = ack.segment("MSA")
    assert str(msa[1]) == ack_code, response.text
    errors = ack.segments("ERR")
    assert errors, response.text
    assert err_code in [str(e[3][0][0]) for e in errors], response.text


def test_invalid_submissions_get_ae_or_ar_with_err_and_nothing_is_sent(
    live: tuple[Gateway, httpx.Client, httpx.Client],
) -> None:
    gateway, api, _ = live
    response = api.post(
        "/v1/outbound", content=b"hello", headers={"Content-Type": "application/hl7-v2"}
    )
    assert response.status_code == 400 and "MSA|AR" in response.text
    assert (
        api.post(
            "/v1/outbound", content=mdm(), headers={"Content-Type": "application/json"}
        ).status_code
        == 415
    )
    bad_key = INS[:-2] + "00"
    _refused(api, mdm("C1", ins=bad_key), "AE", "102")
    _refused(api, mdm("C2", recipients=()), "AE", "101")
    _refused(api, mdm("C3", cda_b64="@@not base64@@"), "AE", "102")
    _refused(api, mdm("C4", event="ADT^A01^ADT_A01"), "AR", "200")
    _refused(api, mdm("C5", event="MDM^T99^MDM_T02"), "AR", "201")
    other = CdaSpec(patient=CdaSpec().patient.__class__(ins="277076322082910", family="NESSI",
                    given_list="RUTH", first_given="RUTH", birth_time="19770714"))  # fmt: skip
    _refused(api, mdm("C6", cda=make_cda(other)), "AE", "904")
    _refused(api, mdm("C7", cda=b"<ClinicalDocument><unclosed>"), "AE", "906")
    _refused(api, mdm("C8", recipients=("doc@nowhere.test",)), "AE", "906")
    _refused(
        api, mdm("C9", flags=(("DESTMSSANTEPAT", "Y"), ("INVISIBLE_PATIENT", "Y"))), "AE", "103"
    )
    # The patient's mailbox is at a domain this gateway does not trust: refused, not dropped.
    _refused(api, mdm("C10", flags=(("DESTMSSANTEPS", "Y"), ("DESTMSSANTEPAT", "Y"))), "AE", "906")
    # The MSA-2 echoes MSH-10.
    _, ack = post(api, mdm("ECHO-1", recipients=()))
    assert str(ack.segment("MSA")[2]) == "ECHO-1"
    assert gateway.mailbox(ALICE) == []
    assert not [e for e in gateway.events() if e.get("event") == "outbound.accepted"]
    assert len([e for e in gateway.events() if e.get("event") == "outbound.refused"]) >= 11


def test_a_peer_recipient_is_accepted_and_queued_for_the_relay(
    live: tuple[Gateway, httpx.Client, httpx.Client],
) -> None:
    _gateway, api, _ = live
    response, _ack = post(api, mdm("PEER-1", recipients=(f"dr@{PEER_DOMAIN}",)))
    assert response.status_code == 202, response.text
    status = api.get(response.headers["Location"]).json()
    [recipient] = status["recipients"]
    # The peer of the fixture does not listen: the copy waits for the relay (or failed).
    assert recipient["address"] == f"dr@{PEER_DOMAIN}"
    assert recipient["status"] in ("queued", "failed")


def mdn(original_message_id: str, *, sender: str = ALICE, to: str = BOB) -> bytes:
    """A read receipt as a mail client writes it (RFC 8098)."""
    lines = [
        f"From: {sender}", f"To: {to}", "Subject: Lu : compte rendu",
        "Message-ID: <mdn-1@client.test>", "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=disposition-notification; boundary="b1"',
        "", "--b1", "Content-Type: text/plain; charset=utf-8", "",
        "Votre message a ete lu.", "--b1", "Content-Type: message/disposition-notification", "",
        f"Final-Recipient: rfc822; {sender}", f"Original-Message-ID: {original_message_id}",
        "Disposition: manual-action/MDN-sent-manually; displayed", "", "--b1--", "",
    ]  # fmt: skip
    return "\r\n".join(lines).encode()


def test_a_read_receipt_from_the_recipient_marks_the_copy_read_and_yields_a_z03(
    live: tuple[Gateway, httpx.Client, httpx.Client],
) -> None:
    gateway, api, _ = live
    response, _ = post(api, mdm("READ-1"))
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    [delivered] = gateway.wait_delivered(ALICE, 1)
    copy_id = email.message_from_bytes(delivered.read_bytes())["Message-ID"]
    smtp = gateway.login()
    smtp.sendmail(ALICE, [BOB], mdn(copy_id))
    smtp.quit()
    gateway.wait_event("outbound.read", timeout=30)
    [recipient] = api.get(location).json()["recipients"]
    assert recipient["status"] == "read"
    assert recipient["detail"] == "manual-action/MDN-sent-manually; displayed"
    kinds = [str(hl7.parse(z).segment("MSH")[9]) for z in api.get(f"{location}/acks").json()]
    assert kinds == ["ZAM^Z02^ZAM_Z01", "ZAM^Z03^ZAM_Z01"]


def test_the_same_msh10_posted_four_times_at_once_is_sent_once(
    live: tuple[Gateway, httpx.Client, httpx.Client],
) -> None:
    gateway, api, _ = live
    body = mdm("RACE-1")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(api, body)[0], range(4)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.headers["Location"] for a in answers}) == 1
    assert all("MSA|AA|RACE-1" in a.text for a in answers)
    gateway.wait_delivered(ALICE, 1)
    accepted = [e for e in gateway.events() if e.get("event") == "outbound.accepted"]
    assert len(accepted) == 1
    # The Maildir file is written before the delivery commits its row: the status follows.
    location = answers[0].headers["Location"]
    deadline = time.monotonic() + 30
    while (status := api.get(location).json()["recipients"][0]["status"]) == "queued":
        assert time.monotonic() < deadline, "the delivery's status still queued after 30 s"
        time.sleep(0.05)
    assert status == "delivered"
    assert len(gateway.mailbox(ALICE)) == 1
