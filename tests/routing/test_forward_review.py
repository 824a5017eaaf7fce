"""Hostile review of the routing `forward` action (issue 16 section 1): what a sender
controls must not reach the forward's headers, nor borrow the authority of the application
mailbox that signs it; two runs at once (two nodes replaying one delivery, two mailboxes of
one message) spool one copy. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import email
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from mssgate.config import Config
from mssgate.db.schema import outbound_messages, spool_messages
from mssgate.directory import Directory
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from mssgate.documents.signed import process_signed_message
from mssgate.errors import StorageError
from mssgate.outbound.forward import Forwarder
from mssgate.outbound.service import Outbound
from mssgate.queue import DocumentQueue
from mssgate.queue.ingest import IngestReport, ingest
from mssgate.routing.model import Rule, parse_action
from mssgate.routing.router import Router
from mssgate.routing.store import RuleStore
from mssgate.spool import Spool
from tests.queue.helpers import DOMAIN, RIS_A, RIS_B, SENDER
from tests.routing.forwarding import ENGINES, FWD, forwarding_gateway

RIS_C = f"ris-c@{DOMAIN}"
OTHER = "intrus@clinique.mssante.fr"
PATIENT = replace(PAT_TROIS, oid=OID_NIR)
FORWARD = Rule(name="to-b", actions=(parse_action(f"forward {RIS_B}"),))


class Node:
    """One gateway node: its spool folder, its outbound path and forwarder."""

    def __init__(self, config: Config, engine: Engine, spool_dir: Path) -> None:
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(engine, spool_dir)
        self.outbound = Outbound(config, Directory(engine, actor="test"), self.spool)
        self.forwarder = Forwarder(self.outbound, forward_from=FWD)


class Setup:
    def __init__(self, config: Config, engine: Engine) -> None:
        self.config, self.engine = config, engine
        self.node = Node(config, engine, config.server.data_dir / "spool")
        self.queue = DocumentQueue.from_config(config, engine)

    def run(
        self,
        raw: bytes,
        *,
        delivery: str = "d1",
        mailbox: str = RIS_A,
        sender: str = SENDER,
        message_id: str = "<orig-1@hopital.mssante.fr>",
        node: Node | None = None,
    ) -> IngestReport:
        router = Router(RuleStore(self.engine, [FORWARD]), limits=DocumentLimits())
        return ingest(
            self.queue, raw, delivery=delivery, mailbox=mailbox, sender=sender,
            message_id=message_id, subject=None, received_at=datetime.now(UTC),
            limits=DocumentLimits(), allow_test_oids=False, router=router,
            forwarder=(node or self.node).forwarder,
        )  # fmt: skip

    def spooled(self) -> list[str]:
        """Every spool entry's id, whatever node's folder holds it."""
        with self.engine.connect() as conn:
            return [str(i) for i in conn.execute(select(spool_messages.c.id)).scalars()]

    def recorded(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(outbound_messages)).scalar_one()
            )


@pytest.fixture(params=ENGINES)
def setup(request: pytest.FixtureRequest, datadir: Path) -> Setup:
    return Setup(*forwarding_gateway(request, datadir, RIS_A, RIS_B, RIS_C))


def cda(n: int, *, replaces: str | None = None) -> bytes:
    spec = CdaSpec(patient=PATIENT, doc_root=f"1.2.250.1.999.1.1.77.{n}", replaces=replaces)
    return make_cda(spec)


def report(document: bytes, *, n: int = 1, sender: str = SENDER) -> bytes:
    message = EmailMessage()
    message["From"], message["To"] = sender, RIS_A
    message["Subject"] = "XDM/1.0/DDM+CR d'imagerie médicale PAT-TROIS DOMINIQUE 28/03/1979"
    message["Message-ID"] = f"<orig-{n}@hopital.mssante.fr>"
    message.set_content("Compte rendu ci-joint.")
    message.add_attachment(document, maintype="text", subtype="xml", filename="doc.xml")
    return message.as_bytes()


def _b64_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def test_an_encoded_word_in_the_original_message_id_injects_no_header(setup: Setup) -> None:
    """integration reads the Message-ID with the SMTP policy, which decodes one layer of RFC
    2047: a second layer reached the forward's X-MSSGATE-Original-Message-ID as an encoded
    word, which the stdlib decoded again when the forward was built, CRLF included: the
    sender wrote headers (and a body) into a message signed by our application mailbox."""
    injected = "<x@y>\r\nBcc: intrus@clinique.mssante.fr\r\nReply-To: intrus@clinique.mssante.fr"
    injected += "\r\n\r\nCorps choisi par l'expéditeur"
    done = setup.run(report(cda(1)), message_id=_b64_word(injected))
    assert len(done.forwards) == 1
    [entry] = list(setup.node.spool.entries())
    content = setup.node.spool.read(entry.id)
    head = email.message_from_bytes(content)
    assert head.get_content_type() == "multipart/signed"
    [signed] = [p for p in head.walk() if p.get_content_type() == "multipart/mixed"]
    assert signed["Bcc"] is None and signed["Reply-To"] is None
    assert head["Bcc"] is None and head["Reply-To"] is None
    assert "\n" not in str(signed["X-MSSGATE-Original-Message-ID"])
    assert b"Corps choisi" not in content
    # The forward is still the document, read back by a receiving pipeline.
    back = process_signed_message(content, limits=DocumentLimits(), allow_test_oids=False)
    assert not back.quarantined and len(back.accepted) == 1


def test_an_encoded_word_in_the_envelope_sender_injects_no_header(setup: Setup) -> None:
    sender = _b64_word("a\r\nBcc: intrus@clinique.mssante.fr") + "@hopital.mssante.fr"
    done = setup.run(report(cda(2)), sender=sender)
    assert len(done.forwards) == 1
    [entry] = list(setup.node.spool.entries())
    head = email.message_from_bytes(setup.node.spool.read(entry.id))
    [signed] = [p for p in head.walk() if p.get_content_type() == "multipart/mixed"]
    assert signed["Bcc"] is None and head["Bcc"] is None
    assert "\n" not in str(signed["X-MSSGATE-Original-Sender"])


def test_an_encoded_word_in_the_cda_title_injects_no_header(setup: Setup) -> None:
    """The forward's Subject is written from the CDA's title (DDM convention): a sender's
    title holding an encoded word with a CRLF was decoded by the stdlib into a Reply-To of
    the sender's choosing, in the message our application mailbox signs."""
    title = _b64_word("CR\r\nReply-To: intrus@clinique.mssante.fr")
    spec = CdaSpec(patient=PATIENT, doc_root="1.2.250.1.999.1.1.77.9", title=title)
    done = setup.run(report(make_cda(spec), n=9))
    assert len(done.forwards) == 1
    [entry] = list(setup.node.spool.entries())
    head = email.message_from_bytes(setup.node.spool.read(entry.id))
    [signed] = [p for p in head.walk() if p.get_content_type() == "multipart/mixed"]
    assert signed["Reply-To"] is None and head["Reply-To"] is None
    assert "\n" not in str(signed["Subject"])


