"""What an MLLP client certificate opens (mssgate.directory.consumers), on SQLite and
PostgreSQL: the consumer it is bound to, on the terms of a token, and nothing once replaced,
revoked or removed; one certificate is never two consumers'."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from mssgate.directory import Directory
from mssgate.directory.consumers import MAILBOX_SUSPENDED, UNBOUND_CERTIFICATE, TokenRefused
from mssgate.directory.models import Consumer
from mssgate.errors import Conflict, NotFound
from tests.queue.helpers import RIS_A, RIS_B, add_mailboxes

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def directory(request: pytest.FixtureRequest) -> Directory:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    engine: Engine = request.getfixturevalue(name)
    return add_mailboxes(engine, RIS_A, RIS_B)


def named(found: Consumer | TokenRefused) -> str:
    return found.name if isinstance(found, Consumer) else found.reason


def test_a_certificate_opens_its_consumer_until_replaced_revoked_or_removed(
    directory: Directory,
) -> None:
    consumers = directory.consumers
    consumers.add("ris-a", mailbox=RIS_A)
    consumers.add("ris-b", mailbox=RIS_B)
    assert named(consumers.by_certificate(A)) == UNBOUND_CERTIFICATE
    consumers.bind_certificate("ris-a", A.upper())  # stored and looked up in lower case
    consumers.bind_certificate("ris-b", B)
    assert named(consumers.by_certificate(A)) == "ris-a"
    assert named(consumers.by_certificate(B)) == "ris-b"
    with pytest.raises(Conflict, match="ris-a"):
        consumers.bind_certificate("ris-b", A)
    consumers.bind_certificate("ris-a", C)  # a new one: the old opens nothing
    assert named(consumers.by_certificate(A)) == UNBOUND_CERTIFICATE
    assert named(consumers.by_certificate(C)) == "ris-a"
    directory.professionals.suspend(RIS_A)
    assert named(consumers.by_certificate(C)) == MAILBOX_SUSPENDED
    directory.professionals.reactivate(RIS_A)
    consumers.revoke("ris-a")
    assert named(consumers.by_certificate(C)) == UNBOUND_CERTIFICATE
    with pytest.raises(NotFound):
        consumers.bind_certificate("ris-a", A)
    consumers.remove("ris-b")
    assert named(consumers.by_certificate(B)) == UNBOUND_CERTIFICATE


def test_the_push_list_follows_set_push_and_revocation(directory: Directory) -> None:
    consumers = directory.consumers
    consumers.add("ris-a", mailbox=RIS_A)
    consumers.add("ris-b", mailbox=RIS_B)
    assert consumers.pushed() == []
    consumers.set_push("ris-a", "mllp://ris.test:2575", "PEM")
    consumers.set_push("ris-b", "mllp://other.test:2575", None)
    assert [(c.name, c.push_url, ca) for c, ca in consumers.pushed()] == [
        ("ris-a", "mllp://ris.test:2575", "PEM"),
        ("ris-b", "mllp://other.test:2575", None),
    ]
    directory.professionals.suspend(RIS_A)  # as its token, a suspended mailbox's push stops
    assert [c.name for c, _ in consumers.pushed()] == ["ris-b"]
    directory.professionals.reactivate(RIS_A)
    consumers.set_push("ris-b", None, None)
    consumers.revoke("ris-a")
    assert consumers.pushed() == []
