"""A routing rule's `forward` between two real gateways (issue 16, part 1): a report from a
practitioner of B reaches the RIS of A; A's rule forwards it as a new message signed by A's
application mailbox over the relay to B, whose pipeline queues it for B's RIS with the same
INS and uniqueId. Once A's sending mailbox is suspended, the next report is held at A with
a reason naming the rule, and nothing leaves."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import httpx
import pytest

from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from mssgate.pki import load_certificate, load_private_key
from mssgate.smime import sign_message
from tests.conftest import DOMAIN, Cli
from tests.smtp.conftest import PEER_DOMAIN, Gateway
from tests.smtp.test_two_gateways import DR_B, pair  # noqa: F401  (the fixture)

RIS_A = f"ris@{DOMAIN}"
FWD = f"routeur@{DOMAIN}"
RIS_B = f"ris-b@{PEER_DOMAIN}"
PATIENT = replace(PAT_TROIS, oid=OID_NIR)  # neither gateway takes test INS


@pytest.fixture
def a_env(datadir: Path) -> Iterator[dict[str, str]]:
    # In A's file, which both its serve and the CLI read (route add checks the sender).
    with (datadir / "mssgate.toml").open("a") as config:
        config.write(f'\n[routing]\nforward_from = "{FWD}"\n')
    yield {}


def poll(read: Callable[[], list[Any]], timeout: float = 60) -> list[Any]:
    """What `read` returns once it is not empty (a delivery, then a pipeline, runs first)."""
    deadline = time.monotonic() + timeout
    while not (found := read()):
        if time.monotonic() > deadline:
            raise AssertionError("nothing came")
        time.sleep(0.2)
    return found


def report_from_b(b: Gateway, n: int) -> str:
    """A signed report from DR_B to A's RIS; its document's uniqueId."""
    root = f"1.2.250.1.999.1.1.91.{n}"
    msg = EmailMessage()
    msg["From"], msg["To"] = DR_B, RIS_A
    msg["Subject"] = "XDM/1.0/DDM+CR d'imagerie medicale PAT-TROIS DOMINIQUE 28/03/1979"
    msg["Message-ID"] = f"<fwd-{n}@{PEER_DOMAIN}>"
    msg.set_content("Compte rendu ci-joint.")
    msg.add_attachment(make_cda(CdaSpec(patient=PATIENT, doc_root=root)), maintype="text",
                       subtype="xml", filename="CR.xml")  # fmt: skip
    out: Path = b.smime  # type: ignore[attr-defined]
    signed = sign_message(
        msg.as_bytes(policy=SMTP),
        key=load_private_key(out / f"{DR_B}.key.pem"),
        cert=load_certificate(out / f"{DR_B}.crt.pem"),
    )
    client = b.login(DR_B)
    client.sendmail(DR_B, [RIS_A], signed)
    client.quit()
    return root


def test_a_forward_reaches_the_peer_signed_and_is_queued_there(
    cli: Cli,
    pair: tuple[Gateway, Gateway],  # noqa: F811
) -> None:
    a, b = pair
    b_cfg = ["--config", str(b.data / "mssgate.toml")]
    # A: the RIS the report is addressed to, and the application mailbox forwards come
    # from (consumer add gives it its signing key and sees its DSNs); A reaches B's MTA.
    cli.ok("directory", "add", RIS_A, "--name", "RIS A", "--kind", "application")
    cli.ok("consumer", "add", "ris", "--mailbox", RIS_A)
    cli.ok("directory", "add", FWD, "--name", "Routeur A", "--kind", "application")
    cli.ok("consumer", "add", "routeur", "--mailbox", FWD)
    cli.ok("domain", "trust", PEER_DOMAIN, "--relay", f"127.0.0.1:{b.ports['mta']}",
           "--ca", str(b.data / "certs" / "ca.crt.pem"))  # fmt: skip
    # B: the RIS the rule forwards to.
    cli.ok(*b_cfg, "directory", "add", RIS_B, "--name", "RIS B", "--kind", "application")
    token = cli.ok(*b_cfg, "consumer", "add", "ris-b", "--mailbox", RIS_B, "--json")
    ris_b = httpx.Client(
        base_url=f"https://127.0.0.1:{b.ports['api']}",
        verify=b.client_context(),
        headers={"Authorization": f"Bearer {json.loads(token.out)['token']}"},
        timeout=60,
    )
    cli.ok("route", "add", "to-b", "--match", "format=cda-n3", "--forward", RIS_B)

    unique_id = report_from_b(b, 1)
    [delivered] = b.wait_delivered(RIS_B, 1, timeout=90)
    head = delivered.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    assert "smime=pass" in head
    assert f"From: {FWD}" in head
    assert "X-MSSGATE-Forwarded-By: routing rule to-b" in head
    assert f"X-MSSGATE-Original-Sender: {DR_B}" in head
    with ris_b:
        [lease] = poll(lambda: ris_b.post("/v1/leases", json={"max": 10}).json()["leases"])
    document = lease["document"]
    assert isinstance(document, dict)
    assert document["ins"]["value"] == PATIENT.ins and document["ins"]["oid"] == OID_NIR
    assert document["document"]["unique_id"] == unique_id
    assert document["sender"] == FWD and document["mailbox"] == RIS_B
    # A: one decision for the rule, naming the forward's outbound id; the RIS kept its own.
    decision = a.wait_event("routing.decision", rule="to-b")
    assert decision["actions"] == [f"forward {RIS_B}"]
    forwards = decision["forwards"]
    assert isinstance(forwards, dict) and list(forwards) == [RIS_B]
    audit = json.loads(cli.ok("audit", "--json").out)
    [entry] = [e for e in audit if e["action"] == "routing.decision"]
    assert entry["detail"]["forwards"] == forwards

    # The sending mailbox suspended: the next report is held at A naming the rule.
    cli.ok("directory", "suspend", FWD)
    report_from_b(b, 2)
    [one] = poll(lambda: json.loads(cli.ok("quarantine", "list", "--json").out))
    assert one["reason"] == (
        f"routing rule 'to-b' cannot forward to {RIS_B}: {FWD} is not an active application mailbox"
    )
    assert one["mailbox"] == RIS_A
    assert len(b.mailbox(RIS_B)) == 1
