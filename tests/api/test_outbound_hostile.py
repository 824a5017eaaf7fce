"""Hostile submissions (review of issue 15): a NUL, which PostgreSQL's text refuses, reached
the MSH-10 lookup before any check (a 500); a repeat of an MSH-10 whose copies a crash left
unspooled sent whatever document the repeat carried."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from mssgate.outbound.service import RESUME_AFTER, Outbound
from mssgate.smime.mailbox_keys import ensure_mailbox_key
from mssgate.spool import Spool
from tests.api.test_outbound_resume import no_one_spools_the_first
from tests.queue.helpers import RIS_A, RIS_B, add_consumer, add_mailboxes
from tests.smtp.test_outbound_gateway import mdm


@pytest.fixture(params=["sqlite", "postgresql"])
def either(request: pytest.FixtureRequest, gateway: tuple[Config, Engine]) -> tuple[Config, Engine]:
    config, engine = gateway
    if request.param == "sqlite":
        return config, engine
    pg: Engine = request.getfixturevalue("pg_engine")
    add_mailboxes(pg, RIS_A, RIS_B)
    return config, pg


@pytest.mark.parametrize("where", [b"NUL-\x00-1|", b"CTL-0001|P|2.6\x00"])
def test_a_nul_in_the_message_is_refused_ar(either: tuple[Config, Engine], where: bytes) -> None:
    config, engine = either
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    spool = Spool(engine, config.server.data_dir / "spool")
    outbound = Outbound(config, Directory(engine, actor="test"), spool)
    body = mdm(recipients=(RIS_B,)).replace(b"CTL-0001|", where, 1)
    answer = outbound.submit(consumer, body)
    assert answer.status == 400, answer.ack
    assert "MSA|AR|" in answer.ack
    assert list(spool.entries()) == []


class Crash(BaseException):
    """The process dying between the record and the spool."""


def test_a_repeat_with_another_document_does_not_resume_the_first(
    either: tuple[Config, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copies a crash left unspooled are the first message's: a repeat of its MSH-10
    carrying another document, or not naming them, is refused rather than sending that
    document in their place (or answering 202 with them never sent)."""
    config, engine = either
    ensure_mailbox_key(config, RIS_A, common_name="RIS A")
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    spool = Spool(engine, config.server.data_dir / "spool")
    now = [datetime.now(UTC)]
    outbound = Outbound(config, Directory(engine, actor="test"), spool, clock=lambda: now[0])
    patient = replace(PAT_TROIS, oid=OID_NIR)
    first = mdm("RE-1", recipients=(RIS_B,), cda=make_cda(CdaSpec(patient=patient)), oid=OID_NIR)

    def crash(**_: object) -> None:
        raise Crash

    monkeypatch.setattr(spool, "accept", crash)
    with pytest.raises(Crash):
        outbound.submit(consumer, first)
    monkeypatch.undo()
    no_one_spools_the_first(monkeypatch)
    now[0] += RESUME_AFTER + timedelta(seconds=1)

    other_cda = make_cda(CdaSpec(patient=patient, doc_root="1.2.250.1.999.1.1.45.9"))
    other = mdm("RE-1", recipients=(RIS_B,), cda=other_cda, oid=OID_NIR)
    answer = outbound.submit(consumer, other)
    assert answer.status == 422 and "MSA|AE|RE-1" in answer.ack, answer.ack
    add_mailboxes(engine, f"dr1@{RIS_B.rsplit('@', 1)[1]}")
    elsewhere = mdm("RE-1", recipients=(f"dr1@{RIS_B.rsplit('@', 1)[1]}",), oid=OID_NIR,
                    cda=make_cda(CdaSpec(patient=patient)))  # fmt: skip
    answer = outbound.submit(consumer, elsewhere)
    assert answer.status == 422 and "MSA|AE|RE-1" in answer.ack, answer.ack
    assert list(spool.entries()) == []

    answer = outbound.submit(consumer, first)
    assert answer.status == 202, answer.ack
    [entry] = list(spool.entries())
    assert [r["recipient"] for r in entry.recipients] == [RIS_B]
