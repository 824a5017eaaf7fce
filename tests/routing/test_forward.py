"""The routing `forward` action in process (issue 16, part 1): a rule's forward is a new
message from an application mailbox, built, signed and spooled by the outbound path, that
our own pipeline reads back with the same INS and uniqueId; recorded with its outbound id in
the decision's audit entry; once per delivery however often the delivery is replayed, and
completed after a crash between its record and the spool. What cannot be sent holds the
document naming the rule; loops are refused; a hold cancels forwards; forwards per message
are bounded. The two-gateway run is tests/smtp/test_routing_forward.py."""

from __future__ import annotations

import email
import json
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from mssgate.config import Config
from mssgate.db.schema import audit, outbound_messages
from mssgate.directory import Directory
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from mssgate.documents.signed import process_signed_message
from mssgate.outbound.forward import Forwarder
from mssgate.outbound.service import Outbound
from mssgate.queue import DocumentQueue
from mssgate.queue.ingest import IngestReport, ingest
from mssgate.routing.model import Rule, parse_action
from mssgate.routing.router import Router
from mssgate.routing.store import RuleStore
from mssgate.spool import Spool
from tests.conftest import Cli
from tests.queue.helpers import RIS_A, RIS_B, SENDER
from tests.routing.forwarding import ENGINES, FWD, forwarding_gateway

PATIENT = replace(PAT_TROIS, oid=OID_NIR)  # the configuration takes no test INS


class Crash(BaseException):
    """The process dying between the forward's record and the spool."""


class Setup:
    def __init__(self, config: Config, engine: Engine) -> None:
        self.config, self.engine = config, engine
        self.spool = Spool(engine, config.server.data_dir / "spool")
        self.outbound = Outbound(config, Directory(engine, actor="test"), self.spool)
        self.queue = DocumentQueue.from_config(config, engine)

    def run(
        self,
        raw: bytes,
        *rules: Rule,
        delivery: str = "d1",
        sender: str = SENDER,
        forward_from: str | None = FWD,
        max_forwards: int = 10,
    ) -> IngestReport:
        router = Router(RuleStore(self.engine, rules), limits=DocumentLimits(),
                        max_forwards=max_forwards)  # fmt: skip
        return ingest(
            self.queue, raw, delivery=delivery, mailbox=RIS_A, sender=sender,
            message_id="<orig-1@hopital.mssante.fr>", subject=None,
            received_at=datetime.now(UTC), limits=DocumentLimits(), allow_test_oids=False,
            router=router, forwarder=Forwarder(self.outbound, forward_from=forward_from),
        )  # fmt: skip

    def forwards(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(outbound_messages)).scalar())

    def held(self) -> list[str]:
        return [e.reason for e in self.queue.quarantine.entries()]


@pytest.fixture(params=ENGINES)
def setup(request: pytest.FixtureRequest, datadir: Path) -> Setup:
    return Setup(*forwarding_gateway(request, datadir, RIS_A, RIS_B))


def report(*documents: bytes, n: int = 1) -> bytes:
    message = EmailMessage()
    message["From"], message["To"] = SENDER, RIS_A
    message["Subject"] = "XDM/1.0/DDM+CR d'imagerie médicale PAT-TROIS DOMINIQUE 28/03/1979"
    message["Message-ID"] = f"<orig-{n}@hopital.mssante.fr>"
    message.set_content("Compte rendu ci-joint.")
    for i, data in enumerate(documents):
        message.add_attachment(data, maintype="text", subtype="xml", filename=f"doc{i}.xml")
    return message.as_bytes()


def cda(n: int) -> bytes:
    return make_cda(CdaSpec(patient=PATIENT, doc_root=f"1.2.250.1.999.1.1.88.{n}"))


def rule(name: str, *actions: str, **match: list[str]) -> Rule:
    return Rule(name=name, match=match, actions=tuple(parse_action(a) for a in actions))  # type: ignore[arg-type]


