"""A signature part is never a document, wherever it sits (issue 12 B.4): a signed message
forwarded inside the signed content still has its detached signature, whose unsigned
attributes and part headers are the sender's to fill."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

from mssgate.documents import process_message, walk_message
from mssgate.documents.limits import DocumentLimits
from mssgate.pki import create_dev_ca, issue_smime_cert
from mssgate.smime import sign_message
from tests.documents.factory import NESSI, CdaSpec, EntrySpec, make_cda, make_xdm, with_patient
from tests.signed_mail import smuggle_in_signature


def test_a_forwarded_signature_part_is_not_read_as_a_document() -> None:
    ca_key, ca_cert = create_dev_ca("forwarded CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, "dr.c@clinique-c.test")
    inner = EmailMessage()
    inner["From"], inner["Subject"] = "dr.c@clinique-c.test", "CR"
    inner.set_content("rien ici")
    signed = sign_message(inner.as_bytes(policy=SMTP), key=key, cert=cert)  # type: ignore[arg-type]
    cda = make_cda(with_patient(CdaSpec(doc_root="1.2.250.1.999.1.1.91"), NESSI))
    hostile = smuggle_in_signature(signed, make_xdm(NESSI, [EntrySpec("DOC0001.XML", cda)]))
    raw = (
        b"From: dr.alice@hopital-a.test\r\nSubject: Fwd: CR\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="fwd"\r\n\r\n'
        b"--fwd\r\nContent-Type: text/plain\r\n\r\nmessage transmis\r\n"
        b"--fwd\r\nContent-Type: message/rfc822\r\n\r\n" + hostile + b"\r\n--fwd--\r\n"
    )
    walk = walk_message(raw, DocumentLimits())
    assert walk.attachments == ()
    assert process_message(raw, allow_test_oids=True).outcomes == ()
