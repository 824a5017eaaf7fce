"""Issue 15's own test, across operators: a RIS on gateway B posts an MDM^T02 for a
practitioner of gateway A, who reads it over IMAPS from A's Dovecot; `openssl smime -verify`
with B's CA verifies the bytes he fetched, and A's own pipeline took the XDM (its RIS gets the
document queued, and the fetched copy carries A's verdicts and the MSSanté fields)."""

from __future__ import annotations

import imaplib
import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mssgate.documents import process_message
from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from tests.conftest import Cli
from tests.smtp.conftest import BOB, PASSWORD, Gateway
from tests.smtp.test_outbound_gateway import mdm
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


def fetch_over_imaps(gateway: Gateway, who: str, timeout: float = 60) -> bytes:
    """The first message of `who`'s INBOX, as his mail client fetches it. Polled over IMAP:
    where Dovecot keeps the files depends on who may enter the data folder."""
    deadline = time.monotonic() + timeout
    while True:
        imap = imaplib.IMAP4_SSL(
            "127.0.0.1", gateway.ports["imaps"], ssl_context=gateway.client_context()
        )
        try:
            imap.login(who, PASSWORD)
            typ, data = imap.select("INBOX", readonly=True)
            assert typ == "OK", data
            if int(data[0] or b"0") >= 1:
                typ, fetched = imap.fetch("1", "(BODY.PEEK[])")
                assert typ == "OK", fetched
                item = fetched[0]
                assert isinstance(item, tuple), fetched
                return item[1]
        finally:
            imap.logout()
        if time.monotonic() > deadline:
            raise AssertionError(f"{who}: nothing in INBOX after {timeout} s:\n{gateway.logs()}")
        time.sleep(0.2)


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
    (tmp_path / "read.eml").write_bytes(raw)
    verified = subprocess.run(
        ["openssl", "smime", "-verify", "-in", str(tmp_path / "read.eml"),
         "-CAfile", str(b.ca), "-out", os.devnull],
        capture_output=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
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
