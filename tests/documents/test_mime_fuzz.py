"""Fuzz target: the MIME walk (`walk_message`) on generated trees and on damaged messages.

Generated: random trees of multiparts, forwarded messages and attachments (binary, text,
RFC 2231 names), serialised by the stdlib. The walk must give back exactly the attachments
put in, in order, byte for byte; or refuse with `MimeError` exactly when the tree is deeper
than the limit. Damaged: the same messages with bytes flipped, cut, boundaries and headers
inserted. Only our typed errors may come out, and what comes out is bounded by the input:
no more attachments than the part limit, no deeper path, no more decoded bytes than were
sent (a decoder that invents data is how bombs are made), and no file written.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.documents import DocumentError, DocumentLimits, MimeError, walk_message
from tests.fuzzing import mutated, no_file_writes

pytestmark = pytest.mark.fuzz

LIMITS = DocumentLimits(max_mime_depth=6, max_mime_parts=40)


@dataclass(frozen=True)
class Expected:
    filename: str
    content_type: str
    data: bytes


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# Words joined by single spaces: the walk folds runs of white space in names, on purpose.
_word = st.text(alphabet="abcdefghijkXYZ0123456789éàüß-_.", min_size=1, max_size=10)
_filename = st.lists(_word, min_size=1, max_size=3).map(" ".join)
_binary_type = st.sampled_from(
    ["application/pdf", "application/zip", "application/octet-stream", "image/png"]
)


@st.composite
def _leaf(draw: st.DrawFn, parent: EmailMessage) -> list[Expected]:
    kind = draw(st.sampled_from(["binary", "xml", "body"]))
    if kind == "body":
        # A text part without a name is a message body, not an attachment.
        part = EmailMessage()
        part.set_content(draw(st.text(alphabet="abc \n", max_size=40)))
        parent.attach(part)
        return []
    name = draw(_filename)
    if kind == "binary":
        maintype, subtype = draw(_binary_type).split("/")
        data = draw(st.binary(max_size=300))
        parent.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
        return [Expected(name, f"{maintype}/{subtype}", data)]
    text = draw(st.text(alphabet="<>/ab= é\n", max_size=200)).replace("\n", "\r\n")
    cte = draw(st.sampled_from(["base64", "quoted-printable", "8bit"]))
    parent.add_attachment(text, subtype="xml", filename=name, cte=cte)
    part = parent.get_payload()[-1]
    assert isinstance(part, EmailMessage)
    # Text travels with the line ends of whichever encoding carried it: compare without them.
    return [Expected(name, "text/xml", _lf(part.get_content().encode("utf-8")))]


@st.composite
def _tree(draw: st.DrawFn, depth: int) -> tuple[EmailMessage, list[Expected], int]:
    """A multipart at `depth`: (it, its attachments in walk order, its deepest part's depth)."""
    node = EmailMessage()
    node.make_mixed()
    # Chosen here, not by the stdlib's random boundaries: an example must replay exactly.
    node.set_boundary(f"=_b{depth}_{draw(st.integers(min_value=0, max_value=99))}")
    found: list[Expected] = []
    deepest = depth + 1  # its children
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        choice = draw(st.sampled_from(["leaf", "leaf", "multipart", "forwarded"]))
        if choice == "leaf" or depth >= LIMITS.max_mime_depth + 1:
            found += draw(_leaf(node))
        elif choice == "multipart":
            child, inner, child_deepest = draw(_tree(depth + 1))
            node.attach(child)
            found += inner
            deepest = max(deepest, child_deepest)
        else:
            # message/rfc822: the forwarded message sits one level below its part.
            inner_message, inner, child_deepest = draw(_tree(depth + 2))
            node.add_attachment(inner_message)
            found += inner
            deepest = max(deepest, child_deepest)
    return node, found, deepest


def _serialise(message: EmailMessage) -> bytes:
    message["From"] = "a@hopital.test"
    message["Subject"] = "fuzz"
    return message.as_bytes(policy=email.policy.SMTP)


@given(_tree(0))
def test_generated_trees_round_trip(tree: tuple[EmailMessage, list[Expected], int]) -> None:
    message, expected, deepest = tree
    raw = _serialise(message)
    with no_file_writes():
        if deepest > LIMITS.max_mime_depth:
            with pytest.raises(MimeError):
                walk_message(raw, LIMITS)
            return
        walk = walk_message(raw, LIMITS)
    got = [
        Expected(
            a.filename or "",
            a.content_type,
            _lf(a.data) if a.content_type == "text/xml" else a.data,
        )
        for a in walk.attachments
    ]
    assert got == expected
    assert walk.subject == "fuzz"


_SNIPPETS = (
    b"\r\n--",
    b"\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=x\r\n",
    b"\r\n--x\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: x-uuencode\r\n",
    b"filename*0*=utf-8''%FF%FE; filename*1=x",
    b"=?utf-8?b?////?=",
    b"\x00",
    b"\xff",
)


@st.composite
def _damaged(draw: st.DrawFn) -> bytes:
    message, _, _ = draw(_tree(0))
    return draw(mutated([_serialise(message)], _SNIPPETS))


@given(_damaged())
def test_damaged_messages_stay_bounded(raw: bytes) -> None:
    with no_file_writes():
        try:
            walk = walk_message(raw, LIMITS)
        except DocumentError:
            return
    assert len(walk.attachments) <= LIMITS.max_mime_parts
    assert all(a.path.count(".") <= LIMITS.max_mime_depth for a in walk.attachments)
    assert sum(len(a.data) for a in walk.attachments) <= len(raw)
