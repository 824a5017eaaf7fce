"""Return-Path as the mail stores write it: the envelope's, once, first (issue 12 C.7, C.8)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssgate.returnpath import return_path_field, strip_return_path, with_return_path

_NAMES = st.sampled_from(["Return-Path", "return-path", "RETURN-PATH", "From", "X-Return-Path"])
_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, int]:
    """A message with arbitrary fields (some folded) and a body that mentions Return-Path;
    also how many top-level Return-Path fields it has."""
    fields = draw(st.lists(st.tuples(_NAMES, _VALUES, st.booleans()), max_size=8))
    head = b"Subject: x\r\n"
    for name, value, folded in fields:
        head += f"{name}: {value}\r\n".encode()
        if folded:
            head += b"\t<continued@example.test>\r\n"
    body = b"Return-Path: <in-the-body@example.test>\r\n" + draw(st.binary(max_size=60))
    count = sum(1 for name, _, _ in fields if name.lower() == "return-path")
    return head + b"\r\n" + body, count


@settings(max_examples=300)
@given(messages())
def test_one_return_path_first_and_nothing_else_changed(case: tuple[bytes, int]) -> None:
    message, count = case
    out = with_return_path(message, "dr.b@clinique-b.test")
    assert out.startswith(b"Return-Path: <dr.b@clinique-b.test>\r\n")
    rest = out[len(b"Return-Path: <dr.b@clinique-b.test>\r\n") :]
    assert rest == strip_return_path(message)
    head, _, body = rest.partition(b"\r\n\r\n")
    assert b"return-path:" not in b"\n".join(
        line.lower()[:12] for line in head.split(b"\r\n") if line
    )
    assert body == message.partition(b"\r\n\r\n")[2]  # the body is never touched
    if count == 0:
        assert rest == message  # nothing to cut: the same bytes


@pytest.mark.parametrize(
    ("sender", "field"), [("", b"<>"), ("<>", b"<>"), ("a@b.test", b"<a@b.test>")]
)
def test_null_and_real_senders(sender: str, field: bytes) -> None:
    assert return_path_field(sender) == b"Return-Path: " + field + b"\r\n"


@pytest.mark.parametrize(
    "sender", ["a b@c.test", "a>@b.test", "<a@b.test", "x\r\nBcc: y", "é@x.test"]
)
def test_a_sender_never_breaks_out_of_the_field(sender: str) -> None:
    with pytest.raises(ValueError, match="unusable envelope sender"):
        return_path_field(sender)
