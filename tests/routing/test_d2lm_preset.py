"""The d2lm preset (issue 16, section 2): `route preset d2lm --crcdc DEPT=ADDRESS` stores
rules that send the CANCER-D2LM interpretation forms eligible for the second reading (ACR 1
or 2, both breasts) to the CRCDC of the woman's département, tag the others `d2lm-not-l2`,
hold an eligible form of a département without a CRCDC, and never send a form a CRCDC sent
(an L2 result) to L2 again; each form sent opens a screening case, the L2 result closes it.

Through the real pipeline and ingest (SQLite), the preset written by the CLI; generated
forms (mssgate.documents.d2lm_samples) and the ANS examples where ../shared is present."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from sqlalchemy import Engine

from mssgate.documents.d2lm_samples import D2lmSpec, make_d2lm
from mssgate.queue import DocumentQueue
from mssgate.queue.ingest import IngestReport
from tests.conftest import Cli, shared_fixture
from tests.queue.helpers import DOMAIN, RIS_A, RIS_B, SENDER, add_mailboxes, mail

IDF = f"crcdc-idf@{DOMAIN}"
CORSE = f"crcdc-corse@{DOMAIN}"
GUADELOUPE = f"crcdc-971@{DOMAIN}"
HL7 = "urn:hl7-org:v3"


@dataclass
class Site:
    cli: Cli
    engine: Engine
    queue: DocumentQueue
    config_path: Path
    n: int = 0

    def ingest(self, form: bytes, *, sender: str = SENDER, to: str = RIS_A) -> IngestReport:
        from mssgate.config import load_config
        from mssgate.documents.limits import DocumentLimits
        from mssgate.queue.ingest import ingest
        from mssgate.routing.router import Router

        self.n += 1
        config = load_config(self.config_path)
        return ingest(
            self.queue, mail([form], n=self.n, sender=sender, to=to), mailbox=to,
            sender=sender, message_id=None, subject=None, received_at=datetime.now(UTC),
            limits=DocumentLimits(), allow_test_oids=True,
            router=Router.from_config(config, self.engine),
        )  # fmt: skip

    def tags(self, mailbox: str = RIS_A) -> list[tuple[str, ...]]:
        return [e.record.tags for e in self.queue.entries(mailbox=mailbox)]

    def cases(self, *args: str) -> list[dict[str, object]]:
        found: list[dict[str, object]] = json.loads(
            self.cli.ok("screening", "list", "--json", *args).out
        )["cases"]
        return found


@pytest.fixture
def site(cli: Cli, datadir: Path) -> Iterator[Site]:
    from mssgate.config import load_config
    from mssgate.db import open_engine, upgrade

    toml = datadir / "mssgate.toml"
    toml.write_text(toml.read_text().replace("[policy]", "[policy]\nallow_test_ins = true", 1))
    config = load_config(toml)
    engine = open_engine(config.database_url)
    upgrade(engine)
    add_mailboxes(engine, RIS_A, IDF, CORSE, GUADELOUPE)
    crcdc = [f"75={IDF}", f"92={IDF}", f"2a={CORSE}", f"2B={CORSE}", f"971={GUADELOUPE}"]
    cli.ok("route", "preset", "d2lm", *(a for c in crcdc for a in ("--crcdc", c)))
    yield Site(cli, engine, DocumentQueue.from_config(config, engine), toml)
    engine.dispose()


def form(n: int, **spec: object) -> bytes:
    return make_d2lm(D2lmSpec(doc_root=f"1.2.250.1.999.1.1.27.{n}", **spec))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("postal", "crcdc", "departement"),
    [("75007", IDF, "75"), ("92100", IDF, "92"), ("20000", CORSE, "2A"),
     ("20200", CORSE, "2B"), ("97100", GUADELOUPE, "971")],
)  # fmt: skip
@pytest.mark.parametrize(("right", "left"), [("ACR1", "ACR2"), ("ACR2", "ACR2")])
def test_an_eligible_form_goes_to_the_crcdc_of_its_departement(
    site: Site, postal: str, crcdc: str, departement: str, right: str, left: str
) -> None:
    report = site.ingest(form(1, postal_code=postal, l1_right=right, l1_left=left))
    assert len(report.queued) == 1 and report.held == []
    [copy] = site.queue.entries(mailbox=crcdc)
    assert copy.record.tags == ("d2lm-l2",)
    assert site.tags() == [("d2lm-l2",)]  # the addressed RIS keeps its own entry
    for other in {IDF, CORSE, GUADELOUPE} - {crcdc}:
        assert site.queue.entries(mailbox=other) == []
    [case] = site.cases()
    assert (case["departement"], case["crcdc"], case["mailbox"]) == (departement, crcdc, RIS_A)
    assert (case["state"], case["exam_date"], case["l1_rpps"]) == (
        "sent-to-l2", "2021-07-29", "801234567897")  # fmt: skip
    assert case["gp_rpps"] == "810000000456"
    assert case["document_id"] == "1.2.250.1.999.1.1.27.1"
    assert case["queue_document_id"] == report.queued[0]


@pytest.mark.parametrize(
    "spec",
    [
        {"l1_right": "ACR1", "l1_left": "abnormal"},  # MED-048: ACR 0, 3, 4 or 5
        {"l1_right": "abnormal", "l1_left": "abnormal"},
        # An immediate work-up decides over the L1 result: ACR 4 after it.
        {"l1_right": "ACR1", "l1_left": "abnormal", "workup_left": "ACR4"},
        {"l1_right": "ACR1", "l1_left": None},  # a breast without a result
        {"kind": "FIDD", "workup_right": "ACR2", "workup_left": "ACR1"},
    ],
)
def test_a_form_not_for_l2_is_tagged_and_sent_nowhere(site: Site, spec: dict[str, object]) -> None:
    report = site.ingest(form(2, **spec))
    assert len(report.queued) == 1 and report.copies == [] and report.held == []
    assert site.tags() == [("d2lm-not-l2",)]
    assert site.cases("--all") == []


def test_a_negative_after_the_immediate_work_up_goes_to_l2(site: Site) -> None:
    site.ingest(form(3, l1_right="ACR1", l1_left="abnormal", workup_left="ACR2"))
    assert len(site.queue.entries(mailbox=IDF)) == 1


def test_an_eligible_form_of_a_departement_without_a_crcdc_is_held_naming_it(site: Site) -> None:
    report = site.ingest(form(4, postal_code="69001"))
    assert report.queued == [] and len(report.held) == 1
    [held] = json.loads(site.cli.ok("quarantine", "list", "--json").out)
    assert held["reason"] == (
        "held by routing rule 'd2lm-no-crcdc': eligible for the second reading (L2), but no"
        " CRCDC is configured for département 69 (mssgate route preset d2lm --crcdc"
        " DEPT=ADDRESS)"
    )
    no_postal = site.ingest(form(5, postal_code=None))
    assert len(no_postal.held) == 1
    reasons = [h["reason"] for h in json.loads(site.cli.ok("quarantine", "list", "--json").out)]
    assert any("département unknown (no French postal code)" in r for r in reasons)
    assert site.cases("--all") == []


def test_other_documents_are_untouched(site: Site) -> None:
    from tests.queue.helpers import cda

    report = site.ingest(cda(7))
    assert len(report.queued) == 1 and report.copies == []
    assert site.tags() == [()]


def l2_result(n: int, **spec: object) -> bytes:
    """The CRCDC's answer: the same form with its L2 section filled, a new version (new id,
    the same setId, relatedDocument RPLC naming the L1 form)."""
    root = etree.fromstring(form(n, l2_right="ACR1", l2_left="ACR1", **spec))
    original = f"1.2.250.1.999.1.1.27.{n}"
    root.find(f"{{{HL7}}}id").set("root", original + ".2")
    root.find(f"{{{HL7}}}versionNumber").set("value", "2")
    related = etree.Element(f"{{{HL7}}}relatedDocument", typeCode="RPLC")
    etree.SubElement(etree.SubElement(related, f"{{{HL7}}}parentDocument"), f"{{{HL7}}}id",
                     root=original)  # fmt: skip
    root.find(f"{{{HL7}}}component").addprevious(related)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def test_the_l2_result_from_the_crcdc_closes_the_case_and_is_not_sent_again(site: Site) -> None:
    site.ingest(form(8))
    [case] = site.cases()
    assert len(site.queue.entries(mailbox=IDF)) == 1
    # The CRCDC answers to the L1 mailbox: tagged, copied nowhere, the case closed.
    back = site.ingest(l2_result(8), sender=IDF)
    assert back.copies == [] and back.held == [] and len(back.queued) == 1
    assert len(site.queue.entries(mailbox=IDF)) == 1
    assert site.tags()[-1] == ("d2lm-l2-result",)
    assert site.cases() == []
    [closed] = site.cases("--all")
    assert closed["id"] == case["id"] and closed["state"] == "l2-result-received"
    assert closed["result_queue_document_id"] == back.queued[0]
    assert closed["result_document_id"] == "1.2.250.1.999.1.1.27.8.2"
    from mssgate.screening.cases import ScreeningCases

    [found] = ScreeningCases(site.engine).for_result(back.queued[0])
    assert (found.l1_rpps, found.gp_email) == ("801234567897", "stephane.parisi@mssante.fr")
    # The same result from anyone else is an L1 submission like any other form: eligible,
    # it goes to L2 (direction is told by the sender only).
    other = site.ingest(l2_result(9), sender=SENDER)
    assert len(other.copies) == 1


def test_a_replayed_delivery_opens_one_case(site: Site) -> None:
    from mssgate.config import load_config
    from mssgate.documents.limits import DocumentLimits
    from mssgate.queue.ingest import ingest
    from mssgate.routing.router import Router

    raw = mail([form(10)], n=99)
    router = Router.from_config(load_config(site.config_path), site.engine)
    for _ in range(2):
        ingest(site.queue, raw, delivery="spool-1", mailbox=RIS_A, sender=SENDER,
               message_id=None, subject=None, received_at=datetime.now(UTC),
               limits=DocumentLimits(), allow_test_oids=True, router=router)  # fmt: skip
    assert len(site.cases()) == 1


def test_overdue_cases_by_the_clock_given(site: Site) -> None:
    site.ingest(form(11, exam_date="20260101"))
    site.ingest(form(12, exam_date="20260110"))
    assert [c["exam_date"] for c in site.cases()] == ["2026-01-01", "2026-01-10"]
    # 2026-01-16: the first is 15 days old (not yet overdue), 11 days (due soon).
    at = site.cases("--as-of", "2026-01-16")
    assert [(c["days_since_exam"], c["due"]) for c in at] == [(15, "due-soon"), (6, "ok")]
    assert site.cases("--overdue", "--as-of", "2026-01-16") == []
    [late] = site.cases("--overdue", "--as-of", "2026-01-17")
    assert (late["exam_date"], late["due"]) == ("2026-01-01", "overdue")
    assert len(site.cases("--due-soon", "--as-of", "2026-01-21")) == 2
    table = site.cli.ok("screening", "list", "--overdue", "--as-of", "2026-01-17").out
    assert "2026-01-01" in table and "overdue" in table and "2026-01-10" not in table
    bad = site.cli("screening", "list", "--as-of", "tomorrow")
    assert bad.code == 2 and "expected a date" in bad.err

    from mssgate.metrics import DatabaseCollector

    def gauge(day: datetime) -> dict[str, float]:
        families = {f.name: f for f in DatabaseCollector(site.engine, clock=lambda: day).collect()}
        return {
            s.labels["days"]: s.value for s in families["mssgate_screening_cases_overdue"].samples
        }

    assert gauge(datetime(2026, 1, 16, 12, tzinfo=UTC)) == {"10": 1, "15": 0}
    assert gauge(datetime(2026, 1, 21, 12, tzinfo=UTC)) == {"10": 2, "15": 1}
    assert gauge(datetime(2026, 1, 26, 12, tzinfo=UTC)) == {"10": 2, "15": 2}
    assert date(2026, 1, 1)  # the exam dates above are the forms'


def test_the_preset_run_again_replaces_its_rules(site: Site) -> None:
    rules = json.loads(site.cli.ok("route", "list", "--json").out)["rules"]
    names = [r["name"] for r in rules]
    assert names == ["d2lm-from-crcdc", "d2lm-l2-2A", "d2lm-l2-2B", "d2lm-l2-75",
                     "d2lm-l2-92", "d2lm-l2-971", "d2lm-no-crcdc", "d2lm-not-l2"]  # fmt: skip
    assert {r["preset"] for r in rules} == {"d2lm"}
    site.cli.ok("route", "add", "mine", "--match", "format=pdf", "--tag", "pdf")
    again = site.cli.ok("route", "preset", "d2lm", "--crcdc", f"75={IDF}", "--json").out
    assert json.loads(again)["replaced"] == 8
    site.cli.ok("route", "preset", "d2lm", "--crcdc", f"75={IDF}")
    rules = json.loads(site.cli.ok("route", "list", "--json").out)["rules"]
    assert [r["name"] for r in rules] == [
        "mine", "d2lm-from-crcdc", "d2lm-l2-75", "d2lm-no-crcdc", "d2lm-not-l2"]  # fmt: skip
    [from_crcdc] = [r for r in rules if r["name"] == "d2lm-from-crcdc"]
    assert from_crcdc["match"] == ["sender=" + IDF, "d2lm=fin,fidd"]
    assert from_crcdc["actions"] == ["tag d2lm-l2-result", "stop"]
    shown = json.loads(site.cli.ok("route", "preset", "d2lm", "--list", "--json").out)
    assert shown["crcdc"] == [{"departement": "75", "address": IDF, "action": "copy-to"}]
    assert "75" in site.cli.ok("route", "preset", "d2lm", "--list").out
    # Now 2A has no CRCDC: held, naming it.
    assert len(site.ingest(form(13, postal_code="20000")).held) == 1
    site.cli.ok("route", "preset", "d2lm", "--remove")
    rules = json.loads(site.cli.ok("route", "list", "--json").out)["rules"]
    assert [r["name"] for r in rules] == ["mine"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((), "give --crcdc DEPT=ADDRESS"),
        (("--crcdc", "75"), "expected DEPT=ADDRESS"),
        (("--crcdc", "20=a@b.fr"), "'20' is no département"),
        (("--crcdc", "96=a@b.fr"), "'96' is no département"),
        (("--crcdc", "75=not an address"), "not an address"),
        (("--crcdc", f"75={IDF}", "--crcdc", f"75={CORSE}"), "département 75 given two CRCDCs"),
        (("--crcdc", f"75={IDF}", "--list"), "give --crcdc DEPT=ADDRESS"),
    ],
)
def test_bad_preset_arguments_are_one_line(site: Site, args: tuple[str, ...], error: str) -> None:
    result = site.cli("route", "preset", "d2lm", *args)
    assert result.code == 2, result
    assert error in result.err and len(result.err.strip().splitlines()) == 1


def test_a_crcdc_outside_this_gateway_is_forwarded_to(site: Site) -> None:
    outside = "secretariat@crcdc-bretagne.mssante.fr"
    refused = site.cli("route", "preset", "d2lm", "--crcdc", f"35={outside}")
    # No application mailbox to send from: refused now, not at the first form.
    assert refused.code == 2 and "forward_from" in refused.err
    kept = json.loads(site.cli.ok("route", "preset", "d2lm", "--list", "--json").out)
    assert kept["crcdc"][0]["departement"] == "2A"  # the preset stored before is unchanged
    from mssgate.routing.preset import d2lm_rules

    rules = d2lm_rules({"35": outside, "75": IDF}, hosted=lambda a: a == IDF)
    sends = {r.name: r.actions[0].text() for r in rules if r.name.startswith("d2lm-l2-")}
    assert sends == {"d2lm-l2-35": f"forward {outside}", "d2lm-l2-75": f"copy-to {IDF}"}


def test_route_test_says_what_a_form_is(site: Site, tmp_path: Path) -> None:
    eml = tmp_path / "form.eml"
    eml.write_bytes(mail([form(14, l1_left="abnormal", workup_left="ACR3")]))
    shown = json.loads(site.cli.ok("route", "test", str(eml), "--json").out)
    [document] = shown["documents"]
    assert document["d2lm"] == ["fin", "not-l2", "left breast: immediate work-up ACR3"]
    assert document["tags"] == ["d2lm-not-l2"]
    text = site.cli.ok("route", "test", str(eml)).out
    assert "d2lm: fin, not-l2, left breast: immediate work-up ACR3" in text
    assert "rule d2lm-not-l2: matches: tag d2lm-not-l2" in text


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("CANCER-D2LM-FIN_2022.01.xml", ("fin", "not-l2", "l2-read")),
        ("CANCER-D2LM-FIDD_2022.01.xml", ("fidd", "not-l2")),
    ],
)
def test_the_ans_examples_are_not_sent_to_l2(
    site: Site, name: str, labels: tuple[str, ...]
) -> None:
    data = shared_fixture("ansforge", "TestContenuCDA-3-0", name).read_bytes()
    report = site.ingest(data)
    assert len(report.queued) == 1 and report.copies == []
    assert site.tags() == [("d2lm-not-l2",)]
    from mssgate.documents.limits import DocumentLimits
    from mssgate.routing.probe import probe_cda

    facts = probe_cda(data, xpaths=(), max_nodes=200_000, limits=DocumentLimits())
    assert facts.d2lm_labels == labels


def test_a_form_forwarded_to_a_crcdc_elsewhere_opens_a_case_there(sqlite_engine: Engine) -> None:
    from mssgate.documents.d2lm import form_of
    from mssgate.documents.limits import DocumentLimits
    from mssgate.documents.record import Accepted
    from mssgate.documents.signed import process_signed_message
    from mssgate.routing.engine import Decision, Plan
    from mssgate.routing.probe import CdaFacts
    from mssgate.screening.cases import ScreeningCases
    from mssgate.screening.track import track

    outside = "secretariat@crcdc-bretagne.mssante.fr"
    data = form(15, postal_code="35000")
    parsed = form_of(etree.fromstring(data))
    [accepted] = process_signed_message(mail([data]), limits=DocumentLimits(),
                                        allow_test_oids=True).outcomes  # fmt: skip
    assert isinstance(accepted, Accepted)
    record = accepted.record.model_copy(update={"received_at": datetime.now(UTC)})

    def plan(*decisions: Decision) -> Plan:
        return Plan(decisions=list(decisions), facts=CdaFacts(d2lm=parsed))

    sent = plan(Decision("d2lm-l2-35", (f"forward {outside}", "tag d2lm-l2", "stop")))
    track(sqlite_engine, sent, record, queue_document_id="q1", mailbox=RIS_A, sender=SENDER,
          replaces=None, actor="test")  # fmt: skip
    # A forward the engine refused (a loop) was not sent: no case.
    refused = plan(Decision("d2lm-l2-35", (f"forward {outside} (refused: a loop)",)))
    track(sqlite_engine, refused, record, queue_document_id="q2", mailbox=RIS_B, sender=SENDER,
          replaces=None, actor="test")  # fmt: skip
    cases = ScreeningCases(sqlite_engine)
    [case] = cases.list()
    assert (case.crcdc, case.departement, case.mailbox) == (outside, "35", RIS_A)
    [found] = cases.answered_by(crcdc=outside.upper(), set_id=None, replaces=case.document_id)
    assert found.id == case.id
    assert cases.answered_by(crcdc=outside, set_id=None, replaces=None) == []
    assert cases.answered_by(crcdc=IDF, set_id=case.set_id, replaces=None) == []


def test_a_bad_d2lm_value_is_one_line(site: Site) -> None:
    bad = site.cli("route", "add", "r", "--match", "d2lm=acr1", "--tag", "x")
    assert bad.code == 2
    assert "d2lm 'acr1' is none of fin, fidd, l2-eligible, not-l2, l2-read" in bad.err
    site.cli.ok("route", "add", "r", "--match", "d2lm=FIN,l2-read", "--tag", "x")
    shown = json.loads(site.cli.ok("route", "show", "r", "--json").out)
    assert shown["match"] == ["d2lm=fin,l2-read"]


_L1 = st.sampled_from([None, "ACR1", "ACR2", "abnormal"])
_ACR = st.sampled_from([None, "ACR1", "ACR2", "ACR3", "ACR4", "ACR5"])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["FIN", "FIDD"]), _L1, _L1, _ACR, _ACR, _ACR)
def test_the_probe_labels_follow_decide_l2(
    kind: str, l1_right: str | None, l1_left: str | None, workup_right: str | None,
    workup_left: str | None, l2: str | None,
) -> None:  # fmt: skip
    """The rules see what decide_l2 says, through the probe (the worker's answer)."""
    from mssgate.documents.d2lm import decide_l2, form_of
    from mssgate.documents.limits import DocumentLimits
    from mssgate.routing.probe import probe_cda

    data = form(16, kind=kind, l1_right=l1_right, l1_left=l1_left, workup_right=workup_right,
                workup_left=workup_left, l2_right=l2, l2_left=l2)  # fmt: skip
    labels = probe_cda(data, xpaths=(), max_nodes=200_000, limits=DocumentLimits()).d2lm_labels
    parsed = form_of(etree.fromstring(data))
    assert parsed is not None
    assert labels[0] == kind.lower()
    assert ("l2-eligible" in labels) == decide_l2(parsed).eligible != ("not-l2" in labels)
    assert ("l2-eligible" in labels) <= (kind == "FIN")
    assert ("l2-read" in labels) == (kind == "FIN" and l2 is not None)


def test_a_d2lm_match_in_the_configuration_file(site: Site) -> None:
    toml = site.config_path
    toml.write_text(
        toml.read_text()
        + '\n[[routing.rule]]\nname = "screening-archive"\norder = 10\n'
        + 'match = { d2lm = "fin" }\nactions = ["tag screening"]\n'
    )
    site.ingest(form(17, l1_left="abnormal"))
    assert site.tags() == [("screening", "d2lm-not-l2")]
