"""SASL EXTERNAL with client certificates, and an asyncio client (aioimaplib)."""

from __future__ import annotations

import asyncio
import base64
import imaplib
from pathlib import Path

import aioimaplib
import pytest

from tests.conftest import Cli
from tests.imap.conftest import ALICE, BOB, PASSWORD, ImapGateway, message

pytestmark = pytest.mark.slow


def _issue(cli: Cli, who: str, out: Path) -> tuple[Path, Path]:
    cli.ok("cert", "issue", who, "--out", str(out))
    return out / f"{who}.crt.pem", out / f"{who}.key.pem"


def test_external_with_a_registered_certificate(
    imap_gateway: ImapGateway, cli: Cli, tmp_path: Path
) -> None:
    cert, key = _issue(cli, BOB, tmp_path)
    client = imap_gateway.imaps(imap_gateway.client_context(cert, key))
    assert "AUTH=EXTERNAL" in client.capabilities
    typ, data = client.authenticate("EXTERNAL", lambda _: b"")
    assert typ == "OK" and b"IDLE" in data[0]
    assert client.select("INBOX")[0] == "OK"
    client.logout()
    # The same certificate naming its own address as authorization identity.
    client = imap_gateway.imaps(imap_gateway.client_context(cert, key))
    assert client.authenticate("EXTERNAL", lambda _: BOB.encode())[0] == "OK"
    client.logout()


def test_external_refused_for_an_address_the_certificate_is_not_registered_for(
    imap_gateway: ImapGateway, cli: Cli, tmp_path: Path
) -> None:
    cert, key = _issue(cli, BOB, tmp_path)
    client = imap_gateway.imaps(imap_gateway.client_context(cert, key))
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.authenticate("EXTERNAL", lambda _: ALICE.encode())
    client.logout()


def test_external_refused_once_the_certificate_is_unregistered(
    imap_gateway: ImapGateway, cli: Cli, tmp_path: Path
) -> None:
    # Issued for Bob, then Bob's account removed and re-created: no certificate registered.
    cert, key = _issue(cli, BOB, tmp_path)
    cli.ok("directory", "remove", BOB)
    cli.ok(
        "directory",
        "add",
        BOB,
        "--name",
        "bob",
        "--rpps",
        "99700367909",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert cli.ok("cert", "list", BOB, "--json").json() == []
    client = imap_gateway.imaps(imap_gateway.client_context(cert, key))
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.authenticate("EXTERNAL", lambda _: b"")
    client.logout()


def test_external_without_a_client_certificate(imap_gateway: ImapGateway) -> None:
    client = imap_gateway.imaps()
    assert "AUTH=EXTERNAL" not in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.authenticate("EXTERNAL", lambda _: b"")
    client.logout()


def test_authenticate_plain_with_initial_response(imap_gateway: ImapGateway) -> None:
    client = imap_gateway.imaps()
    blob = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    typ, data = client._simple_command("AUTHENTICATE", "PLAIN", blob)
    assert typ == "OK" and b"CAPABILITY" in data[0]
    client.state = "AUTH"  # imaplib does not track a hand-made AUTHENTICATE
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_aioimaplib_session_with_idle(imap_gateway: ImapGateway) -> None:
    imap_gateway.deliver(message(1, subject="premier"))

    async def session() -> None:
        client = aioimaplib.IMAP4_SSL(
            host="127.0.0.1",
            port=imap_gateway.ports["imaps"],
            ssl_context=imap_gateway.client_context(),
            timeout=30,
        )
        await client.wait_hello_from_server()
        response = await client.login(ALICE, PASSWORD)
        assert response.result == "OK"
        assert "IDLE" in client.protocol.capabilities
        response = await client.select("INBOX")
        assert response.result == "OK"
        response = await client.fetch("1", "(ENVELOPE)")
        assert response.result == "OK" and b'"premier"' in b"".join(
            line if isinstance(line, bytes) else bytes(line) for line in response.lines
        )
        idle = await client.idle_start(timeout=20)
        await asyncio.to_thread(imap_gateway.deliver, message(2, subject="second"))
        pushed = await client.wait_server_push(timeout=20)
        client.idle_done()
        await asyncio.wait_for(idle, 20)
        assert any(b"2 EXISTS" in line for line in pushed if isinstance(line, bytes))
        response = await client.search("ALL")
        assert response.result == "OK" and response.lines[0] == b"1 2"
        response = await client.logout()
        assert response.result == "OK"
        # aioimaplib leaves its transport to the garbage collector.
        client.protocol.transport.close()
        await asyncio.sleep(0.1)

    asyncio.run(session())
