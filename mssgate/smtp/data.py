"""The DATA phase, sans I/O: bytes in, an unstuffed message or a typed error out.

Rules (RFC 5321 2.3.8, 4.1.1.4, 4.5.2), with the SMTP smuggling lessons of 2023 applied:
- a line ends with CRLF only; a bare LF or a bare CR anywhere marks the message bad;
- the end of data is "." CRLF on a line that a real CRLF opened; "\\n.\\r\\n" or
  "\\r\\n.\\n" are content, never an end, so no second message can hide behind them;
- leading dots are unstuffed;
- size and line length are checked while reading: past a limit nothing more is kept, but the
  data is still read to its end, so that the reply lands where the client expects it.
"""

from __future__ import annotations

from enum import Enum

from mssgate.smtp.body import MessageBody


class DataError(Enum):
    TOO_BIG = "too big"
    LINE_TOO_LONG = "line too long"
    BARE_NEWLINE = "bare CR or LF"


class DataParser:
    def __init__(self, *, max_size: int, max_line: int, body: MessageBody | None = None) -> None:
        self._max_size = max_size
        self._max_line = max_line
        # Without a body given, everything stays in memory (the parser's own tests).
        self.body = body if body is not None else MessageBody(spill_threshold=max_size + 1)
        self._partial = bytearray()
        self._discarding_line = False
        self._line_start = True  # the previous line ended with a real CRLF
        self.size = 0
        self.error: DataError | None = None
        self.done = False

    def _fail(self, error: DataError) -> None:
        # The first error wins: it is the one the client should hear about.
        if self.error is None:
            self.error = error
            self.body.discard()

    def feed(self, chunk: bytes) -> int:
        """Consumes `chunk`; returns how many of its bytes belong to the DATA phase.

        Once `done`, the bytes after the returned count are the client's next commands.
        """
        if self.done:
            return 0
        offset = len(self._partial)
        data = bytes(self._partial) + chunk if offset else chunk
        pos = 0
        complete = data.rfind(b"\n") + 1  # the end of the chunk's last whole line
        checked = 0  # up to there, a span was refused: line by line (each span scanned once)
        while True:
            if pos >= checked and pos < complete and self._line_start and self.error is None:
                pos, checked = self._span(data, pos, complete)
            nl = data.find(b"\n", pos)
            if nl < 0:
                rest = data[pos:]
                if len(rest) > self._max_line + 3:
                    # Keep only the last byte: it may be the CR of a CRLF split by the chunk.
                    self._discarding_line = True
                    self._fail(DataError.LINE_TOO_LONG)
                    rest = rest[-1:]
                self._partial = bytearray(rest)
                return len(chunk)
            line = data[pos : nl + 1]
            pos = nl + 1
            proper = len(line) >= 2 and line[-2] == 0x0D
            if not proper or line.find(b"\r", 0, len(line) - 2) >= 0:
                self._fail(DataError.BARE_NEWLINE)
            if self._discarding_line:
                self._discarding_line = False
                self._line_start = proper
                continue
            if self._line_start and line == b".\r\n":
                self.done = True
                self._partial = bytearray()
                return pos - offset
            self._line_start = proper
            if line[:1] == b".":
                line = line[1:]
            if len(line) - 2 > self._max_line:
                self._fail(DataError.LINE_TOO_LONG)
            self.size += len(line)
            if self.size > self._max_size:
                self._fail(DataError.TOO_BIG)
            if self.error is None:
                self.body.write(line)

    def _span(self, data: bytes, pos: int, complete: int) -> tuple[int, int]:
        """Takes at once the whole lines from `pos` up to the next one opening with a dot.

        Line by line in Python, a 64 KB message cost about 1 ms of CPU: most lines are plain
        and are taken here with a few C-speed scans; a span is taken only when each of its
        lines would pass the checks below unchanged (CRLF only, no dot to unstuff, within
        both limits), otherwise nothing is taken and the loop reads it line by line. Returns
        where the line-by-line reading resumes and where the span examined ends.
        """
        if data[pos] == 0x2E:
            return pos, pos + 1
        dot = data.find(b"\n.", pos, complete)
        end = complete if dot < 0 else dot + 1
        span = data[pos:end]
        # Split at each CRLF, a span of proper lines leaves pieces with no CR nor LF left, each
        # a line without its CRLF (the length limit's measure). Joined, one memchr each.
        lines = span.split(b"\r\n")
        joined = b"".join(lines)
        if b"\r" in joined or b"\n" in joined:
            return pos, end  # a bare CR or LF: the line-by-line reading finds which line
        if max(map(len, lines)) > self._max_line:
            return pos, end
        if self.size + len(span) > self._max_size:
            return pos, end
        self.size += len(span)
        self.body.write(span)
        return end, end

    def message(self) -> bytes:
        assert self.done and self.error is None
        return self.body.read()
