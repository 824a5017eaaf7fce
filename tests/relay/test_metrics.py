"""The relay worker bumps the delivery counters itself: a real peer on a real socket, the
process-wide registry that `GET /metrics` serves read before and after."""

from __future__ import annotations

import asyncio

from tests.relay.conftest import DR_B, DR_C, World, ambiguous, attempts, message, run_until


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
