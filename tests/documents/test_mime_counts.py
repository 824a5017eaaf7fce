"""The MIME pre-counts (issue 17: plain counts instead of slow regular expressions) count
exactly what the regular expressions they replaced counted."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mssgate.documents.mime import count_containers, count_delimiter_lines

# The expressions walk_message used before, kept here as the specification.
_CONTAINER_RE = re.compile(rb"boundary\s*=|message/(?:rfc822|global)", re.IGNORECASE)
_DELIMITER_RE = re.compile(rb"^--", re.MULTILINE)

_PIECES = [
    b"boundary=", b"BOUNDARY =", b"Boundary\t\r\n=", b"boundar", b"y=", b"=", b" ",
    b"message/rfc822", b"MESSAGE/Global", b"message/", b"rfc822", b"global", b"--", b"\n",
    b"\r\n", b"-", b"\n--", b"x", b"\xc3\xa9", b"\x0b", b"\x0c",
]  # fmt: skip


@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=8)), max_size=40))
def test_the_counts_match_the_expressions_they_replace(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    assert count_containers(raw) == len(_CONTAINER_RE.findall(raw))
    assert count_delimiter_lines(raw) == len(_DELIMITER_RE.findall(raw))


def test_examples() -> None:
    raw = b"--a\nContent-Type: multipart/mixed; BOUNDARY = x\n--x\nmessage/RFC822 --\n"
    assert (count_containers(raw), count_delimiter_lines(raw)) == (2, 2)
