"""MLLP framing (HL7 v2 "Minimal Lower Layer Protocol"): <VT> message <FS><CR>.

A decoder without I/O, fed whatever the socket read, so that its rules are tested on their
own: a frame larger than `max_size` is never buffered past that size, bytes between frames
are reported (CR and LF there are tolerated, as many senders end a frame with CR LF), a VT
inside a frame starts a new one (the unfinished one is dropped and reported), and the bytes
of a frame unfinished at the end of the stream are left for the caller to report.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

VT = b"\x0b"
FS = b"\x1c"
CR = b"\r"
# What of an oversized frame is kept: enough for its MSH, whose MSH-10 the refusal echoes.
HEAD_BYTES = 4096


def frame(message: bytes) -> bytes:
    return VT + message + FS + CR


@dataclass(frozen=True)
class Frame:
    body: bytes


@dataclass(frozen=True)
class Garbage:
    """Bytes outside any frame (other than CR and LF): dropped."""

    size: int


@dataclass(frozen=True)
class Oversize:
    """A frame grew past the limit: its first bytes; the rest is skipped up to its FS."""

    head: bytes


@dataclass(frozen=True)
class Restarted:
    """A VT inside a frame: the `size` bytes read of the unfinished frame were dropped."""

    size: int


Event = Frame | Garbage | Oversize | Restarted


class _State(enum.Enum):
    OUTSIDE = "outside"
    INSIDE = "inside"
    SKIPPING = "skipping"  # inside an oversized frame


class Decoder:
    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._state = _State.OUTSIDE
        self._buf = bytearray()
        self._skipped = 0

    @property
    def pending(self) -> int:
        """Bytes of a frame begun and not finished (what EOF now would cut)."""
        if self._state is _State.INSIDE:
            return len(self._buf) + 1
        return self._skipped if self._state is _State.SKIPPING else 0

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        at, end = 0, len(data)
        while at < end:
            if self._state is _State.OUTSIDE:
                start = data.find(VT, at)
                stop = end if start < 0 else start
                junk = len(data[at:stop].translate(None, b"\r\n"))
                if junk:
                    events.append(Garbage(junk))
                if start < 0:
                    break
                self._state, self._buf, at = _State.INSIDE, bytearray(), start + 1
                continue
            stop = _first(data, at, end)
            chunk = data[at:stop]
            if self._state is _State.INSIDE:
                if len(self._buf) + len(chunk) > self._max:
                    room = max(0, HEAD_BYTES - len(self._buf))
                    events.append(Oversize(bytes(self._buf[:HEAD_BYTES]) + chunk[:room]))
                    self._state, self._buf = _State.SKIPPING, bytearray()
                    self._skipped = 0
                else:
                    self._buf += chunk
            if self._state is _State.SKIPPING:
                self._skipped += len(chunk)
            if stop == end:
                break
            if data[stop : stop + 1] == FS:
                if self._state is _State.INSIDE:
                    events.append(Frame(bytes(self._buf)))
                # The CR after FS is read as the space between frames.
                self._state, self._buf, self._skipped = _State.OUTSIDE, bytearray(), 0
            else:  # a VT: a new frame begins
                if self._state is _State.INSIDE:
                    events.append(Restarted(len(self._buf) + 1))
                self._state, self._buf, self._skipped = _State.INSIDE, bytearray(), 0
            at = stop + 1
        return events


_MARK = re.compile(b"[\x0b\x1c]")


def _first(data: bytes, at: int, end: int) -> int:
    """Where the next FS or VT is (`end` when neither is). One scan up to it: a find of each
    from `at` rescanned the rest of the read for every one of 64 KiB of <VT>."""
    found = _MARK.search(data, at)
    return found.start() if found else end
