"""A RIS set up with nothing but `consumer add` sends signed receipts: the command gave its
application mailbox a key pair where the running gateway looks for it (issue 18 item 7)."""

from __future__ import annotations

import email
from pathlib import Path

import httpx

from mssgate.pki import is_smime_for, load_certificate
from mssgate.smime import verify_signed_message
from tests.conftest import Cli
from tests.smtp.conftest import ALICE, BOB, Gateway
from tests.smtp.test_end_to_end import cr_img_mail


def receipt_for_one_report(gateway: Gateway, token: str, out: Path) -> bytes:
    """Sends a signed CR to BOB (the RIS mailbox), leases and acks it: the MDN back."""
    gateway.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    gateway.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    gateway.start()
    try:
        client = gateway.login()
        client.sendmail(ALICE, [BOB], cr_img_mail(out))
        client.quit()
        gateway.wait_event("documents.ingested", documents=1)
        api = httpx.Client(
            base_url=f"https://127.0.0.1:{gateway.ports['api']}",
            verify=gateway.client_context(),
            headers={"Authorization": f"Bearer {token}"},
        )
        with api:
            [lease] = api.post("/v1/leases", json={"max": 5, "lease_seconds": 60}).json()["leases"]
            doc_id = lease["document"]["id"]
            ack = api.post(f"/v1/documents/{doc_id}/ack", json={"lease_id": lease["lease_id"]})
            assert ack.status_code in (200, 204)
        [receipt] = gateway.wait_delivered(ALICE, 1)
        gateway.wait_event("receipt.spooled")
    finally:
        gateway.stop()
    return receipt.read_bytes()


def test_receipt_of_a_consumer_made_by_consumer_add_alone_is_signed(
    cli: Cli, gateway_setup: Gateway, tmp_path: Path
) -> None:
    out = tmp_path / "smime"
    cli.ok("cert", "issue", ALICE, "--out", str(out))  # the sender's own S/MIME identity
    # Nothing else for BOB, the RIS mailbox: no `cert issue ... --out certs/mailboxes`.
    token = cli.ok("consumer", "add", "ris-a", "--mailbox", BOB, "--json").json()["token"]
    raw = receipt_for_one_report(gateway_setup, token, out)
    assert email.message_from_bytes(raw).get_content_type() == "multipart/signed"
    ca = load_certificate(gateway_setup.ca)
    verdict = verify_signed_message(raw, trust_anchors=[ca], registered=None)
    assert verdict.ok, verdict
    assert verdict.signer_certificate is not None and is_smime_for(verdict.signer_certificate, BOB)
    assert b"disposition-notification" in (verdict.content or b"")
    events = {e.get("event") for e in gateway_setup.events()}
    assert "notification.unsigned" not in events


def test_without_a_dev_ca_the_unsigned_receipt_is_logged_with_its_fix(
    cli: Cli, gateway_setup: Gateway, tmp_path: Path
) -> None:
    out = tmp_path / "smime"
    cli.ok("cert", "issue", ALICE, "--out", str(out))
    (gateway_setup.data / "certs" / "ca.key.pem").unlink()  # production: no CA key here
    added = cli.ok("consumer", "add", "ris-a", "--mailbox", BOB, "--json")
    assert "mssgate cert install-key" in added.err
    raw = receipt_for_one_report(gateway_setup, added.json()["token"], out)
    assert email.message_from_bytes(raw).get_content_type() == "multipart/report"
    [unsigned] = [e for e in gateway_setup.events() if e.get("event") == "notification.unsigned"]
    assert unsigned["author"] == BOB
    assert unsigned["fix"] == f"mssgate consumer add (dev CA) or mssgate cert install-key {BOB}"
