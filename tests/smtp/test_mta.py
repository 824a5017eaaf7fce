"""The MTA listener for peer gateways: STARTTLS first, a client certificate of the sender's
operator, local recipients only."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import pytest

from mssgate.pki import create_dev_ca, issue_server_cert, write_certificate, write_private_key
from tests.conftest import Cli
from tests.smtp.conftest import BOB, PEER_DOMAIN, Gateway


def peer_context(gateway: Gateway, pki: dict[str, Path] | None) -> ssl.SSLContext:
    ctx = gateway.client_context()
    if pki is not None:
        ctx.load_cert_chain(pki["cert"], pki["key"])
    return ctx


def connect(gateway: Gateway, pki: dict[str, Path] | None) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gateway.ports["mta"], timeout=15)
    try:
        client.ehlo(f"mx.{PEER_DOMAIN}")
        client.starttls(context=peer_context(gateway, pki))
        client.ehlo(f"mx.{PEER_DOMAIN}")
    except BaseException:
        client.close()  # TLS 1.3: the server's refusal may only show on the next read
        raise
    return client


def peer_message(sender: str = f"dr.b@{PEER_DOMAIN}") -> bytes:
    return f"From: {sender}\r\nTo: {BOB}\r\nSubject: CR\r\n\r\ncompte rendu\r\n".encode()


def test_starttls_required(gateway: Gateway) -> None:
    client = smtplib.SMTP("127.0.0.1", gateway.ports["mta"], timeout=15)
    client.ehlo("mx.example.org")
    assert client.docmd(f"MAIL FROM:<dr.b@{PEER_DOMAIN}>") == (
        530,
        b"5.7.0 Must issue a STARTTLS command first",
    )
    assert b"AUTH" not in client.ehlo_resp
    client.quit()


def test_peer_with_its_operator_certificate_delivers(
    gateway: Gateway, peer_pki: dict[str, Path]
) -> None:
    client = connect(gateway, peer_pki)
    client.sendmail(f"dr.b@{PEER_DOMAIN}", [BOB], peer_message())
    # A bounce or receipt (null sender) from a trusted peer is accepted too.
    client.sendmail("", [BOB], peer_message(f"mailer-daemon@{PEER_DOMAIN}"))
    client.quit()
    [first, _second] = gateway.wait_delivered(BOB, 2)
    assert b"with ESMTPS (TLSv1.3" in first.read_bytes()


def test_no_client_certificate(gateway: Gateway) -> None:
    client = connect(gateway, None)
    assert client.docmd(f"MAIL FROM:<dr.b@{PEER_DOMAIN}>") == (
        530,
        b"5.7.0 A client certificate is required",
    )
    client.quit()


def test_untrusted_sender_domain(gateway: Gateway, peer_pki: dict[str, Path]) -> None:
    client = connect(gateway, peer_pki)
    code, text = client.docmd("MAIL FROM:<someone@untrusted.test>")
    assert (code, text) == (550, b"5.7.1 Sender domain is not on the trust list")
    client.quit()


def test_certificate_of_another_operator(
    gateway: Gateway, cli: Cli, peer_pki: dict[str, Path], tmp_path: Path
) -> None:
    # A second trusted operator: its gateway's certificate cannot speak for clinique-b.test.
    ca_key, ca_cert = create_dev_ca("other operator CA")
    key, cert = issue_server_cert(ca_key, ca_cert, "mx.autre.test")
    other = {"ca": tmp_path / "o-ca.pem", "cert": tmp_path / "o.pem", "key": tmp_path / "o.key"}
    write_certificate(other["ca"], ca_cert)
    write_certificate(other["cert"], cert)
    write_private_key(other["key"], key)
    # Trusted while the gateway runs: known from the next connection, no restart.
    cli.ok("domain", "trust", "autre.test", "--relay", "mx.autre.test:25", "--ca", str(other["ca"]))
    client = connect(gateway, other)
    assert client.docmd(f"MAIL FROM:<dr.b@{PEER_DOMAIN}>") == (
        550,
        b"5.7.1 Your certificate does not belong to the sender's operator",
    )
    assert client.docmd("MAIL FROM:<dr.c@autre.test>")[0] == 250
    client.quit()


def test_unknown_peer_certificate_fails_the_handshake(gateway: Gateway, tmp_path: Path) -> None:
    ca_key, ca_cert = create_dev_ca("unknown CA")
    key, cert = issue_server_cert(ca_key, ca_cert, "mx.rogue.test")
    pki = {"cert": tmp_path / "r.pem", "key": tmp_path / "r.key"}
    write_certificate(pki["cert"], cert)
    write_private_key(pki["key"], key)
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        client = connect(gateway, pki)
        try:
            client.docmd(f"MAIL FROM:<dr.b@{PEER_DOMAIN}>")
        finally:
            client.close()
    gateway.wait_event("smtp.tls_failed", listener="mta")


@pytest.mark.parametrize(
    "recipient",
    [
        "someone@example.org",
        f"dr.b@{PEER_DOMAIN}",
        "bob%example.org@hopital-a.test",
        "bob@[127.0.0.1]",
        "@hopital-a.test:bob@example.org",
        "postmaster",
    ],
)
def test_never_an_open_relay(gateway: Gateway, peer_pki: dict[str, Path], recipient: str) -> None:
    client = connect(gateway, peer_pki)
    client.mail(f"dr.b@{PEER_DOMAIN}")
    assert client.docmd(f"RCPT TO:<{recipient}>") == (550, b"5.7.1 Relaying denied")
    client.quit()


def test_untrusting_a_peer_applies_at_once(
    gateway: Gateway, cli: Cli, peer_pki: dict[str, Path]
) -> None:
    cli.ok("domain", "untrust", PEER_DOMAIN)
    client = connect(gateway, peer_pki)
    assert client.docmd(f"MAIL FROM:<dr.b@{PEER_DOMAIN}>")[0] == 550
    client.quit()
