"""An L2 result end to end (issue 16, section 2), through the real pipeline, the d2lm
preset's rules, ingest and the forward's sending path (S/MIME signed, spooled): the L1 form
goes to the CRCDC and opens a case; the CRCDC's answer reaches the L1 practice's mailbox as
it is, and the GP as a new signed message whose CDA no longer names the L2 reader, which our
own pipeline reads back (INS, uniqueId). SQLite, and PostgreSQL when configured."""

from __future__ import annotations

import email
import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import Engine, select

from mssgate.config import Config, load_config
from mssgate.db import open_engine, upgrade
from mssgate.db.schema import audit
from mssgate.directory import Directory
from mssgate.documents.d2lm import read_d2lm
from mssgate.documents.d2lm_anon import PLACEHOLDER, copy_oid
from mssgate.documents.d2lm_samples import L1_READER, L2_READER, D2lmSpec, Reader, make_d2lm
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.record import Accepted
from mssgate.documents.samples import OID_NIR, PAT_TROIS
from mssgate.documents.signed import process_signed_message
from mssgate.outbound.forward import Forwarder
from mssgate.outbound.service import Outbound
from mssgate.queue import DocumentQueue
from mssgate.queue.ingest import IngestReport, ingest, release
from mssgate.routing.l2_result import TAG_NO_GP
from mssgate.routing.preset import RESULT_RULE, TAG_RESULT, d2lm_rules
from mssgate.routing.router import Router
from mssgate.routing.store import RuleStore
from mssgate.screening.cases import ScreeningCases
from mssgate.spool import Spool
from tests.conftest import Cli
from tests.queue.helpers import DOMAIN, RIS_A, RIS_B, SENDER, add_mailboxes, mail
from tests.routing.forwarding import ENGINES, FWD, forwarding_gateway

GP_BOX = f"gp@{DOMAIN}"
CRCDC = f"crcdc-idf@{DOMAIN}"  # hosted here: the L1 form is copied to its queue
PATIENT = replace(PAT_TROIS, oid=OID_NIR)  # the configuration takes no test INS
GP = Reader("810000000454", "PARISI", "Stéphane", GP_BOX)
H = "urn:hl7-org:v3"
LIMITS = DocumentLimits()


@dataclass
class Site:
    config: Config
    engine: Engine
    queue: DocumentQueue
    spool: Spool
    outbound: Outbound
    n: int = 0

    def ingest(
        self, form: bytes, *, sender: str, to: str = RIS_A, forward_from: str | None = FWD
    ) -> IngestReport:
        self.n += 1
        rules = d2lm_rules({"75": CRCDC}, hosted=lambda address: True)
        return ingest(
            self.queue, mail([form], n=self.n, sender=sender, to=to), delivery=f"d{self.n}",
            mailbox=to, sender=sender, message_id=f"<m{self.n}@test>", subject=None,
            received_at=datetime.now(UTC), limits=LIMITS, allow_test_oids=False,
            router=Router(RuleStore(self.engine, rules), limits=LIMITS),
            forwarder=Forwarder(self.outbound, forward_from=forward_from),
        )  # fmt: skip

    def sent_to(self, address: str) -> list[bytes]:
        return [
            self.spool.read(e.id)
            for e in self.spool.entries()
            if [r["recipient"] for r in e.recipients] == [address]
        ]

    def decision(self, rule: str) -> dict[str, object]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(audit.c.detail).where(audit.c.action == "routing.decision")
            ).all()
        found: list[dict[str, object]] = [json.loads(r.detail) for r in rows]
        return [d for d in found if d["rule"] == rule][-1]


@pytest.fixture(params=ENGINES)
def site(request: pytest.FixtureRequest, datadir: Path) -> Site:
    config, engine = forwarding_gateway(request, datadir, RIS_A, RIS_B, GP_BOX, CRCDC)
    spool = Spool(engine, config.server.data_dir / "spool")
    outbound = Outbound(config, Directory(engine, actor="test"), spool)
    return Site(config, engine, DocumentQueue.from_config(config, engine), spool, outbound)


def l1_form(n: int, **spec: object) -> bytes:
    values: dict[str, object] = {"patient": PATIENT, "gp": GP, "doc_root": f"1.2.250.1.999.27.{n}"}
    values.update(spec)
    return make_d2lm(D2lmSpec(**values))  # type: ignore[arg-type]


