"""Prometheus metrics of a live gateway change as a scripted scenario expects."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage

import httpx
import pytest

from tests.conftest import Cli
from tests.documents.factory import CdaSpec, make_cda
from tests.smtp.conftest import ALICE, BOB, Gateway, message


def scrape(gateway: Gateway) -> dict[str, float]:
    text = httpx.get(
        f"https://127.0.0.1:{gateway.ports['api']}/metrics", verify=gateway.client_context()
    ).text
    values = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def test_metrics_follow_accepts_and_rejects(gateway: Gateway) -> None:
    before = scrape(gateway)
    client = gateway.login()
    client.sendmail(ALICE, [BOB], message())
    client.mail(ALICE)
    assert client.docmd("RCPT TO:<nobody@hopital-a.test>")[0] == 550
    client.quit()
    gateway.wait_delivered(BOB, 1)
    gateway.wait_event("delivery.ok")
    after = scrape(gateway)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    accepted = 'mssgate_smtp_messages_total{listener="submission",outcome="accepted"}'
    assert delta(accepted) == 1
    rejected = [k for k in after if k.startswith("mssgate_smtp_rejections_total") and "5.1.1" in k]
    assert rejected and sum(delta(k) for k in rejected) == 1
    tls = [k for k in after if k.startswith("mssgate_tls_sessions_total") and "TLSv1.3" in k]
    assert tls and sum(delta(k) for k in tls) >= 1
    delivered = [k for k in after if k.startswith("mssgate_delivery_attempts_total")]
    assert any(delta(k) == 1 for k in delivered if "delivered" in k)
    assert "@" not in "".join(after)  # no addresses in labels


@pytest.fixture
def ris_gateway(cli: Cli, gateway_setup: Gateway) -> Iterator[Gateway]:
    # Documents are extracted only for a mailbox a RIS consumes.
    cli.ok("consumer", "add", "ris-b", "--mailbox", BOB)
    gateway_setup.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    gateway_setup.start()
    yield gateway_setup
    gateway_setup.stop()


def cda_mail(n: int, *, with_ins: bool) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"] = ALICE, BOB
    msg["Subject"] = "CR d'imagerie"
    msg["Message-ID"] = f"<metrics-{n}@hopital-a.test>"
    msg.set_content("Compte rendu ci-joint.")
    cda = make_cda(CdaSpec(include_ins=with_ins))
    msg.add_attachment(cda, maintype="text", subtype="xml", filename="CR.xml")
    return msg.as_bytes(policy=policy.SMTP)


def test_metrics_follow_queued_and_quarantined_documents(ris_gateway: Gateway) -> None:
    gateway = ris_gateway
    before = scrape(gateway)
    client = gateway.login()
    client.sendmail(ALICE, [BOB], cda_mail(1, with_ins=True))
    client.sendmail(ALICE, [BOB], cda_mail(2, with_ins=False))
    client.quit()
    gateway.wait_delivered(BOB, 2)
    deadline = time.monotonic() + 20
    while (
        len(ingested := [e for e in gateway.events() if e.get("event") == "documents.ingested"]) < 2
    ):
        assert time.monotonic() < deadline, ingested
        time.sleep(0.05)
    after = scrape(gateway)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def documents(outcome: str) -> float:
        keys = [k for k in after if k.startswith("mssgate_documents_total{")]
        return sum(delta(k) for k in keys if f'outcome="{outcome}"' in k)

    assert documents("queued") == 1
    assert documents("quarantined") == 1
    # The gauges are read from the database: what is held now, not what happened.
    assert after["mssgate_quarantine_documents"] == 1
    assert after["mssgate_quarantine_bytes"] > 0
    assert after['mssgate_queue_documents{state="ready"}'] == 1
    assert after["mssgate_database_up"] == 1
