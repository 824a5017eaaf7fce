"""`mssgate screening close CASE_ID --reason TEXT` (issue 16 section 2, operator follow-up):
a case whose L2 result will never match it (the woman's INS changed from a temporary one,
the result came by post) otherwise stays open and overdue for ever. Closed by hand it is
`closed-by-operator`, audited with the reason, out of the open and overdue counts; an
unknown or already closed case is refused with one line and a non-zero exit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.screening.cases import NewCase, ScreeningCases
from tests.conftest import Cli

CRCDC = "crcdc-idf@hopital-a.test"
INS = "279035121518989"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    yield request.getfixturevalue(name)


def new(n: int, exam: date = date(2026, 1, 1)) -> NewCase:
    return NewCase(
        mailbox="ris@hopital-a.test", queue_document_id=f"q{n}", document_id=f"1.2.250.1.999.{n}",
        set_id=f"1.2.250.1.999.{n}.0", ins=INS, ins_oid="1.2.250.1.213.1.4.10", exam_date=exam,
        exam_date_known=True, departement="75", crcdc=CRCDC, l1_rpps="801234567897",
        l1_email=None, gp_rpps=None, gp_email=None,
    )  # fmt: skip


def test_a_case_closed_by_hand_leaves_the_counts(engine: Engine) -> None:
    cases = ScreeningCases(engine, today=lambda: date(2026, 1, 20))
    first, _ = cases.open(new(1), actor="t")
    second, _ = cases.open(new(2), actor="t")
    assert cases.overdue_counts() == {10: 2, 15: 2}
    closed = cases.close(first, reason="  result came\nby post ", actor="cli:op")
    assert closed.state == "closed-by-operator" and closed.closed_at is not None
    assert closed.due_at(date(2026, 1, 20)) == "closed"
    assert [c.id for c in cases.list()] == [second]
    assert [c.id for c in cases.list(past_days=15)] == [second]
    assert cases.overdue_counts() == {10: 1, 15: 1}
    assert {c.id: c.state for c in cases.list(include_closed=True)} == {
        first: "closed-by-operator", second: "sent-to-l2"}  # fmt: skip
    with pytest.raises(Conflict, match=r"already closed \(closed-by-operator\)"):
        cases.close(first, reason="again", actor="cli:op")
    with pytest.raises(NotFound, match="no screening case"):
        cases.close("f" * 32, reason="x", actor="cli:op")
    with pytest.raises(ValidationFailed, match="--reason"):
        cases.close(second, reason=" \n ", actor="cli:op")
    with pytest.raises(ValidationFailed, match="at most 500"):
        cases.close(second, reason="x" * 501, actor="cli:op")
    # A late result: the case is not reopened nor counted, and the routing still finds it
    # (the L1 practice gets the result: routing.l2_result reads closed cases too).
    lineage = {"crcdc": CRCDC, "set_id": "1.2.250.1.999.1.0", "replaces": None}
    assert cases.result(**lineage, ins=INS, document_id="r", queue_document_id="qr",
                        actor="t") == []  # fmt: skip
    [found] = cases.answered_by(**lineage, ins=INS, include_closed=True)
    assert found.id == first and found.state == "closed-by-operator"
    # A result received is not closed again by hand.
    cases.result(crcdc=CRCDC, set_id="1.2.250.1.999.2.0", replaces=None, ins=INS,
                 document_id="r2", queue_document_id="qr2", actor="t")  # fmt: skip
    with pytest.raises(Conflict, match=r"already closed \(l2-result-received\)"):
        cases.close(second, reason="x", actor="cli:op")


@pytest.fixture
def site(cli: Cli, datadir: Path) -> Iterator[tuple[Cli, ScreeningCases]]:
    from mssgate.config import load_config
    from mssgate.db import open_engine

    engine = open_engine(load_config(datadir / "mssgate.toml").database_url)
    yield cli, ScreeningCases(engine)
    engine.dispose()


def test_the_cli_lists_the_case_id_and_closes_it_with_a_reason(
    site: tuple[Cli, ScreeningCases],
) -> None:
    cli, cases = site
    case_id, _ = cases.open(new(1), actor="t")
    assert case_id in cli.ok("screening", "list").out
    [shown] = json.loads(cli.ok("screening", "list", "--json").out)["cases"]
    assert shown["id"] == case_id
    out = cli.ok("screening", "close", case_id, "--reason", "INS now permanent, result by post")
    assert out.out.strip() == f"screening case {case_id} closed (closed-by-operator)"
    assert json.loads(cli.ok("screening", "list", "--json").out)["cases"] == []
    [closed] = json.loads(cli.ok("screening", "list", "--all", "--json").out)["cases"]
    assert (closed["id"], closed["state"], closed["due"]) == (
        case_id,
        "closed-by-operator",
        "closed",
    )
    [entry] = [e for e in json.loads(cli.ok("audit", "--json").out)
               if e["action"] == "screening.case_close"]  # fmt: skip
    assert entry["subject"] == case_id
    assert entry["detail"] == {"reason": "INS now permanent, result by post"}
    assert entry["actor"].startswith("cli:")
    for args, says in [
        ([case_id, "--reason", "again"], f"screening case {case_id} is already closed"),
        (["0" * 32, "--reason", "x"], "no screening case '" + "0" * 32 + "'"),
        ([case_id, "--reason", " "], "--reason: say why the case is closed"),
    ]:
        refused = cli("screening", "close", *args)
        assert refused.code != 0 and refused.out == ""
        [line] = refused.err.strip().splitlines()
        assert says in line
    missing = cli("screening", "close", case_id)
    assert missing.code == 2 and "--reason" in missing.err
