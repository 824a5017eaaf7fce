"""The relay worker end to end: spool on SQLite, a peer gateway on a real socket, mutual TLS."""

from __future__ import annotations

import asyncio
import email
import email.policy
from datetime import timedelta
from email.message import EmailMessage

import pytest

from mssgate.directory.timeutil import now
from mssgate.errors import NotFound
from mssgate.spool.store import Spool
from tests.relay.conftest import (
    ALICE,
    DR_B,
    DR_C,
    FAST,
    LOCAL,
    OUR_HOST,
    PEER,
    World,
    ambiguous,
    attempts,
    message,
    run_until,
)

TRICKY_BODY = (
    "Ligne normale\r\n"
    ".une ligne qui commence par un point\r\n"
    "..deux points\r\n"
    ".\r\n"
    "le point seul ci-dessus n'est pas la fin\r\n"
)


def parse_dsn(raw: bytes) -> tuple[EmailMessage, list[dict[str, str]]]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list)
    return msg, [dict(b.items()) for b in blocks if isinstance(b, EmailMessage)]


def test_delivered_intact_with_our_client_certificate(world: World) -> None:
    content = message(TRICKY_BODY)
    queue_id = world.submit(content, DR_B)

    async def scenario() -> None:
        peer = world.peer()
        await peer.start()
        try:
            assert await world.worker().run_once() == 1
        finally:
            await peer.stop()
        [got] = peer.handler.messages
        assert got.content == content
        assert got.mail_from == ALICE and got.rcpt_tos == [DR_B]
        assert got.client_cert is not None
        subject = dict(x[0] for x in got.client_cert["subject"])
        assert subject["commonName"] == OUR_HOST

    asyncio.run(scenario())
    assert world.state(queue_id) == "delivered"
    assert [e.state for e in world.spool.entries(include_done=True)] == ["done"]
    assert not world.spool.path(queue_id).exists()
    assert world.dsns == []


def test_peer_down_then_back_with_backoff(world: World) -> None:
    queue_id = world.submit(message(), DR_B)

    async def scenario() -> None:
        worker = world.worker()
        assert await worker.run_once() == 1
        first = world.spool.recipient_state(queue_id, DR_B)
        assert first.state == "pending" and first.attempts == 1
        assert "connect" in (first.last_error or "")
        assert world.scheduled_delay(queue_id) == pytest.approx(0.1, abs=0.005)
        # Not due again before its backoff: the next pass finds nothing.
        assert await worker.run_once() == 0

        await run_until(worker, lambda: world.spool.recipient_state(queue_id, DR_B).attempts == 2)
        assert world.scheduled_delay(queue_id) == pytest.approx(0.2, abs=0.005)  # doubled

        peer = world.peer()
        await peer.start()
        try:
            await run_until(worker, lambda: world.state(queue_id) == "delivered")
        finally:
            await peer.stop()
        assert len(peer.handler.messages) == 1

    asyncio.run(scenario())
    assert world.spool.recipient_state(queue_id, DR_B).attempts == 3
    assert world.dsns == []


def test_550_gives_a_dsn_to_the_sender(world: World) -> None:
    queue_id = world.submit(message(), DR_B)

    async def scenario() -> None:
        peer = world.peer()
        peer.handler.rcpt_replies[DR_B] = "550 5.1.1 <dr.b@clinique-b.test>: no such user"
        await peer.start()
        try:
            await world.worker().run_once()
        finally:
            await peer.stop()
        assert peer.handler.messages == []

    asyncio.run(scenario())
    assert world.state(queue_id) == "failed"
    [(raw, to)] = world.dsns
    assert to == ALICE
    msg, blocks = parse_dsn(raw)
    assert msg["To"].addresses[0].addr_spec == ALICE
    assert msg["From"].addresses[0].addr_spec == f"mailer-daemon@{LOCAL}"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert blocks[0]["Reporting-MTA"] == f"dns; {OUR_HOST}"
    assert "Arrival-Date" in blocks[0]
    [rcpt] = blocks[1:]
    assert rcpt["Final-Recipient"] == f"rfc822; {DR_B}"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <dr.b@clinique-b.test>: no such user"
    assert rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    headers = list(msg.iter_parts())[2].get_content()
    assert "Subject: CR" in headers and "Compte rendu" not in headers
    # The message is finished: no retry will send it.
    assert [e.state for e in world.spool.entries(include_done=True)] == ["done"]


def test_4xx_then_250(world: World) -> None:
    queue_id = world.submit(message(), DR_B)

    async def scenario() -> None:
        peer = world.peer()
        peer.handler.data_replies.append("451 4.3.0 try again later")
        await peer.start()
        try:
            worker = world.worker()
            await worker.run_once()
            state = world.spool.recipient_state(queue_id, DR_B)
            assert (state.state, state.attempts) == ("pending", 1)
            assert state.last_error == "451 4.3.0 try again later"
            await run_until(worker, lambda: world.state(queue_id) == "delivered")
        finally:
            await peer.stop()
        assert len(peer.handler.messages) == 1

    asyncio.run(scenario())
    assert world.dsns == []


