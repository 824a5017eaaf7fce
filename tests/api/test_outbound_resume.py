"""A submission cut short between its record and the spool (a crash) is completed by the
repeat of its MSH-10 once RESUME_AFTER has passed, never twice; a repeat while the first
request may still be spooling gets 503, not a 202 for copies that are not in the spool."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from mssgate.errors import StorageError
from mssgate.outbound import service
from mssgate.outbound.service import RESUME_AFTER, Outbound
from mssgate.outbound.store import Unspooled
from mssgate.smime.mailbox_keys import ensure_mailbox_key
from mssgate.spool import Spool
from tests.queue.helpers import RIS_A, RIS_B, add_consumer, add_mailboxes
from tests.smtp.test_outbound_gateway import mdm


class Crash(BaseException):
    """The process dying between the record and the spool (not an error it handles)."""


@pytest.fixture(params=["sqlite", "postgresql"])
def either(request: pytest.FixtureRequest, gateway: tuple[Config, Engine]) -> tuple[Config, Engine]:
    """The data folder's configuration over SQLite, or over a PostgreSQL schema of its own."""
    config, engine = gateway
    if request.param == "sqlite":
        return config, engine
    pg: Engine = request.getfixturevalue("pg_engine")
    add_mailboxes(pg, RIS_A, RIS_B)
    return config, pg


def no_one_spools_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test whose first request crashed (after its monkeypatch.undo()).

    A repeat waits up to 30 s of real time for the first request to spool its copies
    (_REPEAT_WAIT_SECONDS). After a crash nothing will: each repeat here waited the whole
    30 s for nothing, then answered as it does after a short wait (the branch after the wait
    is the one under test; 150 s of the suite). The wait is still polled; that it finds the
    copies a first request spools meanwhile is
    test_a_repeat_while_the_first_is_spooling_waits_for_it's."""
    monkeypatch.setattr(service, "_REPEAT_WAIT_SECONDS", 0.2)


def test_a_crash_before_the_spool_is_resumed_by_the_repeat(
    either: tuple[Config, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, engine = either
    ensure_mailbox_key(config, RIS_A, common_name="RIS A")
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    spool = Spool(engine, config.server.data_dir / "spool")
    now = [datetime.now(UTC)]
    outbound = Outbound(config, Directory(engine, actor="test"), spool, clock=lambda: now[0])
    # This configuration takes no test INS: the production-OID patient.
    cda = make_cda(CdaSpec(patient=replace(PAT_TROIS, oid=OID_NIR)))
    body = mdm("CRASH-1", recipients=(RIS_B,), cda=cda, oid=OID_NIR)

    def crash(**_: object) -> None:
        raise Crash

    monkeypatch.setattr(spool, "accept", crash)
    with pytest.raises(Crash):
        outbound.submit(consumer, body)
    monkeypatch.undo()
    no_one_spools_the_first(monkeypatch)
    assert list(spool.entries()) == []

    # Soon after: the first request may still be spooling; no 202 for a copy not spooled.
    with pytest.raises(StorageError):
        outbound.submit(consumer, body)
    assert list(spool.entries()) == []

    now[0] += RESUME_AFTER + timedelta(seconds=1)
    answer = outbound.submit(consumer, body)
    assert answer.status == 202 and "MSA|AA|CRASH-1" in answer.ack
    [entry] = list(spool.entries())
    assert [r["recipient"] for r in entry.recipients] == [RIS_B]
    assert answer.outbound_id is not None
    [recipient] = outbound.status(consumer, answer.outbound_id).recipients  # type: ignore[union-attr]
    assert recipient.status == "queued" and recipient.detail is None
    # And once spooled, a further repeat sends nothing more.
    again = outbound.submit(consumer, body)
    assert again.outbound_id == answer.outbound_id
    assert len(list(spool.entries())) == 1


def test_a_repeat_while_the_first_is_spooling_waits_for_it(
    either: tuple[Config, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repeat of an MSH-10 whose first request has recorded its copies and not yet
    spooled them waits, and answers the first answer once they are spooled: no 503 (a RIS
    would retry what is being sent), no second copy."""
    config, engine = either
    ensure_mailbox_key(config, RIS_A, common_name="RIS A")
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    spool = Spool(engine, config.server.data_dir / "spool")
    outbound = Outbound(config, Directory(engine, actor="test"), spool)
    cda = make_cda(CdaSpec(patient=replace(PAT_TROIS, oid=OID_NIR)))
    body = mdm("SLOW-1", recipients=(RIS_B,), cda=cda, oid=OID_NIR)

    # The first request held between its record and the spool until the repeat has found
    # its copy missing: the order is caused, not timed.
    in_spool, repeat_looked = threading.Event(), threading.Event()
    real_accept = spool.accept

    def held_accept(**kwargs: object) -> None:
        in_spool.set()
        assert repeat_looked.wait(120), "the repeat never looked for the first's copies"
        real_accept(**kwargs)  # type: ignore[arg-type]

    store = outbound._store
    real_unspooled = store.unspooled

    def unspooled(outbound_id: str) -> list[Unspooled]:
        missing = real_unspooled(outbound_id)
        if missing:
            repeat_looked.set()
        return missing

    monkeypatch.setattr(spool, "accept", held_accept)
    monkeypatch.setattr(store, "unspooled", unspooled)
    first: list[service.Answer] = []
    errors: list[BaseException] = []

    def submit_first() -> None:
        try:
            first.append(outbound.submit(consumer, body))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=submit_first)
    thread.start()
    try:
        assert in_spool.wait(120), "the first request never reached the spool"
        again = outbound.submit(consumer, body)
    finally:
        repeat_looked.set()
        thread.join(120)
    assert not thread.is_alive() and errors == []
    [answer] = first
    assert answer.status == 202 and "MSA|AA|SLOW-1" in answer.ack
    assert again.status == 202 and again.outbound_id == answer.outbound_id
    assert again.ack == answer.ack
    [entry] = list(spool.entries())
    assert [r["recipient"] for r in entry.recipients] == [RIS_B]


def test_a_cda_whose_code_cannot_go_in_a_header_is_refused_not_a_500(
    gateway: tuple[Config, Engine],
) -> None:
    config, engine = gateway
    ensure_mailbox_key(config, RIS_A, common_name="RIS A")
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    outbound = Outbound(
        config, Directory(engine, actor="test"), Spool(engine, config.server.data_dir / "spool")
    )
    patient = replace(PAT_TROIS, oid=OID_NIR)
    # A comma would forge another code in X-MSS-CODECDA. (Line breaks in names and titles
    # never reach a header: the CDA parser folds whitespace.)
    cda = make_cda(CdaSpec(patient=patient, overrides={'code="18748-4"': 'code="18748-4,X"'}))
    answer = outbound.submit(consumer, mdm("HDR-1", recipients=(RIS_B,), cda=cda, oid=OID_NIR))
    assert answer.status == 422, answer.ack
    assert "MSA|AE|HDR-1" in answer.ack
    assert "cannot be written in X-MSS-CODECDA" in answer.ack
    assert list(Spool(engine, config.server.data_dir / "spool").entries()) == []
