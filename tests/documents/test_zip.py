from __future__ import annotations

import io
import zipfile

import pytest

from mssgate.documents import DocumentLimits, LimitExceeded, ZipError, read_zip
from mssgate.documents.ziparchive import unsafe_name_reason

from .factory import zip_tree


def test_reads_members_in_memory() -> None:
    contents = read_zip(zip_tree([("A/B.TXT", b"hello"), ("C.XML", b"<x/>")]), DocumentLimits())
    assert [(m.name, m.data) for m in contents.members] == [
        ("A/B.TXT", b"hello"),
        ("C.XML", b"<x/>"),
    ]
    assert contents.get("a/b.txt") is not None
    assert contents.get("missing") is None


@pytest.mark.parametrize(
    "name",
    ["../evil.txt", "IHE_XDM/../../etc/passwd", "/etc/passwd", "C:/x.txt", "IHE_XDM\\x.txt"],
)
def test_zip_slip_names_are_refused(name: str) -> None:
    assert unsafe_name_reason(name) is not None
    with pytest.raises(ZipError, match="unsafe"):
        read_zip(zip_tree([(name, b"x")]), DocumentLimits())


@pytest.mark.parametrize("second", ["A.TXT", "a.txt"])
def test_duplicate_names_are_refused(second: str) -> None:
    # Two METADATA.XML (or two DOC0001.XML) would let a reader pick either one.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("A.TXT", b"1")
        if second == "A.TXT":
            with pytest.warns(UserWarning, match="Duplicate"):
                archive.writestr(second, b"2")
        else:
            archive.writestr(second, b"2")
    with pytest.raises(ZipError, match="duplicate"):
        read_zip(buffer.getvalue(), DocumentLimits())


def test_member_count_cap() -> None:
    data = zip_tree([(f"F{i}.TXT", b"") for i in range(30)])
    with pytest.raises(LimitExceeded, match="members"):
        read_zip(data, DocumentLimits(max_zip_members=29))
    assert len(read_zip(data, DocumentLimits(max_zip_members=30)).members) == 30


def test_member_and_total_size_caps_count_real_bytes() -> None:
    data = zip_tree([("A", b"a" * 5000), ("B", b"b" * 5000)])
    with pytest.raises(LimitExceeded, match="member larger"):
        read_zip(data, DocumentLimits(max_zip_member_bytes=4999))
    with pytest.raises(LimitExceeded, match="total"):
        read_zip(data, DocumentLimits(max_zip_total_bytes=9999))


def test_lying_header_size_is_not_trusted() -> None:
    data = bytearray(zip_tree([("A", b"a" * 100_000)]))
    # Shrink the declared uncompressed size in both local and central headers to 10 bytes:
    # the real output is counted, so the CRC/length check or the caps still catch it.
    declared = (100_000).to_bytes(4, "little")
    data = bytearray(bytes(data).replace(declared, (10).to_bytes(4, "little")))
    with pytest.raises((ZipError, LimitExceeded)):
        read_zip(bytes(data), DocumentLimits(max_zip_member_bytes=50_000))


def test_encrypted_flag_is_refused() -> None:
    data = bytearray(zip_tree([("A", b"abc")]))
    # general purpose flag bit 0 in the local header (offset 6) and central header (offset 8)
    data[6] |= 1
    central = bytes(data).find(b"PK\x01\x02")
    data[central + 8] |= 1
    with pytest.raises(ZipError, match="encrypted"):
        read_zip(bytes(data), DocumentLimits())


def test_not_a_zip() -> None:
    with pytest.raises(ZipError):
        read_zip(b"PK\x03\x04 truncated", DocumentLimits())
    with pytest.raises(LimitExceeded):
        read_zip(b"x" * 101, DocumentLimits(max_zip_bytes=100))


def test_unsupported_zip_version_is_a_zip_error() -> None:
    # Found by fuzzing: zipfile raises NotImplementedError("zip file version 6.4") from its
    # constructor when the central directory asks for a version it does not read.
    data = bytearray(zip_tree([("A", b"abc")]))
    central = bytes(data).find(b"PK\x01\x02")
    data[central + 6 : central + 8] = (64).to_bytes(2, "little")  # version needed to extract
    with pytest.raises(ZipError, match="unsupported zip version"):
        read_zip(bytes(data), DocumentLimits())
