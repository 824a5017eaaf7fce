"""Encryption at rest: a consumer with an OpenPGP key gets ciphertext, stored and served."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, select

from mssgate.db.schema import queue_contents
from mssgate.queue import DocumentQueue
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
