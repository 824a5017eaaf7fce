"""NotificationSigner: what the gateway signs itself (MDN, DSN) with the key pair in
DATA/certs/mailboxes, checked by the verifier peers run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mssgate.integration import NotificationSigner
from mssgate.pki import create_dev_ca, issue_smime_cert, write_certificate, write_private_key
from mssgate.smime.verify import verify_signed_message

AUTHOR = "ris@hopital-a.test"
MDN = (
    f"From: {AUTHOR}\r\nTo: dr@clinique-b.test\r\nSubject: Read: report\r\n"
    "Content-Type: text/plain\r\n\r\nDisplayed.\r\n"
).encode()


def test_a_key_that_does_not_match_its_certificate_signs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the receipt left `multipart/signed` with a signature no verifier accepts (the
    # key of one pair, the certificate of another: a hand copy, a --force install under way)
    # and nothing in the log; now it leaves unsigned, and the log says why and what to fix.
    ca_key, ca_cert = create_dev_ca("IGC-Santé stand-in")
    key, cert = issue_smime_cert(ca_key, ca_cert, AUTHOR)
    _, other = issue_smime_cert(ca_key, ca_cert, AUTHOR)
    write_private_key(tmp_path / f"{AUTHOR}.key.pem", key)
    write_certificate(tmp_path / f"{AUTHOR}.crt.pem", cert)
    signer = NotificationSigner(tmp_path, dkim_selector="s", dkim_key=None)
    signed = signer(MDN, relay=False)
    assert verify_signed_message(signed, trust_anchors=[ca_cert], registered=None).ok

    write_certificate(tmp_path / f"{AUTHOR}.crt.pem", other)
    caplog.set_level(logging.INFO, logger="mssgate.integration")
    assert signer(MDN, relay=False) == MDN
    [record] = [r for r in caplog.records if r.getMessage() == "notification.unsigned"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["author"] == AUTHOR
    assert fields["reason"] == f"{AUTHOR}.key.pem does not match {AUTHOR}.crt.pem"
    assert record.levelno == logging.ERROR
