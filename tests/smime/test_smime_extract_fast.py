"""The faster ways extract.py reads a message give the same answers as the plain ones."""

from __future__ import annotations

import email.policy
import re
from email.message import EmailMessage
from email.parser import BytesParser

from hypothesis import given, settings
from hypothesis import strategies as st

from mssgate.smime.extract import _POLICY, _canonical, _delimiters, parse_headers
from mssgate.smime.rawmime import canonical_crlf

BOUNDARIES = [b"b", b"--", b"=_x.y", b"a b", b"ab\r\ncd", b"ab\ncd", b"\r\n", b"-"]
PIECES = [b"\r\n", b"\n", b"\r", b"-", b"--", b" ", b"\t", b"x", b"=_x.y", b"a b", b"ab", b"cd"]


def reference_delimiters(body: bytes, boundary: bytes) -> list[tuple[int, int, bool]]:
    # The pattern extract.py used before, applied to every input.
    pattern = re.compile(
        rb"(?:\A|\r\n)--" + re.escape(boundary) + rb"(?P<close>--)?[ \t]*(?=\r\n|\Z)"
    )
    return [(m.start(), m.end(), m.group("close") is not None) for m in pattern.finditer(body)]


@settings(max_examples=2000, deadline=None)
@given(
    boundary=st.sampled_from(BOUNDARIES),
    pieces=st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=3)), max_size=40),
)
def test_delimiters_match_the_plain_pattern(boundary: bytes, pieces: list[bytes]) -> None:
    # Bodies built from delimiter fragments, so that near-misses and overlaps are common.
    body = b"".join(b"--" + boundary if p == b"--" else p for p in pieces)
    assert _delimiters(body, boundary) == reference_delimiters(body, boundary)


@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"a", b"\r\r\n", b"\n\r"]), max_size=30))
def test_canonical_matches_canonical_crlf(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    assert _canonical(body) == canonical_crlf(body)


HEADERS = [
    b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
    b' micalg=sha-256; boundary="----=_x"\r\n',
    b"Content-Type: multipart/signed; boundary*=us-ascii''ab%0D%0Acd; protocol=x\r\n",
    b'Content-Type: text/plain; charset="unterminated\r\n',
    b"Content-Type: (comment) application/pkcs7-mime ; smime-type=signed-data\r\n",
    b"Content-Type: =?utf-8?q?text/plain?=\r\n",
    b"Content-Type: \r\n",
    b"From: =?utf-8?q?Dr_=C3=89?= <a@b.test>, c@d.test\r\n",
    b"From: <a@b.test>\r\nFrom: broken <<\r\n",
    b"Content-Transfer-Encoding:  Base64 \r\n",
]


def test_shared_header_registry_answers_like_the_default_policy() -> None:
    for head in HEADERS:
        raw = head + b"\r\nbody\r\n"
        ours = parse_headers(raw)
        plain = BytesParser(_class=EmailMessage, policy=email.policy.default).parsebytes(
            raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", headersonly=True
        )
        for _ in range(2):  # the second time from the shared registry
            assert ours.get_content_type() == plain.get_content_type()
            for name in ("boundary", "protocol", "smime-type", "charset"):
                assert ours.get_param(name, header="content-type") == plain.get_param(
                    name, header="content-type"
                )
            assert ours.get_boundary() == plain.get_boundary()
            for field in ("from", "content-transfer-encoding"):
                mine, theirs = ours.get_all(field) or [], plain.get_all(field) or []
                assert [str(v) for v in mine] == [str(v) for v in theirs]
                # Each registry makes its own classes (same name, same bases).
                assert [type(v).__mro__[1:] for v in mine] == [type(v).__mro__[1:] for v in theirs]
                assert [list(map(repr, v.defects)) for v in mine] == [
                    list(map(repr, v.defects)) for v in theirs
                ]
                assert [getattr(v, "addresses", None) for v in mine] == [
                    getattr(v, "addresses", None) for v in theirs
                ]


def test_shared_policy_is_the_default_policy_otherwise() -> None:
    for name in ("max_line_length", "linesep", "cte_type", "raise_on_defect", "utf8"):
        assert getattr(_POLICY, name) == getattr(email.policy.default, name)
    long_value = "x" * 5000  # not kept: parsed per access as the stdlib does
    assert _POLICY.header_fetch_parse("Subject", long_value) == long_value
