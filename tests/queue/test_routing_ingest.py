"""Routing rules at ingest (issue 16, part 1), on SQLite and PostgreSQL: copies in another
mailbox's queue, tags stored and leased by, holds quarantined with the rule's reason, the
CDA's own fields and XPaths matched, each decision audited with the rule's name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from lxml import etree
from sqlalchemy import Engine, select

from mssgate.db.schema import audit as audit_table
from mssgate.documents.limits import DocumentLimits
from mssgate.queue import DocumentQueue
from mssgate.queue.ingest import ingest
from mssgate.routing.model import Rule, parse_action, parse_match
from mssgate.routing.router import Router
from mssgate.routing.store import RuleStore
from tests.queue.helpers import RIS_A, RIS_B, SENDER, cda, mail

HL7 = "urn:hl7-org:v3"


@dataclass(frozen=True)
class _Holder:
    name: str
    mailbox: str


def _rule(name: str, matches: list[str], *actions: str, order: int = 100) -> Rule:
    return Rule(
        name=name, order=order, match=parse_match(matches),
        actions=tuple(parse_action(a) for a in actions),
    )  # fmt: skip


def _router(engine: Engine, *rules: Rule, max_nodes: int = 200_000) -> Router:
    store = RuleStore(engine)
    for rule in rules:
        store.add(rule, actor="test")
    return Router(store, limits=DocumentLimits(), xpath_max_nodes=max_nodes)


def _ingest(queue: DocumentQueue, raw: bytes, router: Router | None, *, n: str = "1"):  # type: ignore[no-untyped-def]
    return ingest(
        queue, raw, delivery=f"spool-{n}", mailbox=RIS_A, sender=SENDER, message_id=None,
        subject=None, received_at=datetime.now(UTC), limits=DocumentLimits(),
        allow_test_oids=True, router=router,
    )  # fmt: skip


def _with_screening_header(document: bytes, postal: str) -> bytes:
    """The sample CDA with what a D2LM form's header carries: the patient's postal code,
    the serviceEvent's CCAM code and the practice setting."""
    root = etree.fromstring(document)
    ns = {"h": HL7}
    role = root.find("h:recordTarget/h:patientRole", ns)
    assert role is not None
    addr = etree.Element(f"{{{HL7}}}addr")
    etree.SubElement(addr, f"{{{HL7}}}postalCode").text = postal
    role.insert(1, addr)
    event = root.find("h:documentationOf/h:serviceEvent", ns)
    assert event is not None
    code = etree.Element(f"{{{HL7}}}code", code="QEQK004", codeSystem="1.2.250.1.215.300.1")
    event.insert(1, code)
    performer = etree.SubElement(event, f"{{{HL7}}}performer", typeCode="PRF")
    org = etree.SubElement(
        etree.SubElement(performer, f"{{{HL7}}}assignedEntity"),
        f"{{{HL7}}}representedOrganization",
    )
    etree.SubElement(org, f"{{{HL7}}}standardIndustryClassCode", code="DEPISTAGE")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _decisions(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(audit_table.c.subject, audit_table.c.detail).where(
                audit_table.c.action == "routing.decision"
            )
        ).all()
    return [{"subject": r.subject, **json.loads(r.detail)} for r in rows]


def test_without_rules_nothing_changes(queue: DocumentQueue, engine: Engine) -> None:
    report = _ingest(queue, mail([cda(1)]), _router(engine))
    assert len(report.queued) == 1 and not report.copies
    assert queue.entry(report.queued[0]).record.tags == ()
    assert queue.entries(mailbox=RIS_B) == []
    assert _decisions(engine) == []


def test_copy_and_tag(queue: DocumentQueue, engine: Engine) -> None:
    router = _router(
        engine,
        _rule("archive", ["format=cda-n3", "code=18748-4"], f"copy-to {RIS_B}", "tag imaging"),
        _rule("never", ["format=pdf"], "tag never"),
    )
    report = _ingest(queue, mail([cda(1)], receipt=True), router)
    original = queue.entry(report.queued[0])
    assert original.mailbox == RIS_A and original.record.tags == ("imaging",)
    assert original.receipt_to == SENDER
    [copy] = queue.entries(mailbox=RIS_B)
    assert report.copies == [copy.id]
    assert copy.record.tags == ("imaging",) and copy.receipt_to is None
    assert copy.sha256 == original.sha256
    [decision] = _decisions(engine)
    assert decision == {
        "subject": original.id, "rule": "archive", "mailbox": RIS_A,
        "actions": [f"copy-to {RIS_B}", "tag imaging"], "copies": {RIS_B: copy.id},
    }  # fmt: skip
    # The same delivery again (at-least-once upstream): no second copy, no second trace.
    again = _ingest(queue, mail([cda(1)], receipt=True), router)
    assert again.replayed == report.queued and len(queue.entries(mailbox=RIS_B)) == 1
    assert len(_decisions(engine)) == 1


def test_lease_by_tag(queue: DocumentQueue, engine: Engine) -> None:
    router = _router(engine, _rule("urgent", ["code=18748-4"], "tag urgent"))
    plain = _ingest(queue, mail([cda(1)], n=1), None, n="1").queued[0]
    tagged = _ingest(queue, mail([cda(2)], n=2), router, n="2").queued[0]
    holder = _Holder("ris-a", RIS_A)
    leased = queue.lease(holder, max_documents=10, tag="urgent")
    assert [x.document.id for x in leased] == [tagged]
    assert leased[0].document.tags == ("urgent",)
    assert queue.lease(holder, max_documents=10, tag="other") == []
    assert [x.document.id for x in queue.lease(holder, max_documents=10)] == [plain]


