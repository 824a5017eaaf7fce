"""Review of issue 12 D.12: a signed message held whole is held as the message received.

The pipeline reads the signed content (B.4), a rewrite of the message; a message over its
per-message budget was held with that rewrite as its content, a second near-whole copy
beside the stored message, and its sha256 and size were not the message's."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP

from sqlalchemy import Engine, select

from mssgate.db.schema import quarantine
from mssgate.documents import DocumentLimits
from mssgate.pki import create_dev_ca, issue_smime_cert
from mssgate.queue import DocumentQueue, ingest_message
from mssgate.smime import sign_message
from tests.queue.helpers import RIS_A, SENDER, cda


def _signed(detached: bool) -> bytes:
    ca_key, ca_cert = create_dev_ca("held-whole CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, SENDER)
    assert not isinstance(key, str)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, RIS_A, "CR"
    msg.set_content("ci-joint")
    for n in range(3):
        msg.add_attachment(cda(n), maintype="text", subtype="xml", filename=f"CR{n}.xml")
    return sign_message(msg.as_bytes(policy=SMTP), key=key, cert=cert, detached=detached)  # type: ignore[arg-type]


def test_a_signed_message_over_its_budget_is_held_once_as_received(
    engine: Engine, queue: DocumentQueue
) -> None:
    for detached in (True, False):
        raw = _signed(detached)
        ingest_message(
            queue, raw, mailbox=RIS_A, sender=SENDER, message_id=None, subject=None,
            received_at=datetime.now(UTC), limits=DocumentLimits(max_message_documents=2),
            allow_test_oids=True,
        )  # fmt: skip
    entries = queue.quarantine.entries()
    assert len(entries) == 2
    for entry in entries:
        assert entry.origin == "message" and "per message" in entry.reason
        message = queue.quarantine.message(entry.id)
        assert queue.quarantine.content(entry.id) == message
        assert entry.sha256 == hashlib.sha256(message).hexdigest()
        assert entry.size == len(message)
    with engine.connect() as conn:
        assert [r.content for r in conn.execute(select(quarantine))] == [None, None]
