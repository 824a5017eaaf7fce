"""The node-to-node listener against the node that hands mail over (issue 13, review).

In-process: one node's listener (real TLS, real LMTP) and the sending side as the delivery
worker uses it, with the installation's certificates from a real `init`.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.db.schema import professionals, spool_recipients
from mssgate.db.tx import write
from mssgate.directory.timeutil import now
from mssgate.dovecot.backend import DovecotBackend
from mssgate.mailstore import DeliveryFailed
from mssgate.nodelink import Homes, NodeHandOff, start_node_listener
from mssgate.nodes import Nodes
from mssgate.smtp.server import bound_port
from mssgate.spool import Spool
from tests.conftest import Cli

DOMAIN = "hopital-a.test"
BOB = f"imagerie@{DOMAIN}"
SENDER = f"secretariat@{DOMAIN}"


class Link:
    def __init__(self, data: Path) -> None:
        self.config = load_config(data / "mssgate.toml")
        self.engine: Engine = open_engine(self.config.database_url)
        self.spool = Spool(self.engine, data / "spool", node="a")
        tls = self.config.tls
        assert tls.cert is not None and tls.key is not None and tls.ca is not None
        self.tls = (tls.cert, tls.key, tls.ca)
        self.accepted: list[str] = []

    def hand_over(self, message: bytes, *, max_size: int) -> None:
        """Node B hands `message` for BOB to node A's listener (A: the node of this folder)."""
        cert, key, ca = self.tls

        async def scenario() -> None:
            server = await start_node_listener(
                bind="127.0.0.1", port=0, cert=cert, key=key, ca=ca, hostname="a.test",
                spool=self.spool, homes=Homes(self.engine, "a"), max_size=max_size,
                on_accepted=self.accepted.append,
            )  # fmt: skip
            try:
                handoff = NodeHandOff(cert=cert, key=key, ca=ca, timeout=10)
                await asyncio.to_thread(
                    handoff.hand_over, f"127.0.0.1:{bound_port(server)}", BOB, message,
                    queue_id="from-b", sender=SENDER,
                )  # fmt: skip
            finally:
                server.close()
                await server.wait_closed()

        asyncio.run(scenario())

    def spooled_for(self, recipient: str) -> list[bytes]:
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(spool_recipients.c.spool_id).where(spool_recipients.c.recipient == recipient)
            ).scalars()
            return [self.spool.read(i) for i in ids]


@pytest.fixture
def link(cli: Cli, tmp_path: Path) -> Link:
    data = tmp_path / "a"
    cli.ok("init", "--data", data, "--domain", DOMAIN, "--node", "a")
    conf = data / "mssgate.toml"
    cli.ok("--config", conf, "directory", "add", BOB, "--name", "Imagerie",
           "--kind", "organisation")  # fmt: skip
    made = Link(data)
    Nodes(made.engine, actor="test").add("b", address="127.0.0.1:1")
    return made


def message(body: bytes) -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: <{BOB}>\r\nSubject: x\r\n"
        "Received: from x by the accepting node\r\n"
        "Authentication-Results: the accepting node's\r\n\r\n"
    ).encode() + body


def test_a_message_the_accepting_node_took_is_taken_whatever_its_size_after_its_headers(
    link: Link,
) -> None:
    """The accepting node checks the size of what it received, then prepends its Received and
    Authentication-Results (and may decrypt): what it hands over may be larger than
    smtp.max_message_size. Before: 552 from the home node, a permanent failure, a bounce for
    a message the gateway had accepted."""
    body = b"x" * 70 + b"\r\n"
    content = message(body * 20)
    link.hand_over(content, max_size=len(content) - 200)
    assert link.spooled_for(BOB) == [content]
    assert len(link.accepted) == 1