def test_peer_certificate_from_another_ca_is_never_trusted(world: World) -> None:
    queue_id = world.submit(message(), DR_B)

    async def scenario() -> None:
        peer = world.peer(cert=world.pki.rogue_cert, key=world.pki.rogue_key)
        await peer.start()
        try:
            worker = world.worker()
            await worker.run_once()
            world.spool.flush()
            await worker.run_once()
        finally:
            await peer.stop()
        assert peer.handler.mail_commands == 0
        assert peer.handler.messages == []

    asyncio.run(scenario())
    state = world.spool.recipient_state(queue_id, DR_B)
    assert (state.state, state.attempts) == ("pending", 2)
    assert "TLS verification failed" in (state.last_error or "")
    assert world.dsns == []


def test_expiry_gives_a_dsn_without_contacting_the_peer(world: World) -> None:
    queue_id = world.submit(message(), DR_B)

    async def scenario() -> None:
        # First a real attempt against a dead peer, so that the DSN has a last error.
        await world.worker().run_once()
        world.spool.flush()
        later = world.worker(clock=lambda: now() + timedelta(days=5, seconds=1))
        peer = world.peer()
        await peer.start()
        try:
            await later.run_once()
        finally:
            await peer.stop()
        assert peer.handler.mail_commands == 0

    asyncio.run(scenario())
    assert world.state(queue_id) == "failed"
    [(raw, to)] = world.dsns
    assert to == ALICE
    _, blocks = parse_dsn(raw)
    [rcpt] = blocks[1:]
    assert rcpt["Status"] == "5.4.7"
    assert rcpt["Final-Recipient"] == f"rfc822; {DR_B}"
    assert "Diagnostic-Code" not in rcpt  # a refused connection is no SMTP reply
    text = list(email.message_from_bytes(raw, policy=email.policy.default).walk())[1]
    assert isinstance(text, EmailMessage)
    assert "no delivery within 5 days" in text.get_content()


def test_retry_never_scheduled_past_the_deadline(world: World) -> None:
    queue_id = world.submit(message(), DR_B)
    config = FAST.model_copy(
        update={"max_age_seconds": 3600.0, "retry_first_seconds": 7200.0, "retry_max_seconds": 1e5}
    )
    asyncio.run(world.worker(config=config).run_once())
    state = world.spool.recipient_state(queue_id, DR_B)
    assert state.state == "pending"
    assert state.next_attempt_at - now() <= timedelta(hours=1)


def test_a_4xx_past_the_deadline_is_final(world: World) -> None:
    queue_id = world.submit(message(), DR_B)
    offset = [timedelta(0)]

    async def scenario() -> None:
        peer = world.peer()

        peer.handler.rcpt_replies[DR_B] = "452 4.2.2 mailbox full"
        # The deadline passes while the peer keeps us waiting.
        peer.handler.on_rcpt = lambda _: offset.__setitem__(0, timedelta(days=6))
        await peer.start()
        try:
            await world.worker(clock=lambda: now() + offset[0]).run_once()
        finally:
            await peer.stop()

    asyncio.run(scenario())
    assert world.state(queue_id) == "failed"
    [(raw, _)] = world.dsns
    _, blocks = parse_dsn(raw)
    assert blocks[1]["Status"] == "5.4.7"
    assert blocks[1]["Diagnostic-Code"] == "smtp; 452 4.2.2 mailbox full"


def test_mixed_message_one_delivered_one_dsn(world: World) -> None:
    queue_id = world.submit(message(), DR_B, DR_C)

    async def scenario() -> None:
        peer = world.peer()
        peer.handler.rcpt_replies[DR_C] = "550 5.1.1 no such user"
        await peer.start()
        try:
            await world.worker().run_once()
        finally:
            await peer.stop()
        [got] = peer.handler.messages
        assert got.rcpt_tos == [DR_B]

    asyncio.run(scenario())
    assert world.state(queue_id, DR_B) == "delivered"
    assert world.state(queue_id, DR_C) == "failed"
    [(raw, _)] = world.dsns
    _, blocks = parse_dsn(raw)
    assert [b["Final-Recipient"] for b in blocks[1:]] == [f"rfc822; {DR_C}"]


def test_restart_resumes_pending_deliveries(world: World) -> None:
    queue_id = world.submit(message(), DR_B)
    asyncio.run(world.worker().run_once())
    assert world.spool.recipient_state(queue_id, DR_B).attempts == 1

    async def after_restart() -> None:
        # A new process: a new Spool over the same files and database, a new worker.
        spool = Spool(world.engine, world.root / "spool")
        assert spool.recover() == 0
        worker = world.worker(spool=spool)
        peer = world.peer()
        await peer.start()
        try:
            await run_until(worker, lambda: world.state(queue_id) == "delivered")
        finally:
            await peer.stop()
        assert len(peer.handler.messages) == 1

    asyncio.run(after_restart())


