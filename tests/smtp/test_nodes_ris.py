"""RIS API on any node (issue 13): a signed CR-IMG submitted on node A to a RIS mailbox homed
on A is leased, fetched and acked through node B's API, and A then sees it done. Two real
`serve` processes on one PostgreSQL schema: the queue, document bytes included, is shared."""

from __future__ import annotations

from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from mssgate.pki import load_certificate, load_private_key
from mssgate.smime import sign_message
from tests.conftest import PG_URL, Cli
from tests.documents.factory import CdaSpec, make_cda
from tests.smtp.conftest import DOMAIN, PASSWORD, Gateway, free_env
from tests.smtp.test_nodes_serve import FAST

pytestmark = pytest.mark.postgres

ALICE = f"secretariat@{DOMAIN}"
RIS = f"imagerie@{DOMAIN}"
SIGNED = {"MSSGATE_POLICY__REQUIRE_SIGNATURE": "true", "MSSGATE_POLICY__ALLOW_TEST_INS": "true"}


@pytest.fixture
def ris_on_two_nodes(
    cli: Cli, tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Gateway, Gateway, str, Path]]:
    assert PG_URL
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    url = f"{PG_URL}?options=-csearch_path%3D{pg_schema}"
    a, b = tmp_path / "a", tmp_path / "b"
    cli.ok("init", "--data", a, "--domain", DOMAIN, "--database", url, "--node", "a")
    conf = a / "mssgate.toml"
    # Both homed on A (A's config): the document is queued by A's delivery.
    cli.ok("--config", conf, "directory", "add", ALICE, "--name", "Secretariat",
           "--kind", "organisation", "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    cli.ok("--config", conf, "directory", "add", RIS, "--name", "Imagerie",
           "--kind", "organisation")  # fmt: skip
    token = cli.ok("--config", conf, "consumer", "add", "ris", "--mailbox", RIS,
                   "--json").json()["token"]  # fmt: skip
    out = tmp_path / "smime"
    cli.ok("--config", conf, "cert", "issue", ALICE, "--out", out)
    cli.ok("--config", conf, "node", "add", "b", "--data", b)
    nodes = (
        Gateway(data=a, env={**free_env(a), **FAST, **SIGNED}),
        Gateway(data=b, env={**free_env(b), **FAST, **SIGNED}),
    )
    try:
        yield nodes[0], nodes[1], token, out
    finally:
        for node in nodes:
            if node.proc is not None:
                node.stop()


def api(node: Gateway, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://127.0.0.1:{node.ports['api']}",
        verify=node.client_context(),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def test_a_document_accepted_on_a_is_leased_fetched_and_acked_through_b(
    ris_on_two_nodes: tuple[Gateway, Gateway, str, Path],
) -> None:
    node_a, node_b, token, out = ris_on_two_nodes
    cda = make_cda(CdaSpec())
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = RIS
    msg["Subject"] = "CR d'imagerie"
    msg["Message-ID"] = "<cr-img-nodes@hopital-a.test>"
    msg.set_content("Compte rendu ci-joint.")
    msg.add_attachment(cda, maintype="text", subtype="xml", filename="CR.xml")
    mail = sign_message(
        msg.as_bytes(policy=policy.SMTP),
        key=load_private_key(out / f"{ALICE}.key.pem"),
        cert=load_certificate(out / f"{ALICE}.crt.pem"),
    )
    node_a.start()
    node_b.start()
    with node_a.login(ALICE) as client:
        client.sendmail(ALICE, [RIS], mail)
    ingested = node_a.wait_event("documents.ingested", timeout=30, documents=1)
    assert ingested["queued"] == 1
    with api(node_b, token) as via_b:
        [lease] = via_b.post("/v1/leases", json={"max": 5, "lease_seconds": 60}).json()["leases"]
        doc = lease["document"]
        assert doc["mailbox"] == RIS and doc["sender"] == ALICE
        content = via_b.get(f"/v1/documents/{doc['id']}/content")
        assert content.status_code == 200
        assert content.content == cda  # the bytes A stored, read by B from the database
        ack = via_b.post(f"/v1/documents/{doc['id']}/ack", json={"lease_id": lease["lease_id"]})
        assert ack.status_code == 200, ack.text
    node_b.wait_event("queue.acked", document_id=doc["id"])
    # A sees the ack: the document is done and never leased again; a RIS that lost B's
    # answer and repeats the ack on A gets the same outcome (idempotent), not a second one.
    with api(node_a, token) as via_a:
        assert via_a.get(f"/v1/documents/{doc['id']}").json()["state"] == "done"
        assert via_a.post("/v1/leases", json={"max": 5}).json()["leases"] == []
        again = via_a.post(f"/v1/documents/{doc['id']}/ack", json={"lease_id": lease["lease_id"]})
        assert (again.status_code, again.json()["state"]) == (200, "done"), again.text
    assert not [e for e in node_a.events() + node_b.events() if e.get("event") == "task.crashed"]
