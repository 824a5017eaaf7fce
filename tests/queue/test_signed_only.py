"""The RIS feed reads only what the signature covers (issue 12 B.4, B.5), at the queue: the
documents queued or held for a message, and a release that runs the pipeline again."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

import pytest

from mssgate.pki import create_dev_ca, issue_smime_cert
from mssgate.queue import DocumentQueue
from mssgate.smime import SigningKey, sign_message
from tests.documents.factory import (
    NESSI,
    PAT_TROIS,
    CdaSpec,
    EntrySpec,
    make_cda,
    make_xdm,
    with_patient,
)
from tests.queue.helpers import RIS_A, SENDER, deliver
from tests.signed_mail import smuggle_in_signature


@pytest.fixture(scope="module")
def signer() -> tuple[SigningKey, object]:
    ca_key, ca_cert = create_dev_ca("signed-only CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, SENDER)
    assert not isinstance(key, str)
    return key, cert  # type: ignore[return-value]


def _mail(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, RIS_A, "CR"
    msg["Message-ID"] = f"<signed-only-{n}@hopital.mssante.fr>"
    msg.set_content("ci-joint")
    cda = make_cda(CdaSpec(doc_root=f"1.2.250.1.999.1.1.77.{n}"))
    msg.add_attachment(cda, maintype="text", subtype="xml", filename="CR.xml")
    return msg.as_bytes(policy=SMTP)


def _sign(signer: tuple[SigningKey, object], raw: bytes, *, detached: bool = True) -> bytes:
    key, cert = signer
    return sign_message(raw, key=key, cert=cert, detached=detached)  # type: ignore[arg-type]


def _other_patient_xdm() -> bytes:
    cda = make_cda(with_patient(CdaSpec(doc_root="1.2.250.1.999.1.1.78"), NESSI))
    return make_xdm(NESSI, [EntrySpec("DOC0001.XML", cda)])


def test_the_signature_part_is_never_a_document(
    queue: DocumentQueue, signer: tuple[SigningKey, object]
) -> None:
    hostile = smuggle_in_signature(_sign(signer, _mail(1)), _other_patient_xdm())
    ids = deliver(queue, hostile)
    assert [queue.entry(i).record.ins.value for i in ids] == [PAT_TROIS.ins]
    assert queue.quarantine.entries() == []


def test_opaque_signed_documents_are_queued(
    queue: DocumentQueue, signer: tuple[SigningKey, object]
) -> None:
    ids = deliver(queue, _sign(signer, _mail(2), detached=False))
    assert [queue.entry(i).record.ins.value for i in ids] == [PAT_TROIS.ins]


def test_an_unreadable_signature_holds_the_message_whole(
    queue: DocumentQueue, signer: tuple[SigningKey, object]
) -> None:
    # With signatures off nothing refused it at DATA: held, never read as a whole.
    signed = _sign(signer, _mail(3))
    boundary = signed.split(b'boundary="')[1].split(b'"')[0]
    close = b"\r\n--" + boundary + b"--"
    third = b"\r\n--" + boundary + b"\r\nContent-Type: text/xml\r\n\r\n" + make_cda()
    ids = deliver(queue, signed.replace(close, third + close))
    [entry] = queue.quarantine.entries()
    assert ids == [entry.id]
    assert (entry.code, entry.origin) == (906, "message")
    assert entry.reason.startswith("signed content unreadable: multipart/signed needs exactly")
