"""The document pipeline runs apart from delivery, bounded per message (issue 12 item 13).

Through a real `mssgate serve` and real SMTP: a message to a RIS mailbox carrying a PDF whose
one page costs pypdf about half a minute, then a plain message to a person. Before the fix
local delivery ran the pipeline inline and serially, so the person's message waited for the
PDF; now it is in its mailbox at once, and the slow message ends in quarantine, held whole
with the reason, within its time budget (the worker process killed at the budget)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import DOMAIN, Cli
from tests.documents.slow_pdf import make_slow_pdf
from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway, free_env, message

RIS = f"ris@{DOMAIN}"
BUDGET = 4.0


def slow_mail() -> bytes:
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = RIS
    msg["Subject"] = "Compte rendu"
    msg["Message-ID"] = "<slow-pdf@hopital-a.test>"
    msg.set_content("Compte rendu ci-joint.")
    msg.add_attachment(make_slow_pdf(), maintype="application", subtype="pdf", filename="CR.pdf")
    return msg.as_bytes(policy=policy.SMTP)


@pytest.fixture
def ris_gateway(cli: Cli, datadir: Path) -> Iterator[Gateway]:
    for who in (ALICE, BOB):
        cli.ok("directory", "add", who, "--name", who.split("@")[0], "--rpps", "99700367909",
               "--password-stdin",
               stdin=PASSWORD + "\n")  # fmt: skip
    cli.ok("directory", "add", RIS, "--name", "RIS imagerie", "--kind", "application")
    cli.ok("consumer", "add", "ris", "--mailbox", RIS)
    gateway = Gateway(data=datadir, env=free_env(datadir))
    gateway.env["MSSGATE_DOCUMENTS__TIME_BUDGET_SECONDS"] = str(BUDGET)
    gateway.start()
    try:
        yield gateway
    finally:
        if gateway.proc is not None:
            gateway.stop()


def test_a_slow_pdf_neither_delays_another_mailbox_nor_outlives_its_budget(
    ris_gateway: Gateway, cli: Cli
) -> None:
    gateway = ris_gateway
    client = gateway.login()
    client.sendmail(ALICE, [RIS], slow_mail())
    client.sendmail(ALICE, [BOB], message(to=BOB))
    client.quit()

    # Causal, not timed (a loaded CI machine stretches every duration): the person's message
    # is in its mailbox while the slow PDF's job is still running, so it did not wait behind
    # it. Before, delivery ran the pipeline inline and serially: the budget ran out first.
    gateway.wait_delivered(BOB, 1, timeout=60)
    assert not [e for e in gateway.events() if e.get("event") == "documents.budget_exceeded"], (
        "the person's message waited behind the slow PDF"
    )
    gateway.wait_delivered(RIS, 1, timeout=10)  # the RIS's mailbox copy is not held either

    # The budget cut the job (unbounded it runs ~27 s and ends otherwise): its event, and the
    # quarantine reason below, say so.
    over = gateway.wait_event("documents.budget_exceeded", timeout=60)
    ingested = gateway.wait_event("documents.ingested", timeout=10, queue_id=over["queue_id"])
    assert ingested["documents"] == 1
    # Held, not sent to the RIS: counted apart from the queued ones.
    assert (ingested["queued"], ingested["quarantined"], ingested["duplicates"]) == (0, 1, 0)
    [entry] = json.loads(cli.ok("quarantine", "list", "--json").out)
    assert entry["mailbox"] == RIS and entry["code"] == 906
    assert f"time budget of {BUDGET:g} s per message" in entry["reason"]
    assert entry["origin"] == "message"

    # The worker was replaced: the next message to the RIS goes through the pipeline.
    client = gateway.login()
    client.sendmail(ALICE, [RIS], message(to=RIS, body="Bonjour"))
    client.quit()
    gateway.wait_event("documents.ingested", timeout=30, documents=0)
