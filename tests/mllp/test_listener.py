"""The MLLP listener of a running `mssgate serve` ([hl7], issue 15): python-hl7's asyncio MLLP
client inside TLS with a certificate of `mssgate consumer cert` gets the answers
POST /v1/outbound gives; certificates bound to no consumer are refused; frames past the size
limit, bytes outside frames, unfinished frames and silent connections are dealt with."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import hl7  # type: ignore[import-untyped]
import pytest
from hl7.mllp import open_hl7_connection  # type: ignore[import-untyped]
from sqlalchemy import text

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.mllp.listener import MAX_HANDSHAKES
from mssgate.pki import (
    issue_client_cert,
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)
from tests.conftest import Cli
from tests.smtp.conftest import ALICE, BOB, Gateway, gateway_setup, peer_pki  # noqa: F401
from tests.smtp.test_metrics_serve import scrape
from tests.smtp.test_outbound_gateway import mdm

VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def tls(gateway: Gateway, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=gateway.ca)
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def exchange(gateway: Gateway, ctx: ssl.SSLContext, *messages: bytes) -> list[hl7.Message]:
    """Each message over one MLLP connection (python-hl7's client), its ACK parsed."""

    async def run() -> list[hl7.Message]:
        reader, writer = await open_hl7_connection(
            "127.0.0.1", gateway.ports["hl7"], ssl=ctx, server_hostname="localhost",
            encoding="utf-8",
        )  # fmt: skip
        acks = []
        try:
            for message in messages:
                writer.writeblock(message)
                await writer.drain()
                acks.append(await asyncio.wait_for(reader.readmessage(), 60))
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError, OSError):
                await writer.wait_closed()
        return acks

    return asyncio.run(run())


def issue(cli: Cli, name: str, out: Path, *extra: str) -> tuple[Path, Path]:
    result = cli.ok("consumer", "cert", name, "--out", str(out), "--json", *extra).json()
    return Path(result["cert"]), Path(result["key"])


@pytest.fixture
def live(
    cli: Cli,
    gateway_setup: Gateway,  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[Gateway, dict[str, tuple[Path, Path]]]]:
    cli.ok("consumer", "add", "ris-a", "--mailbox", BOB)
    cli.ok("consumer", "add", "ris-b", "--mailbox", BOB)
    certs = {name: issue(cli, name, tmp_path / name) for name in ("ris-a", "ris-b")}
    gateway_setup.env.update(
        MSSGATE_POLICY__ALLOW_TEST_INS="true",
        MSSGATE_HL7__ENABLED="true",
        MSSGATE_HL7__PORT="0",
        MSSGATE_HL7__MAX_MESSAGE_SIZE="200000",
        MSSGATE_HL7__READ_TIMEOUT_SECONDS="3",
    )
    gateway_setup.start()
    try:
        yield gateway_setup, certs
    finally:
        if gateway_setup.proc is not None:
            gateway_setup.stop()


def msa(ack: hl7.Message) -> tuple[str, str]:
    segment = ack.segment("MSA")
    return str(segment[1]), str(segment[2])


def test_mdm_over_mllp_gets_the_api_answers_and_is_sent_once(
    live: tuple[Gateway, dict[str, tuple[Path, Path]]],
) -> None:
    gateway, certs = live
    ctx = tls(gateway, *certs["ris-a"])
    first, again, bad_key, not_hl7 = exchange(
        gateway, ctx, mdm("MLLP-1"), mdm("MLLP-1"), mdm("MLLP-2", ins="279035121518900"),
        b"hello",
    )  # fmt: skip
    assert msa(first) == ("AA", "MLLP-1") and msa(again) == ("AA", "MLLP-1")
    assert str(first.segment("MSH")[9]) == "ACK^T02^ACK"
    assert msa(bad_key) == ("AE", "MLLP-2")
    assert "102" in [str(e[3][0][0]) for e in bad_key.segments("ERR")]
    assert msa(not_hl7)[0] == "AR" and not_hl7.segments("ERR")
    gateway.wait_delivered(ALICE, 1)
    gateway.wait_event("outbound.repeated")
    accepted = [e for e in gateway.events() if e.get("event") == "outbound.accepted"]
    assert [e["consumer"] for e in accepted] == ["ris-a"]
    # Another consumer's certificate is that consumer: the same MSH-10 is its own message.
    [other] = exchange(gateway, tls(gateway, *certs["ris-b"]), mdm("MLLP-1"))
    assert msa(other) == ("AA", "MLLP-1")
    gateway.wait_event("outbound.accepted", consumer="ris-b")
    gateway.wait_delivered(ALICE, 2)
    assert gateway.wait_event("mllp.connected", consumer="ris-b")
    # Listed as the other listeners are, and stopped cleanly with a connection still open.
    assert "hl7" in gateway.wait_event("serve.started")["ports"]  # type: ignore[operator]
    idle = Raw(gateway, ctx)
    assert gateway.stop() == 0
    assert "hl7" in gateway.wait_event("serve.stopped")["listeners"]  # type: ignore[operator]
    assert idle.closed()
    idle.close()