def test_a_long_line_is_handed_over(link: Link) -> None:
    """Lines inside an encrypted message are not the SMTP listener's to check: once decrypted
    they may be longer than 998 bytes (or smtp.max_line_length may allow them). Before: the
    node listener's 1001-byte line limit answered 500, and the message was bounced."""
    content = message(b"y" * 5000 + b"\r\nend\r\n")
    link.hand_over(content, max_size=10_000_000)
    assert link.spooled_for(BOB) == [content]


def test_a_mailbox_moved_meanwhile_is_retried_not_bounced(link: Link) -> None:
    """B read that BOB's home is A, but BOB was moved to C before A's listener saw the
    hand-over: a temporary refusal, so that B reads the home again at its next attempt. Before:
    550 5.1.1, a permanent failure and a bounce for a mailbox that exists."""
    Nodes(link.engine, actor="test").add("c", address="127.0.0.1:1")
    with write(link.engine) as conn:
        conn.execute(update(professionals).where(professionals.c.address == BOB).values(node="c"))
    with pytest.raises(DeliveryFailed) as refused:
        link.hand_over(message(b"moved\r\n"), max_size=10_000_000)
    assert not refused.value.permanent, str(refused.value)
    assert link.spooled_for(BOB) == []


def test_an_address_that_is_no_mailbox_is_refused_for_good(link: Link) -> None:
    with write(link.engine) as conn:
        gone = update(professionals).where(professionals.c.address == BOB).values(local=False)
        conn.execute(gone)
    with pytest.raises(DeliveryFailed) as refused:
        link.hand_over(message(b"gone\r\n"), max_size=10_000_000)
    assert refused.value.permanent, str(refused.value)


class _Lmtps(smtplib.SMTP_SSL):
    ehlo_msg = "lhlo"


@pytest.mark.parametrize("client_cert", ["none", "other-installation"])
def test_only_the_installations_certificate_hands_mail_in(
    link: Link, cli: Cli, tmp_path: Path, client_cert: str
) -> None:
    """No client certificate, or the server certificate of another installation (the same
    name, another CA): the handshake or the recipient is refused, nothing is spooled."""
    cert, key, ca = link.tls
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    if client_cert == "other-installation":
        other = tmp_path / "other"
        cli.ok("init", "--data", other, "--domain", DOMAIN, "--node", "a")
        tls = load_config(other / "mssgate.toml").tls
        assert tls.cert is not None and tls.key is not None and tls.cert != cert
        ctx.load_cert_chain(tls.cert, tls.key)
    outcome: list[object] = []

    async def scenario() -> None:
        server = await start_node_listener(
            bind="127.0.0.1", port=0, cert=cert, key=key, ca=ca, hostname="a.test",
            spool=link.spool, homes=Homes(link.engine, "a"), max_size=1_000_000,
            on_accepted=link.accepted.append,
        )  # fmt: skip

        def intrude() -> None:
            try:
                client = _Lmtps("127.0.0.1", bound_port(server), context=ctx, timeout=10)
                client.ehlo()
                client.mail(SENDER)
                outcome.append(client.rcpt(BOB)[0])
                outcome.append(client.data(message(b"intruder\r\n"))[0])
            except (OSError, smtplib.SMTPException) as exc:
                outcome.append(type(exc).__name__)

        try:
            await asyncio.to_thread(intrude)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert 250 not in outcome, outcome
    assert link.spooled_for(BOB) == [] and link.accepted == []


@pytest.mark.parametrize(
    "body",
    [b"a\n.b\r\n", b"a\r.\r\nb\r\n", b"bare\nlines\n.\nonly\r\n", b"..lead\r\n.\r\n.x\r\n"],
    ids=["lf-dot", "cr-dot", "lf-lines", "dots"],
)
def test_the_bytes_arrive_unchanged(link: Link, body: bytes) -> None:
    """What the accepting node spooled (decrypted content may bring bare LF or CR, which no
    listener checked) reaches the home node's spool byte for byte: a changed byte breaks the
    signature a recipient verifies."""
    content = message(body)
    link.hand_over(content, max_size=10_000_000)
    assert link.spooled_for(BOB) == [content]


