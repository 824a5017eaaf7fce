"""Read receipts for the RIS's copies: found inside a signed MDN, only displayed/processed
dispositions count, anything else is no receipt."""

from __future__ import annotations

from mssgate.outbound.receipts import read_receipt
from tests.smtp.test_outbound_gateway import mdn


def test_a_receipt_is_read_from_a_plain_or_wrapped_mdn() -> None:
    raw = mdn("<copy-1@ris.test>")
    found = read_receipt(raw)
    assert found is not None and found.read
    assert found.original_message_id == "<copy-1@ris.test>"
    assert found.reader == "alice@hopital-a.test"
    head, _, body = raw.partition(b"\r\n\r\n")
    # The same report inside a multipart/signed (as a signing client or gateway sends it).
    wrapped = (
        b"From: alice@hopital-a.test\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; boundary="s"\r\n'
        b"\r\n--s\r\n"
        + b"\r\n".join(line for line in head.split(b"\r\n") if line.startswith(b"Content-Type"))
        + b"\r\n\r\n" + body
        + b"\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nAA==\r\n--s--\r\n"
    )  # fmt: skip
    again = read_receipt(wrapped)
    assert again is not None and again.original_message_id == "<copy-1@ris.test>"


def test_a_deleted_disposition_or_no_report_is_not_a_read() -> None:
    deleted = mdn("<copy-1@ris.test>").replace(b"; displayed", b"; deleted")
    found = read_receipt(deleted)
    assert found is not None and not found.read
    assert read_receipt(b"From: a@b.test\r\nSubject: x\r\n\r\nhello\r\n") is None
    assert read_receipt(mdn("")) is None


def test_a_report_with_raw_8bit_or_control_bytes_is_no_receipt_not_an_error() -> None:
    """What anyone may mail the RIS's mailbox: 8-bit bytes made compat32 hand a Header (an
    AttributeError out of the document feed), and a NUL reached the copy lookup, which
    PostgreSQL's text refuses (a DataError the feed retried every 30 s, for ever)."""
    for original in (b"<a\xff\xfeb@x>", b"<a\x00b@x>", b"<a\x1cb@x>", b"<a b@x>"):
        raw = mdn("<placeholder@x>").replace(b"<placeholder@x>", original)
        assert read_receipt(raw) is None, original
    weird = mdn("<copy-1@ris.test>").replace(b"; displayed", b"; displayed\x00\xff")
    found = read_receipt(weird)
    assert found is not None and found.read
    assert found.disposition.isascii() and found.disposition.isprintable()


def test_a_nested_multipart_bomb_is_no_receipt_not_an_error() -> None:
    """Anyone may mail the RIS's mailbox: 1,200 nested multiparts made the stdlib parser
    recurse past Python's limit, and the RecursionError held the document job (the hostile
    corpus caught it), whether or not the message claims to be a report."""
    nested = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
        for i in range(1200)
    )
    for top in (b"multipart/mixed", b"multipart/report; report-type=disposition-notification"):
        bomb = (
            b"From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: " + top
            + b'; boundary="top"\r\n\r\n--top\r\n' + nested + b"x\r\n--top--\r\n"
        )  # fmt: skip
        assert read_receipt(bomb) is None