def refused(gateway: Gateway, ctx: ssl.SSLContext) -> bool:
    """The gateway ends the connection without answering a valid message."""
    try:
        exchange(gateway, ctx, mdm("NEVER-SENT"))
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError):
        return True
    return False


def test_certificates_bound_to_no_active_consumer_are_refused(
    cli: Cli, live: tuple[Gateway, dict[str, tuple[Path, Path]]], tmp_path: Path
) -> None:
    gateway, certs = live
    assert refused(gateway, tls(gateway, None, None))  # no certificate at all
    # A practitioner's certificate of the same CA (clientAuth too) is no consumer's.
    cli.ok("cert", "issue", ALICE, "--out", str(tmp_path / "alice"), "--no-passphrase")
    alice = (tmp_path / "alice" / f"{ALICE}.crt.pem", tmp_path / "alice" / f"{ALICE}.key.pem")
    assert refused(gateway, tls(gateway, *alice))
    gateway.wait_event("mllp.refused")
    # Re-issued: the old certificate stops working at once, the new one works.
    old = certs["ris-a"]
    new = issue(cli, "ris-a", tmp_path / "new")
    assert refused(gateway, tls(gateway, *old))
    [ack] = exchange(gateway, tls(gateway, *new), b"hello")
    assert msa(ack)[0] == "AR"
    # A certificate issued elsewhere (here by the same CA, as a real PKI in [tls] ca would)
    # is bound with --cert.
    ca_key = load_private_key(gateway.data / "certs" / "ca.key.pem")
    key, elsewhere = issue_client_cert(ca_key, load_certificate(gateway.ca), "RIS B")
    write_certificate(tmp_path / "b.crt.pem", elsewhere)
    write_private_key(tmp_path / "b.key.pem", key)
    cli.ok("consumer", "cert", "ris-b", "--cert", str(tmp_path / "b.crt.pem"))
    [ack] = exchange(gateway, tls(gateway, tmp_path / "b.crt.pem", tmp_path / "b.key.pem"), b"x")
    assert msa(ack)[0] == "AR"
    assert refused(gateway, tls(gateway, *certs["ris-b"]))
    # Revoked, then removed: refused.
    cli.ok("consumer", "revoke", "ris-a")
    assert refused(gateway, tls(gateway, *new))
    cli.ok("consumer", "remove", "ris-b")
    assert refused(gateway, tls(gateway, tmp_path / "b.crt.pem", tmp_path / "b.key.pem"))
    assert not [e for e in gateway.events() if e.get("event") == "outbound.accepted"]