def l2_result(n: int, **spec: object) -> bytes:
    """The CRCDC's answer: the form with its L2 section, a new version (new id, same setId,
    relatedDocument RPLC naming the L1 form)."""
    root = etree.fromstring(l1_form(n, l2_right="ACR1", l2_left="ACR1", **spec))
    original = f"1.2.250.1.999.27.{n}"
    root.find(f"{{{H}}}id").set("root", original + ".2")  # type: ignore[union-attr]
    root.find(f"{{{H}}}versionNumber").set("value", "2")  # type: ignore[union-attr]
    related = etree.Element(f"{{{H}}}relatedDocument", typeCode="RPLC")
    parent = etree.SubElement(related, f"{{{H}}}parentDocument")
    etree.SubElement(parent, f"{{{H}}}id", root=original)
    root.find(f"{{{H}}}component").addprevious(related)  # type: ignore[union-attr]
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def archive_files(message: bytes) -> list[bytes]:
    """Every file of the message's IHE_XDM.ZIP."""
    parsed = email.message_from_bytes(message)
    files: list[bytes] = []
    for part in parsed.walk():
        if (part.get_filename() or "").upper().endswith(".ZIP"):
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                files += [archive.read(name) for name in archive.namelist()]
    return files


def readable(message: bytes) -> list[bytes]:
    """What a reader of the message can read: each part's header lines, the decoded text of
    each leaf part, and every file of its XDM archive. Not the raw base64 of the archive or
    of the signature, where any three letters turn up by chance (a search for 'ROY' in the
    raw message failed about one run in two)."""
    parsed = email.message_from_bytes(message)
    texts: list[bytes] = []
    for part in parsed.walk():
        texts.append("".join(f"{k}: {v}\r\n" for k, v in part.items()).encode())
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        binary = kind.endswith(("pkcs7-signature", "zip")) or (
            (part.get_filename() or "").upper().endswith(".ZIP")
        )
        if not binary:
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            texts.append(data)
    return texts + archive_files(message)


def accepted(message: bytes) -> Accepted:
    result = process_signed_message(message, limits=LIMITS, allow_test_oids=False)
    assert not result.quarantined
    [found] = [o for o in result.outcomes if isinstance(o, Accepted)]
    return found


def test_the_l2_result_reaches_l1_as_is_and_the_gp_without_the_reader(site: Site) -> None:
    sent = site.ingest(l1_form(1), sender=SENDER)
    assert len(sent.copies) == 1  # the L1 form to the CRCDC
    [case] = ScreeningCases(site.engine).list()
    assert case.mailbox == RIS_A
    result = l2_result(1)
    back = site.ingest(result, sender=CRCDC)
    assert back.held == [] and len(back.queued) == 1 and back.copies == []
    # L1: the result came to the practice's RIS (the case's mailbox), as it was sent.
    [entry] = [e for e in site.queue.entries(mailbox=RIS_A) if e.id == back.queued[0]]
    assert entry.record.tags == (TAG_RESULT,)
    assert entry.record.sha256 == hashlib.sha256(result).hexdigest()
    # The GP: one signed message from the routing mailbox, its CDA without the reader.
    [message] = site.sent_to(GP_BOX)
    assert len(back.forwards) == 1
    # Nowhere: not in the headers or the note, not in any file of the XDM archive.
    texts = readable(message)
    assert len(texts) >= 4  # headers, the note, METADATA.XML, the CDA (at least)
    for trace in (L2_READER.rpps, L2_READER.family, L2_READER.given, L2_READER.email or ""):
        for text in texts:
            assert re.search(re.escape(trace).encode(), text, re.IGNORECASE) is None, trace
    got = accepted(message)
    original = read_d2lm(result, LIMITS)
    copy = read_d2lm(got.content, LIMITS)
    assert original is not None and copy is not None
    assert copy.l2_reader is not None and copy.l2_reader.family == PLACEHOLDER
    assert (copy.l1_reader, copy.gp, copy.right, copy.left) == (
        original.l1_reader,
        original.gp,
        original.right,
        original.left,
    )
    assert got.record.ins.value == PATIENT.ins and got.record.ins.oid == OID_NIR
    assert got.record.document.unique_id == copy_oid("1.2.250.1.999.27.1.2")
    # The routing decision says it all, with the forward's outbound id.
    detail = site.decision(RESULT_RULE)
    assert detail["actions"] == [
        f"tag {TAG_RESULT}",
        "stop",
        f"l1: {RIS_A} (the mailbox it came to)",
        f"forward {GP_BOX} (without the L2 reader)",
    ]
    assert detail["forwards"] == {GP_BOX: back.forwards[0]}
    assert ScreeningCases(site.engine).list() == []  # the case is closed