def test_a_replacement_refused_here_is_not_forwarded_as_our_replacement(setup: Setup) -> None:
    """Whatever the rule forwards leaves signed by one application mailbox: at the recipient
    every forwarded document has that one sender, so a replacement (its CDA's relatedDocument
    RPLC) another sender mailed here, which this gateway refused as a replacement (queued as
    a new document with a note), would be taken there as the replacement of the genuine
    document the rule forwarded before. It is held, naming the rule; the genuine sender's
    replacement is forwarded."""
    original = cda(3)
    setup.run(report(original, n=3))
    assert len(setup.spooled()) == 1
    replaced = "1.2.250.1.999.1.1.77.3"
    forged = setup.run(report(cda(4, replaces=replaced), n=4, sender=OTHER), delivery="d2",
                       sender=OTHER)  # fmt: skip
    assert forged.forwards == [] and forged.queued == [] and len(forged.held) == 1
    [entry] = [e for e in setup.queue.quarantine.entries() if e.id in forged.held]
    assert entry.reason.startswith(f"routing rule 'to-b' cannot forward to {RIS_B}:")
    assert "replaces" in entry.reason
    assert len(setup.spooled()) == 1
    genuine = setup.run(report(cda(5, replaces=replaced), n=5), delivery="d3")
    assert len(genuine.forwards) == 1 and len(setup.spooled()) == 2


def _blocking(
    target: Any, name: str
) -> tuple[threading.Event, threading.Event, Callable[[], None]]:
    """Makes `target.name` wait, at its first call, until released: (reached, release, undo)."""
    real = getattr(target, name)
    reached, release = threading.Event(), threading.Event()
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            reached.set()
            assert release.wait(30)
        return real(*args, **kwargs)

    setattr(target, name, wrapper)
    return reached, release, lambda: setattr(target, name, real)


def _in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported to the test, whatever it is
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_two_nodes_replaying_one_delivery_spool_one_forward(setup: Setup, tmp_path: Path) -> None:
    """Node 1 recorded the forward and is signing it; node 2 runs the same delivery (a job
    taken over, a release run twice): it found the record and its copy not in the spool yet,
    and spooled a second one under a new id. A copy keeps its recorded spool id: one of
    the two spools it, the other fails (and its job is tried again)."""
    other = Node(setup.config, setup.engine, tmp_path / "node2-spool")
    raw = report(cda(6), n=6)
    reached, release, undo = _blocking(setup.node.spool, "accept")
    thread, errors = _in_thread(lambda: setup.run(raw))
    try:
        assert reached.wait(30)
        second = setup.run(raw, node=other)
    finally:
        release.set()
        thread.join(30)
        undo()
    assert len(second.forwards) == 1
    assert len(setup.spooled()) == 1 and setup.recorded() == 1
    assert all(isinstance(e, StorageError) for e in errors)
    # The first node's job, tried again, finds it spooled.
    assert setup.run(raw).forwards == second.forwards
    assert len(setup.spooled()) == 1


