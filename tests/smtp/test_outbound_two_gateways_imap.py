"""Issue 15's own test, across operators: a RIS on gateway B posts an MDM^T02 for a
practitioner of gateway A, who reads it over IMAPS from A's Dovecot; `openssl smime -verify`
with B's CA verifies the bytes he fetched, and A's own pipeline took the XDM (its RIS gets the
document queued, and the fetched copy carries A's verdicts and the MSSanté fields)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from mssgate.documents import process_message
from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from tests.conftest import Cli
from tests.smtp.conftest import BOB, Gateway
from tests.smtp.test_outbound_gateway import mdm
from tests.smtp.test_outbound_imap import fetch_over_imaps, openssl_verifies
from tests.smtp.test_outbound_two_gateways import ris_on_b, submit
from tests.smtp.test_two_gateways import pair  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(
    shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin") is None,
    reason="Dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)",
)


@pytest.fixture
def a_env() -> dict[str, str]:
    """A delivers through its Dovecot: where its practitioners read their mail."""
    return {
        "MSSGATE_IMAP__ENABLED": "true",
        "MSSGATE_IMAP__PORT": "0",
        "MSSGATE_IMAP__IMAPS_PORT": "0",
    }


def test_a_ris_report_from_b_is_read_over_imap_on_a_and_verifies(
    cli: Cli,
    pair: tuple[Gateway, Gateway],  # noqa: F811
    tmp_path: Path,
) -> None:
    a, b = pair
    # A's RIS consumes Bob's mailbox: the message goes through A's document pipeline too.
    cli.ok("consumer", "add", "ris-a", "--mailbox", BOB)
    cda = make_cda(CdaSpec(patient=replace(PAT_TROIS, oid=OID_NIR)))
    with ris_on_b(cli, b) as api:
        submit(api, mdm("B-IMAP-1", cda=cda, oid=OID_NIR, recipients=(BOB,)))
    raw = fetch_over_imaps(a, BOB)
    assert openssl_verifies(raw, b.ca, tmp_path) == ""
    # A's verdicts on what it took in, and the MSSanté fields B's gateway wrote over the XDM.
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert "Authentication-Results: mx.hopital-a.test;" in head
    assert "smime=pass" in head
    assert "dkim=pass header.d=clinique-b.test" in head
    assert "X-MSS-CODECDA: 18748-4" in head
    assert "X-MSS-INS: " in head
    # A's pipeline queued the document for its RIS (nothing held), and the bytes Bob read
    # pass the same pipeline as they are.
    ingested = a.wait_event("documents.ingested", timeout=60)
    assert (ingested["queued"], ingested["quarantined"]) == (1, 0), ingested
    result = process_message(raw)
    assert not result.quarantined, result.quarantined
    assert [d.record.ins.value for d in result.accepted] == [PAT_TROIS.ins]
