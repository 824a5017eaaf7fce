"""The whole path in one live gateway: a signed CR-IMG by SMTP, documents found, queued for
the RIS, leased and acknowledged over HTTPS, and the receipt (MDN) back in the sender's box."""

from __future__ import annotations

import email
import json
from email import policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from mssgate.pki import load_certificate, load_private_key
from mssgate.smime import sign_message
from tests.conftest import Cli
from tests.documents.factory import CdaSpec, make_cda
from tests.smtp.conftest import ALICE, BOB, Gateway


@pytest.fixture
def live(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> tuple[Gateway, str, Path]:
    out = tmp_path / "smime"
    cli.ok("cert", "issue", ALICE, "--out", str(out))
    token = cli.ok("consumer", "add", "ris-a", "--mailbox", BOB, "--json").json()["token"]
    gateway_setup.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    gateway_setup.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    gateway_setup.start()
    yield gateway_setup, token, out  # type: ignore[misc]
    gateway_setup.stop()


def cr_img_mail(out: Path) -> bytes:
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = BOB
    msg["Subject"] = "CR d'imagerie"
    msg["Message-ID"] = "<cr-img-1@hopital-a.test>"
    msg["Disposition-Notification-To"] = ALICE
    msg.set_content("Compte rendu ci-joint.")
    msg.add_attachment(make_cda(CdaSpec()), maintype="text", subtype="xml", filename="CR.xml")
    key = load_private_key(out / f"{ALICE}.key.pem")
    cert = load_certificate(out / f"{ALICE}.crt.pem")
    return sign_message(msg.as_bytes(policy=policy.SMTP), key=key, cert=cert)


def test_cr_img_from_smtp_to_the_ris_and_receipt_back(live: tuple[Gateway, str, Path]) -> None:
    gateway, token, out = live
    client = gateway.login()
    client.sendmail(ALICE, [BOB], cr_img_mail(out))
    client.quit()
    gateway.wait_delivered(BOB, 1)
    ingested = gateway.wait_event("documents.ingested", documents=1)
    assert (ingested["queued"], ingested["quarantined"], ingested["duplicates"]) == (1, 0, 0)
    api = httpx.Client(
        base_url=f"https://127.0.0.1:{gateway.ports['api']}",
        verify=gateway.client_context(),
        headers={"Authorization": f"Bearer {token}"},
    )
    with api:
        leases = api.post("/v1/leases", json={"max": 5, "lease_seconds": 60}).json()["leases"]
        assert len(leases) == 1
        lease = leases[0]
        doc = lease["document"]
        assert doc["ins"]["value"] == "279035121518989"
        assert doc["mailbox"] == BOB and doc["sender"] == ALICE
        assert doc["imaging"][0]["study_instance_uid"] == "1.2.250.1.999.27.123.1"
        content = api.get(f"/v1/documents/{doc['id']}/content")
        assert content.status_code == 200 and b"ClinicalDocument" in content.content
        hl7 = api.get(f"/v1/documents/{doc['id']}/hl7")
        assert hl7.status_code == 200 and "MDM^T02" in hl7.text
        assert "279035121518989^^^ASIP-SANTE-INS-NIR" in hl7.text
        ack = api.post(f"/v1/documents/{doc['id']}/ack", json={"lease_id": lease["lease_id"]})
        assert ack.status_code in (200, 204)
        # Without a token: 401 problem+json.
        bare = httpx.get(
            f"https://127.0.0.1:{gateway.ports['api']}/v1/documents/{doc['id']}",
            verify=gateway.client_context(),
        )
        assert bare.status_code == 401
        assert bare.headers["content-type"].startswith("application/problem+json")
    [receipt] = gateway.wait_delivered(ALICE, 1)
    signed = email.message_from_bytes(receipt.read_bytes())
    # `consumer add` gave the RIS mailbox its key: the receipt is signed, the report inside.
    assert signed.get_content_type() == "multipart/signed"
    mdn = signed.get_payload(0)
    assert isinstance(mdn, email.message.Message)
    assert mdn.get_content_type() == "multipart/report"
    assert mdn.get_param("report-type") == "disposition-notification"
    parts = [p.get_content_type() for p in mdn.walk()]
    assert "message/disposition-notification" in parts
    gateway.wait_event("delivery.ok", queue_id=gateway.wait_event("receipt.spooled")["queue_id"])
    assert_logs_carry_ids_not_patients(gateway, doc["id"])


# Each message event names its message; the API's queue events name their document.
MESSAGE_EVENTS = ("smtp.accept", "delivery.ok", "documents.ingested", "receipt.spooled")
PATIENT = ("279035121518989", "PAT-TROIS", "DOMINIQUE", "MARIE-LOUISE", "19790328")


def assert_logs_carry_ids_not_patients(gateway: Gateway, doc_id: str) -> None:
    lines = [line for line in gateway.logs().splitlines() if line.strip()]
    # One JSON object per line, nothing else on stderr.
    events = [json.loads(line) for line in lines]
    names = {e.get("event") for e in events}
    assert set(MESSAGE_EVENTS) <= names, names
    for e in events:
        if e.get("event") in MESSAGE_EVENTS or str(e.get("event")).startswith("delivery."):
            assert isinstance(e.get("queue_id"), str) and e["queue_id"], e
    [leased] = [e for e in events if e.get("event") == "queue.leased"]
    [acked] = [e for e in events if e.get("event") == "queue.acked"]
    for e in (leased, acked):
        assert (e["document_id"], e["consumer"]) == (doc_id, "ris-a")
    text = "\n".join(lines)
    for secret in PATIENT:
        assert secret not in text, secret


def test_kill_9_mid_lease_loses_nothing(live: tuple[Gateway, str, Path]) -> None:
    import signal
    import time

    gateway, token, out = live
    client = gateway.login()
    client.sendmail(ALICE, [BOB], cr_img_mail(out))
    client.quit()
    gateway.wait_event("documents.ingested", documents=1)

    def api() -> httpx.Client:
        return httpx.Client(
            base_url=f"https://127.0.0.1:{gateway.ports['api']}",
            verify=gateway.client_context(),
            headers={"Authorization": f"Bearer {token}"},
        )

    with api() as first:
        leases = first.post("/v1/leases", json={"max": 1, "lease_seconds": 2}).json()["leases"]
    assert len(leases) == 1
    doc_id = leases[0]["document"]["id"]
    assert gateway.stop(signal.SIGKILL) == -signal.SIGKILL
    gateway.start()
    time.sleep(2.5)  # the lease held by the dead process expires
    with api() as second:
        again = second.post("/v1/leases", json={"max": 5, "lease_seconds": 60}).json()["leases"]
        assert [lease["document"]["id"] for lease in again] == [doc_id]
        ack = second.post(f"/v1/documents/{doc_id}/ack", json={"lease_id": again[0]["lease_id"]})
        assert ack.status_code in (200, 204)
        # The first lease is gone: acking with it is a conflict, not a second success.
        stale = second.post(f"/v1/documents/{doc_id}/ack", json={"lease_id": leases[0]["lease_id"]})
        assert stale.status_code in (404, 409)
