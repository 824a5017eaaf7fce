"""Hostile bytes in a submission are an HL7 refusal, never a 500 (review of issue 15): a NUL,
which PostgreSQL's text refuses, reached the MSH-10 lookup before any check."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.outbound.service import Outbound
from mssgate.spool import Spool
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
