"""The gateway's look for a client's signature in a part (mssgate.smime.gateway_sign) on
hostile structures: any authenticated user's message reaches it, before any other check
has read the body, so it must be bounded in memory and depth for any input."""

from __future__ import annotations

import tracemalloc

from mssgate.smime.gateway_sign import _signed_in_part

SIGNATURE_PART = (
    b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nMIIB\r\n"
)
TEXT_PART = b"Content-Type: text/plain\r\n\r\nhi\r\n"


def nested(levels: int, leaf: bytes) -> bytes:
    head = b"From: alice@example.org\r\nSubject: deep\r\n"
    opening, closing = b"", b""
    for i in range(levels):
        boundary = b"b%d" % i
        opening += b'Content-Type: multipart/mixed; boundary="%s"\r\n\r\n--%s\r\n' % (
            boundary, boundary,
        )  # fmt: skip
        closing = b"\r\n--%s--\r\n" % boundary + closing
    return head + opening + leaf + closing


def many_parts(count: int, last: bytes, boundary: bytes = b"x") -> bytes:
    head = b"From: alice@example.org\r\nContent-Type: multipart/mixed; boundary="
    delimiter = b"--" + boundary + b"\r\n"
    parts = (delimiter + TEXT_PART) * count + delimiter + last
    return head + boundary + b"\r\n\r\n" + parts + b"--" + boundary + b"--\r\n"


def test_a_thousand_levels_deep_is_an_answer_not_a_recursion_error() -> None:
    # 1,200 levels in 80 KB: the stdlib parser recursed once per level (RecursionError,
    # a 500 for the sender and a traceback in the log).
    assert _signed_in_part(nested(1200, SIGNATURE_PART)) is True
    # With no signature anywhere there is nothing to look for: the gateway may sign it.
    assert _signed_in_part(nested(1200, TEXT_PART)) is False


def test_many_parts_are_not_parsed_into_memory() -> None:
    raw = many_parts(50_000, SIGNATURE_PART)  # 2 MB, what any submission may be
    tracemalloc.start()
    try:
        found = _signed_in_part(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is True  # too many parts to read: taken as signed, not signed around
    # The parse of every part held ~30 times the message (and ~100 us of CPU per part).
    assert peak < 2 * len(raw), (peak, len(raw))
    raw = many_parts(50_000, TEXT_PART)
    tracemalloc.start()
    try:
        found = _signed_in_part(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is False and peak < 2 * len(raw), (peak, len(raw))
    # Nothing but lines that could be boundaries: counted, not listed.
    raw = many_parts(0, SIGNATURE_PART + b"--\r\n" * 500_000)
    tracemalloc.start()
    try:
        found = _signed_in_part(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is True and peak < len(raw), (peak, len(raw))


def test_what_a_client_sends_is_still_told_apart() -> None:
    # A part signed by the client: a signature in a part.
    assert _signed_in_part(many_parts(3, SIGNATURE_PART)) is True
    # Field names and types in any case, folded, after a form feed: all still seen.
    for field in (
        b"CONTENT-TYPE: Multipart/Signed; boundary=s\r\n\r\n--s--\r\n",
        b"Content-Type:\r\n\tapplication/x-pkcs7-signature\r\n\r\nMIIB\r\n",
        b"Content-Type:\x0capplication/pkcs7-mime; smime-type=signed-data\r\n\r\nMIIB\r\n",
    ):
        assert _signed_in_part(many_parts(2, field)) is True, field
    # A forwarded signed message is another message: its signature is its own.
    forwarded = b"Content-Type: message/rfc822\r\n\r\n" + many_parts(1, SIGNATURE_PART, b"y")
    assert _signed_in_part(many_parts(1, forwarded)) is False
    # Plain mail, with "Content-Type: multipart/signed" only quoted in its text.
    quoted = b"Content-Type: text/plain\r\n\r\nwrite Content-Type: multipart/signed\r\n"
    assert _signed_in_part(many_parts(1, quoted)) is False
