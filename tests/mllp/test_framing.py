"""MLLP framing (mssgate.mllp.framing): whatever the chunking, frames come out whole and in
order, nothing past the size limit is kept, and bytes outside frames are reported."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mssgate.mllp.framing import (
    HEAD_BYTES,
    Decoder,
    Event,
    Frame,
    Garbage,
    Oversize,
    Restarted,
    frame,
)

# Message bodies never hold the framing bytes (the outbound path refuses raw control bytes).
bodies = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))


def feed_in_chunks(decoder: Decoder, stream: bytes, cuts: list[int]) -> list[Event]:
    events: list[Event] = []
    at = 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        events += decoder.feed(stream[at:cut])
        at = cut
    return events


@given(st.lists(bodies, max_size=8), st.lists(st.integers(0, 10_000), max_size=20),
       st.sampled_from([b"", b"\r", b"\n", b"\r\n"]))  # fmt: skip
def test_frames_come_out_whole_whatever_the_reads(
    messages: list[bytes], cuts: list[int], between: bytes
) -> None:
    stream = b"".join(frame(m) + between for m in messages)
    decoder = Decoder(max_size=300)
    events = feed_in_chunks(decoder, stream, cuts)
    assert events == [Frame(m) for m in messages]
    assert decoder.pending == 0


@given(bodies, st.integers(8, 299), st.lists(st.integers(0, 10_000), max_size=10))
def test_an_oversized_frame_is_reported_once_and_the_next_one_read(
    body: bytes, limit: int, cuts: list[int]
) -> None:
    big = body + b"x" * (limit + 1 - len(body)) if len(body) <= limit else body
    stream = frame(big) + frame(b"MSH|next")
    events = feed_in_chunks(Decoder(max_size=limit), stream, cuts)
    oversize = [e for e in events if isinstance(e, Oversize)]
    assert len(oversize) == 1 and big.startswith(oversize[0].head)
    assert len(oversize[0].head) <= HEAD_BYTES
    assert events[-1] == Frame(b"MSH|next")


def test_nothing_past_the_limit_is_buffered() -> None:
    decoder = Decoder(max_size=1000)
    [event] = decoder.feed(b"\x0b" + b"A" * 5000)
    assert isinstance(event, Oversize) and len(event.head) <= HEAD_BYTES
    assert decoder.feed(b"B" * 1_000_000) == []  # skipped, not kept
    assert decoder.feed(b"\x1c\r\x0bMSH|1\x1c\r") == [Frame(b"MSH|1")]


@given(st.binary(max_size=200))
def test_any_bytes_never_raise_and_account_for_every_byte_outside(data: bytes) -> None:
    decoder = Decoder(max_size=50)
    for event in decoder.feed(data):
        assert isinstance(event, Frame | Garbage | Oversize | Restarted)
    assert decoder.pending >= 0


def test_garbage_between_frames_and_a_missing_vt_are_reported() -> None:
    decoder = Decoder(max_size=100)
    assert decoder.feed(b"MSH|no-vt\x1c\r\x0bMSH|1\x1c\r") == [Garbage(10), Frame(b"MSH|1")]
    assert decoder.feed(b"\x0bMSH|cut\x0bMSH|2\x1c\r") == [Restarted(8), Frame(b"MSH|2")]
    assert decoder.feed(b"\x0bMSH|unfinished") == []
    assert decoder.pending == len(b"\x0bMSH|unfinished")
