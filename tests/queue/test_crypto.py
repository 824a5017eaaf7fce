"""Encryption at rest: a consumer with an OpenPGP key gets ciphertext, stored and served."""

from __future__ import annotations

import email
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from mssgate.db.schema import quarantine, queue_contents, stored_messages
from mssgate.documents.limits import DocumentLimits
from mssgate.errors import Conflict
from mssgate.queue import DocumentQueue, release
from mssgate.queue.crypto import is_sealed
from tests.queue.gpgkeys import key_pair
from tests.queue.helpers import RIS_A, RIS_B, add_consumer, cda, deliver, mail


def test_content_is_stored_and_served_encrypted(
    engine: Engine, queue: DocumentQueue, tmp_path: Path
) -> None:
    with key_pair("RIS A <ris-a@hopital-a.test>") as keys:
        consumer, _ = add_consumer(engine, "ris-a", RIS_A, pgp_key=keys.public)
        plain_consumer, _ = add_consumer(engine, "ris-b", RIS_B)
        document = cda(1)
        [doc_id] = deliver(queue, mail([document]))
        [plain_id] = deliver(queue, mail([document]), mailbox=RIS_B)
        # What a copy of the disk holds for RIS A: ciphertext only, for both blobs.
        with engine.connect() as conn:
            row = conn.execute(
                select(queue_contents).where(queue_contents.c.document_id == doc_id)
            ).one()
        assert document not in bytes(row.content) and b"PAT-TROIS" not in bytes(row.hl7)
        assert keys.decrypt(bytes(row.content)) == document
        blob, original = queue.content(consumer, doc_id)
        assert blob.encrypted and blob.media_type == "application/pgp-encrypted"
        assert original == "text/xml" and keys.decrypt(blob.data) == document
        hl7 = keys.decrypt(queue.hl7(consumer, doc_id).data)
        assert hl7.startswith(b"MSH|") and b"279035121518989^^^ASIP-SANTE-INS-NIR" in hl7
        # Metadata stays queryable, and a mailbox without a key is unaffected.
        record = queue.document(consumer, doc_id)
        assert record.ins.value == "279035121518989"
        assert queue.entry(doc_id).encrypted and not queue.entry(plain_id).encrypted
        assert queue.content(plain_consumer, plain_id)[0].data == document
        assert (tmp_path / "gnupg").is_dir()


def test_quarantine_of_a_mailbox_with_a_key_is_stored_encrypted(
    engine: Engine, queue: DocumentQueue
) -> None:
    with key_pair("RIS A <ris-a@hopital-a.test>") as keys:
        add_consumer(engine, "ris-a", RIS_A, pgp_key=keys.public)
        held = cda(7, replaces=None).replace(b"279035121518989", b"")  # no INS: 903 or 905
        message = mail([held], n=7)
        [held_id] = deliver(queue, message)
        with engine.connect() as conn:
            row = conn.execute(select(quarantine).where(quarantine.c.id == held_id)).one()
            # The message is stored once, apart (issue 12 item 12), sealed like the rest.
            stored = conn.execute(
                select(stored_messages.c.content).where(stored_messages.c.id == row.message_ref)
            ).scalar_one()
        assert row.message is None
        assert held not in bytes(row.content) and b"PAT-TROIS" not in bytes(stored)
        assert keys.decrypt(bytes(row.content)) == held
        # The message is kept as its mailbox copy is: PGP/MIME that the RIS's key opens.
        sealed = email.message_from_bytes(bytes(stored), policy=policy.SMTP)
        assert sealed.get_content_type() == "multipart/encrypted"
        armored = list(sealed.iter_parts())[1].get_payload(decode=True)
        assert isinstance(armored, bytes) and keys.decrypt(armored) == message
        entry = queue.quarantine.get(held_id)
        assert entry.encrypted and entry.code in (903, 905)
        # Replaying the delivery finds the same entry (the dedup key is the clear message's).
        assert deliver(queue, message) == [held_id]
        # The gateway cannot read it again, so it cannot release it.
        with pytest.raises(Conflict, match="encrypted"):
            release(queue, held_id, limits=DocumentLimits(), allow_test_oids=True, actor="t")
        assert queue.quarantine.get(held_id).state == "held"


def test_seal_message_leaves_a_mailbox_without_a_key_alone(
    engine: Engine, queue: DocumentQueue
) -> None:
    add_consumer(engine, "ris-b", RIS_B)
    message = mail([cda(8)], n=8, to=RIS_B)
    assert queue.seal_message(RIS_B, message) is message
    assert not is_sealed(message)
