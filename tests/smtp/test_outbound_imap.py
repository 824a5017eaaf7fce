"""A RIS's MDM^T02 read over IMAP by the practitioner it names (issue 15), and the body cap
of /v1/outbound: an N1 CDA with its PDF well past the API's 64 KiB is taken there, while the
other routes keep the small cap."""

from __future__ import annotations

import base64
import imaplib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mssgate.api.limits import MAX_BODY_BYTES
from mssgate.documents import process_message
from mssgate.documents.samples import CdaSpec, make_cda, make_pdf
from tests.conftest import DOMAIN, Cli
from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway, free_env
from tests.smtp.test_outbound_gateway import INS, mdm

pytestmark = pytest.mark.skipif(
    shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin") is None,
    reason="Dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)",
)


@pytest.fixture
def with_imap(cli: Cli) -> Iterator[tuple[Gateway, str]]:
    # Dovecot's mail user must reach the data folder: a folder of our own under /tmp.
    root = Path(tempfile.mkdtemp(prefix="mssgate-outbound-imap-"))
    root.chmod(0o711)
    data = root / "data"
    try:
        cli.ok("init", "--data", str(data), "--domain", DOMAIN)
        cfg = ["--config", str(data / "mssgate.toml")]
        for who in (ALICE, BOB):
            cli.ok(*cfg, "directory", "add", who, "--name", "X", "--rpps", "99700367909",
                   "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
        token = cli.ok(*cfg, "consumer", "add", "ris", "--mailbox", BOB, "--json").json()["token"]
        gateway = Gateway(data=data, env=free_env(data))
        gateway.env.update(
            MSSGATE_IMAP__ENABLED="true", MSSGATE_IMAP__PORT="0", MSSGATE_IMAP__IMAPS_PORT="0",
            MSSGATE_POLICY__ALLOW_TEST_INS="true",
        )  # fmt: skip
        gateway.start()
        try:
            yield gateway, token
        finally:
            gateway.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_large_n1_report_is_read_over_imap_with_its_signature_and_xdm(
    with_imap: tuple[Gateway, str], tmp_path: Path
) -> None:
    gateway, token = with_imap
    # Incompressible bytes in the PDF: the HL7 body is well past the API's usual cap.
    pdf = make_pdf(["Compte rendu PAT-TROIS", base64.b64encode(os.urandom(90_000)).decode()])
    cda = make_cda(CdaSpec(level="N1", pdf=pdf))
    body = mdm("N1-0001", cda=cda, pdf=pdf)
    assert len(body) > 2 * MAX_BODY_BYTES
    with httpx.Client(
        base_url=f"https://127.0.0.1:{gateway.ports['api']}",
        verify=gateway.client_context(),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as api:
        response = api.post("/v1/outbound", content=body,
                            headers={"Content-Type": "application/hl7-v2"})  # fmt: skip
        assert response.status_code == 202, response.text
        assert "MSA|AA|N1-0001" in response.text
        # The other routes keep their small cap.
        big = api.post("/v1/leases", content=b"x" * (MAX_BODY_BYTES + 1),
                       headers={"Content-Type": "application/json"})  # fmt: skip
        assert big.status_code == 413
    gateway.wait_event("delivery.ok")
    raw = fetch_over_imaps(gateway, ALICE)
    assert openssl_verifies(raw, gateway.ca, tmp_path) == ""
    result = process_message(raw, allow_test_oids=True)
    assert not result.quarantined, result.quarantined
    assert {a.record.ins.value for a in result.accepted} == {INS}


def fetch_over_imaps(gateway: Gateway, who: str, timeout: float = 60) -> bytes:
    """The first message of `who`'s INBOX, as a mail client fetches it. Polled over IMAP:
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


def openssl_verifies(raw: bytes, ca: Path, folder: Path) -> str:
    """What `openssl smime -verify` says against `ca` when it refuses `raw` ("" when it
    verifies): the check a reader's own tools make, not ours."""
    (folder / "read.eml").write_bytes(raw)
    verified = subprocess.run(
        ["openssl", "smime", "-verify", "-in", str(folder / "read.eml"),
         "-CAfile", str(ca), "-out", os.devnull],
        capture_output=True,
    )  # fmt: skip
    return "" if verified.returncode == 0 else verified.stderr.decode(errors="replace")
