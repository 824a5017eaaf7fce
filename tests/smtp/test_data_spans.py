"""The DATA parser takes plain lines in spans (smtp/data.py `_span`): it must answer exactly
what reading each line on its own answers, for any bytes cut anywhere.

The reference below is the line-by-line reading the parser had before spans (every line
checked and unstuffed on its own); both are fed the same chunks and must agree on where DATA
ends, the first error, the size counted and the message kept.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssgate.smtp.data import DataError, DataParser

pytestmark = pytest.mark.fuzz


class LineByLine:
    def __init__(self, *, max_size: int, max_line: int) -> None:
        self.max_size, self.max_line = max_size, max_line
        self.partial = b""
        self.discarding = False
        self.line_start = True
        self.size = 0
        self.error: DataError | None = None
        self.done = False
        self.kept = bytearray()

    def fail(self, error: DataError) -> None:
        if self.error is None:
            self.error = error
            self.kept.clear()

    def feed(self, chunk: bytes) -> int:
        if self.done:
            return 0
        offset = len(self.partial)
        data = self.partial + chunk
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                rest = data[pos:]
                if len(rest) > self.max_line + 3:
                    self.discarding = True
                    self.fail(DataError.LINE_TOO_LONG)
                    rest = rest[-1:]
                self.partial = rest
                return len(chunk)
            line = data[pos : nl + 1]
            pos = nl + 1
            proper = len(line) >= 2 and line[-2] == 0x0D
            if not proper or line.find(b"\r", 0, len(line) - 2) >= 0:
                self.fail(DataError.BARE_NEWLINE)
            if self.discarding:
                self.discarding = False
                self.line_start = proper
                continue
            if self.line_start and line == b".\r\n":
                self.done = True
                return pos - offset
            self.line_start = proper
            if line[:1] == b".":
                line = line[1:]
            if len(line) - 2 > self.max_line:
                self.fail(DataError.LINE_TOO_LONG)
            self.size += len(line)
            if self.size > self.max_size:
                self.fail(DataError.TOO_BIG)
            if self.error is None:
                self.kept += line


MAX_SIZE, MAX_LINE = 2048, 100

_piece = st.one_of(
    st.sampled_from(
        [b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.\r\n", b"\n.\r\n", b"\r\n.\n", b".\r\n",
         b"\r\n.", b"x" * 97 + b"\r\n", b"y" * 98 + b"\r\n", b"z" * 99 + b"\r\n",
         b"plain line\r\n" * 8, b"b" * 101, b"c" * 700]
    ),
    st.binary(max_size=16),
)  # fmt: skip
_wire = st.lists(_piece, max_size=60).map(b"".join)


@settings(max_examples=400)
@given(_wire, st.lists(st.integers(min_value=0), max_size=12))
def test_spans_answer_as_line_by_line(wire: bytes, cuts: list[int]) -> None:
    parser = DataParser(max_size=MAX_SIZE, max_line=MAX_LINE)
    reference = LineByLine(max_size=MAX_SIZE, max_line=MAX_LINE)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(points):
        chunk = wire[a:b]
        assert parser.feed(chunk) == reference.feed(chunk)
        assert (parser.done, parser.error, parser.size) == (
            reference.done,
            reference.error,
            reference.size,
        )
    if parser.done and parser.error is None:
        assert parser.message() == bytes(reference.kept)


def test_a_bare_lf_deep_in_a_long_span_is_found() -> None:
    # Refused as a span, read line by line: the bad line is the 500th.
    wire = b"line\r\n" * 499 + b"bare\n" + b"line\r\n" * 10 + b".\r\n"
    parser = DataParser(max_size=1 << 20, max_line=998)
    assert parser.feed(wire) == len(wire)
    assert parser.done and parser.error is DataError.BARE_NEWLINE


def test_a_64_kb_message_in_tls_sized_chunks() -> None:
    body = b"Subject: x\r\n\r\n" + b"x" * 76 + b"\r\n" + (b".dot\r\n" + b"y" * 76 + b"\r\n") * 400
    wire = body.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    parser = DataParser(max_size=1 << 20, max_line=998)
    for i in range(0, len(wire), 16384):
        parser.feed(wire[i : i + 16384])
    assert parser.done and parser.error is None
    assert parser.message() == body
