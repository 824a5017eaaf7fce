"""S/MIME signed by the gateway for users whose client signs none (issue 14 part 1), on a live
gateway: smtplib over STARTTLS with AUTH as the stock client, our verifier and `openssl smime
-verify` as the colleague's side."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mssgate.pki import (
    issue_smime_cert,
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)
from mssgate.smime import sign_message, verify_signed_message
from mssgate.smime.escrow import fingerprint
from tests.conftest import DOMAIN, Cli
from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway, message

DAVE = f"dave@{DOMAIN}"  # a practitioner the gateway holds no key for
BY_GATEWAY = "smime=pass (signed by gateway for authenticated user)"
NO_KEY = (
    b"5.7.1 Message refused: an S/MIME signature is required and the gateway holds no signing"
    b" key for you: ask your administrator to issue one (mssgate cert issue) or to import your"
    b" .p12 (mssgate cert import), or sign with your mail client"
)
UNSIGNED = b"5.7.1 Message refused: an S/MIME signature is required"


@pytest.fixture
def live(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> Iterator[Gateway]:
    out = tmp_path / "smime"
    cli.ok("cert", "issue", ALICE, "--out", str(out), "--no-passphrase")  # the key is held
    cli.ok("cert", "issue", BOB, "--out", str(out), "--no-passphrase", "--no-escrow")
    cli.ok("directory", "add", DAVE, "--name", "dave", "--rpps", "99700367909",
           "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    gateway_setup.env["MSSGATE_POLICY__REQUIRE_SIGNATURE"] = "true"
    gateway_setup.start()
    gateway_setup.smime = out  # type: ignore[attr-defined]
    yield gateway_setup
    gateway_setup.stop()


def submit(gateway: Gateway, raw: bytes, sender: str = ALICE) -> tuple[int, bytes]:
    client = gateway.login(sender)
    try:
        client.mail(sender)
        client.rcpt(BOB)
        return client.data(raw)
    finally:
        client.quit()


def head_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode()


def openssl_verify(gateway: Gateway, path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", "smime", "-verify", "-in", str(path), "-CAfile", str(gateway.ca)],
        capture_output=True,
        timeout=60,
    )


def test_an_unsigned_message_reaches_a_colleague_signed_with_the_senders_key(
    live: Gateway,
) -> None:
    code, text = submit(live, message(body="Bonjour, sans signature du client."))
    assert code == 250, text
    [delivered] = live.wait_delivered(BOB, 1)
    raw = delivered.read_bytes()
    head = head_of(raw)
    assert BY_GATEWAY in head and f"smtp.auth={ALICE}" in head
    alice = load_certificate(live.smime / f"{ALICE}.crt.pem")  # type: ignore[attr-defined]
    # Our own verifier, as a colleague's gateway runs it: the sender's registered certificate.
    verdict = verify_signed_message(raw, trust_anchors=[load_certificate(live.ca)],
                                    registered=[alice])  # fmt: skip
    assert verdict.ok, verdict.detail
    assert verdict.signer_fingerprint == fingerprint(alice)
    assert verdict.content is not None and b"sans signature du client" in verdict.content
    # And OpenSSL's, as a reader's mail client would.
    checked = openssl_verify(live, delivered)
    assert checked.returncode == 0 and b"Verification successful" in checked.stderr, checked
    assert b"sans signature du client" in checked.stdout
    assert live.wait_event("smime.signed_for_user")
    # The key never shows in the log.
    assert "PRIVATE KEY" not in live.logs()


def test_a_user_without_a_held_key_is_told_how_to_get_one_then_an_imported_p12_signs(
    live: Gateway, cli: Cli, tmp_path: Path
) -> None:
    code, text = submit(live, message(sender=DAVE), sender=DAVE)
    assert (code, text) == (550, NO_KEY)
    assert live.mailbox(BOB) == []
    # The practitioner's own identity, as their CA hands it over: a .p12 made by openssl.
    certs = live.data / "certs"
    key, cert = issue_smime_cert(
        load_private_key(certs / "ca.key.pem"), load_certificate(certs / "ca.crt.pem"), DAVE
    )
    write_private_key(tmp_path / "dave.key.pem", key)
    write_certificate(tmp_path / "dave.crt.pem", cert)
    p12 = tmp_path / "dave.p12"
    subprocess.run(
        ["openssl", "pkcs12", "-export", "-inkey", str(tmp_path / "dave.key.pem"),
         "-in", str(tmp_path / "dave.crt.pem"), "-out", str(p12), "-passout", "pass:pfx pass"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cli.ok("cert", "import", DAVE, str(p12), "--passphrase-stdin", stdin="pfx pass\n")
    # No restart: the next message is signed with the imported key.
    code, text = submit(live, message(sender=DAVE), sender=DAVE)
    assert code == 250, text
    [delivered] = live.wait_delivered(BOB, 1)
    anchors = [load_certificate(live.ca)]
    verdict = verify_signed_message(
        delivered.read_bytes(), trust_anchors=anchors, registered=[cert]
    )
    assert verdict.ok and verdict.signer_fingerprint == fingerprint(cert), verdict.detail
    assert openssl_verify(live, delivered).returncode == 0


def test_off_keeps_the_refusal(live: Gateway, cli: Cli) -> None:
    cli.ok("domain", "set", DOMAIN, "--sign-for-users", "off")
    code, text = submit(live, message())
    assert (code, text) == (550, UNSIGNED)
    assert live.mailbox(BOB) == []
    event = live.wait_event("smtp.reject", stage="DATA")
    assert event["status"] == "5.7.1"


def _signed_in_one_part(gateway: Gateway) -> bytes:
    """What a client signing one attachment only sends: a multipart/mixed holding a
    multipart/signed and, next to it, a part nobody signed."""
    key = load_private_key(gateway.smime / f"{ALICE}.key.pem")  # type: ignore[attr-defined]
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = load_certificate(gateway.smime / f"{ALICE}.crt.pem")  # type: ignore[attr-defined]
    inner = sign_message(b"Content-Type: text/plain\r\n\r\nsigned part\r\n", key=key, cert=cert)
    inner = inner.split(b"\r\n", 1)[1] if inner.startswith(b"MIME-Version") else inner
    outer = EmailMessage()
    outer["From"], outer["To"], outer["Subject"] = ALICE, BOB, "one part signed"
    outer.set_content("not signed by the client")
    raw = outer.as_bytes().replace(b"\n", b"\r\n")
    boundary = b"mixed-boundary-for-the-test"
    head, body = raw.split(b"\r\n\r\n", 1)
    head = b"\r\n".join(
        line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-")
    )
    return (
        head + b'\r\nContent-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
        b"--" + boundary + b"\r\n" + inner + b"\r\n--" + boundary + b"\r\n"
        b"Content-Type: text/plain\r\n\r\n" + body + b"\r\n--" + boundary + b"--\r\n"
    )


def test_always_signs_around_a_part_signature_and_leaves_a_users_own_signature(
    live: Gateway, cli: Cli
) -> None:
    # `missing`: a client signature over one part is the user's; the message as a whole is
    # unsigned, refused as before (the gateway does not sign around the user's own).
    code, text = submit(live, _signed_in_one_part(live))
    assert (code, text) == (550, UNSIGNED)
    cli.ok("domain", "set", DOMAIN, "--sign-for-users", "always")
    code, text = submit(live, _signed_in_one_part(live))
    assert code == 250, text
    # A message Alice signed as a whole is left exactly as she signed it.
    key = load_private_key(live.smime / f"{ALICE}.key.pem")  # type: ignore[attr-defined]
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = load_certificate(live.smime / f"{ALICE}.crt.pem")  # type: ignore[attr-defined]
    own = sign_message(message(body="signe par Alice"), key=key, cert=cert)
    code, text = submit(live, own)
    assert code == 250, text
    first, second = sorted(live.wait_delivered(BOB, 2), key=lambda p: p.stat().st_mtime_ns)
    assert BY_GATEWAY in head_of(first.read_bytes())
    delivered = second.read_bytes()
    assert "smime=pass" in head_of(delivered) and BY_GATEWAY not in head_of(delivered)
    assert delivered.endswith(own.split(b"\r\n\r\n", 1)[1])  # her body, byte for byte
