"""IMAP on any node (issue 13): a practitioner whose mailbox is homed on node A reads it over
IMAP on A and on B (B's front door relays the session to A's Dovecot over the node link);
with A down, B answers the login with NO [UNAVAILABLE] at once. Two real `serve` processes,
each with its Dovecot, on one PostgreSQL schema."""

from __future__ import annotations

import imaplib
import shutil
import smtplib
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_URL, Cli
from tests.smtp.conftest import DOMAIN, PASSWORD, Gateway, free_env, message
from tests.smtp.test_nodes_serve import FAST

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin") is None,
        reason="Dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)",
    ),
]

ALICE = f"secretariat@{DOMAIN}"
BOB = f"imagerie@{DOMAIN}"
IMAP_ON = {
    "MSSGATE_IMAP__ENABLED": "true",
    "MSSGATE_IMAP__PORT": "0",
    "MSSGATE_IMAP__IMAPS_PORT": "0",
}


@pytest.fixture
def two_imap_nodes(
    cli: Cli, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Gateway, Gateway]]:
    assert PG_URL
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    # Dovecot's mail user must reach the data folders (pytest's tmp root is 0700).
    root = Path(tempfile.mkdtemp(prefix="mssgate-nodes-imap-"))
    root.chmod(0o711)
    try:
        url = f"{PG_URL}?options=-csearch_path%3D{pg_schema}"
        a, b = root / "a", root / "b"
        cli.ok("init", "--data", a, "--domain", DOMAIN, "--database", url, "--node", "a")
        conf = a / "mssgate.toml"
        for who in (ALICE, BOB):  # both homed on A (A's config)
            cli.ok("--config", conf, "directory", "add", who, "--name", "X",
                   "--kind", "organisation", "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
        cli.ok("--config", conf, "node", "add", "b", "--data", b)
        nodes = (
            Gateway(data=a, env={**free_env(a), **FAST, **IMAP_ON}),
            Gateway(data=b, env={**free_env(b), **FAST, **IMAP_ON}),
        )
        try:
            yield nodes
        finally:
            for node in nodes:
                if node.proc is not None:
                    node.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def read_inbox(node: Gateway) -> bytes:
    imap = imaplib.IMAP4_SSL(
        "127.0.0.1", node.ports["imaps"], ssl_context=node.client_context(), timeout=30
    )
    try:
        imap.login(BOB, PASSWORD)
        typ, _ = imap.select("INBOX", readonly=True)
        assert typ == "OK"
        typ, data = imap.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        item = data[0]
        assert isinstance(item, tuple)
        return item[1]
    finally:
        imap.logout()


class _Lmtps(smtplib.SMTP_SSL):
    ehlo_msg = "lhlo"


def test_a_mailbox_homed_on_a_reads_the_same_on_a_and_b(
    cli: Cli, two_imap_nodes: tuple[Gateway, Gateway]
) -> None:
    node_a, node_b = two_imap_nodes
    conf_a = node_a.data / "mssgate.toml"
    node_a.start()
    node_b.start()
    node_a.wait_event("node.listening", timeout=20)
    with node_a.login(ALICE) as client:
        client.sendmail(ALICE, [BOB], message(ALICE, BOB, body="lu sur les deux noeuds"))
    node_a.wait_event("delivery.ok", timeout=20)

    on_a = read_inbox(node_a)
    assert b"lu sur les deux noeuds" in on_a
    # Before: B opened its own (empty) Dovecot mailbox, and FETCH 1 failed.
    on_b = read_inbox(node_b)
    assert on_b == on_a
    node_a.wait_event("node.imap_closed")

    # The node link opens IMAP to the nodes only: a practitioner's certificate of the same
    # CA is refused before any session starts.
    [a] = [n for n in cli.ok("--config", conf_a, "node", "list", "--json").json()
           if n["name"] == "a"]  # fmt: skip
    host, port = str(a["address"]).rsplit(":", 1)
    cli.ok("--config", conf_a, "cert", "issue", BOB, "--out", node_a.data / "out")
    ctx = ssl.create_default_context(cafile=node_a.ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(node_a.data / "out" / f"{BOB}.crt.pem",
                        node_a.data / "out" / f"{BOB}.key.pem")  # fmt: skip
    # Past TLS (our CA issued it), cut by the pin as the handshake ends: no greeting, so
    # no XIMAP (before: greeted, XIMAP answered 530).
    with pytest.raises(smtplib.SMTPServerDisconnected):
        _Lmtps(host, int(port), context=ctx, timeout=10)
    node_a.wait_event("node.link_refused", reason="not a node of this installation")

    # Home node down: B's front door answers the login at once, cleanly.
    node_a.stop()
    login_unavailable(node_b)
    node_b.wait_event("node.imap_unreachable", node="a")
    # A home node that accepts TCP and never answers TLS (a frozen host): bounded too.
    hung = socket.socket()
    hung.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hung.bind((host, int(port)))
    hung.listen(8)
    try:
        # The node link's handshake bound (5 s) answers, not a hang: the client's own
        # timeout (30 s) would raise a socket timeout, not the refusal.
        login_unavailable(node_b)
    finally:
        hung.close()


def login_unavailable(node: Gateway) -> None:
    """The login is refused with NO [UNAVAILABLE] (within the client's 30 s timeout)."""
    imap = imaplib.IMAP4_SSL(
        "127.0.0.1", node.ports["imaps"], ssl_context=node.client_context(), timeout=30
    )
    try:
        with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
            imap.login(BOB, PASSWORD)
    finally:
        imap.shutdown()
