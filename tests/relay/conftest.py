"""A real spool on SQLite, a real directory, and a peer gateway: aiosmtpd behind our own TLS
server factory, asking for a client certificate from our CA, on a real loopback socket."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Engine, select

from mssgate import metrics
from mssgate.config import RelayConfig
from mssgate.db import open_engine, upgrade
from mssgate.db.schema import spool_recipients
from mssgate.directory import Directory
from mssgate.directory.timeutil import now
from mssgate.pki import create_dev_ca, issue_server_cert, write_certificate, write_private_key
from mssgate.relay import RelayWorker
from mssgate.spool.store import Spool, new_queue_id
from mssgate.tls import server_context

LOCAL = "hopital-a.test"
PEER = "clinique-b.test"
ALICE = f"alice@{LOCAL}"
DR_B = f"dr.b@{PEER}"
DR_C = f"dr.c@{PEER}"
OUR_HOST = f"mx.{LOCAL}"
PEER_HOST = f"mx.{PEER}"

# Short everything: a test waits for a retry, never for a default of minutes.
FAST = RelayConfig(
    retry_first_seconds=0.1,
    retry_factor=2.0,
    retry_max_seconds=0.4,
    retry_jitter=0.0,
    connect_timeout_seconds=2,
    greeting_timeout_seconds=2,
    command_timeout_seconds=2,
    rcpt_timeout_seconds=2,
    data_init_timeout_seconds=2,
    data_block_timeout_seconds=2,
    data_end_timeout_seconds=2,
    poll_seconds=0.05,
)


@dataclass
class Pki:
    our_ca: x509.Certificate
    our_cert: Path
    our_key: Path
    peer_ca: x509.Certificate
    peer_cert: Path
    peer_key: Path
    rogue_cert: Path
    rogue_key: Path
    # A peer certificate without 127.0.0.1 and localhost: the name check must have its say.
    named_cert: Path
    named_key: Path

    @property
    def our_ca_pem(self) -> str:
        return self.our_ca.public_bytes(Encoding.PEM).decode()

    @property
    def peer_ca_pem(self) -> str:
        return self.peer_ca.public_bytes(Encoding.PEM).decode()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")

    def leaf(
        name: str, ca: tuple[Any, x509.Certificate], host: str, **kw: Any
    ) -> tuple[Path, Path]:
        key, cert = issue_server_cert(ca[0], ca[1], host, **kw)
        write_certificate(d / f"{name}.crt.pem", cert)
        write_private_key(d / f"{name}.key.pem", key)
        return d / f"{name}.crt.pem", d / f"{name}.key.pem"

    ours = create_dev_ca("our operator CA")
    peer = create_dev_ca("peer operator CA")
    rogue = create_dev_ca("someone else's CA")
    our_cert, our_key = leaf("ours", ours, OUR_HOST)
    peer_cert, peer_key = leaf("peer", peer, PEER_HOST)
    rogue_cert, rogue_key = leaf("rogue", rogue, PEER_HOST)
    named_cert, named_key = leaf("named", peer, PEER_HOST, extra_names=())
    return Pki(
        ours[1],
        our_cert,
        our_key,
        peer[1],
        peer_cert,
        peer_key,
        rogue_cert,
        rogue_key,
        named_cert,
        named_key,
    )


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    client_cert: dict[str, Any] | None


@dataclass
class PeerHandler:
    """The peer gateway's behaviour, scripted by the test."""

    mail_reply: str = "250 2.1.0 OK"
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    # Called at each RCPT, before the reply: lets a test move a clock "during" the session.
    on_rcpt: Callable[[str], None] | None = None
    # Replies to the end of DATA, used up one by one; then 250.
    data_replies: list[str] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    mail_commands: int = 0
    # Keep the message, then drop the connection instead of answering the final dot.
    drop_after_data: bool = False
    mail_options: list[str] = field(default_factory=list)
    on_quit: Callable[[], None] | None = None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mail_commands += 1
        self.mail_options = list(options)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return self.mail_reply

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.on_rcpt is not None:
            self.on_rcpt(address)
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        assert server.transport is not None
        content = envelope.original_content
        assert isinstance(content, bytes)
        self.messages.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                content=content,
                client_cert=server.transport.get_extra_info("peercert"),
            )
        )
        if self.drop_after_data:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
        return "250 2.0.0 Ok: queued as PEER1"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.on_quit is not None:
            self.on_quit()
        return "221 2.0.0 Bye"