def test_a_result_sent_elsewhere_is_copied_to_the_l1_practice(site: Site) -> None:
    """The CRCDC wrote to another mailbox here: the L1 practice's RIS gets a copy."""
    site.ingest(l1_form(2), sender=SENDER)
    back = site.ingest(l2_result(2), sender=CRCDC, to=RIS_B)
    assert back.held == [] and len(back.copies) == 1 and len(back.forwards) == 1
    [copied] = [e for e in site.queue.entries(mailbox=RIS_A) if e.id == back.copies[0]]
    assert copied.record.document.unique_id == "1.2.250.1.999.27.2.2"  # the original
    assert len(site.sent_to(GP_BOX)) == 1


def test_a_result_naming_another_womans_form_is_not_sent_to_her_practice(site: Site) -> None:
    """Same lineage (setId), another INS: her case's mailbox is not the L1 address; this
    result's own L1 reader is (its mailto, hosted here: a copy)."""
    site.ingest(l1_form(6), sender=SENDER)
    other = replace(PATIENT, ins="277076322082910", family="NESSI", given_list="RUTH",
                    first_given="RUTH", birth_time="19770714", birthplace="63220")  # fmt: skip
    l1 = Reader(L1_READER.rpps, L1_READER.family, L1_READER.given, RIS_B)
    back = site.ingest(l2_result(6, patient=other, l1_reader=l1), sender=CRCDC, to=GP_BOX)
    assert back.held == [] and len(back.copies) == 1
    assert [e.id for e in site.queue.entries(mailbox=RIS_B)] == back.copies
    assert [e.id for e in site.queue.entries(mailbox=RIS_A)] != [] and all(
        e.id not in back.copies for e in site.queue.entries(mailbox=RIS_A)
    )


def test_without_a_sending_mailbox_l1_still_gets_the_result(site: Site) -> None:
    """The GP's copy cannot be sent (no forward_from): said in the decision, not a hold."""
    site.ingest(l1_form(3), sender=SENDER)
    back = site.ingest(l2_result(3), sender=CRCDC, forward_from=None)
    assert back.held == [] and len(back.queued) == 1 and back.forwards == []
    assert site.sent_to(GP_BOX) == []
    actions = site.decision(RESULT_RULE)["actions"]
    assert isinstance(actions, list)
    assert actions[-1].startswith(f"not done: forward {GP_BOX} (no mailbox to send from")


def test_no_l1_mailbox_holds_the_result_naming_why(site: Site) -> None:
    """No case here, and an L1 reader without address nor directory entry."""
    l1 = Reader(L1_READER.rpps, L1_READER.family, L1_READER.given)
    back = site.ingest(l2_result(4, l1_reader=l1), sender=CRCDC)
    assert back.queued == [] and len(back.held) == 1
    [held] = site.queue.quarantine.entries()
    assert held.reason.startswith("L2 result: no mailbox found for the L1 radiologist")
    assert site.sent_to(GP_BOX) == []
    # An operator releases it: queued at the mailbox it came to, sent nowhere else.
    rules = d2lm_rules({"75": CRCDC}, hosted=lambda address: True)
    [queued] = release(
        site.queue, held.id, limits=LIMITS, allow_test_oids=False, actor="operator",
        router=Router(RuleStore(site.engine, rules), limits=LIMITS),
        forwarder=Forwarder(site.outbound, forward_from=FWD),
    )  # fmt: skip
    assert [e.id for e in site.queue.entries(mailbox=RIS_A)] == [queued]
    assert site.sent_to(GP_BOX) == []
    assert [e.state for e in site.queue.quarantine.entries()] == ["released"]


def test_a_gp_without_mailbox_is_tagged(site: Site) -> None:
    gp = Reader("810000000454", "PARISI", "Stéphane")  # no mailto, not in the directory
    site.ingest(l1_form(5, gp=gp), sender=SENDER)
    back = site.ingest(l2_result(5, gp=gp), sender=CRCDC)
    assert back.held == [] and back.forwards == []
    [entry] = [e for e in site.queue.entries(mailbox=RIS_A) if e.id == back.queued[0]]
    assert entry.record.tags == (TAG_RESULT, TAG_NO_GP)


def test_route_test_says_where_an_l2_result_goes(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)
    add_mailboxes(engine, RIS_A, GP_BOX, FWD, CRCDC)
    engine.dispose()
    cli.ok("route", "preset", "d2lm", "--crcdc", f"75={CRCDC}")
    eml = tmp_path / "result.eml"
    eml.write_bytes(mail([l2_result(7)], sender=CRCDC, to=RIS_A))
    text = cli.ok("route", "test", str(eml)).out
    assert (
        f"rule {RESULT_RULE}: matches: tag {TAG_RESULT}, stop,"
        f" forward {L1_READER.email}, forward {GP_BOX} (without the L2 reader)"
    ) in text
