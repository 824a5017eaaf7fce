"""The DATA parser's spans (e5aa578) over a real TLS connection: the end of data, a fake one
and a line at the length limit, each cut across the client's writes, after enough plain lines
that the parser takes them in spans. A pause between writes makes each its own TLS record."""

from __future__ import annotations

import time

from tests.smtp.conftest import ALICE, BOB, Gateway, Raw
from tests.smtp.test_smuggling import HEAD, SMUGGLED, session

PLAIN = b"".join(b"plain line %04d of the body\r\n" % n for n in range(2000))


def _data(gateway: Gateway) -> Raw:
    raw = session(gateway)
    raw.cmd(f"MAIL FROM:<{ALICE}>".encode())
    raw.cmd(f"RCPT TO:<{BOB}>".encode())
    assert raw.cmd(b"DATA").startswith(b"354")
    return raw


def _send_cut(raw: Raw, *pieces: bytes) -> None:
    for piece in pieces:
        raw.send(piece)
        time.sleep(0.05)


def test_pieces_across_writes(gateway: Gateway) -> None:
    # The real end cut after its CR and after its dot; a dot-stuffed line cut after the dot;
    # a line of exactly 998 octets (the limit) cut inside.
    raw = _data(gateway)
    at_limit = b"L" * 998
    _send_cut(raw, HEAD + PLAIN + b".", b".stuffed\r\n" + at_limit[:500], at_limit[500:] + b"\r")
    _send_cut(raw, b"\n" + PLAIN + b"last\r", b"\n.", b"\r\n")
    assert raw.reply().startswith(b"250 2.0.0"), "the message is accepted"
    assert raw.cmd(b"QUIT").startswith(b"221")
    raw.close()
    [msg] = gateway.wait_delivered(BOB, 1)
    body = msg.read_bytes()
    assert b"\r\n.stuffed\r\n" + at_limit + b"\r\n" in body
    assert body.endswith(PLAIN + b"last\r\n")


def test_a_fake_end_cut_across_writes_smuggles_nothing(gateway: Gateway) -> None:
    raw = _data(gateway)
    _send_cut(raw, HEAD + PLAIN + b"first\n", b".\n" + PLAIN + SMUGGLED.encode(), b"\r\n.\r\n")
    assert raw.reply().startswith(b"550 5.6.0")
    assert raw.closed()
    raw.close()
    time.sleep(0.5)
    assert gateway.mailbox(BOB) == []


def test_a_line_one_over_the_limit_cut_across_writes(gateway: Gateway) -> None:
    raw = _data(gateway)
    _send_cut(raw, HEAD + PLAIN + b"L" * 500, b"L" * 499 + b"\r", b"\n" + PLAIN + b".\r\n")
    assert raw.reply().startswith(b"550 5.6.0 Message has a line longer")
    assert raw.cmd(b"QUIT").startswith(b"221")
    raw.close()
    time.sleep(0.5)
    assert gateway.mailbox(BOB) == []
