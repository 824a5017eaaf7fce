"""Issue 12 A.1: submissions and RIS polling at once, on the embedded default (SQLite).

Before one write-transaction API, queue transitions took SQLite's write lock first and the
process's lock at their first write, while spool commits took them in the other order:
under ordinary load with a RIS polling, acceptances waited out SQLite's 10 s busy handler and
failed with `database is locked` (451 to clients, 500 on the API). Here four SMTP sessions
send signed CR-IMG messages to a RIS mailbox while two RIS clients lease and ack: every
message must be accepted, every document acked, and the API must never answer 5xx.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
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

SENDERS = 4
PER_SENDER = 40
POLLERS = 2


@pytest.fixture
def live(
    cli: Cli, gateway_setup: Gateway, tmp_path: Path
) -> Iterator[tuple[Gateway, list[str], Path]]:
    out = tmp_path / "smime"
    cli.ok("cert", "issue", ALICE, "--out", str(out))
    tokens = [
        cli.ok("consumer", "add", f"ris-{i}", "--mailbox", BOB, "--json").json()["token"]
        for i in range(POLLERS)
    ]
    gateway_setup.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    gateway_setup.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    gateway_setup.start()
    yield gateway_setup, tokens, out
    gateway_setup.stop()


def signed_reports(out: Path, sender: int) -> list[bytes]:
    key = load_private_key(out / f"{ALICE}.key.pem")
    cert = load_certificate(out / f"{ALICE}.crt.pem")
    mails = []
    for n in range(PER_SENDER):
        # Each report its own document: the same bytes twice would test deduplication.
        cda = make_cda(CdaSpec(accessions=(("1.2.250.1.999.27", f"ACC-{sender}-{n}"),)))
        msg = EmailMessage()
        msg["From"] = ALICE
        msg["To"] = BOB
        msg["Subject"] = "CR d'imagerie"
        msg["Message-ID"] = f"<load-{sender}-{n}@hopital-a.test>"
        msg.set_content("Compte rendu ci-joint.")
        msg.add_attachment(cda, maintype="text", subtype="xml", filename="CR.xml")
        mails.append(sign_message(msg.as_bytes(policy=policy.SMTP), key=key, cert=cert))
    return mails


def test_submissions_and_ris_polling_never_block_each_other(
    live: tuple[Gateway, list[str], Path],
) -> None:
    gateway, tokens, out = live
    batches = [signed_reports(out, s) for s in range(SENDERS)]
    refused: list[str] = []
    api_errors: list[str] = []
    acked: set[str] = set()
    senders_done = threading.Event()
    lock = threading.Lock()

    def send(batch: list[bytes]) -> None:
        client = gateway.login()
        try:
            for mail in batch:
                try:
                    client.sendmail(ALICE, [BOB], mail)
                except smtplib.SMTPResponseException as exc:
                    with lock:
                        refused.append(f"{exc.smtp_code} {exc.smtp_error!r}")
        finally:
            client.quit()

    def poll(token: str) -> None:
        api = httpx.Client(
            base_url=f"https://127.0.0.1:{gateway.ports['api']}",
            verify=gateway.client_context(),
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        deadline = time.monotonic() + 180
        with api:
            while time.monotonic() < deadline:
                resp = api.post("/v1/leases", json={"max": 5})
                if resp.status_code != 200:
                    with lock:
                        api_errors.append(f"lease {resp.status_code} {resp.text[:200]}")
                    continue
                leases = resp.json()["leases"]
                if not leases:
                    with lock:
                        if senders_done.is_set() and len(acked) >= SENDERS * PER_SENDER:
                            return
                    time.sleep(0.02)
                    continue
                for lease in leases:
                    doc = lease["document"]["id"]
                    ack = api.post(f"/v1/documents/{doc}/ack", json={"lease_id": lease["lease_id"]})
                    if ack.status_code != 200:
                        with lock:
                            api_errors.append(f"ack {ack.status_code} {ack.text[:200]}")
                        continue
                    with lock:
                        acked.add(lease["document"]["message_id"])

    pollers = [threading.Thread(target=poll, args=(t,)) for t in tokens]
    sending = [threading.Thread(target=send, args=(b,)) for b in batches]
    for t in pollers + sending:
        t.start()
    for t in sending:
        t.join(300)
    senders_done.set()
    for t in pollers:
        t.join(300)
    assert refused == []
    assert api_errors == []
    assert len(acked) == SENDERS * PER_SENDER