class Raw:
    """The MLLP byte stream by hand (framing faults python-hl7's client cannot make)."""

    def __init__(self, gateway: Gateway, ctx: ssl.SSLContext) -> None:
        sock = socket.create_connection(("127.0.0.1", gateway.ports["hl7"]), timeout=20)
        self.sock = ctx.wrap_socket(sock, server_hostname="localhost")

    def answer(self) -> hl7.Message:
        data = b""
        while not data.endswith(FS + CR):
            chunk = self.sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
        assert data.startswith(VT)
        return hl7.parse(data[1:-2].decode())

    def closed(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (ConnectionError, ssl.SSLError):
            return True
        return data == b""

    def close(self) -> None:
        self.sock.close()


def test_oversize_garbage_unfinished_frames_and_silence(
    live: tuple[Gateway, dict[str, tuple[Path, Path]]],
) -> None:
    gateway, certs = live
    ctx = tls(gateway, *certs["ris-a"])
    # Bytes before the frame are dropped (and logged); the frame is answered.
    raw = Raw(gateway, ctx)
    raw.sock.sendall(b"junk\r\n" + VT + b"hello" + FS + CR)
    assert msa(raw.answer())[0] == "AR"
    gateway.wait_event("mllp.dropped", bytes=4)
    # The same connection goes on.
    # Past hl7.max_message_size: AR echoing its MSH-10, and the connection is closed with
    # the rest unread (a client still sending sees its writes fail).
    big = mdm("BIG-1", pdf=b"%PDF-1.4\n" + b"0" * 300_000)
    raw.sock.sendall(VT + big[:250_000])
    ack = raw.answer()
    assert msa(ack) == ("AR", "BIG-1") and "200000" in str(ack.segment("ERR"))
    assert raw.closed()
    raw.close()
    gateway.wait_event("mllp.oversize")
    # A frame cut by the end of the connection (TLS close_notify): logged, nothing answered.
    raw = Raw(gateway, ctx)
    raw.sock.sendall(VT + mdm("CUT-1")[:500])
    with contextlib.suppress(OSError):
        raw.sock.unwrap()
    raw.close()
    gateway.wait_event("mllp.partial_frame", bytes=501)
    # Silent past hl7.read_timeout_seconds: closed.
    raw = Raw(gateway, ctx)
    assert raw.closed()
    raw.close()
    gateway.wait_event("mllp.timeout", consumer="ris-a")
    # The database failing under a submission: AR 207 (send it again), not a silent close.
    engine = open_engine(load_config(gateway.data / "mssgate.toml").database_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE outbound_messages RENAME TO outbound_messages_away"))
    try:
        [ack] = exchange(gateway, ctx, mdm("DB-AWAY"))
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE outbound_messages_away RENAME TO outbound_messages"))
        engine.dispose()
    assert msa(ack) == ("AR", "DB-AWAY") and "207" in str(ack.segment("ERR"))
    gateway.wait_event("mllp.failed", consumer="ris-a")
    # The database failing as a frame's certificate is looked up again: AR 207 as well.
    raw = Raw(gateway, ctx)
    raw.sock.sendall(VT + b"hello" + FS + CR)
    assert msa(raw.answer())[0] == "AR"  # connected: the first lookup is done
    engine = open_engine(load_config(gateway.data / "mssgate.toml").database_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE consumers RENAME TO consumers_away"))
    try:
        raw.sock.sendall(VT + mdm("DB-AWAY-2") + FS + CR)
        ack = raw.answer()
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE consumers_away RENAME TO consumers"))
        engine.dispose()
        raw.close()
    assert msa(ack) == ("AR", "DB-AWAY-2") and "207" in str(ack.segment("ERR"))
    gateway.wait_event("mllp.failed", during="certificate lookup", consumer="ris-a")
    assert not [e for e in gateway.events() if e.get("event") == "outbound.accepted"]


def test_pipelined_and_split_frames_failed_handshakes_and_the_trace(
    live: tuple[Gateway, dict[str, tuple[Path, Path]]],
) -> None:
    gateway, certs = live
    ctx = tls(gateway, *certs["ris-a"])
    # Three frames in one write: three ACKs, in the order sent.
    raw = Raw(gateway, ctx)
    raw.sock.sendall(b"".join(VT + m + FS + CR for m in (b"one", mdm("PIPE-1"), b"three")))
    acks = [raw.answer() for _ in range(3)]
    assert [msa(a)[0] for a in acks] == ["AR", "AA", "AR"] and msa(acks[1])[1] == "PIPE-1"
    # A frame cut in many TLS records (and TCP segments) is read whole.
    whole = VT + mdm("SPLIT-1") + FS + CR
    for at in range(0, len(whole), 700):
        raw.sock.sendall(whole[at : at + 700])
    assert msa(raw.answer()) == ("AA", "SPLIT-1")
    sessions = scrape(gateway).get('mssgate_tls_sessions_total{listener="hl7",version="TLSv1.3"}')
    assert sessions is not None and sessions >= 1
    # Noise is one line per read, however many pieces it is in (a <VT> each: 5,000 frames
    # cut by the next one), never one per piece.
    raw.sock.sendall(VT * 5000 + b"x\r" * 5000 + VT + b"hello" + FS + CR)
    assert msa(raw.answer())[0] == "AR"
    raw.close()
    dropped = [e for e in gateway.events() if e.get("event") == "mllp.dropped"]
    assert 1 <= len(dropped) <= 6 and sum(int(str(e["bytes"])) for e in dropped) == 15_000
    # What was sent over MLLP says so in its trace (not "HTTPS").
    [first, *_] = gateway.wait_delivered(ALICE, 2)
    trace = first.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"HL7 v2 over MLLP" in trace and b"HTTPS" not in trace
    # A client without a certificate, or speaking plain TCP: the handshake fails, and the
    # operator sees who and why (on asyncio's loop; uvloop does TLS itself, unlogged).
    if not gateway.wait_event("mllp.listening")["handshake_failures_logged"]:
        assert refused(gateway, tls(gateway, None, None))
        return
    assert refused(gateway, tls(gateway, None, None))
    with socket.create_connection(("127.0.0.1", gateway.ports["hl7"]), timeout=20) as plain:
        plain.sendall(VT + b"MSH|^~\\&|" + FS + CR)
        with contextlib.suppress(OSError):
            plain.recv(100)
    deadline = time.monotonic() + 10
    while len(handshakes := failed_handshakes(gateway)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(handshakes) == 2, handshakes
    assert all(str(e["peer"]).startswith("('127.0.0.1'") for e in handshakes)
    assert "CERTIFICATE" in str(handshakes[0]["reason"]).upper()


def failed_handshakes(gateway: Gateway) -> list[dict[str, object]]:
    return [e for e in gateway.events() if e.get("event") == "mllp.handshake_failed"]


def test_mllp_and_the_api_share_the_submission_slots(
    cli: Cli, live: tuple[Gateway, dict[str, tuple[Path, Path]]]
) -> None:
    """Each submission holds several times its size while signing: the bound on them is one
    for the node, not one per way in (MLLP beside the API would double it)."""
    gateway, certs = live
    token = cli.ok("consumer", "add", "ris-c", "--mailbox", BOB, "--json").json()["token"]
    head = (
        "POST /v1/outbound HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/hl7-v2\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    with contextlib.ExitStack() as open_:
        holders = []
        for _ in range(4):  # the API's submissions waiting for their bodies hold every slot
            sock = socket.create_connection(("127.0.0.1", gateway.ports["api"]), timeout=20)
            holder = tls(gateway, None, None).wrap_socket(sock, server_hostname="localhost")
            open_.enter_context(holder)
            holder.sendall(head)
            holders.append(holder)
        time.sleep(3)
        raw = Raw(gateway, tls(gateway, *certs["ris-a"]))
        open_.callback(raw.close)
        raw.sock.sendall(VT + mdm("SHARED-1") + FS + CR)
        raw.sock.settimeout(3)
        with pytest.raises(TimeoutError):
            raw.sock.recv(1)
        holders[0].close()  # a slot freed: the MLLP submission goes on
        raw.sock.settimeout(20)
        assert msa(raw.answer()) == ("AA", "SHARED-1")


def test_tls_handshakes_in_progress_are_bounded(
    live: tuple[Gateway, dict[str, tuple[Path, Path]]],
) -> None:
    """Connections that never say hello cost a descriptor each for read_timeout_seconds: past
    MAX_HANDSHAKES the next is closed at once, so that a flood cannot take every descriptor
    of the process (its SMTP, IMAP and API listeners with it)."""
    gateway, _ = live
    if not gateway.wait_event("mllp.listening")["handshake_failures_logged"]:
        pytest.skip("uvloop does TLS itself: handshakes are neither logged nor counted")
    with contextlib.ExitStack() as open_:
        for _ in range(MAX_HANDSHAKES):
            sock = socket.create_connection(("127.0.0.1", gateway.ports["hl7"]), timeout=20)
            open_.enter_context(sock)
        time.sleep(0.5)
        extra = open_.enter_context(socket.create_connection(("127.0.0.1", gateway.ports["hl7"])))
        extra.settimeout(1.5)  # the listener's handshake timeout here is 3 s
        with contextlib.suppress(ConnectionResetError):
            assert extra.recv(1) == b""
    gateway.wait_event("mllp.refused", reason="too many TLS handshakes in progress")


def test_a_trickle_that_never_ends_a_frame_is_closed(
    live: tuple[Gateway, dict[str, tuple[Path, Path]]],
) -> None:
    """A byte every few seconds (inside a frame, or CRs between frames) never lets a read
    time out: without a bound on the whole, one client holds a connection (of
    max_connections) for ever. A frame must end within 2 x read_timeout_seconds (3 s here)
    of the connection or of the previous answer."""
    gateway, certs = live
    ctx = tls(gateway, *certs["ris-a"])
    for trickle in (b"\r", b"M"):
        raw = Raw(gateway, ctx)
        if trickle == b"M":
            raw.sock.sendall(VT)
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 15 and not closed:
            try:
                raw.sock.sendall(trickle)
            except OSError:
                closed = True
                break
            raw.sock.settimeout(1)
            try:
                closed = raw.sock.recv(100) == b""
            except TimeoutError:
                pass
            except (ConnectionError, ssl.SSLError):
                closed = True
        raw.close()
        assert closed and time.monotonic() - started < 10
    gateway.wait_event("mllp.timeout", consumer="ris-a", reason="no complete frame in time")
