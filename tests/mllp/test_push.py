"""The push of a consumer's queue to its RIS over MLLP and TLS (`consumer add --push`): a
small RIS (python-hl7's asyncio MLLP server inside TLS, asking for our client certificate)
answers as each test says; a document is acked once the RIS answered AA, sent again after AE
or silence, and none is lost when the gateway is killed in the middle."""

from __future__ import annotations

import asyncio
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hl7.mllp import start_hl7_server  # type: ignore[import-untyped]
from sqlalchemy import Engine

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.pki import create_dev_ca, issue_server_cert, write_certificate, write_private_key
from mssgate.queue import DocumentQueue, QueueState
from tests.conftest import DOMAIN, PG_URL, Cli
from tests.queue.gpgkeys import key_pair
from tests.queue.helpers import cda, deliver, mail
from tests.smtp.conftest import Gateway, free_env

RIS = f"ris@{DOMAIN}"
# What the RIS answers to the n-th frame (from 0) carrying a given MSH-10; None: nothing.
Script = Callable[[str, int], str | None]


@dataclass
class Ris:
    """An MLLP server inside TLS that records every MSH-10 it reads."""

    script: Script
    received: list[str] = field(default_factory=list)
    port: int = 0
    # The MSH-10 its ACK's MSA-2 names (the n-th frame carrying one): by default that one.
    acks_for: Callable[[str, int], str] = lambda control, seen: control

    def serve(self, cert: Path, key: Path, client_ca: Path) -> Callable[[], None]:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # the gateway presents its own certificate
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        handlers: set[asyncio.Task[None]] = set()

        async def handle(reader: object, writer: object) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                while True:
                    message = await reader.readmessage()  # type: ignore[attr-defined]
                    control = str(message.segment("MSH")[10])
                    seen = self.received.count(control)
                    self.received.append(control)
                    code = self.script(control, seen)
                    if code is not None:
                        ack = message.create_ack(code)
                        ack.segment("MSA")[2] = self.acks_for(control, seen)
                        writer.writemessage(ack)  # type: ignore[attr-defined]
                        await writer.drain()  # type: ignore[attr-defined]
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            finally:
                # Closed and waited for: a TLS transport left closing when the loop closes is
                # reported unclosed at its collection, in whatever test runs next.
                writer.close()  # type: ignore[attr-defined]
                try:
                    await asyncio.wait_for(writer.wait_closed(), 5)  # type: ignore[attr-defined]
                except (Exception, asyncio.CancelledError):
                    writer.transport.abort()  # type: ignore[attr-defined]

        async def main(stopping: asyncio.Event) -> None:
            server = await start_hl7_server(
                handle, "127.0.0.1", self.port, ssl=ctx, encoding="utf-8", limit=16 << 20
            )
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await stopping.wait()
            server.close()
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()

        stopping = asyncio.Event()
        thread = threading.Thread(
            target=lambda: (loop.run_until_complete(main(stopping)), loop.close()), daemon=True
        )
        thread.start()
        assert ready.wait(10)

        def stop() -> None:
            loop.call_soon_threadsafe(stopping.set)
            thread.join(10)

        return stop


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def setup(
    request: pytest.FixtureRequest, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Gateway, Engine, Path]]:
    datadir = tmp_path / "data"
    init = ["init", "--data", str(datadir), "--domain", DOMAIN]
    if request.param == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        assert PG_URL
        init += ["--database", f"{PG_URL}?options=-csearch_path%3D{schema}"]
    cli.ok(*init)
    monkeypatch.setenv("MSSGATE_CONFIG", str(datadir / "mssgate.toml"))
    ca_key, ca_cert = create_dev_ca("RIS vendor CA")
    key, cert = issue_server_cert(ca_key, ca_cert, "localhost")
    for path, item in ((tmp_path / "ris-ca.pem", ca_cert), (tmp_path / "ris.crt.pem", cert)):
        write_certificate(path, item)
    write_private_key(tmp_path / "ris.key.pem", key)
    cli.ok("directory", "add", RIS, "--name", "RIS imagerie", "--kind", "application")
    engine = open_engine(load_config(datadir / "mssgate.toml").database_url)
    gateway = Gateway(data=datadir, env=free_env(datadir))
    gateway.env.update(
        MSSGATE_POLICY__ALLOW_TEST_INS="true",
        MSSGATE_HL7__PUSH_POLL_SECONDS="0.2",
        MSSGATE_HL7__PUSH_RETRY_FIRST_SECONDS="0.2",
        MSSGATE_HL7__PUSH_ACK_TIMEOUT_SECONDS="1",
        MSSGATE_HL7__PUSH_CONNECT_TIMEOUT_SECONDS="2",
    )
    try:
        yield gateway, engine, tmp_path
    finally:
        if gateway.proc is not None:
            gateway.stop()
        engine.dispose()


