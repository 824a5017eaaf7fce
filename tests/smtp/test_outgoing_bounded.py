"""Mail leaving for a peer gets its MSSanté headers inside the SMTP transaction: that work must
not include PDF text extraction, which no in-process check bounds in time (issue 12 item 13).
Before, a message with a PDF whose one page costs pypdf about half a minute held the client's
DATA that long; the client here gives up after 8 s without an answer (the bound is the
client's patience, not a measure: the headers alone take milliseconds)."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage

from tests.documents.slow_pdf import make_slow_pdf
from tests.smtp.conftest import ALICE, PEER_DOMAIN, Gateway


def test_a_slow_pdf_to_a_peer_is_accepted_without_reading_it(gateway: Gateway) -> None:
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = f"dr.b@{PEER_DOMAIN}"
    msg["Subject"] = "Compte rendu"
    msg["Message-ID"] = "<slow-pdf-out@hopital-a.test>"
    msg.set_content("Compte rendu ci-joint.")
    msg.add_attachment(make_slow_pdf(), maintype="application", subtype="pdf", filename="CR.pdf")
    client = gateway.login()
    assert client.sock is not None
    client.sock.settimeout(8)
    try:
        refused = client.sendmail(ALICE, [f"dr.b@{PEER_DOMAIN}"], msg.as_bytes(policy=policy.SMTP))
    finally:
        client.quit()
    assert refused == {}
    spooled = list((gateway.data / "spool" / "msg").glob("*.eml"))
    assert len(spooled) == 1
    head = spooled[0].read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"\r\nX-MSS-NIL: " in b"\r\n" + head
