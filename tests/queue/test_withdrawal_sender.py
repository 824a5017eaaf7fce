"""A withdrawal is honoured (MDM^T04 for the RIS) only from whoever sent the document; a
replacement (MDM^T10) likewise, else it goes as a new document (T02) with a note.

Any practitioner can mail an IHE_XDM.ZIP whose entry is Deprecated: without a check, someone
who was only copied on a report (or never saw it) could make a RIS withdraw it from the
patient's record. A withdrawal reaches the RIS as T04 only when this mailbox got the document
with that uniqueId from the same sender, earlier; otherwise it is held (906) with the reason,
and a release passes it once the original is there. SQLite and PostgreSQL.
"""

from __future__ import annotations

import hl7  # type: ignore[import-untyped]
import pytest
from sqlalchemy import Engine

from mssgate.documents.limits import DocumentLimits
from mssgate.documents.samples import CdaSpec, make_cda, make_pdf
from mssgate.outbound.compose import build_message, xdm_archive
from mssgate.outbound.hl7in import Submission
from mssgate.queue import DocumentQueue, QueueState, release
from mssgate.queue.withdrawal import senders_query
from tests.outbound.test_withdrawal import NEW_ID, NOW, OLD_ID, cancellation, read
from tests.queue.helpers import RIS_A, RIS_B, SENDER, add_consumer, deliver
from tests.smtp.test_outbound_gateway import mdm

OTHER = "dr.copie@cabinet.mssante.fr"
# SENDER's colleague: the same domain, so a peer's MAIL FROM (checked for its domain only)
# may name SENDER while the From:, which the S/MIME signature is checked against, is this.
COLLEAGUE = "secretariat@hopital.mssante.fr"


def signed_by(submission: Submission, author: str) -> bytes:
    """The message as `author`'s software writes it: its From: (and XDM author) `author`."""
    xdm = xdm_archive(submission, NOW, sender=author)
    return build_message(submission, sender=author, recipient=RIS_A, message_id="<t@test>",
                         mss_fields={}, now=NOW, xdm=xdm)  # fmt: skip


def original(author: str = SENDER) -> bytes:
    return signed_by(read(mdm(event="MDM^T02^MDM_T02")), author)


def withdrawal(author: str = SENDER) -> bytes:
    return signed_by(read(mdm(event="MDM^T04^MDM_T02")), author)


def test_the_documents_sender_withdraws_it(engine: Engine, queue: DocumentQueue) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    [first] = deliver(queue, original(), delivery="Q1")
    [withdrawn] = deliver(queue, withdrawal(), delivery="Q2")
    assert queue.entry(withdrawn).record.document.withdrawn
    leases = queue.lease(consumer, max_documents=10)
    assert [lease.document.id for lease in leases] == [first, withdrawn]
    blob = queue.hl7(consumer, withdrawn)
    message = hl7.parse(blob.data.decode("utf-8").replace("\n", "\r"))
    assert str(message.segment("MSH")[9]) == "MDM^T04^MDM_T02"
    # Who withdrew it travels with the T04 (PRT SB), as it did with the document.
    [sb] = [p for p in message.segments("PRT") if str(p[4]).startswith("SB")]
    assert SENDER in str(sb)


@pytest.mark.parametrize(
    ("first_sender", "first_mailbox", "why"),
    [
        (OTHER, RIS_A, "another sender's document"),
        (SENDER, RIS_B, "sent to another mailbox"),
        (None, None, "never seen"),
    ],
)
def test_a_withdrawal_not_from_the_documents_sender_is_held(
    engine: Engine,
    queue: DocumentQueue,
    first_sender: str | None,
    first_mailbox: str | None,
    why: str,
) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    queued: list[str] = []
    if first_sender is not None and first_mailbox is not None:
        queued = deliver(
            queue,
            original(first_sender),
            sender=first_sender,
            mailbox=first_mailbox,
            delivery="Q1",
        )
    ids = deliver(queue, withdrawal(), delivery="Q2")
    assert ids and all(queue.quarantine.get(x).code == 906 for x in ids), why
    [held] = ids
    entry = queue.quarantine.get(held)
    assert OLD_ID in entry.reason and SENDER in entry.reason
    assert entry.document is not None and entry.document.withdrawn
    leased = queue.lease(consumer, max_documents=10)
    assert all(not lease.document.document.withdrawn for lease in leased)
    assert [lease.document.id for lease in leased] == (queued if first_mailbox == RIS_A else [])