def test_two_mailboxes_of_one_message_at_once_forward_the_document_once(setup: Setup) -> None:
    """One message to two mailboxes a domain rule covers: two jobs, run side by side. Each
    asked 'was this document forwarded to this address?' before either recorded its forward,
    and each sent it. The forward is recorded under the document and address: one wins."""
    raw = report(cda(7), n=7)
    reached, release, undo = _blocking(setup.node.outbound._store, "record")
    thread, errors = _in_thread(lambda: setup.run(raw, mailbox=RIS_A, delivery="s1"))
    try:
        assert reached.wait(30)
        second = setup.run(raw, mailbox=RIS_C, delivery="s1")
    finally:
        release.set()
        thread.join(30)
        undo()
    assert errors == []
    assert len(second.forwards) == 1
    assert len(setup.spooled()) == 1 and setup.recorded() == 1


def test_a_copy_of_a_uniqueid_gives_no_authority_over_the_forwarded_original(setup: Setup) -> None:
    """Ingest lets whoever sent a mailbox a document with a uniqueId replace (or withdraw)
    it there: a uniqueId is no secret. Another sender mailing a copy of the genuine report's
    uniqueId to a mailbox the rule also covers, then its replacement, got the replacement
    forwarded, signed by the same mailbox as the genuine report it replaced at the
    recipient. Held now, naming the rule; the genuine sender's replacement goes."""
    genuine = cda(20)
    assert len(setup.run(report(genuine, n=20)).forwards) == 1
    # The same uniqueId from another sender, to RIS_C: a repeat, nothing sent.
    setup.run(report(genuine, n=21, sender=OTHER), mailbox=RIS_C, sender=OTHER, delivery="o1")
    assert len(setup.spooled()) == 1
    replaced = "1.2.250.1.999.1.1.77.20"
    forged = setup.run(report(cda(21, replaces=replaced), n=22, sender=OTHER), mailbox=RIS_C,
                       sender=OTHER, delivery="o2")  # fmt: skip
    assert forged.forwards == [] and len(forged.held) == 1
    [entry] = [e for e in setup.queue.quarantine.entries() if e.id in forged.held]
    assert entry.reason.startswith(f"routing rule 'to-b' cannot forward to {RIS_B}: a replacement")
    assert len(setup.spooled()) == 1
    assert len(setup.run(report(cda(22, replaces=replaced), n=23), delivery="g2").forwards) == 1
    assert len(setup.spooled()) == 2


def test_a_forward_is_recorded_for_the_authenticated_sender(setup: Setup) -> None:
    """A peer's MAIL FROM is checked for its domain only, the From: against the signer: a
    colleague of SENDER's domain may write MAIL FROM SENDER. The forward recorded (and
    named) the envelope sender, so a copy of the genuine report's uniqueId sent that way to
    another mailbox the rule covers (the colleague's own there), then its replacement, went
    out as SENDER's and replaced the genuine report at the recipient."""
    colleague = "secretariat@hopital.mssante.fr"
    genuine = cda(30)
    assert len(setup.run(report(genuine, n=30)).forwards) == 1
    setup.run(report(genuine, n=31, sender=colleague), mailbox=RIS_C, delivery="c1")
    forged = setup.run(report(cda(31, replaces="1.2.250.1.999.1.1.77.30"), n=32,
                              sender=colleague), mailbox=RIS_C, delivery="c2")  # fmt: skip
    assert forged.forwards == [] and len(forged.held) == 1
    [entry] = [e for e in setup.queue.quarantine.entries() if e.id in forged.held]
    assert entry.reason.startswith(f"routing rule 'to-b' cannot forward to {RIS_B}: a replacement")
    assert len(setup.spooled()) == 1
    # The colleague's own document, sent MAIL FROM SENDER, goes out as the colleague's.
    own = setup.run(report(cda(33), n=33, sender=colleague), delivery="c3")
    [outbound_id] = own.forwards
    with setup.engine.connect() as conn:
        origin = conn.execute(
            select(outbound_messages.c.origin_sender).where(outbound_messages.c.id == outbound_id)
        ).scalar_one()
    assert origin == colleague
    named = set()
    for spooled in setup.spooled():
        head = email.message_from_bytes(setup.node.spool.read(spooled))
        named.add(str(head["X-MSSGATE-Original-Sender"]))
    assert named == {SENDER, colleague}
