from __future__ import annotations

import pytest

from mssgate.documents import DocumentLimits, LimitExceeded, PdfError, find_labelled_ins, read_pdf

from .factory import make_loop_pdf, make_pdf


def test_text_metadata_and_labelled_ins() -> None:
    pdf = make_pdf(["CENTRE D'IMAGERIE", "Matricule INS : 279035121518989"], title="CR scanner")
    info = read_pdf(pdf, DocumentLimits())
    assert info.page_count == 1
    assert "CENTRE D" in info.text and "IMAGERIE" in info.text
    assert info.metadata["Title"] == "CR scanner"
    assert info.labelled_ins == ("279035121518989",)
    assert not info.truncated


@pytest.mark.parametrize(
    ("text", "found", "rejected"),
    [
        ("INS : 279035121518989", ("279035121518989",), 0),
        ("N° INS 2 79 03 51 215 189 89", ("279035121518989",), 0),
        ("NIR: 188102B17295165", ("188102B17295165",), 0),
        ("matricule INS (NIR) 277076322082910", ("277076322082910",), 0),
        ("INS-NIR 162018885045327 puis INS 162018885045327", ("162018885045327",), 0),
        ("279035121518989", (), 0),  # unlabelled: not an identity
        ("Tél 279035121518989", (), 0),
        ("INSEE 279035121518989", (), 0),
        ("INS: 279035121518988", (), 1),  # labelled, bad key
        ("Matricule INS (NIR) Date de naissance", (), 0),
        ("INS 2790351215189891", (), 0),  # 16 digits
    ],
)
def test_find_labelled_ins(text: str, found: tuple[str, ...], rejected: int) -> None:
    assert find_labelled_ins(text) == (found, rejected)


def test_page_cap_truncates_without_failing() -> None:
    info = read_pdf(make_pdf(["page"], pages=5), DocumentLimits(max_pdf_pages=2))
    assert (info.page_count, info.pages_read, info.truncated) == (5, 2, True)


def test_time_budget() -> None:
    with pytest.raises(LimitExceeded, match="time budget"):
        read_pdf(make_pdf(["page"], pages=3), DocumentLimits(pdf_time_budget_seconds=1e-9))


def test_page_tree_loop_is_a_typed_error() -> None:
    with pytest.raises(PdfError):
        read_pdf(make_loop_pdf(), DocumentLimits())


@pytest.mark.parametrize(
    "data",
    [b"not a pdf", b"%PDF-1.4\n garbage without structure", make_pdf(["x"])[:60]],
)
def test_garbage_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(PdfError):
        read_pdf(data, DocumentLimits())


def test_size_cap() -> None:
    with pytest.raises(LimitExceeded):
        read_pdf(make_pdf(["x"]), DocumentLimits(max_pdf_bytes=10))
