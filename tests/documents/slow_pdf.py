"""A small PDF whose one page costs pypdf's text extraction seconds: `ops` text operators,
deflated (6 KiB for 200,000 operators: one page, about 27 s unbounded on a 2-core machine)."""

from __future__ import annotations

import zlib

from mssgate.documents.samples import _pdf_from_objects


def make_slow_pdf(ops: int = 200_000) -> bytes:
    content = zlib.compress(b"BT /F1 1 Tf " + b"(a) Tj 1 0 Td " * ops + b"ET", 9)
    return _pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content)
            + content
            + b"\nendstream",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
            b" /Resources << /Font << /F1 5 0 R >> >> /Contents 3 0 R >>",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        ]
    )
