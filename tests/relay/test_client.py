"""The SMTP client alone, against aiosmtpd and against scripted raw servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mssgate.relay.client import Outcome, RecipientOutcome, Timeouts, relay_message, wire_data
from mssgate.tls import client_context
from tests.relay.conftest import ALICE, DR_B, DR_C, OUR_HOST, PEER_HOST, PeerGateway, Pki, free_port

SHORT = Timeouts(connect=2, greeting=0.3, command=2, rcpt=2, data_init=2, data_block=2, data_end=2)


def test_wire_data_stuffs_dots_and_ends_lines_with_crlf() -> None:
    assert wire_data(b".a\r\nb\r\n.\r\n..c") == b"..a\r\nb\r\n..\r\n...c\r\n.\r\n"
    assert wire_data(b"a\nb\rc\r\n") == b"a\r\nb\r\nc\r\n.\r\n"
    assert wire_data(b"") == b".\r\n"


async def send(
    pki: Pki,
    port: int,
    *,
    recipients: tuple[str, ...] = (DR_B,),
    content: bytes = b"Subject: t\r\n\r\nhello\r\n",
    sender: str = ALICE,
    server_name: str | None = None,
    timeouts: Timeouts = SHORT,
) -> list[RecipientOutcome]:
    tls = client_context(ca_pem=pki.peer_ca_pem, cert=pki.our_cert, key=pki.our_key)
    return await relay_message(
        "127.0.0.1",
        port,
        sender=sender,
        recipients=recipients,
        content=content,
        tls=tls,
        helo_name=OUR_HOST,
        timeouts=timeouts,
        tls_server_name=server_name,
    )


async def with_peer(peer: PeerGateway, body: Callable[[], Awaitable[None]]) -> None:
    await peer.start()
    try:
        await body()
    finally:
        await peer.stop()


def test_host_name_is_checked_and_can_be_overridden(pki: Pki) -> None:
    peer = PeerGateway(pki, free_port(), cert=pki.named_cert, key=pki.named_key)

    async def body() -> None:
        [refused] = await send(pki, peer.port)
        assert refused.outcome is Outcome.TEMPORARY and refused.code is None
        assert "TLS verification failed" in refused.reply and refused.status == "4.7.5"
        [ok] = await send(pki, peer.port, server_name=PEER_HOST)
        assert ok.outcome is Outcome.DELIVERED and ok.code == 250
        assert ok.reply == "250 2.0.0 Ok: queued as PEER1" and ok.status == "2.0.0"

    asyncio.run(with_peer(peer, body))
    assert len(peer.handler.messages) == 1


def test_no_starttls_means_not_a_byte_of_envelope(pki: Pki) -> None:
    peer = PeerGateway(pki, free_port(), cert=pki.peer_cert, key=pki.peer_key, tls=False)

    async def body() -> None:
        [out] = await send(pki, peer.port)
        assert (out.outcome, out.status) == (Outcome.TEMPORARY, "4.7.4")

    asyncio.run(with_peer(peer, body))
    assert peer.handler.mail_commands == 0


def test_size_over_the_peer_limit_is_permanent_and_never_sent(pki: Pki) -> None:
    peer = PeerGateway(pki, free_port(), cert=pki.peer_cert, key=pki.peer_key)
    peer.data_size_limit = 100

    async def body() -> None:
        [out] = await send(pki, peer.port, content=b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n")
        assert (out.outcome, out.status) == (Outcome.PERMANENT, "5.3.4")
        [small] = await send(pki, peer.port)
        assert small.outcome is Outcome.DELIVERED

    asyncio.run(with_peer(peer, body))
    assert peer.handler.mail_commands == 1


def test_eight_bit_content_is_declared(pki: Pki) -> None:
    peer = PeerGateway(pki, free_port(), cert=pki.peer_cert, key=pki.peer_key)
    content = "Subject: é\r\n\r\nCompte rendu: tension élevée\r\n".encode()

    async def body() -> None:
        [out] = await send(pki, peer.port, content=content)
        assert out.outcome is Outcome.DELIVERED

    asyncio.run(with_peer(peer, body))
    [got] = peer.handler.messages
    assert got.content == content
    assert "BODY=8BITMIME" in peer.handler.mail_options
    assert f"SIZE={len(content)}" in peer.handler.mail_options


def test_unsendable_address_is_refused_before_the_wire(pki: Pki) -> None:
    peer = PeerGateway(pki, free_port(), cert=pki.peer_cert, key=pki.peer_key)
    evil = "x@clinique-b.test>\r\nRCPT TO:<victim@clinique-b.test"

    async def body() -> None:
        bad, good = await send(pki, peer.port, recipients=(evil, DR_C))
        assert (bad.outcome, bad.status) == (Outcome.PERMANENT, "5.1.3")
        assert good.outcome is Outcome.DELIVERED

    asyncio.run(with_peer(peer, body))
    [got] = peer.handler.messages
    assert got.rcpt_tos == [DR_C]


def test_mail_refused_fails_every_recipient(pki: Pki) -> None:
    peer = PeerGateway(pki, free_port(), cert=pki.peer_cert, key=pki.peer_key)

    peer.handler.mail_reply = "553 5.7.1 sender refused"

    async def body() -> None:
        outs = await send(pki, peer.port, recipients=(DR_B, DR_C))
        assert [(o.outcome, o.code, o.status) for o in outs] == [
            (Outcome.PERMANENT, 553, "5.7.1"),
            (Outcome.PERMANENT, 553, "5.7.1"),
        ]

    asyncio.run(with_peer(peer, body))


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_server(script: Script) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def run_raw(pki: Pki, script: Script) -> RecipientOutcome:
    async def main() -> RecipientOutcome:
        server, port = await raw_server(script)
        try:
            [out] = await send(pki, port)
            return out
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_silent_server_times_out(pki: Pki) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # says nothing until the client goes

    out = run_raw(pki, silent)
    assert out.outcome is Outcome.TEMPORARY and "no reply within 0.3s" in out.reply


def test_plaintext_injected_after_starttls_is_refused(pki: Pki) -> None:
    async def injector(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-mx\r\n250 STARTTLS\r\n")
        await reader.readline()
        writer.write(b"220 go ahead\r\n250 forged reply\r\n")
        await writer.drain()
        await reader.read()

    out = run_raw(pki, injector)
    assert (out.outcome, out.status) == (Outcome.TEMPORARY, "4.7.0")
    assert "plaintext" in out.reply


@pytest.mark.parametrize(
    ("greeting", "expected"),
    [
        (b"554 no service here\r\n", "greeting: 554 no service here"),
        (b"220-first\r\n221 second\r\n", "reply codes differ"),
        (b"hello there\r\n", "malformed reply line"),
        (b"220 " + b"x" * 5000 + b"\r\n", "reply line too long"),
    ],
)
def test_broken_greetings_are_temporary(pki: Pki, greeting: bytes, expected: str) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        await reader.read()

    out = run_raw(pki, greet)
    assert out.outcome is Outcome.TEMPORARY and expected in out.reply


def test_connection_refused_is_temporary(pki: Pki) -> None:
    [out] = asyncio.run(send(pki, free_port()))
    assert (out.outcome, out.code, out.status) == (Outcome.TEMPORARY, None, "4.4.1")