def test_a_hung_home_node_holds_up_no_other_delivery(link: Link, tmp_path: Path) -> None:
    """The home node hangs (SIGSTOP, a frozen host): its kernel completes TCP, nothing answers
    TLS. Before: each hand-over of each of its messages waited the whole
    delivery.lmtp_timeout_seconds (120 s by default), one after the other in its mailbox's
    lane, and the pass (which waits for every lane) held every local delivery behind them.
    Now the handshake has a short bound and, once it failed, the node's other messages of
    the pass wait for their next attempt without trying."""
    import contextlib
    import socket
    import threading

    from mssgate.config import DeliveryConfig
    from mssgate.mailstore.maildir import MaildirStore
    from mssgate.nodelink import CrossNodeDelivery
    from mssgate.spool import new_queue_id
    from mssgate.spool.delivery import DeliveryWorker

    cert, key, ca = link.tls
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)  # never accepted: connects complete, the ClientHello is never answered
    try:
        Nodes(link.engine, actor="test").add("c", address=f"127.0.0.1:{hung.getsockname()[1]}")
        with write(link.engine) as conn:
            conn.execute(
                update(professionals).where(professionals.c.address == BOB).values(node="c")
            )
        for body in (b"one\r\n", b"two\r\n", b"three\r\n"):
            link.spool.accept(queue_id=new_queue_id(), content=message(body), listener="mta",
                              sender=SENDER, identity=None, peer="127.0.0.1",
                              recipients=[(BOB, "local")])  # fmt: skip
        local = f"secretariat@{DOMAIN}"
        link.spool.accept(queue_id=new_queue_id(), content=message(b"local\r\n"),
                          listener="mta", sender=SENDER, identity=None, peer="127.0.0.1",
                          recipients=[(local, "local")])  # fmt: skip
        # An LMTP timeout of an hour: a handshake bounded by it (not by its own short bound)
        # holds the pass for that hour, which the join below tells from a pass that ends,
        # however slow the machine; nothing is asserted on how long the pass took.
        config = DeliveryConfig(lmtp_timeout_seconds=3600, concurrency=1)
        worker = DeliveryWorker(
            link.spool, MaildirStore(tmp_path / "mail"), config=config,
            cross_node=CrossNodeDelivery(
                Homes(link.engine, "a"),
                NodeHandOff(cert=cert, key=key, ca=ca, timeout=config.lmtp_timeout_seconds),
            ),
        )  # fmt: skip
        passing = threading.Thread(target=asyncio.run, args=(worker.run_once(),), daemon=True)
        passing.start()
        passing.join(timeout=300)
        assert not passing.is_alive(), "the pass waited on the hung node's handshake"
        # The node was tried once: its other messages did not each wait for the handshake.
        hung.setblocking(False)
        tried = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                hung.accept()[0].close()
                tried += 1
    finally:
        hung.close()
    assert tried == 1
    assert worker.delivered == 1  # the local message
    with link.engine.connect() as conn:
        states = conn.execute(
            select(spool_recipients.c.state, spool_recipients.c.attempts).where(
                spool_recipients.c.recipient == BOB
            )
        ).all()
    assert sorted(states) == [("pending", 1)] * 3  # each waits for its next attempt


