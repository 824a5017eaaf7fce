"""Fuzz target: the IMAP front door's pre-auth syntax (`mssgate.imap.parse`), on any bytes.

Properties: only ParseError comes out; atoms and quoted strings survive a quote/tokenize
round trip (what a LOGIN carries is what the directory is asked about); a literal
announcement is found exactly when the line ends with one, and the rest of the line is
given back untouched.
"""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.imap.parse import ParseError, literal_at_end, start_command, tokens

pytestmark = pytest.mark.fuzz

_line = st.one_of(
    st.binary(max_size=60),
    st.lists(
        st.sampled_from([b"a", b"LOGIN", b" ", b'"', b"\\", b"(", b")", b"{", b"}", b"+", b"5",
                         b"NIL", b"\x00", b"\xff", b"{12}", b"{3+}", b"~{1}", b"*"]),
        max_size=20,
    ).map(b"".join),
)  # fmt: skip


@given(_line)
def test_any_line_parses_or_is_refused(line: bytes) -> None:
    rest, literal = literal_at_end(line)
    match = re.search(rb"\{([0-9]+)\+?\}$", line)
    assert (literal is None) == (match is None)
    if literal is not None and match is not None:
        assert rest == line[: match.start()] and literal.size >= 0
        assert literal.synchronizing == (not line.endswith(b"+}"))
    else:
        assert rest == line
    for parse in (tokens, start_command):
        with contextlib.suppress(ParseError):  # the one refusal allowed
            parse(rest)


_value = st.binary(max_size=30).filter(lambda b: not set(b) & {0x00, 0x0A, 0x0D})


@given(st.lists(_value, min_size=1, max_size=4))
def test_quoted_strings_round_trip(values: list[bytes]) -> None:
    quoted = b" ".join(
        b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"' for v in values
    )
    assert tokens(quoted) == values
    tag, name, rest = start_command(b"a1 LOGIN " + quoted)
    assert (tag, name, tokens(rest)) == ("a1", "LOGIN", values)
