"""CRLs follow their files while the gateway serves (issue 12 item 18).

A live `mssgate serve` with signatures required and the dev CA's CRL in `policy.crl_files`:
a practitioner's signed message is accepted; the CRL file is replaced by one revoking that
practitioner's certificate and the next message is refused, without a restart (the path
validation cache included). A CRL past its nextUpdate refuses everyone its CA vouches for,
says so in the log and in `mssgate_crl_next_update_seconds`; a fresh file brings them back.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mssgate.pki import load_certificate, load_private_key
from mssgate.smime import sign_message
from tests.conftest import Cli
from tests.smtp.conftest import ALICE, BOB, Gateway, message
from tests.smtp.test_metrics_serve import scrape

# The gateway looks at the files at most this often (mssgate.smime.crlfiles.CHECK_SECONDS).
CHECK = 2.0
GAUGE = 'mssgate_crl_next_update_seconds{crl="dev-ca.crl"}'


def write_crl(
    data: Path,
    path: Path,
    *,
    revoked: tuple[x509.Certificate, ...] = (),
    last_update: dt.datetime | None = None,
    next_update: dt.timedelta = dt.timedelta(days=7),
) -> None:
    """The dev CA's CRL, written as an operator's fetch job should: a new file renamed over."""
    certs = data / "certs"
    ca_key = load_private_key(certs / "ca.key.pem")
    assert isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    ca = load_certificate(certs / "ca.crt.pem")
    last = last_update or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(last)
        .next_update(last + next_update)
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    fresh = path.with_suffix(".new")
    fresh.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(fresh, path)


@pytest.fixture
def crl_gateway(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> tuple[Gateway, Path, Path]:
    out = tmp_path / "smime"
    cli.ok("cert", "issue", ALICE, "--out", str(out))
    crl = tmp_path / "dev-ca.crl"
    gateway_setup.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    gateway_setup.env["MSSGATE_POLICY__CRL_FILES"] = json.dumps([str(crl)])
    return gateway_setup, out, crl


def submit(gateway: Gateway, keys: Path) -> tuple[int, bytes]:
    raw = sign_message(
        message(),
        key=load_private_key(keys / f"{ALICE}.key.pem"),
        cert=load_certificate(keys / f"{ALICE}.crt.pem"),
    )
    client = gateway.login()
    try:
        client.mail(ALICE)
        client.rcpt(BOB)
        return client.data(raw)
    finally:
        client.quit()


def test_a_revoking_crl_takes_effect_without_restart(
    crl_gateway: tuple[Gateway, Path, Path],
) -> None:
    gateway, keys, crl = crl_gateway
    write_crl(gateway.data, crl)
    gateway.start()
    try:
        assert submit(gateway, keys)[0] == 250
        # Again at once: this one is answered from the path validation cache.
        assert submit(gateway, keys)[0] == 250
        alice = load_certificate(keys / f"{ALICE}.crt.pem")
        write_crl(gateway.data, crl, revoked=(alice,))
        time.sleep(CHECK + 0.5)
        code, reply = submit(gateway, keys)
        assert (code, reply[:5]) == (550, b"5.7.5"), reply
        assert b"revoked" in reply
        reloaded = gateway.wait_event("crl.reloaded", crl="dev-ca.crl")
        assert reloaded["revoked"] == 1
    finally:
        gateway.stop()


def test_an_expired_crl_refuses_until_a_fresh_one_replaces_it(
    crl_gateway: tuple[Gateway, Path, Path],
) -> None:
    gateway, keys, crl = crl_gateway
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    write_crl(gateway.data, crl, last_update=two_days_ago, next_update=dt.timedelta(days=1))
    gateway.start()
    try:
        code, reply = submit(gateway, keys)
        assert (code, reply[:5]) == (451, b"4.7.5"), reply
        assert b"revocation" in reply
        expired = gateway.wait_event("crl.expired", crl="dev-ca.crl")
        assert expired["level"] == "error"
        assert -90_000 < scrape(gateway)[GAUGE] < -86_000  # a day past, in seconds

        write_crl(gateway.data, crl)
        time.sleep(CHECK + 0.5)
        assert submit(gateway, keys)[0] == 250
        assert 6 * 86_400 < scrape(gateway)[GAUGE] <= 7 * 86_400
    finally:
        gateway.stop()


def test_a_crl_due_within_a_day_is_warned_about(crl_gateway: tuple[Gateway, Path, Path]) -> None:
    gateway, keys, crl = crl_gateway
    write_crl(gateway.data, crl, next_update=dt.timedelta(hours=12))
    gateway.start()
    try:
        assert submit(gateway, keys)[0] == 250
        warned = gateway.wait_event("crl.expiring", crl="dev-ca.crl")
        assert warned["level"] == "warning" and 43_000 < float(str(warned["seconds_left"])) < 43_300
        # A broken file (a half-written download) is not taken: the last good list stays.
        crl.write_bytes(b"-----BEGIN X509 CRL-----\ntruncated")
        time.sleep(CHECK + 0.5)
        assert submit(gateway, keys)[0] == 250
        failed = gateway.wait_event("crl.reload_failed", crl="dev-ca.crl")
        assert failed["level"] == "warning"
    finally:
        gateway.stop()