def test_hand_overs_to_two_nodes_at_once_each_reach_their_node(link: Link) -> None:
    """The delivery lanes hand over from several threads through one NodeHandOff. Before, it
    kept the target on itself: a lane could connect to the node another lane had just set,
    whose listener refused a mailbox it is not the home of."""
    from concurrent.futures import ThreadPoolExecutor

    cert, key, ca = link.tls
    registry = Nodes(link.engine, actor="test")
    boxes = {"c": f"c-box@{DOMAIN}", "d": f"d-box@{DOMAIN}"}
    for node, box in boxes.items():
        registry.add(node, address="127.0.0.1:1")
        with write(link.engine) as conn:
            conn.execute(
                professionals.insert().values(
                    address=box, display_name=box, kind="ORG", state="active", local=True,
                    source="manual", created_at=now(), updated_at=now(), node=node,
                )
            )  # fmt: skip

    async def scenario() -> list[str]:
        ports = {}
        servers = []
        for node in boxes:
            server = await start_node_listener(
                bind="127.0.0.1", port=0, cert=cert, key=key, ca=ca, hostname=f"{node}.test",
                spool=link.spool, homes=Homes(link.engine, node), max_size=1_000_000,
                on_accepted=link.accepted.append,
            )  # fmt: skip
            servers.append(server)
            ports[node] = bound_port(server)
        handoff = NodeHandOff(cert=cert, key=key, ca=ca, timeout=10)

        def one(i: int) -> str:
            node = "cd"[i % 2]
            try:
                handoff.hand_over(f"127.0.0.1:{ports[node]}", boxes[node], message(b"x\r\n"),
                                  queue_id=f"q{i}", sender=SENDER)  # fmt: skip
            except DeliveryFailed as exc:
                return str(exc)
            return "ok"

        def all_of_them() -> list[str]:
            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(one, range(60)))

        try:
            return await asyncio.to_thread(all_of_them)
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()

    outcomes = asyncio.run(scenario())
    assert [o for o in outcomes if o != "ok"] == []
    assert len(link.spooled_for(boxes["c"])) == len(link.spooled_for(boxes["d"])) == 30


def test_a_notification_keeps_its_null_sender(link: Link) -> None:
    """A DSN or MDN (MAIL FROM:<>) handed over stays one on the home node: the envelope sender
    it spools is empty, so its delivery writes Return-Path: <> and nothing answers it."""
    cert, key, ca = link.tls

    async def scenario() -> None:
        server = await start_node_listener(
            bind="127.0.0.1", port=0, cert=cert, key=key, ca=ca, hostname="a.test",
            spool=link.spool, homes=Homes(link.engine, "a"), max_size=1_000_000,
            on_accepted=link.accepted.append,
        )  # fmt: skip
        try:
            handoff = NodeHandOff(cert=cert, key=key, ca=ca, timeout=10)
            await asyncio.to_thread(
                handoff.hand_over, f"127.0.0.1:{bound_port(server)}", BOB,
                message(b"dsn\r\n"), queue_id="from-b", sender="",
            )  # fmt: skip
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    [queue_id] = link.accepted
    assert link.spool.envelope(queue_id).sender == ""