def test_a_held_withdrawal_is_released_once_its_original_came(
    engine: Engine, queue: DocumentQueue
) -> None:
    add_consumer(engine, "ris-a", RIS_A)
    [held] = deliver(queue, withdrawal(), delivery="Q2")
    with pytest.raises(Exception, match=OLD_ID):
        release(queue, held, limits=DocumentLimits(), allow_test_oids=True, actor="test")
    deliver(queue, original(), delivery="Q1")
    [queued] = release(queue, held, limits=DocumentLimits(), allow_test_oids=True, actor="test")
    entry = queue.entry(queued)
    assert entry.record.document.withdrawn and entry.state is QueueState.READY


def replacement(author: str = SENDER) -> bytes:
    cda = make_cda(CdaSpec(doc_root=NEW_ID, version=2, replaces=OLD_ID))
    return signed_by(read(mdm(event="MDM^T10^MDM_T02", cda=cda)), author)


def trigger(queue: DocumentQueue, consumer: object, doc_id: str) -> str:
    blob = queue.hl7(consumer, doc_id)  # type: ignore[arg-type]
    return str(hl7.parse(blob.data.decode("utf-8")).segment("MSH")[9])


@pytest.mark.parametrize("replacer", [SENDER, OTHER])
def test_a_replacement_supersedes_only_its_senders_document(
    engine: Engine, queue: DocumentQueue, replacer: str
) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    deliver(queue, original(), delivery="Q1")
    [new] = deliver(queue, replacement(replacer), sender=replacer, delivery="Q2")
    record = queue.entry(new).record
    if replacer == SENDER:
        assert record.document.replaces == OLD_ID
        assert trigger(queue, consumer, new) == "MDM^T10^MDM_T02"
        assert not any(OLD_ID in note for note in record.notes)
    else:
        # Delivered all the same, as a document of its own: nothing of SENDER's superseded.
        assert record.document.replaces is None
        assert trigger(queue, consumer, new) == "MDM^T02^MDM_T02"
        [note] = [n for n in record.notes if OLD_ID in n]
        assert OTHER in note and SENDER in note


def test_a_colleague_writing_mail_from_the_sender_withdraws_nothing(
    engine: Engine, queue: DocumentQueue
) -> None:
    """A peer's MAIL FROM is checked for its domain only: anyone of SENDER's domain may write
    MAIL FROM SENDER. Who withdraws is the From: the signature was checked against (as for
    routing, mssgate.queue.ingest.routing_sender): the colleague's withdrawal of SENDER's
    report was queued as T04 when only the envelope was compared."""
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    [first] = deliver(queue, original(), delivery="Q1")
    ids = deliver(queue, withdrawal(COLLEAGUE), sender=SENDER, delivery="Q2")
    assert ids and all(queue.quarantine.get(x).code == 906 for x in ids)
    [held] = ids
    reason = queue.quarantine.get(held).reason
    assert COLLEAGUE in reason and OLD_ID in reason
    # The owner's own withdrawal goes.
    [withdrawn] = deliver(queue, withdrawal(), delivery="Q3")
    assert queue.entry(withdrawn).record.document.withdrawn
    assert [x.document.id for x in queue.lease(consumer, max_documents=10)] == [first, withdrawn]
    assert trigger(queue, consumer, withdrawn) == "MDM^T04^MDM_T02"


def test_a_colleague_writing_mail_from_the_sender_replaces_nothing(
    engine: Engine, queue: DocumentQueue
) -> None:
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    deliver(queue, original(), delivery="Q1")
    [new] = deliver(queue, replacement(COLLEAGUE), sender=SENDER, delivery="Q2")
    record = queue.entry(new).record
    assert record.document.replaces is None
    assert trigger(queue, consumer, new) == "MDM^T02^MDM_T02"
    [note] = [n for n in record.notes if OLD_ID in n]
    assert COLLEAGUE in note