def test_delivered_is_committed_before_quit_and_never_sent_again(world: World) -> None:
    queue_id = world.submit(message(), DR_B)
    seen_at_quit: list[str] = []

    async def scenario() -> None:
        peer = world.peer()
        peer.handler.on_quit = lambda: seen_at_quit.append(world.state(queue_id))
        await peer.start()
        try:
            worker = world.worker()
            await worker.run_once()
            world.spool.flush()  # would make a pending row due; a delivered one stays done
            assert await worker.run_once() == 0
        finally:
            await peer.stop()
        assert len(peer.handler.messages) == 1

    asyncio.run(scenario())
    assert seen_at_quit == ["delivered"]


def test_domain_off_the_trust_list_fails_with_a_dsn(world: World) -> None:
    queue_id = world.submit(message(), DR_B)
    world.directory.domains.untrust(PEER)
    asyncio.run(world.worker().run_once())
    assert world.state(queue_id) == "failed"
    [(raw, _)] = world.dsns
    _, blocks = parse_dsn(raw)
    assert blocks[1]["Status"] == "5.7.1"


def test_a_bounce_is_never_bounced(world: World) -> None:
    queue_id = world.submit(message(), DR_B, sender="")
    world.directory.domains.untrust(PEER)
    asyncio.run(world.worker().run_once())
    assert world.state(queue_id) == "failed"
    assert world.dsns == []


def test_no_final_failure_without_a_durable_dsn(world: World) -> None:
    queue_id = world.submit(message(), DR_B)
    world.directory.domains.untrust(PEER)

    def broken(dsn: bytes, to: str) -> None:
        raise OSError("disk full")

    asyncio.run(world.worker(on_dsn=broken).run_once())
    state = world.spool.recipient_state(queue_id, DR_B)
    assert (state.state, state.attempts) == ("pending", 1)
    # Once the sink works again, the DSN comes and the failure becomes final.
    world.spool.flush()
    asyncio.run(world.worker().run_once())
    assert world.state(queue_id) == "failed"
    assert len(world.dsns) == 1


def test_run_loop_is_woken(world: World) -> None:
    async def scenario() -> None:
        peer = world.peer()
        await peer.start()
        worker = world.worker(config=FAST.model_copy(update={"poll_seconds": 30.0}))
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(0.05)
            queue_id = world.submit(message(), DR_B)
            worker.wake()
            for _ in range(200):
                if world.state(queue_id) == "delivered":
                    break
                await asyncio.sleep(0.01)
            assert world.state(queue_id) == "delivered"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await peer.stop()

    asyncio.run(scenario())


def test_missing_envelope_is_an_error_not_a_crash(world: World) -> None:
    with pytest.raises(NotFound):
        world.spool.envelope("0" * 16)


def test_a_peer_without_a_ca_is_never_contacted(world: World) -> None:
    queue_id = world.submit(message(), DR_B)
    world.directory.domains.trust(PEER, relay=f"127.0.0.1:{world.port}", ca=None)

    async def scenario() -> None:
        peer = world.peer()
        await peer.start()
        try:
            await world.worker().run_once()
        finally:
            await peer.stop()
        assert peer.handler.mail_commands == 0

    asyncio.run(scenario())
    state = world.spool.recipient_state(queue_id, DR_B)
    assert state.state == "pending"
    assert state.last_error == f"no CA on the trust list for {PEER}"


def test_an_unroutable_domain_fails_at_once(world: World) -> None:
    queue_id = world.submit(message(), "someone@[192.0.2.1]")
    asyncio.run(world.worker().run_once())
    assert world.state(queue_id, "someone@[192.0.2.1]") == "failed"
    assert len(world.dsns) == 1


def test_lost_reply_to_the_final_dot_is_the_other_duplicate_window(world: World) -> None:
    # The peer has the message but we never hear its 250: we must assume it did not, and
    # send again (RFC 5321 6.1 prefers a duplicate to a loss). docs/relay.md says so, and
    # the metrics count that retry as a possible duplicate.
    ambiguous_before, deferred_before = ambiguous(), attempts("deferred")
    queue_id = world.submit(message(), DR_B)

    async def scenario() -> None:
        peer = world.peer()
        peer.handler.drop_after_data = True
        await peer.start()
        try:
            worker = world.worker()
            await worker.run_once()
            state = world.spool.recipient_state(queue_id, DR_B)
            assert (state.state, state.attempts) == ("pending", 1)
            assert "data end" in (state.last_error or "")
            peer.handler.drop_after_data = False
            await run_until(worker, lambda: world.state(queue_id) == "delivered")
        finally:
            await peer.stop()
        assert len(peer.handler.messages) == 2

    asyncio.run(scenario())
    assert ambiguous() - ambiguous_before == 1
    assert attempts("deferred") - deferred_before == 1
