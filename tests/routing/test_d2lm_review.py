"""Hostile cases of the d2lm preset's screening cases (issue 16, section 2): what a sender
controls must not close another woman's case, nor pass for the CRCDC, nor hide a case from
the overdue count. Through the real pipeline and ingest (SQLite), the preset written by the
CLI (tests/routing/test_d2lm_preset.py's site)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssgate.db.schema import screening_cases
from mssgate.documents.samples import NESSI
from mssgate.screening.cases import ScreeningCases
from tests.queue.helpers import DOMAIN, RIS_A, SENDER, mail
from tests.routing.test_d2lm_preset import IDF, Site, form, l2_result, site
from tests.routing.test_screening_cases_db import CRCDC, INS, new

__all__ = ["site"]


def _ingest(site: Site, raw: bytes, *, sender: str, received_at: datetime | None = None) -> None:
    from mssgate.config import load_config
    from mssgate.documents.limits import DocumentLimits
    from mssgate.queue.ingest import ingest
    from mssgate.routing.router import Router

    ingest(site.queue, raw, mailbox=RIS_A, sender=sender, message_id=None, subject=None,
           received_at=received_at or datetime.now(UTC), limits=DocumentLimits(),
           allow_test_oids=True,
           router=Router.from_config(load_config(site.config_path), site.engine))  # fmt: skip


def test_a_result_naming_another_womans_form_leaves_her_case_open(site: Site) -> None:
    site.ingest(form(40))
    [case] = site.cases()
    # The CRCDC's answer of the same lineage (setId, relatedDocument) for another patient:
    # a mistake or a forgery, it is not her L2 result.
    site.ingest(l2_result(40, patient=NESSI), sender=IDF)
    assert [c["id"] for c in site.cases()] == [case["id"]]
    site.ingest(l2_result(40), sender=IDF)
    assert site.cases() == []


def test_a_crcdc_form_without_an_l2_result_closes_nothing(site: Site) -> None:
    site.ingest(form(41))
    [case] = site.cases()
    # The form sent back as it went (no L2 section result: films to redo, a question).
    site.ingest(form(41), sender=IDF)
    assert [c["id"] for c in site.cases()] == [case["id"]]


def test_another_sender_of_the_crcdc_domain_is_not_the_crcdc(site: Site) -> None:
    site.ingest(form(42))
    [case] = site.cases()
    # MAIL FROM the CRCDC's address, From: (what the S/MIME signature is checked against,
    # the peer's certificate bound to the same domain only) someone else of its domain.
    raw = mail([l2_result(42)], n=420, sender=f"secretariat@{DOMAIN}")
    _ingest(site, raw, sender=IDF)
    assert site.tags()[-1] != ("d2lm-l2-result",)
    # Her case stays open (the form is an L1 submission like any other's, with its own).
    assert case["id"] in [c["id"] for c in site.cases()]


def test_an_exam_date_after_the_form_arrived_does_not_hide_the_case(site: Site) -> None:
    received = datetime(2026, 1, 1, 9, tzinfo=UTC)
    _ingest(site, mail([form(43, exam_date="20991231")], n=430), sender=SENDER,
            received_at=received)  # fmt: skip
    [case] = site.cases("--as-of", "2026-01-20")
    assert (case["exam_date"], case["exam_date_known"], case["due"]) == (
        "2026-01-01", False, "overdue")  # fmt: skip
    # The next day (a form written in Paris time, received before midnight UTC) is believed.
    _ingest(site, mail([form(44, exam_date="20260102")], n=440), sender=SENDER,
            received_at=datetime(2026, 1, 1, 23, 30, tzinfo=UTC))  # fmt: skip
    assert [c["exam_date"] for c in site.cases()][-1] == "2026-01-02"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    yield request.getfixturevalue(name)


def test_a_result_closes_only_cases_of_its_patient(engine: Engine) -> None:
    cases = ScreeningCases(engine)
    mine = replace(new(1, date(2026, 1, 1)), set_id="1.2.250.1.999.7")
    nameless = replace(new(2, date(2026, 1, 1)), set_id="1.2.250.1.999.7", ins=None)
    first, _ = cases.open(mine, actor="t")
    second, _ = cases.open(nameless, actor="t")
    lineage = {"crcdc": CRCDC, "set_id": "1.2.250.1.999.7", "replaces": None}
    assert len(cases.answered_by(**lineage)) == 2  # the router's look-up, patient not read
    assert [c.id for c in cases.answered_by(**lineage, ins=INS)] == [first]
    done = {"document_id": "r", "queue_document_id": "qr", "actor": "t"}
    assert cases.result(**lineage, ins="277076322082910", **done) == []
    assert cases.result(**lineage, ins=None, **done) == [second]
    assert cases.result(**lineage, ins=INS, **done) == [first]


def test_the_preset_says_a_crcdc_mailbox_no_ris_consumes(site: Site) -> None:
    from tests.queue.helpers import add_consumer

    # A CRCDC hosted here but read with a mail client: its copies wait in a queue no RIS
    # leases, its cases go overdue unread. Said as `route add --copy-to` says it.
    out = site.cli.ok("route", "preset", "d2lm", "--crcdc", f"75={IDF}").out
    assert f"note: no RIS consumes {IDF} yet: its copies wait in its queue" in out
    add_consumer(site.engine, "crcdc-ris", IDF)
    out = site.cli.ok("route", "preset", "d2lm", "--crcdc", f"75={IDF}").out
    assert "note:" not in out


@pytest.mark.postgres
def test_two_results_at_once_one_closes_the_case(pg_engine: Engine) -> None:
    cases = ScreeningCases(pg_engine)
    case_id, _ = cases.open(new(5, date(2026, 1, 1)), actor="t")
    found: list[list[str]] = []
    with pg_engine.connect() as first:
        # Another node's result closing the case, not yet committed: ours read it open and
        # waits on its row; it must not close it a second time over the first's result.
        c = screening_cases.c
        first.execute(screening_cases.update().where(c.id == case_id).values(
            state="l2-result-received", result_queue_document_id="q-first"))  # fmt: skip
        worker = threading.Thread(target=lambda: found.append(cases.result(
            crcdc=CRCDC, set_id="1.2.250.1.999.5.0", replaces=None, ins=INS, document_id="r",
            queue_document_id="q-second", actor="t")))  # fmt: skip
        worker.start()
        worker.join(0.5)
        assert worker.is_alive(), "the second result should wait on the first's row"
        first.commit()
    worker.join(10)
    assert found == [[]]
    closed = cases.get(case_id)
    assert closed is not None and closed.result_queue_document_id == "q-first"


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_form_with_long_ids_opens_its_case(
    db: str, sqlite_engine: Engine, request: pytest.FixtureRequest
) -> None:
    from mssgate.documents.d2lm_samples import D2lmSpec, make_d2lm
    from mssgate.documents.limits import DocumentLimits
    from mssgate.queue import DocumentQueue
    from mssgate.queue.ingest import ingest
    from mssgate.routing.preset import d2lm_rules
    from mssgate.routing.router import Router
    from mssgate.routing.store import RuleStore
    from tests.queue.helpers import add_mailboxes

    engine = sqlite_engine if db == "sqlite" else request.getfixturevalue("pg_engine")
    add_mailboxes(engine, RIS_A, IDF)
    # A sender chooses its ids' lengths: an OID root of 300 characters is still an OID.
    root = "1.2.250.1.999." + "7" * 300
    raw = mail([make_d2lm(D2lmSpec(doc_root=root))], n=1)
    router = Router(RuleStore(engine, d2lm_rules({"75": IDF}, hosted=lambda _: True)),
                    limits=DocumentLimits())  # fmt: skip
    queue = DocumentQueue(engine)
    for _ in range(2):  # a replay as well
        report = ingest(queue, raw, delivery="d1", mailbox=RIS_A, sender=SENDER, message_id=None,
                        subject=None, received_at=datetime.now(UTC), limits=DocumentLimits(),
                        allow_test_oids=True, router=router)  # fmt: skip
        assert len(report.queued) == 1 and report.held == []
    [case] = ScreeningCases(engine).list()
    # Its result finds it by either lineage (the long ids are kept as their digests).
    for lineage in ({"set_id": root + ".0", "replaces": None}, {"set_id": None, "replaces": root}):
        [found] = ScreeningCases(engine).answered_by(crcdc=IDF, ins=case.ins, **lineage)
        assert found.id == case.id


def test_a_day_at_the_edge_of_the_calendar_is_counted_not_a_crash(site: Site) -> None:
    site.ingest(form(45))
    for flag in ("--overdue", "--due-soon"):
        result = site.cli("screening", "list", flag, "--as-of", "0001-01-05")
        assert result.code == 0, result.err
        assert "Traceback" not in result.err
    [case] = site.cases("--as-of", "0001-01-05")
    assert case["due"] == "ok"
    [late] = site.cases("--overdue", "--as-of", "9999-12-31")
    assert late["due"] == "overdue"
    assert ScreeningCases(site.engine).overdue_counts(date(1, 1, 1)) == {10: 0, 15: 0}


def test_route_test_tells_the_direction_as_ingest_does(site: Site, tmp_path: Path) -> None:
    eml = tmp_path / "result.eml"
    eml.write_bytes(mail([l2_result(46)], n=460, sender=f"secretariat@{DOMAIN}"))
    shown = json.loads(site.cli.ok("route", "test", str(eml), "--sender", IDF, "--json").out)
    assert shown["sender"] == f"secretariat@{DOMAIN}"
    [document] = shown["documents"]
    assert "d2lm-l2-result" not in document["tags"]
    eml.write_bytes(mail([l2_result(46)], n=461, sender=IDF))
    shown = json.loads(site.cli.ok("route", "test", str(eml), "--sender", IDF, "--json").out)
    assert shown["documents"][0]["tags"][0] == "d2lm-l2-result"
