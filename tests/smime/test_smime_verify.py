"""verify_signed_message: messages signed by openssl and by us, and every refusal reason."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from smime_fixtures import Identity, Pki, RunOpenssl

from mssgate.pki import issue_server_cert
from mssgate.smime import (
    REPLIES,
    FailureReason,
    SignatureVerdict,
    averify_signed_message,
    sign_message,
    verify_signed_message,
)

BODY = "Compte rendu de consultation.\r\nPatient: X.\r\n"


def message(sender: str, *, to: str = "secretariat@clinique-b.test", body: str = BODY) -> bytes:
    return (
        f"From: Expediteur <{sender}>\r\n"
        f"To: <{to}>\r\n"
        "Subject: Compte rendu\r\n"
        "Date: Sat, 28 Nov 2026 09:00:00 +0100\r\n"
        "Message-ID: <cr-1@hopital-a.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def verify(
    pki: Pki, raw: bytes, *, registered: list[Identity] | None = None, **kw: object
) -> SignatureVerdict:
    certs = None if registered is None else [i.cert for i in registered]
    return verify_signed_message(
        raw,
        trust_anchors=[pki.ca.cert],
        registered=certs,
        **kw,  # type: ignore[arg-type]
    )


def assert_refused(
    verdict: SignatureVerdict, reason: FailureReason, code: int, enhanced: str
) -> None:
    assert not verdict.ok, verdict
    assert verdict.reason is reason, verdict.detail
    assert verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (code, enhanced)
    assert verdict.content is None


def openssl_sign(openssl: RunOpenssl, tmp_path: Path, signer: Identity, *, opaque: bool) -> bytes:
    entity = tmp_path / "entity.txt"
    entity.write_bytes(b"Content-Type: text/plain; charset=utf-8\n\nBonjour,\nresultats joints.\n")
    out = tmp_path / "signed.eml"
    openssl(
        "smime", "-sign", "-in", entity, "-out", out,
        "-signer", signer.cert_path, "-inkey", signer.key_path,
        "-from", signer.email, "-to", "secretariat@clinique-b.test", "-subject", "Resultats",
        *(["-nodetach"] if opaque else []),
    )  # fmt: skip
    return out.read_bytes()


# -- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize("opaque", [False, True], ids=["detached", "opaque"])
@pytest.mark.parametrize("who", ["alice", "carol_ec"], ids=["rsa", "ec-p256"])
def test_openssl_signed_messages_verify(
    pki: Pki, openssl: RunOpenssl, tmp_path: Path, who: str, opaque: bool
) -> None:
    signer: Identity = getattr(pki, who)
    raw = openssl_sign(openssl, tmp_path, signer, opaque=opaque)
    verdict = verify(pki, raw, registered=[signer])
    assert verdict.ok, verdict.detail
    assert verdict.reason is None and verdict.reply is None
    assert verdict.content is not None and b"resultats joints." in verdict.content
    assert verdict.signer_fingerprint == signer.cert.fingerprint(hashes.SHA256()).hex()
    assert verdict.signer_subject is not None and signer.email in verdict.signer_subject
    assert verdict.signing_time is not None
    assert abs(verdict.signing_time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize("who", ["alice", "carol_ec"], ids=["rsa", "ec-p256"])
def test_our_signed_messages_verify_here_and_with_openssl(
    pki: Pki, openssl: RunOpenssl, tmp_path: Path, who: str, detached: bool
) -> None:
    signer: Identity = getattr(pki, who)
    raw = sign_message(message(signer.email), key=signer.key, cert=signer.cert, detached=detached)

    verdict = verify(pki, raw, registered=[signer])
    assert verdict.ok, verdict.detail
    assert verdict.content is not None
    assert verdict.content.startswith(b"Content-Type: text/plain; charset=utf-8\r\n")
    assert verdict.content.endswith(BODY.encode())
    # Message-level headers are outside the signed entity, on the outer message.
    head = raw.split(b"\r\n\r\n", 1)[0]
    for name in (b"From:", b"To:", b"Subject:", b"Date:", b"Message-ID:"):
        assert name in head
        assert name not in verdict.content

    path = tmp_path / "ours.eml"
    path.write_bytes(raw)
    out = openssl("smime", "-verify", "-in", path, "-CAfile", pki.ca.cert_path)
    assert b"Verification successful" in out.stderr
    assert out.stdout.replace(b"\r\n", b"\n") == verdict.content.replace(b"\r\n", b"\n")


def test_lf_line_endings_verify_like_crlf(pki: Pki) -> None:
    # A message stored on disk with LF endings is the same message: canonical form is CRLF.
    raw = sign_message(message(pki.alice.email), key=pki.alice.key, cert=pki.alice.cert)
    assert verify(pki, raw.replace(b"\r\n", b"\n"), registered=[pki.alice]).ok


def test_chain_and_registered_none(pki: Pki) -> None:
    raw = sign_message(
        message(pki.alice.email), key=pki.alice.key, cert=pki.alice.cert, chain=[pki.ca.cert]
    )
    assert verify(pki, raw, registered=None).ok


def test_revocation_list_not_naming_the_signer_is_fine(pki: Pki) -> None:
    raw = sign_message(message(pki.alice.email), key=pki.alice.key, cert=pki.alice.cert)
    crl = build_crl(pki.ca, revoked=[pki.bob.cert]).public_bytes(serialization.Encoding.PEM)
    assert verify(pki, raw, registered=[pki.alice], crls=[crl]).ok


def test_async_variant_and_sync_call_inside_a_running_loop(pki: Pki) -> None:
    raw = sign_message(message(pki.alice.email), key=pki.alice.key, cert=pki.alice.cert)

    async def both() -> tuple[SignatureVerdict, SignatureVerdict]:
        direct = await averify_signed_message(
            raw, trust_anchors=[pki.ca.cert], registered=[pki.alice.cert]
        )
        nested = verify(pki, raw, registered=[pki.alice])  # must not try to re-enter the loop
        return direct, nested

    direct, nested = asyncio.run(both())
    assert direct.ok and nested.ok


# -- refused --------------------------------------------------------------------------------


def test_unsigned_message(pki: Pki) -> None:
    verdict = verify(pki, message(pki.alice.email), registered=[pki.alice])
    assert_refused(verdict, FailureReason.UNSIGNED, 550, "5.7.1")
    assert verdict.signer_subject is None


def test_signed_part_nested_in_a_multipart_is_not_a_signed_message(pki: Pki) -> None:
    signed = sign_message(message(pki.alice.email), key=pki.alice.key, cert=pki.alice.cert)
    head, body = signed.split(b"\r\n\r\n", 1)
    outer_headers = b"\r\n".join(
        line for line in head.split(b"\r\n") if line.startswith((b"From:", b"To:"))
    )
    signed_part = (
        b"\r\n".join(
            line
            for line in head.split(b"\r\n")
            if not line.startswith((b"From:", b"To:", b"Subject:", b"Date:", b"Message-ID:"))
        )
        + b"\r\n\r\n"
        + body
    )
    wrapper = (
        outer_headers
        + b'\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="X"\r\n\r\n'
        b"--X\r\nContent-Type: text/html\r\n\r\n<b>unsigned</b>\r\n--X\r\n"
        + signed_part
        + b"\r\n--X--\r\n"
    )
    assert_refused(
        verify(pki, wrapper, registered=[pki.alice]), FailureReason.UNSIGNED, 550, "5.7.1"
    )


def test_signed_by_another_registered_practitioner(pki: Pki) -> None:
    # Bob's certificate is valid and registered, but the message claims to be from Alice.
    raw = sign_message(message(pki.alice.email), key=pki.bob.key, cert=pki.bob.cert)
    verdict = verify(pki, raw, registered=[pki.alice, pki.bob])
    assert_refused(verdict, FailureReason.ADDRESS_MISMATCH, 550, "5.7.1")
    assert verdict.signer_subject is not None and pki.bob.email in verdict.signer_subject


def test_signer_address_differs_from_from_header(pki: Pki) -> None:
    raw = sign_message(
        message("someone.else@hopital-a.test"), key=pki.alice.key, cert=pki.alice.cert
    )
    assert_refused(verify(pki, raw, registered=None), FailureReason.ADDRESS_MISMATCH, 550, "5.7.1")


def test_from_address_compared_case_insensitively(pki: Pki) -> None:
    raw = sign_message(message(pki.alice.email.upper()), key=pki.alice.key, cert=pki.alice.cert)
    assert verify(pki, raw, registered=[pki.alice]).ok


@pytest.mark.parametrize(
    "from_lines",
    [
        b"From: <dr.alice.martin@hopital-a.test>\r\nFrom: <dr.alice.martin@hopital-a.test>\r\n",
        b"From: <dr.alice.martin@hopital-a.test>, <dr.bob.durand@clinique-b.test>\r\n",
        b"",
    ],
    ids=["two-from-fields", "two-addresses", "no-from"],
)
def test_from_must_hold_exactly_one_address(pki: Pki, from_lines: bytes) -> None:
    raw = sign_message(message(pki.alice.email), key=pki.alice.key, cert=pki.alice.cert)
    lines = raw.split(b"\r\n")
    raw = from_lines + b"\r\n".join(line for line in lines if not line.startswith(b"From:"))
    assert_refused(
        verify(pki, raw, registered=[pki.alice]), FailureReason.ADDRESS_MISMATCH, 550, "5.7.1"
    )


def test_certificate_not_registered(pki: Pki) -> None:
    # Same address and same CA as Alice's registered certificate, but another key pair.
    rogue = pki.make(pki.alice.email)
    raw = sign_message(message(pki.alice.email), key=rogue.key, cert=rogue.cert)
    assert verify(pki, raw, registered=None).ok
    verdict = verify(pki, raw, registered=[pki.alice, pki.bob])
    assert_refused(verdict, FailureReason.NOT_REGISTERED, 550, "5.7.1")
    assert verdict.signer_fingerprint == rogue.cert.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_tampered_after_signing(pki: Pki, detached: bool) -> None:
    raw = sign_message(
        message(pki.alice.email), key=pki.alice.key, cert=pki.alice.cert, detached=detached
    )
    if detached:
        tampered = raw.replace(b"Patient: X.", b"Patient: Y.")
    else:
        # Opaque: the content is inside the CMS; flip one byte of it in the base64 body.
        tampered = _flip_opaque_content_byte(raw, b"Patient: X.")
    assert tampered != raw
    assert_refused(
        verify(pki, tampered, registered=[pki.alice]), FailureReason.TAMPERED, 554, "5.7.7"
    )


def _flip_opaque_content_byte(raw: bytes, needle: bytes) -> bytes:
    head, body = raw.split(b"\r\n\r\n", 1)
    der = bytearray(base64.b64decode(b"".join(body.split())))
    index = der.index(needle)
    der[index + len(needle) - 2] ^= 0x01
    return head + b"\r\n\r\n" + base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n")


def test_expired_certificate(pki: Pki) -> None:
    expired = pki.make(
        "dr.old@hopital-a.test", not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    )
    raw = sign_message(message(expired.email), key=expired.key, cert=expired.cert)
    assert_refused(verify(pki, raw, registered=[expired]), FailureReason.EXPIRED, 550, "5.7.5")


def test_not_yet_valid_certificate(pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    future = pki.make(
        "dr.new@hopital-a.test",
        not_before=now + dt.timedelta(days=2),
        not_after=now + dt.timedelta(days=30),
    )
    raw = sign_message(message(future.email), key=future.key, cert=future.cert)
    assert_refused(verify(pki, raw, registered=[future]), FailureReason.NOT_YET_VALID, 550, "5.7.5")


def test_signing_time_after_expiry_is_refused_even_when_checking_an_earlier_moment(
    pki: Pki,
) -> None:
    now = dt.datetime.now(dt.UTC)
    short = pki.make(
        "dr.short@hopital-a.test",
        not_before=now - dt.timedelta(minutes=4),
        not_after=now - dt.timedelta(minutes=1),
    )
    raw = sign_message(message(short.email), key=short.key, cert=short.cert)
    # At `moment` the certificate was valid: only the signingTime attribute gives it away.
    verdict = verify(pki, raw, registered=[short], moment=now - dt.timedelta(minutes=2))
    assert_refused(verdict, FailureReason.EXPIRED, 550, "5.7.5")
    assert "signed at" in verdict.detail


@pytest.mark.parametrize("encoding", [serialization.Encoding.DER, serialization.Encoding.PEM])
def test_revoked_certificate(pki: Pki, encoding: serialization.Encoding) -> None:
    revoked = pki.make("dr.revoked@hopital-a.test")
    raw = sign_message(message(revoked.email), key=revoked.key, cert=revoked.cert)
    assert verify(pki, raw, registered=[revoked]).ok
    crl = build_crl(pki.ca, revoked=[pki.bob.cert, revoked.cert]).public_bytes(encoding)
    verdict = verify(pki, raw, registered=[revoked], crls=[crl])
    assert_refused(verdict, FailureReason.REVOKED, 550, "5.7.5")


def test_untrusted_ca(pki: Pki) -> None:
    stranger = pki.make(pki.alice.email, issuer=pki.other_ca)
    raw = sign_message(
        message(stranger.email), key=stranger.key, cert=stranger.cert, chain=[pki.other_ca.cert]
    )
    # Registered or not, a certificate from a CA we do not trust is refused first.
    verdict = verify(pki, raw, registered=[stranger])
    assert_refused(verdict, FailureReason.UNTRUSTED_CHAIN, 550, "5.7.1")


def test_no_trust_anchor_trusts_nothing(pki: Pki) -> None:
    # An empty list must not fall back to the operating system's (public, TLS) trust store.
    raw = sign_message(message(pki.alice.email), key=pki.alice.key, cert=pki.alice.cert)
    verdict = verify_signed_message(raw, trust_anchors=[], registered=None)
    assert_refused(verdict, FailureReason.UNTRUSTED_CHAIN, 550, "5.7.1")


@pytest.mark.parametrize("who", ["alice", "carol_ec"], ids=["rsa", "ec-p256"])
def test_corrupted_signature_value(pki: Pki, who: str) -> None:
    signer: Identity = getattr(pki, who)
    raw = sign_message(message(signer.email), key=signer.key, cert=signer.cert)
    head, rest = raw.split(b'filename="smime.p7s"\r\n\r\n', 1)
    signature_b64, tail = rest.split(b"\r\n--", 1)
    der = bytearray(base64.b64decode(b"".join(signature_b64.split())))
    # The SignerInfo's signature value is the last field of the structure.
    der[-3] ^= 0x01
    broken = (
        head + b'filename="smime.p7s"\r\n\r\n' + base64.b64encode(bytes(der)) + b"\r\n--" + tail
    )
    verdict = verify(pki, broken, registered=[signer])
    assert_refused(verdict, FailureReason.BAD_SIGNATURE, 554, "5.7.7")


def test_certificate_without_email_protection(pki: Pki) -> None:
    key, cert = issue_server_cert(pki.ca.key, pki.ca.cert, "mss.hopital-a.test", key_type="rsa")
    assert isinstance(cert, x509.Certificate)
    raw = sign_message(message(pki.alice.email), key=key, cert=cert)  # type: ignore[arg-type]
    verdict = verify(pki, raw, registered=None)
    assert_refused(verdict, FailureReason.BAD_KEY_USAGE, 550, "5.7.1")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: raw.replace(
            b'filename="smime.p7s"\r\n\r\nMI', b'filename="smime.p7s"\r\n\r\n!!'
        ),
        lambda raw: raw.rsplit(b"\r\n--", 1)[0],  # no close delimiter
        lambda raw: raw.replace(b"application/pkcs7-signature; name", b"text/plain; name"),
    ],
    ids=["bad-base64", "unterminated", "second-part-not-a-signature"],
)
def test_malformed_signed_message(pki: Pki, mangle: object) -> None:
    raw = sign_message(message(pki.alice.email), key=pki.alice.key, cert=pki.alice.cert)
    broken = mangle(raw)  # type: ignore[operator]
    assert broken != raw
    assert_refused(
        verify(pki, broken, registered=[pki.alice]), FailureReason.MALFORMED, 554, "5.7.5"
    )


def test_signature_of_other_content_is_a_digest_mismatch(pki: Pki) -> None:
    # Splice Alice's signature over one message onto another of her messages.
    one = sign_message(
        message(pki.alice.email, body="one\r\n"), key=pki.alice.key, cert=pki.alice.cert
    )
    two = sign_message(
        message(pki.alice.email, body="two\r\n"), key=pki.alice.key, cert=pki.alice.cert
    )
    spliced = one.split(b"smime.p7s")[0] + b"smime.p7s" + two.split(b"smime.p7s", 1)[1]
    # Same boundary is needed for the splice to stay well-formed: rewrite two's boundary.
    boundary_one = one.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    boundary_two = two.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    spliced = spliced.replace(boundary_two, boundary_one)
    assert_refused(
        verify(pki, spliced, registered=[pki.alice]), FailureReason.TAMPERED, 554, "5.7.7"
    )


def test_every_reason_has_a_consistent_reply() -> None:
    for reason in FailureReason:
        reply = REPLIES[reason]
        # Only a stale CRL (ours to refresh) is temporary: the sender's server tries again.
        temporary = reason is FailureReason.REVOCATION_STALE
        assert reply.code in ((451,) if temporary else (550, 554))
        assert reply.enhanced.startswith("4.7." if temporary else "5.7.")
        assert reply.line() == f"{reply.code} {reply.enhanced} {reply.text}"
        assert len(reply.line()) < 200 and "\r" not in reply.text and "\n" not in reply.text


def test_verdict_invariant() -> None:
    with pytest.raises(ValueError, match="ok exactly when"):
        SignatureVerdict(ok=True, reason=FailureReason.UNSIGNED)
    with pytest.raises(ValueError, match="ok exactly when"):
        SignatureVerdict(ok=False)


def build_crl(ca: Identity, *, revoked: list[x509.Certificate]) -> x509.CertificateRevocationList:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=1))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]


def test_sha1_signature_is_refused(pki: Pki, openssl: RunOpenssl, tmp_path: Path) -> None:
    entity = tmp_path / "entity.txt"
    entity.write_bytes(b"Content-Type: text/plain\n\nold client\n")
    out = tmp_path / "sha1.eml"
    openssl(
        "smime", "-sign", "-md", "sha1", "-in", entity, "-out", out,
        "-signer", pki.alice.cert_path, "-inkey", pki.alice.key_path, "-from", pki.alice.email,
    )  # fmt: skip
    verdict = verify(pki, out.read_bytes(), registered=[pki.alice])
    assert_refused(verdict, FailureReason.BAD_SIGNATURE, 554, "5.7.7")
