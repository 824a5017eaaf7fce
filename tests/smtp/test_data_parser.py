"""The DATA parser alone: property tests over chunkings, stuffing and bad line ends."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from mssgate.smtp.data import DataError, DataParser

line_text = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def stuff(lines: list[bytes]) -> bytes:
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)


def feed_in_chunks(parser: DataParser, data: bytes, cuts: list[int]) -> int:
    used = 0
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        used += parser.feed(data[a:b])
        if parser.done:
            return used
    return used


@given(st.lists(line_text, max_size=40), st.lists(st.integers(0, 10_000), max_size=8), line_text)
def test_any_chunking_recovers_the_message(
    lines: list[bytes], cuts: list[int], after: bytes
) -> None:
    wire = stuff(lines) + b".\r\n"
    parser = DataParser(max_size=1 << 20, max_line=200)
    used = feed_in_chunks(parser, wire + after + b"\r\n", cuts)
    assert parser.done and parser.error is None
    assert parser.message() == b"".join(ln + b"\r\n" for ln in lines)
    # What follows the final dot is left for the command reader, byte for byte.
    assert used == len(wire)


@given(
    st.lists(line_text, min_size=1, max_size=20),
    st.integers(0, 19),
    st.sampled_from([b"\n", b"\r"]),
)
def test_a_bare_newline_anywhere_is_an_error(lines: list[bytes], at: int, bare: bytes) -> None:
    i = at % len(lines)
    lines[i] = lines[i] + bare + b"tail"
    # Stuffed: an unstuffed "." line would end the data before the bare newline is reached.
    wire = stuff(lines) + b".\r\n"
    parser = DataParser(max_size=1 << 20, max_line=400)
    parser.feed(wire)
    assert parser.done
    assert parser.error is DataError.BARE_NEWLINE


def test_smuggled_end_is_content() -> None:
    parser = DataParser(max_size=1 << 20, max_line=100)
    used = parser.feed(b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\nQUIT\r\n")
    assert parser.done and parser.error is DataError.BARE_NEWLINE
    assert used == len(b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n")


def test_limits() -> None:
    big = DataParser(max_size=100, max_line=1000)
    big.feed(b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n.\r\n")
    assert big.error is DataError.TOO_BIG
    long = DataParser(max_size=1 << 20, max_line=10)
    long.feed(b"0123456789A\r\n.\r\n")
    assert long.error is DataError.LINE_TOO_LONG
    # A line far over the limit, fed in pieces, is not kept in memory.
    huge = DataParser(max_size=1 << 30, max_line=10)
    for _ in range(100):
        huge.feed(b"z" * 10_000)
    assert len(huge._partial) <= 1
    huge.feed(b"\r\n.\r\n")
    assert huge.done and huge.error is DataError.LINE_TOO_LONG


def test_empty_message_and_leading_dot_line() -> None:
    empty = DataParser(max_size=10, max_line=10)
    assert empty.feed(b".\r\n") == 3 and empty.done and empty.message() == b""
    dots = DataParser(max_size=100, max_line=10)
    dots.feed(b"..\r\n...x\r\n.\r\n")
    assert dots.message() == b".\r\n..x\r\n"
