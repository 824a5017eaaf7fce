"""Builders shared by the queue and API tests: mailboxes, consumers, mails with documents."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage

from sqlalchemy import Engine

from mssgate.directory import Directory
from mssgate.directory.models import Consumer, MailboxKind, NewProfessional
from mssgate.documents.limits import DocumentLimits
from mssgate.queue import DocumentQueue, ingest_message
from tests.documents.factory import CdaSpec, make_cda

DOMAIN = "hopital-a.test"
RIS_A = f"ris-a@{DOMAIN}"
RIS_B = f"ris-b@{DOMAIN}"
SENDER = "radiologue@hopital.mssante.fr"


def add_mailboxes(engine: Engine, *addresses: str) -> Directory:
    directory = Directory(engine, actor="test")
    if DOMAIN not in {d.name for d in directory.domains.list()}:
        directory.domains.add_local(DOMAIN)
    for address in addresses:
        directory.professionals.add(
            NewProfessional(address=address, display_name=address, kind=MailboxKind.APP)
        )
    return directory


def add_consumer(
    engine: Engine, name: str, mailbox: str, pgp_key: str | None = None
) -> tuple[Consumer, str]:
    return Directory(engine, actor="test").consumers.add(name, mailbox=mailbox, pgp_key=pgp_key)


def cda(n: int, *, replaces: str | None = None, version: int = 1) -> bytes:
    spec = CdaSpec(doc_root=f"1.2.250.1.999.1.1.45.{n}", version=version, replaces=replaces)
    return make_cda(spec)


def mail(
    documents: list[bytes],
    *,
    n: int = 1,
    receipt: bool = False,
    sender: str = SENDER,
    to: str = RIS_A,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "XDM/1.0/DDM+CR d'imagerie médicale PAT-TROIS DOMINIQUE 28/03/1979"
    message["Message-ID"] = f"<test-{n}@hopital.mssante.fr>"
    if receipt:
        message["Disposition-Notification-To"] = sender
        message["Return-Path"] = f"<{sender}>"
    message.set_content("Veuillez trouver ci-joint le compte rendu.")
    for i, data in enumerate(documents):
        message.add_attachment(data, maintype="text", subtype="xml", filename=f"doc{i}.xml")
    return message.as_bytes()


def deliver(
    queue: DocumentQueue,
    raw: bytes,
    *,
    mailbox: str = RIS_A,
    sender: str = SENDER,
    delivery: str | None = None,
    allow_test_oids: bool = True,
) -> list[str]:
    """Ingests `raw` as the spool would; `delivery` is the spool entry (queue id) it came
    from, None for one derived from the bytes (the same bytes again are a replay);
    `allow_test_oids` False holds a test INS (906), as a gateway's defaults do."""
    return ingest_message(
        queue,
        raw,
        delivery=delivery,
        mailbox=mailbox,
        sender=sender,
        message_id=None,
        subject=None,
        received_at=datetime.now(UTC),
        limits=DocumentLimits(),
        allow_test_oids=allow_test_oids,
    )


def fill(queue: DocumentQueue, count: int, *, mailbox: str = RIS_A, start: int = 0) -> list[str]:
    ids: list[str] = []
    for n in range(start, start + count):
        ids += deliver(queue, mail([cda(n)], n=n), mailbox=mailbox)
    return ids


__all__ = ["CdaSpec", "replace"]