@pytest.mark.parametrize("client_cert", ["node", "none", "practitioner", "other-installation"])
def test_only_a_node_opens_an_imap_session_through_the_node_link(
    link: Link, cli: Cli, tmp_path: Path, client_cert: str
) -> None:
    """XIMAP (IMAP on any node) starts the mailbox engine for a node only: without a client
    certificate, with a practitioner's of the same CA or with another installation's, no
    session is opened. The engine is a real
    process standing in for Dovecot (imap.backend_command's mechanism)."""
    cert, key, ca = link.tls
    opened = tmp_path / "opened"
    engine = DovecotBackend(
        None,
        command=("/bin/sh", "-c", f"echo {{user}} >> {opened}; echo"
                 " '* PREAUTH [CAPABILITY IMAP4rev1 IDLE] ready'; cat"),
    )  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    if client_cert == "node":
        ctx.load_cert_chain(cert, key)
    elif client_cert == "practitioner":
        out = tmp_path / "out"
        cli.ok("--config", tmp_path / "a" / "mssgate.toml", "cert", "issue", BOB, "--out", out)
        ctx.load_cert_chain(out / f"{BOB}.crt.pem", out / f"{BOB}.key.pem")
    elif client_cert == "other-installation":
        other = tmp_path / "other"
        cli.ok("init", "--data", other, "--domain", DOMAIN, "--node", "a")
        tls = load_config(other / "mssgate.toml").tls
        assert tls.cert is not None and tls.key is not None
        ctx.load_cert_chain(tls.cert, tls.key)
    outcome: list[object] = []

    async def scenario() -> None:
        server = await start_node_listener(
            bind="127.0.0.1", port=0, cert=cert, key=key, ca=ca, hostname="a.test",
            spool=link.spool, homes=Homes(link.engine, "a"), max_size=1_000_000,
            on_accepted=link.accepted.append, imap_backend=engine,
        )  # fmt: skip

        def open_imap() -> None:
            try:
                client = _Lmtps("127.0.0.1", bound_port(server), context=ctx, timeout=10)
                client.ehlo()
                code, text = client.docmd("XIMAP", f"{BOB} 192.0.2.7")
                outcome.append((code, text))
                if code == 250:  # the connection is the IMAP session now
                    client.send(b"a1 NOOP\r\n")
                    outcome.append(client.file.readline())  # type: ignore[union-attr]
                client.close()
            except (OSError, smtplib.SMTPException) as exc:
                outcome.append(type(exc).__name__)

        try:
            await asyncio.to_thread(open_imap)
            # The session ends on the listener's side too (the engine process reaped) before
            # the loop closes: else its transports are left for the garbage collector.
            for _ in range(200):
                if asyncio.all_tasks() == {asyncio.current_task()}:
                    break
                await asyncio.sleep(0.05)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    if client_cert == "node":
        assert outcome == [(250, b"2.0.0 IMAP4rev1 IDLE"), b"a1 NOOP\r\n"], outcome
        assert opened.read_text() == f"{BOB}\n"
    else:
        assert not any(isinstance(o, tuple) and o[0] == 250 for o in outcome), outcome
        assert not opened.exists()
        if client_cert == "practitioner":
            # Past TLS (the CA is ours), cut by the pin as the handshake ends: no greeting,
            # no command (before: greeted, and XIMAP answered 530).
            assert outcome == ["SMTPServerDisconnected"], outcome


def _practitioner_context(cli: Cli, link: Link, tmp_path: Path) -> ssl.SSLContext:
    _cert, _key, ca = link.tls
    out = tmp_path / "practitioner"
    cli.ok("--config", tmp_path / "a" / "mssgate.toml", "cert", "issue", BOB, "--out", out)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.load_cert_chain(out / f"{BOB}.crt.pem", out / f"{BOB}.key.pem")
    return ctx


def _node_context(link: Link) -> ssl.SSLContext:
    cert, key, ca = link.tls
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    return ctx


def _first_bytes(ctx: ssl.SSLContext, port: int) -> bytes:
    """What the listener says first to a client that says nothing (b"": closed)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                return tls.recv(1024)
        except (ConnectionResetError, ssl.SSLError):
            return b""


def _listening(link: Link, **extra: object) -> object:
    cert, key, ca = link.tls
    return start_node_listener(
        bind="127.0.0.1", port=0, cert=cert, key=key, ca=ca, hostname="a.test",
        spool=link.spool, homes=Homes(link.engine, "a"), max_size=1_000_000,
        on_accepted=link.accepted.append, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.fields["reason"]  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "node.link_refused"
    ]


def test_a_practitioner_is_cut_before_the_greeting(
    link: Link, cli: Cli, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A practitioner's certificate (our CA issued it) passes TLS: before, the listener
    greeted it and let it hold the connection until its first command got 530. Now the pin
    is checked as the handshake ends and the connection closed without a greeting."""
    practitioner = _practitioner_context(cli, link, tmp_path)
    got: dict[str, bytes] = {}

    async def scenario() -> None:
        server = await _listening(link)  # type: ignore[misc]
        try:
            port = bound_port(server)
            got["practitioner"] = await asyncio.to_thread(_first_bytes, practitioner, port)
            got["node"] = await asyncio.to_thread(_first_bytes, _node_context(link), port)
        finally:
            server.close()
            await server.wait_closed()

    with caplog.at_level("INFO", logger="mssgate.nodelink"):
        asyncio.run(scenario())
    assert got["practitioner"] == b"", got
    assert got["node"].startswith(b"220 "), got
    assert _refusals(caplog) == ["not a node of this installation"]


