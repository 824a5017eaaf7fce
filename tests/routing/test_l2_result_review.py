"""Hostile review of the L2 result's GP copy end to end (issue 16 section 2): what the
forward around the copy says of its origin. SQLite, and PostgreSQL when configured."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from lxml import etree

from mssgate.documents.d2lm import read_d2lm
from mssgate.documents.d2lm_anon import copy_oid
from mssgate.documents.d2lm_samples import L2_READER, D2lmSpec, Reader, make_d2lm
from mssgate.outbound.forward import Forwarder
from mssgate.queue.ingest import IngestReport, ingest
from mssgate.routing.l2_result import route_l2_result
from mssgate.routing.preset import d2lm_rules
from mssgate.routing.router import Router
from mssgate.routing.store import RuleStore
from tests.queue.helpers import RIS_A, SENDER, mail
from tests.routing.test_l2_result_ingest import (  # noqa: F401 (the fixture)
    CRCDC,
    FWD,
    GP_BOX,
    LIMITS,
    Site,
    accepted,
    l1_form,
    l2_result,
    readable,
    site,
)


def ingest_from(at: Site, form: bytes, *, envelope: str, author: str) -> IngestReport:
    """A message whose From: (`author`) is not its envelope sender."""
    at.n += 1
    raw = mail([form], n=at.n, sender=author, to=RIS_A)
    rules = d2lm_rules({"75": CRCDC}, hosted=lambda address: True)
    return ingest(
        at.queue, raw, delivery=f"d{at.n}", mailbox=RIS_A, sender=envelope,
        message_id=f"<m{at.n}@test>", subject=None, received_at=datetime.now(UTC),
        limits=LIMITS, allow_test_oids=False,
        router=Router(RuleStore(at.engine, rules), limits=LIMITS),
        forwarder=Forwarder(at.outbound, forward_from=FWD),
    )  # fmt: skip


def test_the_reader_s_own_envelope_sender_is_not_named_to_the_gp(site: Site) -> None:  # noqa: F811
    """The CRCDC's console sends the result From: the CRCDC (signed by it: the rule's
    sender) with the reader's own mailbox as envelope sender (MAIL FROM, checked for its
    domain only). The GP's message named that mailbox as its original sender."""
    site.ingest(l1_form(31), sender=SENDER)
    back = ingest_from(site, l2_result(31), envelope=L2_READER.email or "", author=CRCDC)
    assert back.held == [] and len(back.forwards) == 1
    [message] = site.sent_to(GP_BOX)
    for text in readable(message):
        for trace in (L2_READER.email or "", L2_READER.family):
            assert re.search(re.escape(trace).encode(), text, re.IGNORECASE) is None, trace
    assert CRCDC.encode() in message  # the original sender the GP is told of


def test_a_result_from_a_mailbox_named_after_the_reader_gets_no_gp_copy() -> None:
    """The reader's own mailbox configured as a CRCDC address, the form giving no mailto:
    the forward names its sender to the GP, so the GP gets no copy (the L1 practice does)."""
    reader = Reader(L2_READER.rpps, "Roy-Martin", "Alain")  # no mailto in the form
    form = read_d2lm(make_d2lm(D2lmSpec(l2_reader=reader, l2_right="ACR1", l2_left="ACR1")),
                     LIMITS)  # fmt: skip
    assert form is not None
    for own in ("alain.roy.martin@crcdc-idf.mssante.fr", f"{L2_READER.rpps}@crcdc.test",
                "ROYMARTIN@crcdc.test"):  # fmt: skip
        plan = route_l2_result(form, sender=own, crcdc={own.lower()}, hosted=lambda a: False,
                               directory=lambda rpps: [])  # fmt: skip
        assert plan is not None and [r.role for r in plan.recipients] == ["l1"], own
        assert plan.problems == (
            "no GP copy: the result was sent from a mailbox naming the L2 reader",
        ), own
    plan = route_l2_result(form, sender="l2@crcdc-idf.mssante.fr",
                           crcdc={"l2@crcdc-idf.mssante.fr"}, hosted=lambda a: False,
                           directory=lambda rpps: [])  # fmt: skip
    assert plan is not None and [r.role for r in plan.recipients] == ["l1", "gp"]


class Crash(Exception):
    pass


def test_a_replay_after_a_crash_still_sends_the_gp_copy_and_holds_nothing(
    site: Site,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process dies after the result's entry (its case closed) and the GP forward's
    record, before the spool; the spool delivers it again. The replay must find the same
    L1 mailbox (the case, closed by the first run) and spool the GP's copy once."""
    site.ingest(l1_form(32), sender=SENDER)
    raw = mail([l2_result(32)], n=320, sender=CRCDC, to=RIS_A)
    rules = d2lm_rules({"75": CRCDC}, hosted=lambda address: True)

    def run() -> IngestReport:
        return ingest(
            site.queue, raw, delivery="d-crash", mailbox=RIS_A, sender=CRCDC,
            message_id="<m-crash@test>", subject=None, received_at=datetime.now(UTC),
            limits=LIMITS, allow_test_oids=False,
            router=Router(RuleStore(site.engine, rules), limits=LIMITS),
            forwarder=Forwarder(site.outbound, forward_from=FWD),
        )  # fmt: skip

    def crash(**_: object) -> None:
        raise Crash

    monkeypatch.setattr(site.spool, "accept", crash)
    with pytest.raises(Crash):
        run()
    monkeypatch.undo()
    assert site.sent_to(GP_BOX) == []
    again = run()
    assert again.held == [] and len(again.forwards) == 1
    assert len(site.sent_to(GP_BOX)) == 1
    assert site.queue.quarantine.entries() == []
    run()
    assert len(site.sent_to(GP_BOX)) == 1


def correction(n: int) -> bytes:
    """The CRCDC corrects its own result: version 3, RPLC naming its result (version 2)."""
    root = etree.fromstring(l2_result(n))
    h = "{urn:hl7-org:v3}"
    original = f"1.2.250.1.999.27.{n}"
    root.find(f"{h}id").set("root", original + ".3")  # type: ignore[union-attr]
    root.find(f"{h}versionNumber").set("value", "3")  # type: ignore[union-attr]
    [related] = root.findall(f"{h}relatedDocument")
    related.find(f"{h}parentDocument/{h}id").set("root", original + ".2")  # type: ignore[union-attr]
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def test_the_crcdc_s_correction_replaces_the_gp_s_copy(site: Site) -> None:  # noqa: F811
    """The CRCDC replaces its own L2 result (sent here): the GP's copy of the correction
    replaces the GP's copy of the result, instead of a second result the GP cannot tell
    from the first."""
    site.ingest(l1_form(33), sender=SENDER)
    first = site.ingest(l2_result(33), sender=CRCDC)
    assert len(first.forwards) == 1
    second = site.ingest(correction(33), sender=CRCDC)
    assert second.held == [] and len(second.forwards) == 1
    messages = site.sent_to(GP_BOX)
    assert len(messages) == 2
    got = [accepted(m).record.document for m in messages]
    ids = {d.unique_id for d in got}
    assert ids == {copy_oid("1.2.250.1.999.27.33.2"), copy_oid("1.2.250.1.999.27.33.3")}
    [later] = [d for d in got if d.unique_id == copy_oid("1.2.250.1.999.27.33.3")]
    assert later.replaces == copy_oid("1.2.250.1.999.27.33.2")