class PeerGateway:
    def __init__(self, pki: Pki, port: int, *, cert: Path, key: Path, tls: bool = True) -> None:
        self.port = port
        self.handler = PeerHandler()
        self._ctx = (
            server_context(cert, key, client_cas=[pki.our_ca_pem], request_client_cert=True)
            if tls
            else None
        )
        self._server: asyncio.Server | None = None
        self.data_size_limit = 33_554_432

    def _protocol(self) -> SMTP:
        return SMTP(
            self.handler,
            hostname=PEER_HOST,
            tls_context=self._ctx,
            require_starttls=self._ctx is not None,
            decode_data=False,
            data_size_limit=self.data_size_limit,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, "127.0.0.1", self.port, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    engine: Engine
    spool: Spool
    directory: Directory
    pki: Pki
    port: int
    root: Path
    dsns: list[tuple[bytes, str]] = field(default_factory=list)

    def peer(
        self, *, cert: Path | None = None, key: Path | None = None, tls: bool = True
    ) -> PeerGateway:
        return PeerGateway(
            self.pki,
            self.port,
            cert=cert or self.pki.peer_cert,
            key=key or self.pki.peer_key,
            tls=tls,
        )

    def worker(
        self,
        *,
        config: RelayConfig = FAST,
        clock: Callable[[], datetime] = now,
        spool: Spool | None = None,
        **kw: Any,
    ) -> RelayWorker:
        def on_dsn(dsn: bytes, to: str) -> None:
            self.dsns.append((dsn, to))

        return RelayWorker(
            spool or self.spool,
            self.directory,
            our_cert=self.pki.our_cert,
            our_key=self.pki.our_key,
            config_relay=config,
            hostname=OUR_HOST,
            on_dsn=kw.pop("on_dsn", on_dsn),
            clock=clock,
            **kw,
        )

    def submit(self, content: bytes, *recipients: str, sender: str = ALICE) -> str:
        queue_id = new_queue_id()
        self.spool.accept(
            queue_id=queue_id,
            content=content,
            listener="submission",
            sender=sender,
            identity=sender or None,
            peer="127.0.0.1",
            recipients=[(r, "relay") for r in recipients],
        )
        return queue_id

    def state(self, queue_id: str, recipient: str = DR_B) -> str:
        return self.spool.recipient_state(queue_id, recipient).state

    def scheduled_delay(self, queue_id: str, recipient: str = DR_B) -> float:
        """Seconds between the last failure and the retry the worker scheduled for it."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(spool_recipients).where(
                    spool_recipients.c.spool_id == queue_id,
                    spool_recipients.c.recipient == recipient,
                )
            ).one()
        return float((row.next_attempt_at - row.updated_at).total_seconds())


@pytest.fixture
def world(tmp_path: Path, pki: Pki) -> Iterator[World]:
    engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    directory = Directory(engine, actor="test")
    directory.domains.add_local(LOCAL)
    port = free_port()
    directory.domains.trust(PEER, relay=f"127.0.0.1:{port}", ca=pki.peer_ca)
    yield World(engine, Spool(engine, tmp_path / "spool"), directory, pki, port, tmp_path)
    engine.dispose()


def message(body: str = "Compte rendu.\r\n", subject: str = "CR") -> bytes:
    return (
        f"From: {ALICE}\r\nTo: {DR_B}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{time.monotonic_ns()}@{LOCAL}>\r\n\r\n{body}"
    ).encode()


async def run_until(worker: RelayWorker, done: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Passes of the worker until `done`, waiting only as long as a retry needs."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("the worker did not get there in time")
        if not await worker.run_once():
            await asyncio.sleep(0.02)


# -- the process-wide metrics registry that GET /metrics serves, read before and after --


def count(name: str, **labels: str) -> float:
    return metrics.default().registry.get_sample_value(name, labels) or 0.0


def attempts(outcome: str) -> float:
    return count("mssgate_delivery_attempts_total", route="relay", outcome=outcome)


def ambiguous() -> float:
    return count("mssgate_delivery_retried_after_ambiguous_failure_total", route="relay")
