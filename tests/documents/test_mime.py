from __future__ import annotations

import pytest

from mssgate.documents import DocumentLimits, LimitExceeded, MimeError, walk_message

from .factory import make_mail, make_pdf


def test_attachments_by_type_and_name() -> None:
    pdf = make_pdf(["x"])
    raw = make_mail([("CR.pdf", pdf, "application/pdf"), ("IHE_XDM.ZIP", b"PK", "application/zip")])
    walk = walk_message(raw, DocumentLimits())
    assert [(a.filename, a.content_type) for a in walk.attachments] == [
        ("CR.pdf", "application/pdf"),
        ("IHE_XDM.ZIP", "application/zip"),
    ]
    assert walk.attachments[0].data == pdf
    assert walk.message_id == "<test-0001@hopital.mssante.fr>"
    assert walk.subject is not None and walk.subject.startswith("XDM/1.0/DDM+")


def test_encoded_subject_and_rfc2231_filename() -> None:
    raw = (
        b"Subject: =?utf-8?q?CR_d=27imagerie_m=C3=A9dicale?=\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''compte%20rendu%C3%A9.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n"
    )
    walk = walk_message(raw, DocumentLimits())
    assert walk.subject == "CR d'imagerie médicale"
    assert walk.attachments[0].filename == "compte rendué.pdf"
    assert walk.attachments[0].data == b"%PDF-"


def test_defects_are_recorded_not_raised() -> None:
    raw = (
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"JVBERi0xLjQK*garbage=\r\n"
    )
    walk = walk_message(raw, DocumentLimits())
    assert walk.defects
    assert len(walk.attachments) == 1


def _nested(depth: int) -> bytes:
    head = b"MIME-Version: 1.0\r\n"
    body = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        body = (
            b'Content-Type: multipart/mixed; boundary="'
            + boundary
            + b'"\r\n\r\n--'
            + boundary
            + b"\r\n"
            + body
            + b"--"
            + boundary
            + b"--\r\n"
        )
    return head + body


def test_depth_cap() -> None:
    assert walk_message(_nested(5), DocumentLimits(max_mime_depth=5)).attachments == ()
    with pytest.raises(MimeError, match="deep"):
        walk_message(_nested(6), DocumentLimits(max_mime_depth=5))


def test_deep_nesting_is_refused_before_parsing() -> None:
    with pytest.raises(MimeError):
        walk_message(_nested(5000), DocumentLimits())


def test_part_count_cap() -> None:
    attachments = [(f"f{i}.bin", b"x", "application/octet-stream") for i in range(20)]
    with pytest.raises(MimeError, match="parts"):
        walk_message(make_mail(attachments), DocumentLimits(max_mime_parts=10))


def test_message_size_cap() -> None:
    with pytest.raises(LimitExceeded):
        walk_message(b"x" * 11, DocumentLimits(max_message_bytes=10))


def test_eight_bit_bytes_in_a_disposition_are_a_defect_not_a_crash() -> None:
    # Found by tests/documents/test_mime_fuzz.py: the field came back as an email.header.Header
    # and the walk (so the whole pipeline) died with AttributeError.
    raw = (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\xff\r\n\r\n"
        b"hi\r\n--x\r\nContent-Type: text/plain\r\n"
        b"Content-Disposition: \xe9attachment; filename=a.txt\r\n\r\nho\r\n--x--\r\n"
    )
    walk = walk_message(raw, DocumentLimits())
    # "attachment\xff" is no disposition we know: that part is a body, the named one is not.
    assert [(a.filename, a.data) for a in walk.attachments] == [("a.txt", b"ho")]
