"""A withdrawal closes the loop between two gateways (issue 15): a RIS on gateway B sends a
report (MDM^T02) then withdraws it (MDM^T04) for a practitioner of gateway A; A's RIS leases
the report as MDM^T02, then the withdrawal as MDM^T04 (OBX-11 D) naming the same uniqueId;
the practitioner's copy is signed, its Subject and text saying so; and over IMAP (one gateway,
Dovecot) the practitioner reads the cancellation after the report."""

from __future__ import annotations

import email
import email.policy
import imaplib
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import hl7  # type: ignore[import-untyped]
import httpx
import pytest

from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from tests.conftest import Cli
from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway
from tests.smtp.test_outbound_gateway import mdm
from tests.smtp.test_outbound_imap import with_imap  # noqa: F401  (the fixture)
from tests.smtp.test_two_gateways import DR_B, pair  # noqa: F401  (the fixture)

UNIQUE_ID = "1.2.250.1.999.1.1.45.1"

pytestmark = pytest.mark.skipif(
    shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin") is None,
    reason="Dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)",
)


@pytest.fixture
def ris_on_a(cli: Cli, gateway_setup: Gateway) -> str:
    """A's RIS: a queue consumer of BOB's mailbox, added before `pair` starts A."""
    return str(cli.ok("consumer", "add", "ris-a", "--mailbox", BOB, "--json").json()["token"])


def api_of(gateway: Gateway, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://127.0.0.1:{gateway.ports['api']}",
        verify=gateway.client_context(),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def test_a_withdrawal_reaches_the_other_gateways_ris_as_t04_and_its_reader(
    cli: Cli,
    ris_on_a: str,
    pair: tuple[Gateway, Gateway],  # noqa: F811
    tmp_path: Path,
) -> None:
    a, b = pair
    b_cfg = ["--config", str(b.data / "mssgate.toml")]
    token = cli.ok(*b_cfg, "consumer", "add", "ris-b", "--mailbox", DR_B, "--json").json()["token"]
    cda = make_cda(CdaSpec(patient=replace(PAT_TROIS, oid=OID_NIR), doc_root=UNIQUE_ID))
    with api_of(b, token) as sender:
        for control, event in (("B-T02", "MDM^T02^MDM_T02"), ("B-T04", "MDM^T04^MDM_T02")):
            body = mdm(control, event=event, cda=cda, oid=OID_NIR, recipients=(BOB,))
            response = sender.post("/v1/outbound", content=body,
                                   headers={"Content-Type": "application/hl7-v2"})  # fmt: skip
            assert response.status_code == 202, response.text
            assert f"MSA|AA|{control}" in response.text
            # One at a time: A's RIS is to see them in the order they were sent.
            a.wait_delivered(BOB, 1 if event.endswith("T02^MDM_T02") else 2, timeout=60)
    with api_of(a, ris_on_a) as ris:
        leased: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while len(leased) < 2 and time.monotonic() < deadline:
            # A's document feed queues each copy once delivered.
            got = ris.post("/v1/leases", json={"max": 5, "lease_seconds": 60}).json()["leases"]
            leased.extend(got)
            time.sleep(0.2)
        assert len(leased) == 2, leased
        triggers: dict[str, hl7.Message] = {}
        for lease in leased:
            doc = lease["document"]
            assert isinstance(doc, dict)
            text = ris.get(f"/v1/documents/{doc['id']}/hl7").text
            message = hl7.parse(text)
            trigger = str(message.segment("MSH")[9][0][1])
            triggers[trigger] = message
            # The record says it too; and a withdrawal is no mere repeat of the report it
            # withdraws (same CDA bytes): a RIS skipping `duplicate_of` items would miss it.
            assert doc["document"]["withdrawn"] is (trigger == "T04")
            assert doc["duplicate_of"] is None
        assert set(triggers) == {"T02", "T04"}
        withdrawal = triggers["T04"]
        [document_obx] = [o for o in withdrawal.segments("OBX") if str(o[1]) == "1"]
        assert str(document_obx[11]) == "D"
        # TXA-12: the same uniqueId as the report it withdraws.
        assert str(withdrawal.segment("TXA")[12]) == str(triggers["T02"].segment("TXA")[12])
        assert UNIQUE_ID in str(withdrawal.segment("TXA")[12])
    delivered = sorted(a.mailbox(BOB), key=lambda p: p.stat().st_mtime)[-1]
    assert_reads_as_a_cancellation(delivered.read_bytes(), tmp_path)


def assert_reads_as_a_cancellation(raw: bytes, tmp_path: Path) -> None:
    """What a practitioner's client shows: a verified signature, the Subject, the text."""
    (tmp_path / "withdrawal.eml").write_bytes(raw)
    verified = subprocess.run(
        ["openssl", "smime", "-verify", "-in", str(tmp_path / "withdrawal.eml"), "-noverify",
         "-out", str(tmp_path / "inner.eml")],
        capture_output=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(message["Subject"]).startswith("XDM/1.0/DDM+Annulation : ")
    inner = email.message_from_bytes(
        (tmp_path / "inner.eml").read_bytes(), policy=email.policy.default
    )
    body = inner.get_body(("plain",))
    assert body is not None and "a été annulé" in body.get_content()
    assert [p.get_filename() for p in inner.iter_attachments()] == ["IHE_XDM.ZIP"]


def test_the_practitioner_reads_the_cancellation_over_imap(
    with_imap: tuple[Gateway, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    gateway, token = with_imap
    with api_of(gateway, token) as api:
        for control, event in (("L-T02", "MDM^T02^MDM_T02"), ("L-T04", "MDM^T04^MDM_T02")):
            response = api.post("/v1/outbound", content=mdm(control, event=event),
                                headers={"Content-Type": "application/hl7-v2"})  # fmt: skip
            assert response.status_code == 202, response.text
            gateway.wait_delivered(ALICE, 1 if control == "L-T02" else 2, timeout=60)
    imap = imaplib.IMAP4_SSL(
        "127.0.0.1", gateway.ports["imaps"], ssl_context=gateway.client_context()
    )
    try:
        imap.login(ALICE, PASSWORD)
        typ, data = imap.select("INBOX")
        assert typ == "OK" and int(data[0] or b"0") == 2
        typ, fetched = imap.fetch("2", "(BODY.PEEK[])")
        assert typ == "OK"
        item = fetched[0]
        assert isinstance(item, tuple)
        raw = item[1]
    finally:
        imap.logout()
    assert_reads_as_a_cancellation(raw, tmp_path)
