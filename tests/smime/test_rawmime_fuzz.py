"""Fuzz target: the byte-level MIME helpers and the signed-part extraction, on any input.

Signatures cover bytes as sent, so these helpers promise exactness, which makes strong
properties: splitting a message or its header block and joining the pieces gives back the
input byte for byte; the canonical form has CRLF line ends only and is a fixed point; the
extraction either refuses with its two declared errors or returns a detached content that is
a slice of the canonical body. (tests/smime/test_smime_fuzz.py fuzzes the verifier itself.)
"""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.smime.extract import MalformedSigned, NotSigned, extract_signed
from mssgate.smime.rawmime import (
    canonical_crlf,
    header_fields,
    join_fields,
    split_head_body,
)
from tests.fuzzing import mutated, no_file_writes

pytestmark = pytest.mark.fuzz

_piece = st.one_of(
    st.sampled_from(
        [b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\n", b" ", b"\t", b":", b"Subject: x",
         b"Content-Type: text/plain", b"\r\n continued", b"X-\xff: \x00"]
    ),
    st.binary(max_size=12),
)  # fmt: skip
_message = st.lists(_piece, max_size=30).map(b"".join)


@given(_message)
def test_split_and_join_give_back_the_bytes(raw: bytes) -> None:
    head, separator, body = split_head_body(raw)
    assert head + separator + body == raw
    # With a blank line, the head keeps its last line end; without one, all is head.
    assert head.endswith(b"\n") if separator and head else True
    assert body == b"" if not separator else True
    assert separator in (b"", b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\n\r\n", b"\r\n\n")
    fields = header_fields(head)
    assert join_fields(fields) == head
    for field in fields:
        # A named field is a real "name:" line; its value never carries the line end.
        if field.name:
            assert field.raw.lower().startswith(field.name.encode())
            assert not field.value.endswith((b"\r", b"\n"))


@given(_message)
def test_canonical_form(raw: bytes) -> None:
    canonical = canonical_crlf(raw)
    assert re.search(rb"(?<!\r)\n", canonical) is None
    assert canonical_crlf(canonical) == canonical
    assert canonical.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")


_CMS = base64.encodebytes(bytes(range(256)) * 2)
SEEDS = [
    b"From: a@b.test\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
    b'micalg=sha-256; boundary="sig"\r\n\r\n'
    b"This is an S/MIME signed message\r\n"
    b"--sig\r\nContent-Type: text/plain\r\n\r\nCompte rendu.\r\n"
    b"--sig\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + _CMS + b"\r\n--sig--\r\n",
    b"From: a@b.test\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + _CMS,
]
_SNIPPETS = (
    b"\r\n--sig\r\n",
    b"\r\n--sig--\r\n",
    b"\n",
    b"; boundary*0*=utf-8''%FF; boundary*1=x",
    b"; protocol*=utf-8''application%2Fpkcs7-signature",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"====",
    b"\x00",
)


@given(mutated(SEEDS, _SNIPPETS))
def test_extraction_refuses_or_returns_a_slice(raw: bytes) -> None:
    with no_file_writes():
        try:
            parts = extract_signed(raw)
        except (NotSigned, MalformedSigned):
            return
    assert parts.cms_der
    if parts.detached_content is not None:
        _, _, body = split_head_body(raw)
        # The signed content is taken from the message, never rebuilt.
        assert parts.detached_content in canonical_crlf(body)


def test_a_non_latin1_boundary_is_malformed() -> None:
    # Found by the fuzz target above: UnicodeEncodeError escaped.
    raw = (
        b"From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; "
        b'protocol="application/pkcs7-signature"; boundary="\xff"\r\n\r\n'
        b"--\xff\r\nContent-Type: text/plain\r\n\r\nx\r\n--\xff--\r\n"
    )
    # layering() (the encryption policy) counts on these two errors and nothing else.
    with pytest.raises((NotSigned, MalformedSigned)):
        extract_signed(raw)