def start_ris(
    tmp: Path,
    gateway: Gateway,
    script: Script,
    port: int = 0,
    acks_for: Callable[[str, int], str] | None = None,
) -> tuple[Ris, Callable[[], None]]:
    ris = Ris(script, port=port)
    if acks_for is not None:
        ris.acks_for = acks_for
    stop = ris.serve(tmp / "ris.crt.pem", tmp / "ris.key.pem", gateway.ca)
    return ris, stop


def queued(engine: Engine, datadir: Path, count: int) -> list[str]:
    queue = DocumentQueue(engine, data_dir=datadir)
    return [deliver(queue, mail([cda(n)], n=n, to=RIS), mailbox=RIS)[0] for n in range(count)]


def wait_done(engine: Engine, ids: list[str], timeout: float = 30) -> None:
    queue = DocumentQueue(engine)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(queue.entry(i).state is QueueState.DONE for i in ids):
            return
        time.sleep(0.1)
    raise AssertionError({i: queue.entry(i).state for i in ids})


def test_a_document_is_acked_once_the_ris_answers_aa_after_ae_silence_or_ar(
    cli: Cli, setup: tuple[Gateway, Engine, Path]
) -> None:
    gateway, engine, tmp = setup
    ids = queued(engine, gateway.data, 3)

    def script(control: str, seen: int) -> str | None:
        # First time: the first refused (AE), the second unanswered, the third rejected (AR).
        first = {ids[0]: "AE", ids[1]: None, ids[2]: "AR"}
        return first[control] if seen == 0 else "AA"

    ris, stop = start_ris(tmp, gateway, script)
    try:
        cli.ok("consumer", "add", "ris", "--mailbox", RIS, "--push",
               f"mllp://localhost:{ris.port}", "--push-ca", str(tmp / "ris-ca.pem"))  # fmt: skip
        gateway.start()
        wait_done(engine, ids)
    finally:
        stop()
    # The MDM's MSH-10 is the document's id; each went twice, in queue order.
    assert ris.received == [ids[0], ids[0], ids[1], ids[1], ids[2], ids[2]]
    queue = DocumentQueue(engine)
    assert [queue.entry(i).attempts for i in ids] == [2, 2, 2]
    reasons = [queue.entry(i).last_reason or "" for i in ids]
    assert "answered AE" in reasons[0] and "no ACK" in reasons[1] and "answered AR" in reasons[2]
    assert {queue.entry(i).last_code for i in ids} == {906}
    gateway.wait_event("mllp.push_refused", document_id=ids[0])
    assert len([e for e in gateway.events() if e.get("event") == "mllp.pushed"]) == 3


def test_an_aa_for_another_message_acks_nothing(
    cli: Cli, setup: tuple[Gateway, Engine, Path]
) -> None:
    """An AA whose MSA-2 is not the MSH-10 sent (a RIS mixing up its connections, a stale
    answer) says nothing of this document: it is sent again, not marked done unread."""
    gateway, engine, tmp = setup
    ids = queued(engine, gateway.data, 1)

    def acks_for(control: str, seen: int) -> str:
        return "SOMETHING-ELSE" if seen == 0 else control

    ris, stop = start_ris(tmp, gateway, lambda control, seen: "AA", acks_for=acks_for)
    try:
        cli.ok("consumer", "add", "ris", "--mailbox", RIS, "--push",
               f"mllp://localhost:{ris.port}", "--push-ca", str(tmp / "ris-ca.pem"))  # fmt: skip
        gateway.start()
        wait_done(engine, ids)
    finally:
        stop()
    assert ris.received == [ids[0], ids[0]]
    entry = DocumentQueue(engine).entry(ids[0])
    assert entry.attempts == 2 and "SOMETHING-ELSE" in (entry.last_reason or "")


