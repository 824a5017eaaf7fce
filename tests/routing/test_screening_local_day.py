"""The 15-day deadline of a second reading counts in the woman's calendar days (issue 16
section 2, operator follow-up): "today" is the date where she lives, her département's zone
(Europe/Paris for metropolitan France and Corsica, each overseas one its own), not UTC's.
The clock is injected near midnight; `as_of` given as a date stays that date for everyone.
The database's filter (list, overdue counts, the metric) and each case's `due` agree."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine

from mssgate.screening.cases import NewCase, ScreeningCases, view
from mssgate.screening.localday import OVERSEAS, local_date

CRCDC = "crcdc@hopital-a.test"
EXAM = date(2026, 1, 1)  # day 16 (overdue) from 2026-01-17, her date


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    yield request.getfixturevalue(name)


def new(departement: str | None, exam: date = EXAM) -> NewCase:
    return NewCase(
        mailbox="ris@hopital-a.test", queue_document_id=f"q{departement}",
        document_id=f"1.2.250.1.999.{departement}", set_id=None, ins=None, ins_oid=None,
        exam_date=exam, exam_date_known=True, departement=departement, crcdc=CRCDC,
        l1_rpps=None, l1_email=None, gp_rpps=None, gp_email=None,
    )  # fmt: skip


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("departement", "now", "days"),
    [
        # Paris is UTC+1 in January: her 17th starts at 23:00 UTC on the 16th.
        ("75", "2026-01-16T22:59:59", 15), ("75", "2026-01-16T23:00:00", 16),
        ("2A", "2026-01-16T23:30:00", 16), (None, "2026-01-16T23:30:00", 16),
        # Summer time (UTC+2): 22:00 UTC.
        ("75", "2026-07-16T21:59:00", 15), ("75", "2026-07-16T22:00:00", 16),
        # Guadeloupe and Martinique are UTC-4: midnight UTC is still the 16th there.
        ("971", "2026-01-17T03:59:00", 15), ("971", "2026-01-17T04:00:00", 16),
        ("972", "2026-01-17T03:30:00", 15), ("977", "2026-01-17T03:30:00", 15),
        ("978", "2026-01-17T04:30:00", 16),
        # Guyane UTC-3, Saint-Pierre-et-Miquelon UTC-3 in January.
        ("973", "2026-01-17T02:59:00", 15), ("973", "2026-01-17T03:00:00", 16),
        ("975", "2026-01-17T02:30:00", 15),
        # Réunion UTC+4, Mayotte UTC+3: their 17th starts on the 16th, UTC.
        ("974", "2026-01-16T19:59:00", 15), ("974", "2026-01-16T20:00:00", 16),
        ("976", "2026-01-16T20:59:00", 15), ("976", "2026-01-16T21:00:00", 16),
    ],
)  # fmt: skip
def test_days_count_to_her_local_date(
    sqlite_engine: Engine, departement: str | None, now: str, days: int
) -> None:
    instant = at(now)
    cases = ScreeningCases(sqlite_engine, now=lambda: instant)
    # The 1st of the month: the 17th is day 16.
    case_id, _ = cases.open(new(departement, instant.date().replace(day=1)), actor="t")
    [case] = cases.list()
    assert case.days(cases.as_of()) == days
    overdue = days > 15
    assert [c.id for c in cases.list(past_days=15)] == ([case_id] if overdue else [])
    assert cases.overdue_counts() == {10: 1, 15: int(overdue)}
    shown = view(case, cases.as_of())
    assert shown.due == ("overdue" if overdue else "due-soon")
    assert shown.counted_on == case.exam_date + timedelta(days=days)
    # A date given is that date for everyone, wherever she lives.
    assert case.days(date(2026, 1, 17)) == (date(2026, 1, 17) - case.exam_date).days
    assert cases.overdue_counts(date(1, 1, 1)) == {10: 0, 15: 0}


def test_the_filter_and_due_agree_in_every_zone_around_midnight(engine: Engine) -> None:
    """All zones at once (the query groups them by date), every hour over two days."""
    departements: list[str | None] = [None, "75", "2B", "13", *OVERSEAS]
    clock = [at("2026-01-16T00:00:00")]
    cases = ScreeningCases(engine, now=lambda: clock[0])
    for departement in departements:
        cases.open(new(departement), actor="t")
    for _ in range(48):
        for past in (10, 15):
            listed = {c.departement for c in cases.list(past_days=past)}
            expected = {c.departement for c in cases.list() if c.days(clock[0]) > past}
            assert listed == expected, (clock[0], past)
        counts = cases.overdue_counts()
        assert counts[15] == len(
            [d for d in departements if (local_date(d, clock[0]) - EXAM).days > 15]
        )
        clock[0] += timedelta(hours=1)
    # By the end every zone has passed its 17th.
    assert cases.overdue_counts() == {10: len(departements), 15: len(departements)}


def test_the_metric_counts_each_woman_at_her_local_date(sqlite_engine: Engine) -> None:
    from mssgate.metrics import DatabaseCollector

    cases = ScreeningCases(sqlite_engine)
    for departement in ("75", "973", "974"):
        cases.open(new(departement), actor="t")

    def overdue(now: str) -> float:
        collector = DatabaseCollector(sqlite_engine, clock=lambda: at(now))
        families = {f.name: f for f in collector.collect()}
        samples = families["mssgate_screening_cases_overdue"].samples
        return next(s.value for s in samples if s.labels["days"] == "15")

    # 20:30 UTC on the 16th: the 17th in Réunion only; 23:30, in Paris too; 03:30 on the
    # 17th, in Cayenne as well (UTC's date alone said 0, 0 then 3).
    assert [overdue(t) for t in ("2026-01-16T20:30", "2026-01-16T23:30", "2026-01-17T03:30")] == [
        1.0, 2.0, 3.0]  # fmt: skip