def test_node_link_connections_are_capped(link: Link, caplog: pytest.LogCaptureFixture) -> None:
    """node.max_connections: past it a node's connection gets 421 and is closed (an event
    says so); a closed connection frees its slot."""
    import socket

    node = _node_context(link)
    seen: list[bytes] = []

    async def scenario() -> None:
        server = await _listening(link, max_connections=2)  # type: ignore[misc]
        port = bound_port(server)

        def clients() -> None:
            held = []
            for _ in range(2):
                tls = node.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
                seen.append(tls.recv(1024)[:4])
                held.append(tls)
            seen.append(_first_bytes(node, port)[:4])  # the third: refused
            held.pop().close()
            # The slot is freed once the listener has seen the close: retried, bounded.
            for _ in range(100):
                again = _first_bytes(node, port)[:4]
                if again != b"421 ":
                    break
            seen.append(again)
            for tls in held:
                tls.close()

        try:
            await asyncio.to_thread(clients)
        finally:
            server.close()
            await server.wait_closed()

    with caplog.at_level("INFO", logger="mssgate.nodelink"):
        asyncio.run(scenario())
    assert seen == [b"220 ", b"220 ", b"421 ", b"220 "], seen
    assert "too many connections" in _refusals(caplog)


def _keepalive_timers(port: int) -> list[str]:
    """The timer kind of each established loopback TCP socket with `port` at either end, as
    the kernel lists it ("2": keepalive; "0": none)."""
    hex_port = f"{port:04X}"
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, timer = fields[1], fields[2], fields[3], fields[5]
        if state == "01" and hex_port in (local.split(":")[1], remote.split(":")[1]):
            found.append(str(int(timer.split(":")[0], 16)))
    return found


def test_node_link_sockets_keep_alive_at_both_ends(link: Link) -> None:
    """A peer that vanished without FIN or RST (power cut, partition) is found dead by TCP
    keepalive on both ends of a node link, instead of holding the connection for good."""
    import socket

    from mssgate.nodelink import _der, _NodeLmtp

    cert, _key, _ca = link.tls
    node = _node_context(link)
    timers: list[list[str]] = []

    async def scenario() -> None:
        server = await _listening(link)  # type: ignore[misc]
        port = bound_port(server)

        def clients() -> None:
            # Server side: a plain client (no keepalive of its own), the listener's socket.
            with node.wrap_socket(socket.create_connection(("127.0.0.1", port))) as tls:
                tls.recv(1024)
                timers.append(_keepalive_timers(port))
            # Client side: the hand-over's connection.
            sender = _NodeLmtp(f"127.0.0.1:{port}", ctx=node, own=_der(cert), timeout=10)
            client = sender._connect()
            try:
                assert client.sock is not None
                timers.append([str(client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))])
            finally:
                client.close()

        try:
            await asyncio.to_thread(clients)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    # One end keeps alive (the listener's), the plain client's does not.
    assert sorted(timers[0]) == ["0", "2"], timers
    assert timers[1] == ["1"], timers


def test_a_hand_over_sent_again_is_taken_once(link: Link, caplog: pytest.LogCaptureFixture) -> None:
    """The home node spooled a hand-over, and its 250 never reached the sender (a timeout, a
    cut connection): the sender sends it again at its next attempt, with the same spool queue
    id. Before: spooled and delivered twice. Now the second gets 250 and nothing new; the
    same queue id for another recipient (one hand-over per recipient) is taken."""
    content = message(b"once\r\n")
    with caplog.at_level("INFO", logger="mssgate.nodelink"):
        link.hand_over(content, max_size=1_000_000)
        link.hand_over(content, max_size=1_000_000)  # the resend: no exception, a 250
    assert link.spooled_for(BOB) == [content]
    assert len(link.accepted) == 1
    [repeated] = [r for r in caplog.records if r.getMessage() == "node.handover_repeated"]
    assert repeated.fields["queue_id"] == link.accepted[0]  # type: ignore[attr-defined]


