"""Hostile inputs: each ends as a 906 quarantine with a reason, in bounded memory, no file."""

from __future__ import annotations

import base64
import io
import os
import sys
import tracemalloc
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mssgate.documents import (
    DocumentLimits,
    PipelineResult,
    QuarantineCode,
    Quarantined,
    XmlError,
    process_message,
)
from mssgate.documents.xml import parse_xml

from .factory import (
    PAT_TROIS,
    CdaSpec,
    EntrySpec,
    make_cda,
    make_loop_pdf,
    make_mail,
    make_metadata,
    make_xdm,
)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
_writes: list[str] | None = None


def _audit(event: str, args: tuple[object, ...]) -> None:
    # Audit hooks cannot be removed, so this one only records while a test watches.
    if _writes is None or event != "open":
        return
    path, mode, flags = [*args, None, None, None][:3]
    writing = isinstance(mode, str) and any(c in mode for c in "wax+")
    if isinstance(flags, int) and flags & _WRITE_FLAGS:
        writing = True
    if writing:
        _writes.append(str(path))


sys.addaudithook(_audit)

MEMORY_BUDGET = 48 * 1024 * 1024


@contextmanager
def guarded() -> Iterator[None]:
    """No file opened for writing, and a Python-heap peak under MEMORY_BUDGET."""
    global _writes
    _writes = []
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < MEMORY_BUDGET, f"peak {peak} bytes"
        assert _writes == [], _writes
    finally:
        tracemalloc.stop()
        _writes = None


def held_906(raw: bytes, *, reason: str, **kwargs: object) -> Quarantined:
    with guarded():
        result: PipelineResult = process_message(raw, allow_test_oids=True, **kwargs)  # type: ignore[arg-type]
    assert result.quarantined, result
    outcome = result.quarantined[0]
    assert outcome.code == QuarantineCode.OTHER, outcome.reason
    assert reason.lower() in outcome.reason.lower(), outcome.reason
    assert outcome.content, "original bytes kept"
    return outcome


XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>"""

XXE_NETWORK = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument SYSTEM "http://127.0.0.1:9/cda.dtd">
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>x</title></ClinicalDocument>"""

BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(
        b'<!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b']>\n<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol9;</title></ClinicalDocument>'
)


@pytest.mark.parametrize(
    "payload", [XXE_FILE, XXE_NETWORK, BILLION_LAUGHS], ids=["file", "net", "laughs"]
)
def test_doctype_attacks_as_cda(payload: bytes) -> None:
    outcome = held_906(make_mail([("cr.xml", payload, "text/xml")]), reason="DOCTYPE")
    assert outcome.content == payload


@pytest.mark.parametrize("payload", [XXE_FILE, BILLION_LAUGHS], ids=["file", "laughs"])
def test_doctype_attacks_in_xdm_metadata(payload: bytes) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("IHE_XDM/SUBSET01/METADATA.XML", payload)
    held_906(make_mail([("IHE_XDM.ZIP", archive.getvalue(), "application/zip")]), reason="DOCTYPE")


def test_utf16_doctype_is_caught_after_parsing() -> None:
    payload = XXE_FILE.decode().replace('version="1.0"', 'version="1.0" encoding="UTF-16"')
    data = payload.encode("utf-16")
    with pytest.raises(XmlError):
        parse_xml(data, DocumentLimits())
    held_906(make_mail([("cr.xml", data, "text/xml")]), reason="DOCTYPE")


def test_deep_xml_and_huge_text_node() -> None:
    deep = (
        b'<ClinicalDocument xmlns="urn:hl7-org:v3">'
        + b"<a>" * 5000
        + b"</a>" * 5000
        + b"</ClinicalDocument>"
    )
    held_906(make_mail([("cr.xml", deep, "text/xml")]), reason="XML")
    big = make_cda(CdaSpec(level="N1", pdf_base64="A" * 11_000_000))
    with pytest.raises(XmlError):
        parse_xml(big, DocumentLimits())


