"""Return-Path is the envelope's, written at delivery; receipts go to the envelope sender only
(issue 12 C.7, C.8). A live gateway with Maildir delivery and a RIS reading BOB's mailbox."""

from __future__ import annotations

import email
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from mssgate.pki import load_certificate, load_private_key
from mssgate.smime import sign_message
from tests.conftest import DOMAIN, Cli
from tests.documents.factory import CdaSpec, make_cda
from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway

DAVE = f"dave@{DOMAIN}"  # the third mailbox a sender would like receipts to land in


@pytest.fixture
def live(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> tuple[Gateway, str, Path]:
    out = tmp_path / "smime"
    cli.ok("cert", "issue", ALICE, "--out", str(out))
    cli.ok("directory", "add", DAVE, "--name", "dave", "--rpps", "99700367909", "--password-stdin",
           stdin=PASSWORD + "\n")  # fmt: skip
    token = cli.ok("consumer", "add", "ris-a", "--mailbox", BOB, "--json").json()["token"]
    gateway_setup.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    gateway_setup.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    gateway_setup.start()
    yield gateway_setup, token, out  # type: ignore[misc]
    gateway_setup.stop()


def cr(out: Path, n: int, *, receipt_to: str, return_path: str) -> bytes:
    """A signed CR for BOB asking for a receipt at `receipt_to`, with a Return-Path of the
    sender's making (message-level fields stay outside the signed entity)."""
    msg = EmailMessage()
    msg["Return-Path"] = f"<{return_path}>"
    msg["From"] = ALICE
    msg["To"] = BOB
    msg["Subject"] = f"CR {n}"
    msg["Message-ID"] = f"<cr-{n}@{DOMAIN}>"
    msg["Disposition-Notification-To"] = receipt_to
    msg.set_content("Compte rendu ci-joint.")
    cda = make_cda(CdaSpec(doc_root=f"1.2.250.1.999.1.1.77.{n}"))
    msg.add_attachment(cda, maintype="text", subtype="xml", filename="CR.xml")
    key = load_private_key(out / f"{ALICE}.key.pem")
    cert = load_certificate(out / f"{ALICE}.crt.pem")
    return sign_message(msg.as_bytes(policy=policy.SMTP), key=key, cert=cert)


def return_paths(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [str(v) for v in email.message_from_bytes(head + b"\r\n\r\n").get_all("Return-Path")]


def test_receipts_go_to_the_envelope_sender_only(live: tuple[Gateway, str, Path]) -> None:
    gateway, token, out = live
    client = gateway.login()
    # 1: Return-Path and the receipt request agree on a third mailbox: no receipt at all.
    client.sendmail(ALICE, [BOB], cr(out, 1, receipt_to=DAVE, return_path=DAVE))
    # 2: the request names the envelope sender; a forged Return-Path must not stop it.
    client.sendmail(ALICE, [BOB], cr(out, 2, receipt_to=ALICE, return_path=DAVE))
    client.quit()
    delivered = gateway.wait_delivered(BOB, 2)
    for path in delivered:
        # The sender's copy is gone; the envelope sender is written in its place.
        assert return_paths(path.read_bytes()) == [f"<{ALICE}>"]
    with httpx.Client(
        base_url=f"https://127.0.0.1:{gateway.ports['api']}",
        verify=gateway.client_context(),
        headers={"Authorization": f"Bearer {token}"},
    ) as api:
        # The two documents may be queued apart: a lease taken before the second is kept
        # (it stays leased for 60 s, a later lease would not offer it again).
        leases: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(leases) < 2 and time.monotonic() < deadline:
            leases += api.post("/v1/leases", json={"max": 5, "lease_seconds": 60}).json()["leases"]
            time.sleep(0.1)
        assert len(leases) == 2
        for lease in leases:
            ack = api.post(
                f"/v1/documents/{lease['document']['id']}/ack", json={"lease_id": lease["lease_id"]}
            )
            assert ack.status_code in (200, 204)
    [receipt] = gateway.wait_delivered(ALICE, 1)
    mdn = email.message_from_bytes(receipt.read_bytes())
    assert mdn["In-Reply-To"] == f"<cr-2@{DOMAIN}>"
    # A notification keeps its null sender: Return-Path <> is what tells clients so.
    assert return_paths(receipt.read_bytes()) == ["<>"]
    spooled = [e for e in gateway.events() if e.get("event") == "receipt.spooled"]
    assert len(spooled) == 1
    assert gateway.mailbox(DAVE) == []
