"""The relay worker bumps the delivery counters itself: a real peer on a real socket, the
process-wide registry that `GET /metrics` serves read before and after."""

from __future__ import annotations

import asyncio

from mssgate import metrics
from tests.relay.conftest import DR_B, DR_C, World, message, run_until


def count(name: str, **labels: str) -> float:
    return metrics.default().registry.get_sample_value(name, labels) or 0.0


def attempts(outcome: str) -> float:
    return count("mssgate_delivery_attempts_total", route="relay", outcome=outcome)


def ambiguous() -> float:
    return count("mssgate_delivery_retried_after_ambiguous_failure_total", route="relay")


def test_relay_attempts_are_counted_by_outcome(world: World) -> None:
    before = {o: attempts(o) for o in ("delivered", "deferred", "failed")}
    ambiguous_before = ambiguous()
    ok = world.submit(message(), DR_B)
    refused = world.submit(message(), DR_C)

    async def scenario() -> None:
        peer = world.peer()
        peer.handler.rcpt_replies[DR_C] = "550 5.1.1 no such user"
        peer.handler.data_replies.append("451 4.3.0 try again later")
        await peer.start()
        try:
            worker = world.worker()
            await run_until(
                worker,
                lambda: world.state(ok) == "delivered" and world.state(refused, DR_C) != "pending",
            )
        finally:
            await peer.stop()

    asyncio.run(scenario())
    assert world.state(refused, DR_C) == "failed"
    # One 451 then a 250 for the first message; the 550 is a final failure. A 4xx reply is
    # the peer's word that it kept nothing: no duplicate risk counted.
    assert attempts("delivered") - before["delivered"] == 1
    assert attempts("deferred") - before["deferred"] == 1
    assert attempts("failed") - before["failed"] == 1
    assert ambiguous() == ambiguous_before


def test_a_lost_reply_to_the_final_dot_counts_as_a_possible_duplicate(world: World) -> None:
    before, deferred = ambiguous(), attempts("deferred")
    queue_id = world.submit(message(), DR_B)

    async def scenario() -> None:
        peer = world.peer()
        peer.handler.drop_after_data = True
        await peer.start()
        try:
            worker = world.worker()
            await worker.run_once()
            assert world.state(queue_id) == "pending"
            peer.handler.drop_after_data = False
            await run_until(worker, lambda: world.state(queue_id) == "delivered")
        finally:
            await peer.stop()
        # The counted risk is real: the peer holds the message twice.
        assert len(peer.handler.messages) == 2

    asyncio.run(scenario())
    assert ambiguous() - before == 1
    assert attempts("deferred") - deferred == 1
