"""What a home node remembers of the hand-overs it took, so that each is taken once.

The sending node names each hand-over by its own spool queue id (`XHANDOVER`, before MAIL);
with the recipient, that is one message for one mailbox. When the 250 after the data is
lost (a timeout once the home node had spooled it, a connection cut), the sender tries again
at its next attempt: the home node finds the pair here and answers 250 without spooling it
a second time. Exactly once under normal operation; a crash between the spool's commit and
this row's still delivers twice (at least once), as the contract allows.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError

from mssgate.db.schema import node_handovers
from mssgate.db.tx import write
from mssgate.directory.timeutil import now

# Longer than the sender retries a hand-over (relay.max_age_seconds, 5 days by default): a
# resend always finds its row. One small row per message handed over.
REMEMBER = timedelta(days=7)


class HandOvers:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def taken(self, handover_id: str, recipient: str) -> str | None:
        """The queue id this node spooled the hand-over under, if it took it already."""
        with self._engine.connect() as conn:
            found: str | None = conn.execute(
                select(node_handovers.c.queue_id).where(
                    node_handovers.c.handover_id == handover_id,
                    node_handovers.c.recipient == recipient,
                    node_handovers.c.accepted_at > now() - REMEMBER,
                )
            ).scalar()
        return found

    def record(self, handover_id: str, recipient: str, queue_id: str) -> None:
        stamp = now()
        try:
            with write(self._engine) as conn:
                # Expired rows go as new ones come: the table holds about REMEMBER's worth.
                conn.execute(
                    delete(node_handovers).where(node_handovers.c.accepted_at < stamp - REMEMBER)
                )
                conn.execute(
                    node_handovers.insert().values(
                        handover_id=handover_id, recipient=recipient, queue_id=queue_id,
                        accepted_at=stamp,
                    )
                )  # fmt: skip
        except IntegrityError:
            pass  # recorded meanwhile by another process taking the same hand-over