def test_a_forward_is_a_signed_message_our_pipeline_reads_back(setup: Setup) -> None:
    raw = report(cda(1))
    done = setup.run(raw, rule("to-b", f"forward {RIS_B}", "tag sent-on"))
    [outbound_id] = done.forwards
    assert len(done.queued) == 1 and done.held == []
    [entry] = list(setup.spool.entries())
    assert [(r["recipient"], r["route"]) for r in entry.recipients] == [(RIS_B, "local")]
    assert entry.sender == FWD
    content = setup.spool.read(entry.id)
    head = email.message_from_bytes(content)
    assert head.get_content_type() == "multipart/signed"
    assert head["X-MSSGATE-Forwarded-By"] == "routing rule to-b"
    assert head["X-MSSGATE-Original-Sender"] == SENDER
    assert head["X-MSSGATE-Original-Message-ID"] == "<orig-1@hopital.mssante.fr>"
    assert head["From"] == FWD and head["To"] == RIS_B
    [text] = [p for p in head.walk() if p.get_content_type() == "text/plain"]
    body = text.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "règle de routage « to-b »" in body and f"Expéditeur d'origine : {SENDER}" in body
    # What the receiving pipeline makes of it: the same patient and document, from FWD.
    back = process_signed_message(content, limits=DocumentLimits(), allow_test_oids=False)
    original = process_signed_message(raw, limits=DocumentLimits(), allow_test_oids=False)
    assert not back.quarantined
    [got] = [o.record for o in back.outcomes if o.outcome == "accepted"]  # type: ignore[union-attr]
    [sent] = [o.record for o in original.outcomes if o.outcome == "accepted"]  # type: ignore[union-attr]
    assert got.ins.value == sent.ins.value and got.ins.oid == OID_NIR
    assert got.document.unique_id == sent.document.unique_id
    assert got.document.format == sent.document.format == "cda-n3"
    # The image pointers (accession, study UID, WADO) travel inside the CDA, never pixels.
    assert got.imaging and got.imaging == sent.imaging
    assert got.dicom_catalog and got.dicom_catalog == sent.dicom_catalog
    # One audit entry for the decision, naming the rule and the forward's outbound id.
    with setup.engine.connect() as conn:
        rows = conn.execute(
            select(audit.c.detail).where(audit.c.action == "routing.decision")
        ).all()
    [detail] = [json.loads(r.detail) for r in rows]
    assert detail["rule"] == "to-b"
    assert detail["forwards"] == {RIS_B: outbound_id}
    assert detail["actions"] == [f"forward {RIS_B}", "tag sent-on"]


def test_a_forward_owes_no_zam_to_any_consumer(setup: Setup) -> None:
    """No RIS sent it: once delivered, the sweeper owes no ZAM for it and none is made."""
    from sqlalchemy import update

    from mssgate.db.schema import outbound_acks, spool_recipients
    from mssgate.db.tx import write
    from mssgate.outbound.zamqueue import ZamQueue

    [outbound_id] = setup.run(report(cda(30), n=30), rule("to-b", f"forward {RIS_B}")).forwards
    with write(setup.engine) as conn:
        conn.execute(update(spool_recipients).values(state="delivered"))
    zams = ZamQueue(setup.engine, facility="test")
    assert zams.due() == []
    assert zams.status_changed(outbound_id) == 0
    with write(setup.engine) as conn:
        assert zams.materialise(conn, outbound_id) == 0
    with setup.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbound_acks)).scalar() == 0


