"""layering / replace_entity: how a message is wrapped, and a decrypted entity put back."""

from __future__ import annotations

from pathlib import Path

import pytest
from smime_fixtures import Pki, RunOpenssl

from mssgate.smime import encrypt, sign_message
from mssgate.smime.layers import Layering, encrypted_cms_type, layering, replace_entity

MESSAGE = (
    b"From: <dr.alice.martin@hopital-a.test>\r\n"
    b"To: <dr.bob.durand@clinique-b.test>\r\n"
    b"Subject: Resultats\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"normaux.\r\n"
)


def test_shapes_made_here(pki: Pki) -> None:
    def sign(raw: bytes, detached: bool = True) -> bytes:
        return sign_message(raw, key=pki.alice.key, cert=pki.alice.cert, detached=detached)

    sealed = encrypt(MESSAGE, [pki.bob.cert])
    assert layering(MESSAGE) is Layering.CLEAR
    assert layering(sign(MESSAGE)) is Layering.SIGNED
    assert layering(sign(MESSAGE, detached=False)) is Layering.SIGNED
    assert layering(sealed) is Layering.ENCRYPTED
    assert layering(encrypt(sign(MESSAGE), [pki.bob.cert], mode="aes-cbc")) is Layering.ENCRYPTED
    assert layering(sign(sealed)) is Layering.SIGNED_ENCRYPTED
    assert layering(sign(sealed, detached=False)) is Layering.SIGNED_ENCRYPTED
    assert encrypted_cms_type(sealed) == "authenticated_enveloped_data"
    assert encrypted_cms_type(encrypt(MESSAGE, [pki.bob.cert], mode="aes-cbc")) == "enveloped_data"
    assert encrypted_cms_type(sign(MESSAGE, detached=False)) is None
    assert Layering.SIGNED_ENCRYPTED.encrypted and not Layering.SIGNED.encrypted


def test_smime_type_missing_is_read_from_the_cms(
    pki: Pki, openssl: RunOpenssl, tmp_path: Path
) -> None:
    source = tmp_path / "m.eml"
    source.write_bytes(MESSAGE)
    out = tmp_path / "enc.eml"
    openssl("cms", "-encrypt", "-aes-256-gcm", "-in", source, "-out", out, pki.bob.cert_path)
    raw = out.read_bytes().replace(b"\n", b"\r\n")
    bare = raw.replace(b" smime-type=authEnveloped-data;", b"")
    assert b"smime-type" not in bare.split(b"\r\n\r\n")[0]
    assert layering(bare) is Layering.ENCRYPTED
    # A pkcs7-mime body that is not CMS at all is nothing we would open (the signature check
    # calls it malformed).
    junk = (
        b"Content-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n"
    )
    assert not layering(junk).encrypted


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
def test_replace_entity_keeps_outer_headers_and_inner_content_fields(line_end: bytes) -> None:
    outer = (
        b"Received: by mx\r\nFrom: <a@x.test>\r\nSubject: outer\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n"
    ).replace(b"\r\n", line_end)
    entity = (
        b"From: <forged@evil.test>\r\nSubject: inner\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"\r\nbody\r\n"
    )
    rebuilt = replace_entity(outer, entity)
    head, body = rebuilt.replace(b"\r\n", b"\n").split(b"\n\n", 1)
    assert head.split(b"\n") == [
        b"Received: by mx",
        b"From: <a@x.test>",
        b"Subject: outer",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
    ]
    assert body == b"body\n"