def _bomb_member(size: int) -> bytes:
    archive = io.BytesIO()
    metadata = make_metadata(
        PAT_TROIS, [EntrySpec("DOC0001.XML", b"", write_hash=False)], subset="SUBSET01"
    )
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("IHE_XDM/SUBSET01/METADATA.XML", metadata)
        with z.open("IHE_XDM/SUBSET01/DOC0001.XML", "w", force_zip64=True) as member:
            chunk = b"\0" * (1024 * 1024)
            for _ in range(size // len(chunk)):
                member.write(chunk)
    return archive.getvalue()


def test_high_ratio_member_zip_bomb() -> None:
    archive = _bomb_member(64 * 1024 * 1024)
    assert len(archive) < 200_000
    held_906(make_mail([("IHE_XDM.ZIP", archive, "application/zip")]), reason="ratio")


def test_nested_zip_bomb_is_never_expanded() -> None:
    # 42.zip style: an archive of archives. The outer ratio is modest, the inner ones are
    # never opened (documents are bytes, not containers), and the inner bomb is refused as
    # an XDM in its own right if someone attaches it directly.
    inner = _bomb_member(32 * 1024 * 1024)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(16):
            z.writestr(f"IHE_XDM/SUBSET01/{i:02d}.ZIP", inner)
    held_906(make_mail([("IHE_XDM.ZIP", outer.getvalue(), "application/zip")]), reason="METADATA")
    held_906(make_mail([("IHE_XDM.ZIP", inner, "application/zip")]), reason="ratio")


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "/tmp/x", "IHE_XDM\\SUBSET01\\x"])
def test_zip_slip(name: str) -> None:
    archive = make_xdm(
        PAT_TROIS, [EntrySpec("DOC0001.XML", make_cda())], extra_members=[(name, b"x")]
    )
    held_906(make_mail([("IHE_XDM.ZIP", archive, "application/zip")]), reason="unsafe")


def test_ten_thousand_tiny_members() -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for i in range(10_000):
            z.writestr(f"IHE_XDM/SUBSET01/F{i:05d}", b"")
    held_906(make_mail([("IHE_XDM.ZIP", archive.getvalue(), "application/zip")]), reason="members")


def test_pdf_page_tree_loop() -> None:
    loop = make_loop_pdf()
    held_906(make_mail([("cr.pdf", loop, "application/pdf")]), reason="PDF")
    cda = make_cda(CdaSpec(level="N1", pdf=loop))
    outcome = held_906(make_mail([("cr.xml", cda, "text/xml")]), reason="embedded PDF")
    assert outcome.content == cda


def test_base64_garbage() -> None:
    garbage = base64.b64encode(os.urandom(64)).decode()[:-3] + "*!#"
    cda = make_cda(CdaSpec(level="N1", pdf_base64=garbage))
    held_906(make_mail([("cr.xml", cda, "text/xml")]), reason="base64")
    raw = (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b'Content-Type: application/zip; name="IHE_XDM.ZIP"\r\n'
        b'Content-Disposition: attachment; filename="IHE_XDM.ZIP"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n@@@@ this is not base64 %%%%\r\n--b--\r\n"
    )
    held_906(raw, reason="zip")


def test_deep_mime_nesting() -> None:
    body = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for level in range(3000):
        b = f"b{level}".encode()
        body = (
            b"Content-Type: multipart/mixed; boundary="
            + b
            + b"\r\n\r\n--"
            + b
            + b"\r\n"
            + body
            + b"--"
            + b
            + b"--\r\n"
        )
    raw = b"MIME-Version: 1.0\r\n" + body
    outcome = held_906(raw, reason="MIME")
    assert outcome.content == raw and outcome.origin == "message"


def test_message_rfc822_nesting() -> None:
    raw = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for _ in range(50):
        raw = b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" + raw
    held_906(raw, reason="MIME", limits=DocumentLimits(max_mime_depth=10))


def test_guard_detects_writes(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    with pytest.raises(AssertionError), guarded():
        (tmp_path / "x").write_bytes(b"x")