def test_a_replay_sends_nothing_twice_and_a_crash_is_completed(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = rule("to-b", f"forward {RIS_B}")
    raw = report(cda(2), n=2)
    first = setup.run(raw, forward)
    again = setup.run(raw, forward)
    assert again.replayed == first.queued and again.forwards == first.forwards
    assert setup.forwards() == 1 and len(list(setup.spool.entries())) == 1

    # Another delivery: the process dies after the forward's record, before the spool.
    def crash(**_: object) -> None:
        raise Crash

    monkeypatch.setattr(setup.spool, "accept", crash)
    other = report(cda(3), n=3)
    with pytest.raises(Crash):
        setup.run(other, forward, delivery="d2")
    monkeypatch.undo()
    assert setup.forwards() == 2 and len(list(setup.spool.entries())) == 1
    # The spool delivers d2 again (at least once): the forward is spooled, once.
    replayed = setup.run(other, forward, delivery="d2")
    assert len(replayed.forwards) == 1
    assert setup.forwards() == 2 and len(list(setup.spool.entries())) == 2
    setup.run(other, forward, delivery="d2")
    assert len(list(setup.spool.entries())) == 2


def test_the_same_document_is_not_forwarded_twice_to_one_address(setup: Setup) -> None:
    """The same CDA in a new delivery (a resend, or a peer forwarding it back here): the
    first forward's id, nothing sent again."""
    forward = rule("to-b", f"forward {RIS_B}")
    first = setup.run(report(cda(4), n=4), forward)
    second = setup.run(report(cda(4), n=5), forward, delivery="d9")
    assert second.forwards == first.forwards
    assert setup.forwards() == 1 and len(list(setup.spool.entries())) == 1


def test_a_forward_that_cannot_be_sent_holds_the_document_naming_the_rule(
    setup: Setup,
) -> None:
    forward = rule("to-b", f"forward {RIS_B}")
    done = setup.run(report(cda(5), n=6), forward, forward_from=None)
    assert done.queued == [] and len(done.held) == 1
    assert setup.held() == [
        f"routing rule 'to-b' cannot forward to {RIS_B}: no mailbox to send from: set"
        " [routing] forward_from, or write `forward ADDRESS from APP-MAILBOX`"
    ]
    # A sending mailbox that is not an application mailbox of ours; one without a key.
    setup.run(report(cda(6), n=7), forward, forward_from="nobody@hopital-a.test", delivery="d3")
    assert "nobody@hopital-a.test is no mailbox of this gateway" in setup.held()[-1]
    setup.run(report(cda(7), n=8), rule("k", f"forward {RIS_B} from {RIS_A}"), delivery="d4")
    assert f"no signing key for {RIS_A}" in setup.held()[-1]
    assert "routing rule 'k' cannot forward" in setup.held()[-1]
    # A domain that is neither ours nor a trusted peer.
    setup.run(report(cda(8), n=9), rule("far", "forward x@elsewhere.test"), delivery="d5")
    assert "elsewhere.test is neither a local domain nor a trusted peer" in setup.held()[-1]
    assert setup.forwards() == 0 and list(setup.spool.entries()) == []


def test_loops_a_hold_and_the_bound_per_message(setup: Setup) -> None:
    # Back to the document's sender, or to the mailbox it came to: refused, said, queued.
    done = setup.run(report(cda(9), n=10), rule("back", f"forward {SENDER}", f"forward {RIS_A}"))
    assert done.forwards == [] and len(done.queued) == 1
    # A later rule's hold cancels an earlier rule's forward.
    held = setup.run(
        report(cda(10), n=11),
        rule("a", f"forward {RIS_B}"),
        Rule(name="b", order=200, actions=(parse_action("hold look first"),)),
        delivery="d6",
    )
    assert held.forwards == [] and len(held.held) == 1
    # Two CDAs, one forward allowed per message: the second is held, naming the rule.
    bounded = setup.run(report(cda(11), cda(12), n=12), rule("a", f"forward {RIS_B}"),
                        delivery="d7", max_forwards=1)  # fmt: skip
    assert len(bounded.forwards) == 1 and len(bounded.held) == 1
    assert setup.held()[-1] == (
        "routing rule 'a' would forward more than 1 documents of this message"
        " ([routing] max_forwards)"
    )
    with setup.engine.connect() as conn:
        rows = conn.execute(
            select(audit.c.detail).where(audit.c.action == "routing.decision")
        ).all()
    first = json.loads(rows[0].detail)
    assert first["actions"] == [
        f"forward {SENDER} (refused: the document's own sender (a loop))",
        f"forward {RIS_A} (refused: the mailbox it came to (a loop))",
    ]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("forward", "forward needs a value"),
        ("forward not-an-address", "forward:"),
        ("forward a@b.test from nobody", "forward:"),
        ("forwards a@b.test", "none of copy-to, forward, tag, hold, stop"),
    ],
)
def test_forward_action_text(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        Rule(name="r", actions=(parse_action(text),))


def test_forward_action_is_normalised_and_a_sender_loop_refused() -> None:
    action = parse_action(f"forward  Bob@Other.Test  from {FWD.upper()}")
    assert action.value == f"bob@other.test from {FWD}"
    assert action.forward_parts() == ("bob@other.test", FWD)
    with pytest.raises(ValueError, match=r"only matches what bob@other\.test sent"):
        Rule(name="r", match={"sender": ["bob@other.test"]},  # type: ignore[arg-type]
             actions=(action,))  # fmt: skip


def test_cli_route_add_forward_is_validated(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    cli.ok("directory", "add", RIS_A, "--name", "RIS", "--kind", "application")
    cli.ok("directory", "add", RIS_B, "--name", "RIS B", "--kind", "application")
    bad = cli("route", "add", "f", "--action", f"forward {RIS_B}")
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1
    assert "no mailbox to send from: set [routing] forward_from" in bad.err
    bad = cli("route", "add", "f", "--action", "forward nope")
    assert bad.code == 2 and "forward:" in bad.err and "Traceback" not in bad.err
    bad = cli("route", "add", "f", "--action", f"forward {RIS_B} from {RIS_A}")
    assert bad.code == 2 and f"no signing key for {RIS_A}" in bad.err
    bad = cli("route", "add", "f", "--forward", "x@elsewhere.test from " + RIS_A)
    assert bad.code == 2
    assert json.loads(cli.ok("route", "list", "--json").out) == {"rules": []}
    # consumer add gives the application mailbox its signing key.
    cli.ok("consumer", "add", "ris", "--mailbox", RIS_A)
    cli.ok("route", "add", "f", "--match", "format=cda-n3", "--action",
           f"forward {RIS_B} from {RIS_A}")  # fmt: skip
    [shown] = json.loads(cli.ok("route", "list", "--json").out)["rules"]
    assert shown["actions"] == [f"forward {RIS_B} from {RIS_A}"]
    # route test: what the forward would do, nothing done.
    eml = tmp_path / "report.eml"
    eml.write_bytes(report(cda(20), n=20))
    out = cli.ok("route", "test", str(eml)).out
    assert "rule f: matches: forward" in out
    assert f"=> would forward to {RIS_B} as a new message signed by {RIS_A} (rule f)" in out
    assert json.loads(cli.ok("route", "test", str(eml), "--json").out)["documents"][0][
        "forwards"
    ] == [{"rule": "f", "to": RIS_B, "from": RIS_A}]
    # The sending mailbox suspended: the dry run says the document would be held.
    cli.ok("directory", "suspend", RIS_A)
    out = cli.ok("route", "test", str(eml)).out
    assert (
        f"=> held: routing rule 'f' cannot forward to {RIS_B}: {RIS_A} is not an active"
        " application mailbox"
    ) in out


def test_check_names_a_file_rule_whose_forward_cannot_be_sent(cli: Cli, datadir: Path) -> None:
    """A rule of the file is not checked by `route add`: `mssgate check` says it, as serve
    would hold every document it matches."""
    config = datadir / "mssgate.toml"
    config.write_text(
        config.read_text()
        + f'\n[routing]\nforward_from = "{FWD}"\n'
        + f'\n[[routing.rule]]\nname = "out"\nactions = ["forward {RIS_B}"]\n'
    )
    cli.ok("directory", "add", RIS_B, "--name", "RIS B", "--kind", "application")
    result = cli("check", "--json")
    checks = {c["check"]: c for c in json.loads(result.out)["checks"]}
    assert checks["routing rules"] == {
        "check": "routing rules", "ok": False,
        "detail": f"rule out: forward {RIS_B}: {FWD} is no mailbox of this gateway",
        "warning": False,
    }  # fmt: skip
    assert result.code == 1
    cli.ok("directory", "add", FWD, "--name", "Routeur", "--kind", "application")
    cli.ok("consumer", "add", "routeur", "--mailbox", FWD)
    checks = {c["check"]: c for c in json.loads(cli.ok("check", "--json").out)["checks"]}
    assert checks["routing rules"]["ok"] is True