def test_a_mailbox_sealed_for_an_openpgp_key_is_not_pushed(
    cli: Cli, setup: tuple[Gateway, Engine, Path]
) -> None:
    """Its documents are stored encrypted for the other consumer: leased and refused one by
    one, each would go dead (error MDN to its sender) instead of waiting for that consumer."""
    gateway, engine, tmp = setup
    with key_pair(f"RIS <{RIS}>") as keys:
        (tmp / "ris.pub.asc").write_text(keys.public)
        cli.ok(
            "consumer", "add", "ris-pgp", "--mailbox", RIS, "--pgp-key", str(tmp / "ris.pub.asc")
        )
        ids = queued(engine, gateway.data, 1)
    gateway.env["MSSGATE_QUEUE__MAX_ATTEMPTS"] = "1"
    ris, stop = start_ris(tmp, gateway, lambda control, seen: "AA")
    try:
        cli.ok("consumer", "add", "ris", "--mailbox", RIS, "--push",
               f"mllp://localhost:{ris.port}", "--push-ca", str(tmp / "ris-ca.pem"))  # fmt: skip
        gateway.start()
        gateway.wait_event("mllp.push_started", consumer="ris")
        time.sleep(3)  # several polls
    finally:
        stop()
    entry = DocumentQueue(engine).entry(ids[0])
    assert ris.received == [] and entry.state is QueueState.READY and entry.attempts == 0
    gateway.wait_event("mllp.push_blocked", consumer="ris")


def test_a_ris_down_costs_no_attempt_and_nothing_is_lost_when_the_gateway_is_killed(
    cli: Cli, setup: tuple[Gateway, Engine, Path]
) -> None:
    gateway, engine, tmp = setup
    ids = queued(engine, gateway.data, 2)
    # Long enough to kill the gateway while it waits for the ACK (the lease: 2 x + 10 s).
    gateway.env["MSSGATE_HL7__PUSH_ACK_TIMEOUT_SECONDS"] = "3"
    cli.ok("consumer", "add", "ris", "--mailbox", RIS, "--push", "mllp://localhost:1",
           "--push-ca", str(tmp / "ris-ca.pem"))  # fmt: skip
    gateway.start()
    gateway.wait_event("mllp.push_unreachable")
    queue = DocumentQueue(engine)
    assert [queue.entry(i).attempts for i in ids] == [0, 0]  # nothing leased while down

    # The RIS comes up and reads the first document but never answers; the gateway is
    # killed while it waits (its lease held).
    ris, stop = start_ris(tmp, gateway, lambda control, seen: None)
    cli.ok("consumer", "set", "ris", "--push", f"mllp://localhost:{ris.port}",
           "--push-ca", str(tmp / "ris-ca.pem"))  # fmt: skip
    deadline = time.monotonic() + 20
    while not ris.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ris.received[:1] == [ids[0]]
    gateway.stop(signal.SIGKILL)
    stop()
    assert queue.entry(ids[0]).state is QueueState.LEASED

    # Restarted, the RIS now answering: the lease lapses and both go, each acked once.
    ris, stop = start_ris(tmp, gateway, lambda control, seen: "AA", port=ris.port)
    try:
        gateway.start()
        wait_done(engine, ids, timeout=60)
    finally:
        stop()
    # The second went first: the first waited for its lease to lapse.
    assert sorted(ris.received) == sorted(ids)
    assert len([e for e in gateway.events() if e.get("event") == "mllp.pushed"]) == 2
