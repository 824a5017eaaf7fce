"""What a signature covers, and nothing else (issue 12 B.4, B.5): `signed_content` on detached,
opaque and nested signatures, with whatever a sender can add without breaking them."""

from __future__ import annotations

import base64
import contextlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smime_fixtures import Pki

from mssgate.smime import encrypt, sign_message, split_entity, verify_signed_message
from mssgate.smime.content import MAX_SIGNATURE_LAYERS, signed_content
from mssgate.smime.extract import MalformedSigned
from mssgate.smime.layers import replace_entity
from tests.signed_mail import (
    in_preamble_and_epilogue,
    smuggle_in_signature,
    with_unsigned_attribute,
    wrapped_in_mixed,
)

MESSAGE = (
    b"From: <dr.alice.martin@hopital-a.test>\r\n"
    b"To: <ris@hopital-a.test>\r\n"
    b"Subject: CR\r\n"
    b"Message-ID: <cr@hopital-a.test>\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Compte rendu ci-joint.\r\n"
    b"--b1\r\n"
    b'Content-Type: text/xml; name="CR.xml"\r\n'
    b"\r\n"
    b"<ClinicalDocument/>\r\n"
    b"--b1--\r\n"
)
PAYLOAD = b"PK\x05\x06" + b"\0" * 18  # an empty zip: what would be read as IHE_XDM.ZIP


def expected(message: bytes) -> bytes:
    """The message's own header fields over the entity that was signed."""
    outer, entity = split_entity(message)
    return outer + b"MIME-Version: 1.0\r\n" + entity


def sign(pki: Pki, raw: bytes, *, detached: bool = True) -> bytes:
    return sign_message(raw, key=pki.alice.key, cert=pki.alice.cert, detached=detached)


def test_detached_signature_gives_its_first_part(pki: Pki) -> None:
    assert signed_content(sign(pki, MESSAGE)) == expected(MESSAGE)


def test_opaque_signature_gives_its_encapsulated_content(pki: Pki) -> None:
    # What `openssl smime -sign -nodetach` sends: before issue 12 B.5 the pipeline saw only
    # an application/pkcs7-mime part and read nothing.
    assert signed_content(sign(pki, MESSAGE, detached=False)) == expected(MESSAGE)


def test_what_rides_outside_the_signature_is_left_out(pki: Pki) -> None:
    signed = sign(pki, MESSAGE)
    for hostile in (
        smuggle_in_signature(signed, PAYLOAD),
        in_preamble_and_epilogue(signed, PAYLOAD),
        in_preamble_and_epilogue(smuggle_in_signature(signed, PAYLOAD), PAYLOAD),
    ):
        verdict = verify_signed_message(hostile, trust_anchors=[pki.ca.cert], registered=None)
        assert verdict.ok, verdict  # still a valid signature: the pipeline is the last line
        assert signed_content(hostile) == expected(MESSAGE)
        assert PAYLOAD not in signed_content(hostile)


def test_nested_signatures_are_unwrapped_and_their_signature_parts_left_out(pki: Pki) -> None:
    inner = smuggle_in_signature(sign(pki, MESSAGE), PAYLOAD)
    for outer in (sign(pki, inner), sign(pki, inner, detached=False)):
        assert signed_content(outer) == expected(MESSAGE)
    opaque_in_detached = sign(pki, sign(pki, MESSAGE, detached=False))
    assert signed_content(opaque_in_detached) == expected(MESSAGE)


def test_too_many_layers_are_refused(pki: Pki) -> None:
    raw = MESSAGE
    for _ in range(MAX_SIGNATURE_LAYERS):
        raw = sign(pki, raw)
    assert signed_content(raw) == expected(MESSAGE)
    with pytest.raises(MalformedSigned, match="nested signatures"):
        signed_content(sign(pki, raw))


def test_unsigned_and_encrypted_messages_come_back_unchanged(pki: Pki) -> None:
    assert signed_content(MESSAGE) is MESSAGE
    # A part next to the signed entity makes it unsigned at the top (refused at DATA when
    # signatures are required): nothing to unwrap.
    mixed = wrapped_in_mixed(sign(pki, MESSAGE), PAYLOAD)
    assert signed_content(mixed) is mixed
    sealed = encrypt(MESSAGE, [pki.alice.cert])
    assert signed_content(sealed) is sealed
    # Signed around an entity the gateway did not open: the encrypted entity, nothing else.
    around = sign(pki, sealed)
    assert signed_content(around) == expected(sealed)


