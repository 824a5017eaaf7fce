"""Screening cases on both databases (issue 16, section 2): open once per form and mailbox,
closed by the CRCDC's result of the same lineage, listed and counted overdue by the day
given; on PostgreSQL two nodes opening the same case at once make one, and two operators
storing the d2lm preset at once are told to run again (no internal error)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Engine

from mssgate.db.schema import screening_cases
from mssgate.errors import Conflict
from mssgate.screening.cases import NewCase, ScreeningCases

CRCDC = "crcdc-idf@hopital-a.test"
INS = "279035121518989"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    yield request.getfixturevalue(name)


def new(n: int, exam: date, *, mailbox: str = "ris@hopital-a.test") -> NewCase:
    return NewCase(
        mailbox=mailbox, queue_document_id=f"q{n}", document_id=f"1.2.250.1.999.{n}",
        set_id=f"1.2.250.1.999.{n}.0", ins=INS, ins_oid="1.2.250.1.213.1.4.10",
        exam_date=exam, exam_date_known=True, departement="75", crcdc=CRCDC, l1_rpps="801234567897",
        l1_email=None, gp_rpps=None, gp_email=None,
    )  # fmt: skip


def test_cases_open_close_and_count_by_the_day_given(engine: Engine) -> None:
    cases = ScreeningCases(engine, today=lambda: date(2026, 1, 20))
    first, created = cases.open(new(1, date(2026, 1, 1)), actor="test")
    assert created
    assert cases.open(new(1, date(2026, 1, 1)), actor="test") == (first, False)
    other, _ = cases.open(new(1, date(2026, 1, 1), mailbox="ris-b@hopital-a.test"), actor="t")
    cases.open(new(2, date(2026, 1, 8)), actor="test")
    assert other != first
    assert [c.queue_document_id for c in cases.list()] == ["q1", "q1", "q2"]
    # Today (the clock given) is 2026-01-20: 19 and 12 days after the exams.
    assert cases.overdue_counts() == {10: 3, 15: 2}
    assert cases.overdue_counts(date(2026, 1, 16)) == {10: 2, 15: 0}
    assert len(cases.list(past_days=15)) == 2
    assert [c.queue_document_id for c in cases.list(past_days=15, as_of=date(2026, 1, 17))] == [
        "q1", "q1"]  # fmt: skip
    assert cases.list(mailbox="ris-b@hopital-a.test")[0].id == other
    # Another CRCDC's form of the same setId closes nothing; the right one closes both.
    assert cases.result(crcdc="crcdc-pdl@x.fr", set_id="1.2.250.1.999.1.0", replaces=None, ins=INS,
                        document_id="r", queue_document_id="qr", actor="t") == []  # fmt: skip
    closed = cases.result(crcdc=CRCDC.upper(), set_id="1.2.250.1.999.1.0", replaces=None, ins=INS,
                          document_id="r1", queue_document_id="qr1", actor="t")  # fmt: skip
    assert sorted(closed) == sorted([first, other])
    assert [c.queue_document_id for c in cases.list()] == ["q2"]
    assert cases.overdue_counts() == {10: 1, 15: 0}
    [by_parent] = cases.answered_by(crcdc=CRCDC, set_id=None, replaces="1.2.250.1.999.2")
    assert by_parent.queue_document_id == "q2"
    done = cases.get(first)
    assert done is not None and done.state == "l2-result-received"
    assert done.closed_at is not None and done.closed_at.tzinfo is not None
    assert sorted(c.id for c in cases.for_result("qr1")) == sorted([first, other])
    assert len(cases.list(include_closed=True)) == 3


@pytest.mark.postgres
def test_one_case_when_two_nodes_open_it_at_once(pg_engine: Engine) -> None:
    cases = ScreeningCases(pg_engine)
    case = new(3, date(2026, 1, 1))
    found: list[tuple[str, bool]] = []
    with pg_engine.connect() as first:
        # The other node's case, inserted and not yet committed: ours reads none and waits
        # on the unique key.
        row = {"id": "a" * 32, "state": "sent-to-l2", "created_at": datetime.now(UTC)}
        first.execute(screening_cases.insert().values(**row, **vars(case)))
        worker = threading.Thread(target=lambda: found.append(cases.open(case, actor="t")))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive(), "the second open should wait on the first's key"
        first.commit()
    worker.join(10)
    assert found == [("a" * 32, False)]


@pytest.mark.postgres
def test_two_presets_at_once_the_second_is_told_to_run_again(pg_engine: Engine) -> None:
    from mssgate.db.schema import routing_rules
    from mssgate.routing.preset import d2lm_rules, install

    rules = d2lm_rules({"75": CRCDC}, hosted=lambda _: True)
    now = datetime.now(UTC)
    failure: list[BaseException] = []

    def ours() -> None:
        try:
            install(pg_engine, rules, actor="t")
        except Conflict as exc:
            failure.append(exc)

    with pg_engine.connect() as first:
        first.execute(routing_rules.insert().values(
            name="d2lm-from-crcdc", position=900, enabled=True,
            rule=rules[0].model_dump_json(), created_at=now, updated_at=now))  # fmt: skip
        worker = threading.Thread(target=ours)
        worker.start()
        worker.join(0.5)
        first.commit()
    worker.join(10)
    [error] = failure
    assert str(error) == "the d2lm preset was changed meanwhile: run the command again"
    # Run again, it replaces what the other stored.
    install(pg_engine, rules, actor="t")
