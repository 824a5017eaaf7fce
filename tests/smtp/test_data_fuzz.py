"""Fuzz target: the DATA parser on arbitrary bytes, cut anywhere.

tests/smtp/test_data_parser.py checks well-formed messages; here the input is anything a
client can send, and the properties are the ones the session relies on: the parser never
raises, the place where DATA ends (and commands resume) does not depend on how TCP cut the
bytes, an accepted message is bounded and made of CRLF lines only, and nothing touches disk.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.smtp.data import DataParser
from tests.fuzzing import no_file_writes

pytestmark = pytest.mark.fuzz

MAX_SIZE, MAX_LINE = 2048, 100

# Short pieces that matter to the grammar, glued at random: line ends of every kind, dots
# where an end marker could be, and runs long enough to cross both limits.
_piece = st.one_of(
    st.sampled_from(
        [b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.\r\n", b"\n.\r\n", b"\r\n.\n", b".\r\n",
         b"\r\n.", b"\x00", b"MAIL FROM:<x@y>\r\n", b"a" * 99, b"b" * 101, b"c" * 700]
    ),
    st.binary(max_size=16),
)  # fmt: skip
_wire = st.lists(_piece, max_size=40).map(b"".join)


def _feed(wire: bytes, cuts: list[int]) -> tuple[DataParser, int]:
    parser = DataParser(max_size=MAX_SIZE, max_line=MAX_LINE)
    used = 0
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    with no_file_writes():
        for a, b in itertools.pairwise(points):
            chunk = wire[a:b]
            taken = parser.feed(chunk)
            assert 0 <= taken <= len(chunk)
            if parser.done:
                assert parser.feed(b".\r\n") == 0, "fed after its end"
                return parser, used + taken
            assert taken == len(chunk), "kept back bytes before the end"
            used += taken
    return parser, used


@given(_wire, st.lists(st.integers(min_value=0), max_size=12))
def test_any_bytes_any_cuts(wire: bytes, cuts: list[int]) -> None:
    whole, used_whole = _feed(wire, [])
    cut, used_cut = _feed(wire, cuts)
    # Where DATA ends is where the next command starts: it must not move with the cuts.
    assert (cut.done, used_cut) == (whole.done, used_whole)
    if not whole.done:
        return
    # Accepted or refused alike whatever the cuts. (Which error is reported first may
    # differ: a bare CR inside a line already over the length limit is not looked at.)
    assert (cut.error is None) == (whole.error is None), (cut.error, whole.error)
    if whole.error is not None:
        return
    message = whole.message()
    assert cut.message() == message
    assert len(message) <= MAX_SIZE
    # Only CRLF line ends, each line within the limit: what the spool and the signers get.
    assert message == b"" or message.endswith(b"\r\n")
    lines = message.split(b"\r\n")[:-1]
    assert all(b"\r" not in ln and b"\n" not in ln and len(ln) <= MAX_LINE for ln in lines)
    # The end marker is the first "." line that a real CRLF opened.
    assert wire[:used_whole].endswith(b".\r\n")
    assert used_whole == 3 or wire[used_whole - 5 : used_whole] == b"\r\n.\r\n"