def test_a_document_is_recorded_as_its_authenticated_senders(
    engine: Engine, queue: DocumentQueue
) -> None:
    """What is recorded as the sender (and later compared) is the From:, not the envelope: a
    colleague's report sent MAIL FROM SENDER is the colleague's to withdraw, not SENDER's."""
    add_consumer(engine, "ris-a", RIS_A)
    [first] = deliver(queue, original(COLLEAGUE), sender=SENDER, delivery="Q1")
    assert queue.entry(first).record.sender == COLLEAGUE
    [held] = deliver(queue, withdrawal(), delivery="Q2")
    assert queue.quarantine.get(held).code == 906
    [withdrawn] = deliver(queue, withdrawal(COLLEAGUE), sender=COLLEAGUE, delivery="Q3")
    assert queue.entry(withdrawn).record.document.withdrawn


def test_a_withdrawal_withdraws_the_reports_pdf_too(engine: Engine, queue: DocumentQueue) -> None:
    """The report went as the CDA and its PDF (uniqueId `<id>.PDF`), two entries for the RIS:
    a withdrawal that named the CDA only left the readable PDF of it in the record."""
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    pdf = make_pdf(["Compte rendu PAT-TROIS"])
    sent = cancellation(read(mdm(event="MDM^T02^MDM_T02", pdf=pdf)))[1]
    firsts = deliver(queue, sent, delivery="Q1")
    ids = {queue.entry(x).record.document.unique_id for x in firsts}
    assert ids == {OLD_ID, f"{OLD_ID}.PDF"}
    gone = cancellation(read(mdm(event="MDM^T04^MDM_T02", pdf=pdf)))[1]
    withdrawals = deliver(queue, gone, delivery="Q2")
    records = [queue.entry(x).record for x in withdrawals]
    assert {r.document.unique_id for r in records if r.document.withdrawn} == ids
    assert {trigger(queue, consumer, x) for x in withdrawals} == {"MDM^T04^MDM_T02"}


def test_the_sender_check_reads_the_unique_id_index(sqlite_engine: Engine) -> None:
    """The check runs on every withdrawal and replacement: on the (mailbox, uniqueId) index,
    not a scan of the mailbox's entries matching the id as text in their JSON records (0.23 s
    at 100k entries)."""
    query = senders_query(OLD_ID, RIS_A).compile(
        sqlite_engine, compile_kwargs={"literal_binds": True}
    )
    with sqlite_engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
    assert "USING INDEX ix_queue_documents_unique_id (mailbox=? AND unique_id_sha256=?)" in plan


def test_held_copies_seal_their_message_once(
    engine: Engine, queue: DocumentQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A withdrawal copied by a rule to a mailbox that never got the original is held there,
    sealed for that mailbox's RIS key; sealing is the whole message's OpenPGP encryption, so a
    message of many such documents must seal it once, not once per document (it did)."""
    from tests.queue.gpgkeys import key_pair
    from tests.queue.test_routing_ingest import _ingest, _router, _rule

    pdf = make_pdf(["Compte rendu PAT-TROIS"])
    deliver(queue, cancellation(read(mdm(event="MDM^T02^MDM_T02", pdf=pdf)))[1], delivery="Q1")
    with key_pair("RIS B <ris-b@hopital-b.test>") as keys:
        add_consumer(engine, "ris-b", RIS_B, pgp_key=keys.public)
        cipher = queue.cipher()
        seal = cipher.seal_message
        sealed: list[bytes] = []

        def counted(message: bytes, recipients: list[str]) -> bytes:
            sealed.append(message)
            return seal(message, recipients)

        monkeypatch.setattr(cipher, "seal_message", counted)
        router = _router(engine, _rule("copy", [], f"copy-to {RIS_B}"))
        gone = cancellation(read(mdm(event="MDM^T04^MDM_T02", pdf=pdf)))[1]
        report = _ingest(queue, gone, router, n="Q2")
        assert len(report.queued) == 2 and len(report.copies) == 2
        held = [queue.quarantine.get(x) for x in report.copies]
        assert all(e.encrypted and e.mailbox == RIS_B and e.code == 906 for e in held)
        assert len(sealed) == 1
