"""mssgate.authresults: the field we add, and removal of forged ones claiming our host name."""

from __future__ import annotations

import email.policy
import re
from email.parser import BytesParser

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mssgate.authresults import (
    TlsInfo,
    authentication_results,
    authentication_results_field,
    remove_own_results,
)
from mssgate.dkim import DkimResult, DkimSignatureResult, DkimStatus
from mssgate.pki import create_dev_ca, issue_smime_cert
from mssgate.smime import FailureReason, SignatureVerdict

HOST = "mss.hopital-a.test"


@pytest.fixture(scope="module")
def verdict_ok() -> SignatureVerdict:
    ca_key, ca = create_dev_ca('CA "test" (dev), Inc')
    key, cert = issue_smime_cert(ca_key, ca, "dr.alice.martin@hopital-a.test")
    assert isinstance(key, rsa.RSAPrivateKey)
    return SignatureVerdict(ok=True, signer_certificate=cert, content=b"x")


def test_all_methods(verdict_ok: SignatureVerdict) -> None:
    dkim = DkimResult(
        DkimStatus.PASS,
        (DkimSignatureResult(DkimStatus.PASS, "hopital-a.test", "mss2026", "ed25519-sha256"),),
    )
    value = authentication_results(
        HOST,
        smime=verdict_ok,
        dkim=dkim,
        auth_identity="dr.alice.martin@hopital-a.test",
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", client_certificate_verified=True),
    )
    lines = value.split(";\r\n\t")
    assert lines[0] == HOST
    assert lines[1].startswith("smime=pass body.smime-identifier=dr.alice.martin@hopital-a.test ")
    assert verdict_ok.signer_certificate is not None
    assert f"body.smime-serial={verdict_ok.signer_certificate.serial_number:X}" in lines[1]
    # The issuer DN holds spaces, commas, quotes and parentheses: a quoted-string, escaped.
    quoted = lines[1].split("body.smime-issuer=", 1)[1]
    assert quoted.startswith('"') and quoted.endswith('"')
    unquoted = re.sub(r"\\(.)", r"\1", quoted[1:-1])
    assert unquoted == verdict_ok.signer_certificate.issuer.rfc4514_string()
    assert '"' not in re.sub(r"\\.", "", quoted[1:-1])  # every inner quote is escaped
    assert lines[2] == "dkim=pass header.d=hopital-a.test header.s=mss2026 header.a=ed25519-sha256"
    assert lines[3] == "auth=pass smtp.auth=dr.alice.martin@hopital-a.test"
    assert lines[4] == "x-tls=pass (TLSv1.3 TLS_AES_256_GCM_SHA384 client-certificate=verified)"


def test_field_parses_as_one_header(verdict_ok: SignatureVerdict) -> None:
    field = authentication_results_field(HOST, smime=verdict_ok, auth_identity="secr\u00e9tariat x")
    message = BytesParser(policy=email.policy.default).parsebytes(field + b"\r\nbody\r\n")
    assert message.get_all("Authentication-Results") is not None
    assert len(message.get_all("Authentication-Results") or []) == 1
    assert not message.defects
    assert 'smtp.auth="secr\u00e9tariat x"'.encode() in field


def test_failures_and_none() -> None:
    refused = SignatureVerdict(ok=False, reason=FailureReason.NOT_REGISTERED)
    assert authentication_results(HOST, smime=refused) == (
        f'{HOST};\r\n\tsmime=policy reason="not-registered"'
    )
    tampered = SignatureVerdict(ok=False, reason=FailureReason.TAMPERED)
    assert 'smime=fail reason="tampered"' in authentication_results(HOST, smime=tampered)
    unsigned = SignatureVerdict(ok=False, reason=FailureReason.UNSIGNED)
    assert 'smime=none reason="unsigned"' in authentication_results(HOST, smime=unsigned)
    assert (
        authentication_results(HOST, dkim=DkimResult(DkimStatus.NONE, ()))
        == f"{HOST};\r\n\tdkim=none"
    )
    assert authentication_results(HOST, tls=TlsInfo(None)) == f"{HOST};\r\n\tx-tls=none"
    assert authentication_results(HOST) == f"{HOST}; none"


def test_dkim_failure_detail_goes_in_an_escaped_comment() -> None:
    dkim = DkimResult(
        DkimStatus.FAIL,
        (
            DkimSignatureResult(
                DkimStatus.FAIL, "a.test", "s", "rsa-sha256", "bad (body) hash\\x\r\n"
            ),
        ),
    )
    value = authentication_results(HOST, dkim=dkim)
    assert "dkim=fail (bad \\(body\\) hash\\\\x  ) header.d=a.test" in value


def test_authserv_id_must_be_a_token() -> None:
    with pytest.raises(ValueError, match="authserv-id"):
        authentication_results("mss host; smime=pass")


def test_remove_own_results_keeps_everything_else_byte_for_byte() -> None:
    message = (
        b"Received: from x by y;\r\n\tSat, 28 Nov 2026 09:00:00 +0100\r\n"
        b"Authentication-Results: mss.hopital-a.test; smime=pass\r\n"
        b"authentication-results:   (forged) MSS.Hopital-A.Test.;\r\n"
        b"\tdkim=pass header.d=evil.test\r\n"
        b'Authentication-Results: "mss.hopital-a.test" 1; auth=pass\r\n'
        b"Authentication-Results: mx.clinique-b.test; dkim=pass header.d=clinique-b.test\r\n"
        b"Authentication-Results: mss.hopital-a.test.evil.test; smime=pass\r\n"
        b"X-Authentication-Results: mss.hopital-a.test; kept, other field name\r\n"
        b"Subject:  odd   spacing \r\n"
        b"\r\n"
        b"Authentication-Results: mss.hopital-a.test; this is body text\r\n"
    )
    cleaned = remove_own_results(message, HOST)
    assert cleaned == (
        b"Received: from x by y;\r\n\tSat, 28 Nov 2026 09:00:00 +0100\r\n"
        b"Authentication-Results: mx.clinique-b.test; dkim=pass header.d=clinique-b.test\r\n"
        b"Authentication-Results: mss.hopital-a.test.evil.test; smime=pass\r\n"
        b"X-Authentication-Results: mss.hopital-a.test; kept, other field name\r\n"
        b"Subject:  odd   spacing \r\n"
        b"\r\n"
        b"Authentication-Results: mss.hopital-a.test; this is body text\r\n"
    )


def test_remove_own_results_without_any_is_identity() -> None:
    message = b"From: a@b.test\nSubject: lf endings\n\nbody\n"
    assert remove_own_results(message, HOST) == message
    assert remove_own_results(b"Subject: no body", HOST) == b"Subject: no body"


def test_sealed_message_says_the_signature_is_not_visible() -> None:
    field = authentication_results_field(HOST, auth_identity="a@b.test", smime_sealed=True)
    value = field.decode()
    assert "smime=none (encrypted, signature not visible to the gateway);" in value
    message = BytesParser(policy=email.policy.default).parsebytes(field + b"\r\nbody\r\n")
    assert not message.defects and len(message.get_all("Authentication-Results") or []) == 1
    # A verdict, when there is one, is what is reported.
    assert "smime=none (encrypted" not in authentication_results(
        HOST, smime=SignatureVerdict(ok=False, reason=FailureReason.UNSIGNED), smime_sealed=True
    )
