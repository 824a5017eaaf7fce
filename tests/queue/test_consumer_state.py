"""A consumer's token follows its mailbox's state, on SQLite and PostgreSQL (issue 12 C.10;
the API side is tests/api/test_consumer_mailbox.py)."""

from __future__ import annotations

from sqlalchemy import Engine

from mssgate.directory import Directory
from mssgate.directory.consumers import INVALID_TOKEN, MAILBOX_SUSPENDED, TokenRefused
from mssgate.directory.models import Consumer
from tests.queue.helpers import RIS_A, RIS_B, add_consumer


def test_token_follows_the_mailbox(engine: Engine) -> None:
    directory = Directory(engine, actor="test")
    _, token_a = add_consumer(engine, "ris-a", RIS_A)
    _, token_b = add_consumer(engine, "ris-b", RIS_B)
    consumers = directory.consumers
    assert isinstance(consumers.authenticate(token_a), Consumer)
    directory.professionals.suspend(RIS_A)
    assert consumers.authenticate(token_a) == TokenRefused(MAILBOX_SUSPENDED)
    assert consumers.by_token(token_a) is None
    directory.professionals.reactivate(RIS_A)
    assert consumers.by_token(token_a) is not None
    directory.professionals.remove(RIS_B)
    assert consumers.authenticate(token_b) == TokenRefused(INVALID_TOKEN)
    assert consumers.authenticate("mssg_" + "x" * 43) == TokenRefused(INVALID_TOKEN)
    assert consumers.authenticate("not-a-token") == TokenRefused(INVALID_TOKEN)
    assert {c.name: c.active for c in consumers.list()} == {"ris-a": True, "ris-b": False}
