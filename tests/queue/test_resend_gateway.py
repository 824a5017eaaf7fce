"""A resend through the real path (issue 12 item 14): SMTP into `mssgate serve`, the RIS
leasing and acking over the HTTPS API, then the same report sent again in a new message.
Before the fix the second copy vanished: no entry, nothing to lease, no log."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from tests.conftest import DOMAIN, Cli
from tests.documents.factory import CdaSpec, make_cda
from tests.smtp.conftest import ALICE, PASSWORD, Gateway, free_env

RIS = f"ris@{DOMAIN}"


def report_mail(n: int, cda: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = RIS
    msg["Subject"] = "XDM/1.0/DDM+CR d'imagerie medicale PAT-TROIS DOMINIQUE 28/03/1979"
    msg["Message-ID"] = f"<resend-{n}@hopital-a.test>"
    msg.set_content("Compte rendu ci-joint.")
    msg.add_attachment(cda, maintype="text", subtype="xml", filename="CR.xml")
    return msg.as_bytes(policy=policy.SMTP)


@pytest.fixture
def ris_gateway(cli: Cli, datadir: Path) -> Iterator[tuple[Gateway, str]]:
    cli.ok("directory", "add", ALICE, "--name", "alice", "--rpps", "99700367909",
           "--password-stdin",
           stdin=PASSWORD + "\n")  # fmt: skip
    cli.ok("directory", "add", RIS, "--name", "RIS imagerie", "--kind", "application")
    token = json.loads(cli.ok("consumer", "add", "ris", "--mailbox", RIS, "--json").out)["token"]
    gateway = Gateway(data=datadir, env=free_env(datadir))
    gateway.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    gateway.start()
    try:
        yield gateway, token
    finally:
        if gateway.proc is not None:
            gateway.stop()


def send(gateway: Gateway, raw: bytes) -> None:
    client = gateway.login()
    client.sendmail(ALICE, [RIS], raw)
    client.quit()


def test_a_report_sent_again_after_the_ris_acked_it_is_leased_again(
    ris_gateway: tuple[Gateway, str],
) -> None:
    gateway, token = ris_gateway
    cda = make_cda(CdaSpec())
    api = httpx.Client(
        base_url=f"https://127.0.0.1:{gateway.ports['api']}",
        verify=ssl.create_default_context(cafile=gateway.ca),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    with api:
        send(gateway, report_mail(1, cda))
        gateway.wait_event("documents.ingested", documents=1)
        [lease] = api.post("/v1/leases", json={"max": 10}).json()["leases"]
        first = lease["document"]["id"]
        assert lease["document"]["duplicate_of"] is None
        acked = api.post(f"/v1/documents/{first}/ack", json={"lease_id": lease["lease_id"]})
        assert acked.status_code == 200

        send(gateway, report_mail(2, cda))  # the sender's resend: a new message
        ingested = _wait_ingested(gateway, 2)
        assert [e["documents"] for e in ingested] == [1, 1]
        assert ingested[0]["queue_id"] != ingested[1]["queue_id"]
        [resent] = [e for e in gateway.events() if e.get("event") == "queue.resent"]
        assert resent["duplicate_of"] == first
        leases = api.post("/v1/leases", json={"max": 10}).json()["leases"]
        assert len(leases) == 1, "the resent report must be leasable again"
        [again] = leases
        assert again["document"]["id"] != first
        assert again["document"]["duplicate_of"] == first
        assert again["document"]["message_id"] == "<resend-2@hopital-a.test>"
        shown = api.get(f"/v1/documents/{again['document']['id']}").json()
        assert shown["duplicate_of"] == first


def _wait_ingested(gateway: Gateway, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [e for e in gateway.events() if e.get("event") == "documents.ingested"]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} documents.ingested events")
