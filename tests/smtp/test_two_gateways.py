"""Two gateways, two operators, each on the other's trust list with its own dev CA: a signed
message from a practitioner of B reaches a mailbox of A over mutual TLS, DKIM-signed by B and
checked by A; a recipient A refuses comes back to the B practitioner as a DSN."""

from __future__ import annotations

import email
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssgate.pki import dkim_dns_record, load_certificate, load_private_key
from mssgate.smime import sign_message
from tests.conftest import Cli
from tests.smtp.conftest import BOB, PASSWORD, PEER_DOMAIN, Gateway, free_env

DR_B = f"dr.b@{PEER_DOMAIN}"


@pytest.fixture
def pair(
    cli: Cli, gateway_setup: Gateway, tmp_path: Path, a_env: dict[str, str]
) -> Iterator[tuple[Gateway, Gateway]]:
    a = gateway_setup
    a.env.update(a_env)
    b_data = tmp_path / "b"
    cli.ok("init", "--data", str(b_data), "--domain", PEER_DOMAIN)
    b_cfg = ["--config", str(b_data / "mssgate.toml")]
    cli.ok(*b_cfg, "directory", "add", DR_B, "--name", "Dr B", "--rpps", "99700367909",
           "--password-stdin",
           stdin=PASSWORD + "\n")  # fmt: skip
    cli.ok(*b_cfg, "cert", "issue", DR_B, "--out", str(tmp_path / "b-smime"))
    # A trusts B's operator: B's CA issued B's gateway and practitioner certificates.
    cli.ok("domain", "trust", PEER_DOMAIN, "--relay", "127.0.0.1:1",
           "--ca", str(b_data / "certs" / "ca.crt.pem"))  # fmt: skip
    b_dkim = load_private_key(b_data / "certs" / "dkim.key.pem")
    record = dkim_dns_record(b_dkim.public_key())  # type: ignore[arg-type]
    a.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    a.env["MSSGATE_DKIM__DNS_OVERRIDES"] = json.dumps({f"mssgate._domainkey.{PEER_DOMAIN}": record})
    a.start()
    cli.ok(*b_cfg, "domain", "trust", "hopital-a.test",
           "--relay", f"127.0.0.1:{a.ports['mta']}",
           "--ca", str(a.data / "certs" / "ca.crt.pem"))  # fmt: skip
    b = Gateway(data=b_data, env=free_env(b_data))
    b.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    b.start()
    b.smime = tmp_path / "b-smime"  # type: ignore[attr-defined]
    yield a, b
    for gw in (a, b):
        if gw.proc is not None:
            gw.stop()


def send_from_b(b: Gateway, to: str) -> None:
    out: Path = b.smime  # type: ignore[attr-defined]
    raw = (
        f"From: {DR_B}\r\nTo: {to}\r\nSubject: CR\r\nMessage-ID: <b-1@{PEER_DOMAIN}>\r\n\r\n"
        "Compte rendu.\r\n"
    ).encode()
    signed = sign_message(
        raw,
        key=load_private_key(out / f"{DR_B}.key.pem"),
        cert=load_certificate(out / f"{DR_B}.crt.pem"),
    )
    client = b.login(DR_B)
    client.sendmail(DR_B, [to], signed)
    client.quit()


def test_signed_message_crosses_operators(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    send_from_b(b, BOB)
    [delivered] = a.wait_delivered(BOB, 1, timeout=60)
    head = delivered.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    assert "smime=pass" in head
    assert f"dkim=pass header.d={PEER_DOMAIN}" in head
    assert "DKIM-Signature:" in head
    # It came in on A's MTA listener, from B's gateway certificate.
    accepted = a.wait_event("smtp.accept", listener="mta")
    assert accepted["recipients"] == 1
    assert b.mailbox(DR_B) == []  # no bounce


def test_refused_recipient_bounces_as_a_dsn(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    send_from_b(b, "nobody@hopital-a.test")
    [dsn_file] = b.wait_delivered(DR_B, 1, timeout=60)
    outer = email.message_from_bytes(dsn_file.read_bytes())
    # The gateway signs its own DSNs (as mailer-daemon@clinique-b.test), like any message.
    assert outer.get_content_type() == "multipart/signed"
    assert f"<mailer-daemon@{PEER_DOMAIN}>" in str(outer["From"])
    assert outer["X-MSS-NIL"] == "1"  # policy.mss_nil: on what the gateway writes too
    dsn = outer.get_payload(0)
    assert isinstance(dsn, email.message.Message)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    status = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert "nobody@hopital-a.test" in text
    assert "Status: 5.1.1" in text
    assert a.mailbox(BOB) == []


def test_xdm_relayed_with_mssante_headers(pair: tuple[Gateway, Gateway]) -> None:
    from dataclasses import replace
    from email.message import EmailMessage
    from email.policy import SMTP

    from mssgate.documents.samples import (
        OID_NIR,
        PAT_TROIS,
        CdaSpec,
        EntrySpec,
        make_cda,
        make_xdm,
    )

    a, b = pair
    out: Path = b.smime  # type: ignore[attr-defined]
    # B runs with the default policy.allow_test_ins = false: an INS under the test OID is no
    # INS there, so only the production-OID patient may be announced as qualified.
    patients = {"prod": replace(PAT_TROIS, oid=OID_NIR), "test": PAT_TROIS}
    for tag, patient in patients.items():
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = DR_B, BOB, f"XDM/1.0/DDM+CR {tag}"
        msg["X-MSS-INS"] = "forged by the client"
        msg["X-MSS-MES"] = "FIN"
        msg.set_content("CR")
        cda = make_cda(CdaSpec(patient=patient))
        xdm = make_xdm(patient, [EntrySpec("DOC0001.XML", cda)])
        msg.add_attachment(xdm, maintype="application", subtype="zip", filename="IHE_XDM.ZIP")
        signed = sign_message(
            msg.as_bytes(policy=SMTP),
            key=load_private_key(out / f"{DR_B}.key.pem"),
            cert=load_certificate(out / f"{DR_B}.crt.pem"),
        )
        client = b.login(DR_B)
        client.sendmail(DR_B, [BOB], signed)
        client.quit()
    delivered = a.wait_delivered(BOB, 2, timeout=60)
    heads = [p.read_bytes().split(b"\r\n\r\n", 1)[0].decode() for p in delivered]
    by_tag = {tag: next(h for h in heads if f"DDM+CR {tag}" in h) for tag in patients}
    for head in heads:
        assert "X-MSS-CODECDA: 18748-4" in head
        assert "X-MSS-NIL: 1" in head
        # The practitioner's "no reply" to a patient is theirs to set: it passes untouched.
        assert "X-MSS-MES: FIN" in head
        assert "forged by the client" not in head
        assert "smime=pass" in head and f"dkim=pass header.d={PEER_DOMAIN}" in head
    assert "X-MSS-INS: O" in by_tag["prod"]
    assert "X-MSS-INS: N" in by_tag["test"]
