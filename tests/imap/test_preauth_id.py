"""RFC 2971 `ID` before login, as big as the RFC allows (30 field-value pairs, fields of 30
octets, values of 1,024, as quoted strings or literals: imaptest's `id` group sends that),
while every other command keeps the 8 KiB pre-auth cap; one octet or one pair beyond the RFC
gets a BAD that says which limit, and a line past any conforming ID is cut, unbuffered."""

from __future__ import annotations

import pytest

from tests.imap.conftest import ALICE, PASSWORD, ImapGateway
from tests.imap.test_preauth_hardening import MIB, Raw

pytestmark = pytest.mark.slow


def _quoted(pairs: int, field: int = 30, value: int = 1024) -> bytes:
    # Escaped quotes and backslashes: the wire form is longer than the octets the RFC counts.
    octets = (b'"\\' * value)[:value]
    escaped = octets.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    items = []
    for n in range(pairs):
        name = f"{n:02d}".encode() + b"f" * (field - 2)
        items.append(b'"' + name + b'" "' + escaped + b'"')
    return b"(" + b" ".join(items) + b")"


def test_the_largest_id_the_rfc_allows_is_answered_then_login_works(
    imap_gateway: ImapGateway,
) -> None:
    client = imap_gateway.imaps()
    try:
        payload = _quoted(30)
        assert len(payload) > 60_000  # every value escaped: twice the octets on the wire
        typ, data = client.xatom("ID", payload.decode())
        assert typ == "OK", data
        assert client.untagged_responses.get("ID") == [b'("name" "mssgate")']
        typ, _ = client.login(ALICE, PASSWORD)  # the connection is still in step
        assert typ == "OK"
    finally:
        client.logout()


def test_an_id_of_literals_at_the_limit(imap_gateway: ImapGateway) -> None:
    raw = Raw(imap_gateway)
    assert raw.line().startswith(b"* OK")
    raw.send(b"a ID (")
    for n in range(30):
        raw.send(b'"' + f"{n:02d}".encode() + b"x" * 28 + b'" {1024}\r\n')
        assert raw.line().startswith(b"+"), n
        raw.send(b"v" * 1024 + (b" " if n < 29 else b""))
    raw.send(b")\r\n")
    assert raw.line() == b'* ID ("name" "mssgate")'
    assert raw.line().startswith(b"a OK")
    # Non-synchronizing literals (LITERAL+) count the same.
    raw.send(b'b ID ("x" {1024+}\r\n' + b"v" * 1024 + b")\r\n")
    raw.line()
    assert raw.line().startswith(b"b OK")
    # The room is the first ID's: a second one as large is cut like any long line (a
    # connection repeating 60 KB IDs would cost ten times the parsing of any other).
    raw.send(b"c ID " + _quoted(30) + b"\r\n")
    assert raw.line() == b"* BYE Command line too long"
    assert raw.closed()
    raw.close()


BEYOND_THE_RFC = [
    (_quoted(31), b"30 field-value pairs"),
    (_quoted(30, value=1025), b"1024 octets"),
    (_quoted(1, field=31), b"30 octets"),
    (b'("name")', b"field-value pairs"),
    (b'(NIL "x")', b"field"),
    (b'"name" "x"', b"parenthesized"),
]


def test_an_id_beyond_the_rfc_gets_a_bad_naming_the_limit(imap_gateway: ImapGateway) -> None:
    for payload, limit in BEYOND_THE_RFC:
        raw = Raw(imap_gateway)
        try:
            raw.line()
            raw.send(b"a ID " + payload + b"\r\n")
            reply = raw.line()
            assert reply.startswith(b"a BAD ") and limit in reply, (payload[:40], reply)
            raw.send(b"b NOOP\r\n")  # a BAD, not a hang-up: the client may carry on
            assert raw.line().startswith(b"b OK")
        finally:
            raw.close()


def test_an_id_literal_beyond_1024_octets_is_refused_before_it_is_sent(
    imap_gateway: ImapGateway,
) -> None:
    raw = Raw(imap_gateway)
    raw.line()
    raw.send(b'a ID ("name" {1025}\r\n')
    reply = raw.line()
    assert reply.startswith(b"a BAD") and b"1024 octets" in reply, reply
    assert raw.closed()
    assert b"+ " not in raw.buf
    raw.close()


def test_id_does_not_lift_the_cap_of_other_commands(imap_gateway: ImapGateway) -> None:
    before = imap_gateway.rss_kib()
    raw = Raw(imap_gateway)
    raw.line()
    raw.send(b"a LOGIN " + b"x" * 9000 + b" y\r\n")
    assert raw.line().startswith(b"* BYE")
    assert raw.closed()
    raw.close()
    raw = Raw(imap_gateway)
    raw.line()
    raw.send(b"a LOGIN {9000}\r\n")
    assert raw.line().startswith(b"a BAD")
    raw.close()
    # An ID line longer than any conforming ID can be: cut while it is read.
    raw = Raw(imap_gateway)
    raw.line()
    with pytest.raises(OSError):
        raw.send(b'a ID ("name" "')
        for _ in range(200):
            raw.send(b"a" * 65536)
        raise AssertionError("13 MB ID accepted")
    raw.close()
    assert imap_gateway.rss_kib() - before < 20 * MIB
