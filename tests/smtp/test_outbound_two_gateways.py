"""A RIS on gateway B sends through B to practitioners of gateway A over the real relay
(issue 15): the copy reaches A's mailbox with B's application mailbox signature and DKIM
verified by A; a recipient A does not know ends `failed` with A's code, and its ZAM^Z02 says N
with the SMTPERRORCODE; the one A took has a ZAM^Z02 Y, and once its reader's receipt came
back from A, a ZAM^Z03."""

from __future__ import annotations

import email
from dataclasses import replace
from pathlib import Path

import hl7  # type: ignore[import-untyped]
import httpx

from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from tests.conftest import Cli
from tests.smtp.conftest import ALICE, BOB, PEER_DOMAIN, Gateway
from tests.smtp.test_outbound_gateway import mdm, mdn
from tests.smtp.test_two_gateways import DR_B, pair  # noqa: F401  (the fixture)

NOBODY = "nobody@hopital-a.test"


def ris_on_b(cli: Cli, b: Gateway) -> httpx.Client:
    """The API client of a RIS on B, whose application mailbox is DR_B's (consumer add gives
    it its key)."""
    b_cfg = ["--config", str(b.data / "mssgate.toml")]
    token = cli.ok(*b_cfg, "consumer", "add", "ris-b", "--mailbox", DR_B, "--json").json()["token"]
    return httpx.Client(
        base_url=f"https://127.0.0.1:{b.ports['api']}",
        verify=b.client_context(),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def submit(api: httpx.Client, body: bytes) -> str:
    response = api.post("/v1/outbound", content=body,
                        headers={"Content-Type": "application/hl7-v2"})  # fmt: skip
    assert response.status_code == 202, response.text
    return str(response.headers["Location"])


def test_a_ris_on_b_sends_to_a_over_the_relay(
    cli: Cli,
    pair: tuple[Gateway, Gateway],  # noqa: F811
    tmp_path: Path,
) -> None:
    a, b = pair
    # B runs without test INS: the production-OID patient.
    cda = make_cda(CdaSpec(patient=replace(PAT_TROIS, oid=OID_NIR)))
    body = mdm("B-0001", cda=cda, oid=OID_NIR, recipients=(BOB, NOBODY))
    with ris_on_b(cli, b) as api:
        location = submit(api, body)
        [delivered] = a.wait_delivered(BOB, 1, timeout=60)
        head = delivered.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
        assert "smime=pass" in head
        assert "dkim=pass header.d=clinique-b.test" in head
        assert "X-MSS-CODECDA: 18748-4" in head
        # Both outcomes are known once the relay has reported them (250, and 550 at RCPT).
        b.wait_event("relay.delivered", timeout=60)
        b.wait_event("relay.failed", timeout=60)
        statuses = {r["address"]: r for r in api.get(location).json()["recipients"]}
        assert statuses[BOB]["status"] == "sent"
        assert statuses[NOBODY]["status"] == "failed"
        assert statuses[NOBODY]["code"] == "5.1.1"
        zams = [hl7.parse(z) for z in api.get(f"{location}/acks").json()]
        # Bob reads it and his client sends a read receipt back to B (A signs it for him
        # with the key cert issue left it): B marks the copy read, a ZAM^Z03 follows.
        cli.ok("cert", "issue", BOB, "--out", str(tmp_path / "bob"))
        # A learns where B's MTA listens (the fixture gave A a placeholder relay).
        cli.ok("domain", "trust", PEER_DOMAIN, "--relay", f"127.0.0.1:{b.ports['mta']}",
               "--ca", str(b.data / "certs" / "ca.crt.pem"))  # fmt: skip
        copy_id = email.message_from_bytes(delivered.read_bytes())["Message-ID"]
        smtp = a.login(BOB)
        smtp.sendmail(BOB, [DR_B], mdn(copy_id, sender=BOB, to=DR_B))
        smtp.quit()
        b.wait_event("outbound.read", timeout=60)
        after = {r["address"]: r["status"] for r in api.get(location).json()["recipients"]}
        assert after == {BOB: "read", NOBODY: "failed"}
        read = [hl7.parse(z) for z in api.get(f"{location}/acks").json()]
        [z03] = [z for z in read if str(z.segment("MSH")[9]) == "ZAM^Z03^ZAM_Z01"]
        assert str(z03.segments("OBX")[1][5]) == f"^^X.400^{BOB}"
    by_address = {str(z.segments("OBX")[1][5]).split("^")[-1]: z for z in zams}
    ok, refused = by_address[BOB], by_address[NOBODY]
    assert str(ok.segments("OBX")[0][5]).startswith("Y^")
    assert str(refused.segments("OBX")[0][5]).startswith("N^")
    assert str(refused.segment("ERR")[5]).startswith("550^")
    assert str(refused.segment("ERR")[5]).endswith("^SMTPERRORCODE")


def forged_dsn(*, sender: str, to: str, envid: str, recipient: str) -> bytes:
    """A DSN-shaped report written by someone who is not the recipient's mail system."""
    lines = [
        f"From: {sender}", f"To: {to}", "Subject: Delivered", "Message-ID: <forged-1@client.test>",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"',
        "", "--b1", "Content-Type: text/plain", "", "Delivered.", "--b1",
        "Content-Type: message/delivery-status", "", "Reporting-MTA: dns; client.test",
        f"Original-Envelope-Id: {envid}", "", f"Final-Recipient: rfc822; {recipient}",
        "Action: delivered", "Status: 2.0.0", "", "--b1--", "",
    ]  # fmt: skip
    return "\r\n".join(lines).encode()


def test_a_copy_ends_delivered_or_failed_by_the_peers_dsn(
    cli: Cli,
    pair: tuple[Gateway, Gateway],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Issue 15, RFC 3461: B's relay asks A for DSNs (NOTIFY=SUCCESS,FAILURE, ORCPT, ENVID);
    A's success DSN turns Bob's copy `delivered` (not just `sent`), and its failure DSN for a
    recipient it accepted at RCPT but could not deliver turns that one `failed` with A's code
    and a ZAM with ERR-5. A DSN-shaped report from a practitioner changes nothing."""
    a, b = pair
    b_cfg = ["--config", str(b.data / "mssgate.toml")]
    # A reaches B's MTA listener for its DSNs; A fails a delivery at the first error, and
    # Alice's mailbox cannot be written (a file where her folder goes).
    cli.ok("domain", "trust", PEER_DOMAIN, "--relay", f"127.0.0.1:{b.ports['mta']}",
           "--ca", str(b.data / "certs" / "ca.crt.pem"))  # fmt: skip
    a.stop()
    (a.data / "mail" / "hopital-a.test").mkdir(parents=True, exist_ok=True)
    (a.data / "mail" / "hopital-a.test" / ALICE.split("@")[0]).write_bytes(b"in the way")
    a.start(extra_env={"MSSGATE_DELIVERY__MAX_ATTEMPTS": "1"})
    cli.ok(*b_cfg, "domain", "trust", "hopital-a.test", "--relay", f"127.0.0.1:{a.ports['mta']}",
           "--ca", str(a.data / "certs" / "ca.crt.pem"))  # fmt: skip
    cda = make_cda(CdaSpec(patient=replace(PAT_TROIS, oid=OID_NIR)))
    body = mdm("B-0002", cda=cda, oid=OID_NIR, recipients=(BOB, ALICE))
    with ris_on_b(cli, b) as api:
        location = submit(api, body)
        # B passed the DSN parameters on: A echoes the ENVID and ORCPT in its reports.
        b.wait_event("outbound.delivered", timeout=90)
        b.wait_event("outbound.failed", timeout=90)
        statuses = {r["address"]: r for r in api.get(location).json()["recipients"]}
        assert statuses[BOB]["status"] == "delivered"
        assert statuses[ALICE]["status"] == "failed"
        assert statuses[ALICE]["code"] == "5.2.0"
        assert "550 5.2.0" in statuses[ALICE]["detail"]
        zams = {
            str(z.segments("OBX")[1][5]).split("^")[-1]: z
            for z in (hl7.parse(x) for x in api.get(f"{location}/acks").json())
        }
        assert str(zams[BOB].segments("OBX")[0][5]).startswith("Y^")
        assert str(zams[ALICE].segments("OBX")[0][5]).startswith("N^")
        assert str(zams[ALICE].segment("ERR")[5]).startswith("550^")
        # The DSNs B received say whom they are about, as RFC 3464 asks.
        reports = [p.read_bytes() for p in b.mailbox(DR_B)]
        success = next(r for r in reports if b"Action: delivered" in r)
        assert f"Original-Recipient: rfc822;{BOB}".encode() in success
        assert b"From: Mail Delivery System <mailer-daemon@hopital-a.test>" in success
        assert b"Original-Envelope-Id: " in success
        # Bob (a practitioner of A, not its mail system) claims Alice's copy delivered:
        # the report reaches B's mailbox and changes nothing.
        envid = next(
            line.split(b": ", 1)[1].decode()
            for line in success.split(b"\r\n")
            if line.startswith(b"Original-Envelope-Id:")
        )
        cli.ok("cert", "issue", BOB, "--out", str(tmp_path / "bob"))
        smtp = a.login(BOB)
        smtp.sendmail(BOB, [DR_B], forged_dsn(sender=BOB, to=DR_B, envid=envid, recipient=ALICE))
        smtp.quit()
        b.wait_event("outbound.dsn_ignored", timeout=60)
        after = {r["address"]: r["status"] for r in api.get(location).json()["recipients"]}
        assert after == {BOB: "delivered", ALICE: "failed"}
