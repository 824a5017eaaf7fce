"""Review of issue 12 B.4: a message that only says it is encrypted is never read for documents.

A message S/MIME-encrypted for its recipient is taken from a trusted peer without a signature
check when the gateway holds no key to open it ("peer-encrypted": the signature is inside).
The claim is one Content-Type parameter: `smime-type=enveloped-data` over a body that is an
IHE_XDM.ZIP for any patient reached the RIS queue, nothing having verified a byte of it."""

from __future__ import annotations

import base64

from mssgate.queue import DocumentQueue
from mssgate.smime.layers import Layering, layering
from tests.documents.factory import NESSI, CdaSpec, EntrySpec, make_cda, make_xdm, with_patient
from tests.queue.helpers import RIS_A, SENDER, deliver


def _claimed_encrypted() -> bytes:
    cda = make_cda(with_patient(CdaSpec(doc_root="1.2.250.1.999.1.1.79"), NESSI))
    xdm = make_xdm(NESSI, [EntrySpec("DOC0001.XML", cda)])
    head = (
        f"From: {SENDER}\r\nTo: {RIS_A}\r\nSubject: CR\r\nMIME-Version: 1.0\r\n"
        "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=IHE_XDM.ZIP\r\n"
        "Content-Disposition: attachment; filename=IHE_XDM.ZIP\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head.encode() + base64.encodebytes(xdm)


def test_an_encrypted_entity_is_held_never_read(queue: DocumentQueue) -> None:
    raw = _claimed_encrypted()
    # What the DATA stage sees: encrypted, so no signature check when no key opens it.
    assert layering(raw) is Layering.ENCRYPTED
    ids = deliver(queue, raw)
    [entry] = queue.quarantine.entries()
    assert ids == [entry.id]
    assert entry.origin == "message" and "encrypted" in entry.reason
    assert queue.quarantine.content(entry.id) == raw
