"""Encryption on the way out, between two live gateways: B encrypts what leaves for A as A's
domain policy on B says, DKIM-signs the ciphertext, and A accepts, checks and (for its
application mailbox) decrypts it."""

from __future__ import annotations

import email
import json
import subprocess
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest

from mssgate.pki import dkim_dns_record, load_certificate, load_private_key
from mssgate.smime import sign_message
from tests.conftest import DOMAIN, Cli
from tests.smtp.conftest import BOB, PASSWORD, PEER_DOMAIN, Gateway, free_env

DR_B = f"dr.b@{PEER_DOMAIN}"
RIS = f"ris@{DOMAIN}"
NO_CERTIFICATE = (
    b"5.7.1 The recipient's domain requires encryption and no certificate is registered for"
    b" this recipient"
)


class Pair:
    def __init__(self, cli: Cli, a: Gateway, b: Gateway, tmp_path: Path) -> None:
        self.cli, self.a, self.b, self.tmp = cli, a, b, tmp_path

    def on_b(self, *args: str) -> None:
        self.cli.ok("--config", str(self.b.data / "mssgate.toml"), *args)

    def a_key(self, who: str) -> tuple[Path, Path]:
        folder = self.a.data / "certs" / "mailboxes" if who == RIS else self.tmp / "a-smime"
        return folder / f"{who}.key.pem", folder / f"{who}.crt.pem"

    def signed(self, *to: str) -> bytes:
        out = self.tmp / "b-smime"
        raw = (
            f"From: {DR_B}\r\nTo: {', '.join(to)}\r\nSubject: CR\r\n"
            f"Message-ID: <b-1@{PEER_DOMAIN}>\r\nContent-Type: text/plain\r\n\r\n"
            "Compte rendu confidentiel.\r\n"
        ).encode()
        return sign_message(
            raw,
            key=load_private_key(out / f"{DR_B}.key.pem"),
            cert=load_certificate(out / f"{DR_B}.crt.pem"),
        )

    def send(self, *to: str) -> None:
        client = self.b.login(DR_B)
        client.sendmail(DR_B, list(to), self.signed(*to))
        client.quit()