def test_a_signature_that_cannot_be_read_is_an_error_not_a_guess(pki: Pki) -> None:
    signed = sign(pki, MESSAGE)
    found = re.search(rb'boundary="([^"]+)"', signed)
    assert found is not None
    close = b"\r\n--" + found.group(1) + b"--"
    extra = b"\r\n--" + found.group(1) + b"\r\nContent-Type: text/plain\r\n\r\nextra"
    third_part = signed.replace(close, extra + close)
    with pytest.raises(MalformedSigned, match="exactly two parts"):
        signed_content(third_part)
    # A detached signature's DER sent as if it were opaque: nothing encapsulated.
    der = signed.split(b'filename="smime.p7s"\r\n\r\n')[1].split(b"\r\n--")[0]
    opaque_without_content = (
        b"From: <dr.alice.martin@hopital-a.test>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + der + b"\r\n"
    )
    with pytest.raises(MalformedSigned, match="without content"):
        signed_content(opaque_without_content)


# -- properties ------------------------------------------------------------------------------

texts = st.text(st.characters(codec="ascii", exclude_characters="\r\n"), max_size=60)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=texts,
    document=st.binary(max_size=300),
    smuggled=st.binary(max_size=300),
    filename=st.sampled_from(["IHE_XDM.ZIP", "cr.pdf", "CR.xml", "smime.p7s"]),
    detached=st.booleans(),
)
def test_the_signed_entity_whatever_rides_outside(
    pki: Pki, body: str, document: bytes, smuggled: bytes, filename: str, detached: bool
) -> None:
    """Property: the signed content is the signed entity under the outer header fields, and
    nothing a sender adds outside it (signature part names, unsigned attributes, preamble and
    epilogue) changes a byte of it."""
    message = (
        b"From: <dr.alice.martin@hopital-a.test>\r\nSubject: s\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
        b"Content-Type: text/plain\r\n\r\n" + body.encode() + b"\r\n--b1\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(document).replace(b"\n", b"\r\n")
        + b"--b1--\r\n"
    )
    signed = sign(pki, message, detached=detached)
    assert signed_content(signed) == expected(message)
    if detached:
        hostile = in_preamble_and_epilogue(
            smuggle_in_signature(signed, smuggled, filename), smuggled
        )
        assert signed_content(hostile) == expected(message)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=4,
    ),
    detached=st.booleans(),
)
def test_damaged_messages_give_the_verified_content_or_an_error(
    pki: Pki, edits: list[tuple[int, int]], detached: bool
) -> None:
    """Property: on any damage, `signed_content` returns bytes or raises MalformedSigned,
    nothing else; and whenever the damaged message still verifies, what it returns is exactly
    what the verifier checked, under the message's header fields."""
    data = bytearray(sign(pki, MESSAGE, detached=detached))
    for position, value in edits:
        data[position % len(data)] = value
    damaged = bytes(data)
    try:
        content = signed_content(damaged)
    except MalformedSigned:
        content = None
    verdict = verify_signed_message(damaged, trust_anchors=[pki.ca.cert], registered=None)
    if verdict.ok:
        assert verdict.content is not None and content is not None
        assert content == replace_entity(damaged, verdict.content)


def test_unsigned_attribute_keeps_the_signature_valid(pki: Pki) -> None:
    """The builder the tests above rely on: an unsigned attribute changes no verdict."""
    signed = sign(pki, MESSAGE, detached=False)
    head, body = signed.split(b"\r\n\r\n", 1)
    der = base64.b64decode(b"".join(body.split()))
    again = (
        head
        + b"\r\n\r\n"
        + base64.encodebytes(with_unsigned_attribute(der, PAYLOAD)).replace(b"\n", b"\r\n")
    )
    assert verify_signed_message(again, trust_anchors=[pki.ca.cert], registered=None).ok
    assert signed_content(again) == expected(MESSAGE)


@settings(deadline=None)
@given(
    content_type=st.sampled_from(
        [
            b'multipart/signed; protocol="application/pkcs7-signature"; boundary="b"',
            b"application/pkcs7-mime; smime-type=signed-data",
            b"application/pkcs7-mime",
            b"multipart/mixed; boundary=b",
        ]
    ),
    encoding=st.sampled_from([b"", b"base64", b"binary", b"x-uuencode"]),
    body=st.binary(max_size=400),
)
def test_any_bytes_give_bytes_or_malformed_signed(
    content_type: bytes, encoding: bytes, body: bytes
) -> None:
    """Property: on hostile bytes, `signed_content` returns bytes or raises MalformedSigned,
    which the pipeline turns into a held message; nothing else escapes."""
    raw = b"From: a@b.test\r\nContent-Type: " + content_type + b"\r\n"
    if encoding:
        raw += b"Content-Transfer-Encoding: " + encoding + b"\r\n"
    raw += b"\r\n" + body
    with contextlib.suppress(MalformedSigned):
        assert isinstance(signed_content(raw), bytes)
