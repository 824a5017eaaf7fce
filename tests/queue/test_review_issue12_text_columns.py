"""Review of issue 12 D.13: a value the sender chose never makes a document job fail forever.

On PostgreSQL a text column cannot hold NUL and a VARCHAR(200) refuses 201 characters; an
RFC 2047 Subject (`=00`), an RFC 2231 filename (`%00`) and a Content-Type are the sender's
to write. The INSERT failed with a DataError, which the document worker retries as the
gateway's own trouble: every 30 s, forever, and the RIS never got the documents."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from mssgate.documents import DocumentLimits
from mssgate.queue import DocumentQueue, ingest_message
from tests.documents.factory import PAT_TROIS, CdaSpec, EntrySpec, make_cda, make_xdm
from tests.queue.helpers import RIS_A, SENDER, cda

LONG_TYPE = "application/" + "x" * 250


def _mail(document: bytes, *, filename: str, subject: str, content_type: str) -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: {RIS_A}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nci-joint\r\n"
        f"--b\r\nContent-Type: {content_type}\r\n"
        f"Content-Disposition: attachment; filename*=utf-8''{filename}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head.encode() + base64.encodebytes(document) + b"--b--\r\n"


@pytest.mark.parametrize("held", [False, True], ids=["queued", "held"])
def test_nul_and_overlong_values_from_the_sender_are_stored(
    engine: Engine, queue: DocumentQueue, held: bool
) -> None:
    document = make_cda(CdaSpec(include_ins=False)) if held else cda(1)
    raw = _mail(document, filename="CR%00.xml", subject="=?utf-8?q?CR=00?=", content_type=LONG_TYPE)
    ids = ingest_message(
        queue, raw, mailbox=RIS_A, sender=SENDER, message_id=None, subject=None,
        received_at=datetime.now(UTC), limits=DocumentLimits(), allow_test_oids=True,
    )  # fmt: skip
    assert len(ids) == 1
    if held:
        [entry] = queue.quarantine.entries()
        assert "\x00" not in (entry.subject or "") + entry.origin
        assert entry.subject == "CR\ufffd"
    else:
        entry = queue.entry(ids[0])
        assert entry.record.subject is not None and "\x00" not in entry.record.subject


@pytest.mark.parametrize("held", [False, True], ids=["queued", "held"])
def test_an_xdm_entry_of_an_overlong_mime_type_is_stored(
    engine: Engine, queue: DocumentQueue, held: bool
) -> None:
    # Held: the size in the XDM metadata is not the document's.
    spec = EntrySpec("DOC0001.XML", cda(2), mime_type=LONG_TYPE, size_override=1 if held else None)
    xdm = make_xdm(PAT_TROIS, [spec])
    raw = _mail(xdm, filename="IHE_XDM.ZIP", subject="CR", content_type="application/zip")
    ids = ingest_message(
        queue, raw, mailbox=RIS_A, sender=SENDER, message_id=None, subject=None,
        received_at=datetime.now(UTC), limits=DocumentLimits(), allow_test_oids=True,
    )  # fmt: skip
    assert len(ids) == 1
    if held:
        [entry] = queue.quarantine.entries()
        assert entry.content_type == LONG_TYPE[:200]