@pytest.fixture
def pair(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> Iterator[Pair]:
    a = gateway_setup
    cli.ok("cert", "issue", BOB, "--out", str(tmp_path / "a-smime"))
    cli.ok("directory", "add", RIS, "--name", "RIS", "--kind", "application")
    cli.ok("cert", "issue", RIS, "--out", str(a.data / "certs" / "mailboxes"))
    b_data = tmp_path / "b"
    cli.ok("init", "--data", str(b_data), "--domain", PEER_DOMAIN)
    b_cfg = ["--config", str(b_data / "mssgate.toml")]
    cli.ok(*b_cfg, "directory", "add", DR_B, "--name", "Dr B", "--rpps", "99700367909",
           "--password-stdin",
           stdin=PASSWORD + "\n")  # fmt: skip
    cli.ok(*b_cfg, "cert", "issue", DR_B, "--out", str(tmp_path / "b-smime"))
    cli.ok("domain", "trust", PEER_DOMAIN, "--relay", "127.0.0.1:1",
           "--ca", str(b_data / "certs" / "ca.crt.pem"))  # fmt: skip
    b_dkim = load_private_key(b_data / "certs" / "dkim.key.pem")
    record = dkim_dns_record(b_dkim.public_key())  # type: ignore[arg-type]
    a.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    a.env["MSSGATE_DKIM__DNS_OVERRIDES"] = json.dumps({f"mssgate._domainkey.{PEER_DOMAIN}": record})
    a.start()
    cli.ok(*b_cfg, "domain", "trust", DOMAIN, "--relay", f"127.0.0.1:{a.ports['mta']}",
           "--ca", str(a.data / "certs" / "ca.crt.pem"))  # fmt: skip
    b = Gateway(data=b_data, env=free_env(b_data))
    b.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    b.start()
    yield Pair(cli, a, b, tmp_path)
    for gw in (a, b):
        if gw.proc is not None:
            gw.stop()


def openssl(*args: str | Path) -> bytes:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def head_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode()


def results_of_a(head: str) -> str:
    """A's own Authentication-Results field (B's travels on the message too)."""
    fields = head.replace("\r\n\t", " ").replace("\r\n ", " ").split("\r\n")
    [ours] = [f for f in fields if f.startswith(f"Authentication-Results: mx.{DOMAIN}")]
    return ours


def test_required_peer_gets_each_copy_encrypted_and_dkim_signed(pair: Pair) -> None:
    pair.on_b("domain", "set", DOMAIN, "--encryption", "required")
    pair.on_b("cert", "add", BOB, str(pair.a_key(BOB)[1]))
    pair.on_b("cert", "add", RIS, str(pair.a_key(RIS)[1]))
    pair.send(BOB, RIS)
    [to_bob] = pair.a.wait_delivered(BOB, 1, timeout=60)
    raw = to_bob.read_bytes()
    head = head_of(raw)
    assert "Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data" in head
    assert b"Compte rendu" not in raw
    # DKIM was computed over the ciphertext that left B: A verifies it.
    assert f"dkim=pass header.d={PEER_DOMAIN}" in results_of_a(head)
    # A cannot open Bob's copy; B's gateway certificate vouches for its author's domain.
    assert "smime=" not in results_of_a(head)
    pair.a.wait_event("smime.encrypted_in", listener="mta", reason="peer-encrypted")
    # Bob opens it with openssl, and finds Dr B's signature intact inside.
    key, cert = pair.a_key(BOB)
    opened = openssl("cms", "-decrypt", "-in", to_bob, "-recip", cert, "-inkey", key)
    assert b"multipart/signed" in opened
    (pair.tmp / "opened.eml").write_bytes(opened)
    b_ca = pair.b.data / "certs" / "ca.crt.pem"
    content = openssl("cms", "-verify", "-in", pair.tmp / "opened.eml", "-CAfile", b_ca)
    assert b"Compte rendu confidentiel." in content
    # The RIS copy was encrypted to the RIS alone, and A decrypted and verified it.
    [to_ris] = pair.a.wait_delivered(RIS, 1, timeout=60)
    ris_head = head_of(to_ris.read_bytes())
    assert "pkcs7-mime" not in ris_head and "multipart/signed" in ris_head
    assert "smime=pass" in results_of_a(ris_head)
    assert f"dkim=pass header.d={PEER_DOMAIN}" in results_of_a(ris_head)
    assert b"Compte rendu confidentiel." in to_ris.read_bytes()
    encrypted = [e for e in pair.b.events() if e.get("event") == "relay.encrypted"]
    assert len(encrypted) == 2  # one copy per recipient
    assert pair.b.mailbox(DR_B) == []  # no bounce


def test_required_peer_without_certificate_is_refused_at_rcpt(pair: Pair) -> None:
    pair.on_b("domain", "set", DOMAIN, "--encryption", "required")
    client = pair.b.login(DR_B)
    client.mail(DR_B)
    assert client.rcpt(BOB) == (550, NO_CERTIFICATE)
    client.quit()
    event = pair.b.wait_event("smtp.reject", stage="RCPT")
    assert event["status"] == "5.7.1"


def test_opportunistic_without_certificate_arrives_in_clear(pair: Pair) -> None:
    pair.send(BOB)  # A's domain on B: no policy of its own, the global default (opportunistic)
    [to_bob] = pair.a.wait_delivered(BOB, 1, timeout=60)
    head = head_of(to_bob.read_bytes())
    assert "Content-Type: multipart/signed" in head and "pkcs7-mime" not in head
    assert "smime=pass" in results_of_a(head)
    assert f"dkim=pass header.d={PEER_DOMAIN}" in results_of_a(head)


def test_opportunistic_with_certificate_and_cbc_for_an_old_peer(pair: Pair) -> None:
    pair.on_b("domain", "set", DOMAIN, "--cipher", "aes-cbc")
    pair.on_b("cert", "add", BOB, str(pair.a_key(BOB)[1]))
    pair.send(BOB)
    [to_bob] = pair.a.wait_delivered(BOB, 1, timeout=60)
    head = head_of(to_bob.read_bytes())
    assert "smime-type=enveloped-data" in head
    assert f"dkim=pass header.d={PEER_DOMAIN}" in results_of_a(head)
    key, cert = pair.a_key(BOB)
    opened = openssl("cms", "-decrypt", "-in", to_bob, "-recip", cert, "-inkey", key)
    inner = email.message_from_bytes(opened, policy=policy.SMTP)
    assert inner.get_content_type() == "multipart/signed"


def test_off_sends_as_written_even_with_a_certificate(pair: Pair) -> None:
    pair.on_b("domain", "set", DOMAIN, "--encryption", "off")
    pair.on_b("cert", "add", BOB, str(pair.a_key(BOB)[1]))
    pair.send(BOB)
    [to_bob] = pair.a.wait_delivered(BOB, 1, timeout=60)
    assert "pkcs7-mime" not in head_of(to_bob.read_bytes())


def test_sign_then_encrypt_from_a_client_on_b_reaches_a_person_on_a_unopened(pair: Pair) -> None:
    # Dr B's client signs, then encrypts to Bob (whose certificate B holds: cert add) and to
    # Dr B, as NeoMutt does (issue 14 part 2). B passes it unopened, A on B's word.
    pair.on_b("cert", "add", BOB, str(pair.a_key(BOB)[1]))
    out = pair.tmp / "b-smime"
    (pair.tmp / "entity.eml").write_bytes(
        b"Content-Type: text/plain\r\n\r\nCompte rendu confidentiel.\r\n"
    )
    key_b, cert_b = out / f"{DR_B}.key.pem", out / f"{DR_B}.crt.pem"
    signed = openssl("smime", "-sign", "-in", pair.tmp / "entity.eml", "-signer", cert_b,
                     "-inkey", key_b)  # fmt: skip
    (pair.tmp / "signed.eml").write_bytes(signed)
    sealed = openssl("smime", "-encrypt", "-aes256", "-in", pair.tmp / "signed.eml",
                     "-from", DR_B, "-to", BOB, "-subject", "CR",
                     pair.a_key(BOB)[1], cert_b)  # fmt: skip
    client = pair.b.login(DR_B)
    client.sendmail(DR_B, [BOB], sealed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    client.quit()
    [to_bob] = pair.a.wait_delivered(BOB, 1, timeout=60)
    head = head_of(to_bob.read_bytes())
    assert "smime-type=enveloped-data" in head
    # B said it could not see the signature; A reports none of its own (B's certificate
    # vouched for the author's domain) and checked B's DKIM over the ciphertext.
    assert "smime=none (encrypted, signature not visible to the gateway)" in head
    assert "smime=" not in results_of_a(head)
    assert f"dkim=pass header.d={PEER_DOMAIN}" in results_of_a(head)
    pair.b.wait_event("smime.encrypted_in", listener="submission", reason="sealed-for-recipients")
    key, cert = pair.a_key(BOB)
    opened = openssl("smime", "-decrypt", "-in", to_bob, "-recip", cert, "-inkey", key)
    (pair.tmp / "opened.eml").write_bytes(opened)
    b_ca = pair.b.data / "certs" / "ca.crt.pem"
    content = openssl("smime", "-verify", "-in", pair.tmp / "opened.eml", "-CAfile", b_ca)
    assert b"Compte rendu confidentiel." in content
