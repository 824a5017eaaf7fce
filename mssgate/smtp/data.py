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
        while True:
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

    def message(self) -> bytes:
        assert self.done and self.error is None
        return self.body.read()