def test_hold_quarantines_with_the_rules_reason(queue: DocumentQueue, engine: Engine) -> None:
    router = _router(
        engine,
        _rule("copy-first", [], f"copy-to {RIS_B}", order=1),
        _rule("stop-n3", ["format=cda-n3"], "hold N3 reports are checked by hand", order=2),
        _rule("after", [], "tag late", order=3),
    )
    report = _ingest(queue, mail([cda(1)]), router)
    assert report.queued == [] and len(report.held) == 1
    held = queue.quarantine.get(report.held[0])
    assert held.code == 906
    assert held.reason == "held by routing rule 'stop-n3': N3 reports are checked by hand"
    assert queue.entries() == []  # the copy an earlier rule asked for is not made either
    assert [d["rule"] for d in _decisions(engine)] == ["copy-first", "stop-n3"]


def test_stop_ends_the_rules(queue: DocumentQueue, engine: Engine) -> None:
    router = _router(
        engine,
        _rule("first", [], "tag a", "stop", order=1),
        _rule("second", [], "tag b", order=2),
    )
    report = _ingest(queue, mail([cda(1)]), router)
    assert queue.entry(report.queued[0]).record.tags == ("a",)


def test_disabled_rule_is_not_applied(queue: DocumentQueue, engine: Engine) -> None:
    rule = _rule("off", [], "tag x").model_copy(update={"enabled": False})
    report = _ingest(queue, mail([cda(1)]), _router(engine, rule))
    assert queue.entry(report.queued[0]).record.tags == ()


def test_cda_fields_and_xpath(queue: DocumentQueue, engine: Engine) -> None:
    router = _router(
        engine,
        _rule("corse-sud", ["departement=2A", "service-event=QEQK004"], "tag 2a"),
        _rule("paris", ["departement=75"], "tag 75"),
        _rule("screening", ["practice-setting=DEPISTAGE", "template-id=1.2.250.1.213.1.1.1.1"],
              "tag depistage"),
        _rule("xpath", ["xpath=/cda:ClinicalDocument/cda:code[@code='18748-4']"], "tag xp"),
        _rule("xpath-no", ["xpath=count(//hl7:section) > 1000"], "tag no"),
    )  # fmt: skip
    document = _with_screening_header(cda(1), "20167")
    report = _ingest(queue, mail([document]), router)
    assert queue.entry(report.queued[0]).record.tags == ("2a", "depistage", "xp")


def test_node_budget_holds(queue: DocumentQueue, engine: Engine) -> None:
    router = _router(engine, _rule("xp", ["xpath=//hl7:section"], "tag x"), max_nodes=10)
    report = _ingest(queue, mail([cda(1)]), router)
    held = queue.quarantine.get(report.held[0])
    assert held.reason.startswith("routing rule 'xp' could not be decided: the CDA has more")


def test_release_applies_the_rules_without_their_hold(queue: DocumentQueue, engine: Engine) -> None:
    from mssgate.queue.ingest import release

    rules = (_rule("tagged", [], "tag seen", order=1), _rule("check", [], "hold look", order=2))
    router = _router(engine, *rules)
    held_id = _ingest(queue, mail([cda(1)]), router).held[0]
    releasing = Router(router.store, limits=DocumentLimits(), holds=False)
    [queued] = release(queue, held_id, limits=DocumentLimits(), allow_test_oids=True,
                       actor="test", router=releasing)  # fmt: skip
    assert queue.entry(queued).record.tags == ("seen",)


def test_config_and_stored_rules_run_in_one_order(queue: DocumentQueue, engine: Engine) -> None:
    from mssgate.routing.model import RuleSpec

    from_file = RuleSpec.model_validate(
        {"name": "shared", "order": 50, "match": {"format": "cda-n3"}, "actions": ["tag file"]}
    )
    store = RuleStore(engine, [from_file])
    store.add(_rule("early", [], "tag db-early", order=10), actor="test")
    store.add(_rule("late", [], "tag db-late", order=90), actor="test")
    assert [(s.rule.name, s.source) for s in store.all()] == [
        ("early", "database"), ("shared", "config"), ("late", "database"),
    ]  # fmt: skip
    router = Router(store, limits=DocumentLimits())
    report = _ingest(queue, mail([cda(1)]), router)
    assert queue.entry(report.queued[0]).record.tags == ("db-early", "file", "db-late")


@pytest.mark.parametrize("got_original", [RIS_A, RIS_B])
def test_a_copy_of_a_replacement_is_checked_for_the_copys_mailbox(
    queue: DocumentQueue, engine: Engine, got_original: str
) -> None:
    from tests.outbound.test_withdrawal import OLD_ID
    from tests.queue.helpers import deliver
    from tests.queue.test_withdrawal_sender import original, replacement

    deliver(queue, original(), mailbox=got_original, delivery="Q1")
    router = _router(engine, _rule("copy", [], f"copy-to {RIS_B}"))
    new = _ingest(queue, replacement(), router, n="Q2").queued[0]
    [copy] = [e for e in queue.entries(mailbox=RIS_B) if e.record.document.version == 2]
    for record, got in ((queue.entry(new).record, RIS_A), (copy.record, RIS_B)):
        # A T10 only where the mailbox got what it replaces; elsewhere a note says why not.
        noted = any(OLD_ID in note for note in record.notes)
        if got == got_original:
            assert record.document.replaces == OLD_ID and not noted
        else:
            assert record.document.replaces is None and noted