def test_hand_overs_sent_twice_at_once_are_taken_once(link: Link) -> None:
    """A resend may reach the home node while the first copy is still being spooled."""
    from concurrent.futures import ThreadPoolExecutor

    cert, key, ca = link.tls
    content = message(b"at once\r\n")

    async def scenario() -> list[str]:
        server = await _listening(link)  # type: ignore[misc]
        handoff = NodeHandOff(cert=cert, key=key, ca=ca, timeout=10)

        def one(_: int) -> str:
            try:
                handoff.hand_over(f"127.0.0.1:{bound_port(server)}", BOB, content,
                                  queue_id="same-id", sender=SENDER)  # fmt: skip
            except DeliveryFailed as exc:
                return str(exc)
            return "ok"

        def both() -> list[str]:
            with ThreadPoolExecutor(4) as pool:
                return list(pool.map(one, range(4)))

        try:
            return await asyncio.to_thread(both)
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(scenario()) == ["ok"] * 4
    assert link.spooled_for(BOB) == [content]


class _HeldSpool(Spool):
    """The real spool, whose accept waits to be let go once it is under way: a large message
    being written while its sender gives up."""

    def __init__(self, spool: Spool) -> None:
        super().__init__(spool._engine, spool.root, node=spool.node)
        self.entered = threading.Event()
        self.go = threading.Event()
        self.done = threading.Event()

    def accept(self, **kwargs: Any) -> None:
        self.entered.set()
        assert self.go.wait(60), "never let go"
        try:
            super().accept(**kwargs)
        finally:
            self.done.set()


def test_a_hand_over_whose_sender_gave_up_while_it_was_spooled_is_taken_once(
    link: Link,
) -> None:
    """The lost 250 XHANDOVER is for: the sender's timeout fires while the home node is
    still writing the message, and its connection closes. aiosmtpd then cancels the
    handler; before, the cancellation fell between the spool's commit and the hand-over's
    row, and the resend (here arriving while the first copy is still being written) was
    spooled a second time."""
    cert, key, ca = link.tls
    held = _HeldSpool(link.spool)
    content = message(b"given up on\r\n")

    async def scenario() -> str:
        server = await start_node_listener(
            bind="127.0.0.1", port=0, cert=cert, key=key, ca=ca, hostname="a.test",
            spool=held, homes=Homes(link.engine, "a"), max_size=1_000_000,
            on_accepted=link.accepted.append,
        )  # fmt: skip
        port = bound_port(server)

        def give_up() -> None:
            ctx = _node_context(link)
            client = _Lmtps("127.0.0.1", port, context=ctx, timeout=10)
            client.ehlo()
            assert client.docmd("XHANDOVER", "given-up")[0] == 250
            assert client.mail(SENDER)[0] == 250 and client.rcpt(BOB)[0] == 250
            assert client.docmd("DATA")[0] == 354
            client.send(content + b".\r\n")
            assert held.entered.wait(60)
            client.close()  # the sender's timeout: no 250 heard

        def resend() -> str:
            handoff = NodeHandOff(cert=cert, key=key, ca=ca, timeout=30)
            try:
                handoff.hand_over(f"127.0.0.1:{port}", BOB, content, queue_id="given-up",
                                  sender=SENDER)  # fmt: skip
            except DeliveryFailed as exc:
                return str(exc)
            return "ok"

        try:
            await asyncio.to_thread(give_up)
            again = asyncio.create_task(asyncio.to_thread(resend))
            held.go.set()
            return await again
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(scenario()) == "ok"
    assert held.done.wait(60)
    assert link.spooled_for(BOB) == [content]
