"""PDF reading with pypdf: magic check, page and time caps, text, metadata, labelled INS.

Text is read for one purpose: the labelled INS, compared with the structured documents'
(reconcile.py). A report names its patient in the header of its first pages, so only the first
`pdf_ins_pages` pages are read, and reading stops after the first page that carries a labelled
INS (that page is read whole: a second patient named on it is still seen). Text extraction is
nearly all of a PDF's cost (one page of a Word report: ~40 ms of pypdf), so a 500-page PDF
costs its first page, not 200 pages.

pypdf is pure Python and well fuzzed, but on hostile files it can raise nearly any exception
type (KeyError, TypeError, RecursionError...), so the whole read sits behind one boundary that
turns every failure into `PdfError`. Time is checked between pages: one pathological page can
still overrun the budget by its own cost, which the size and page caps keep small.
"""

from __future__ import annotations

import io
import re
import time
from typing import Final

import pypdf
from pydantic import BaseModel, ConfigDict

from mssgate.documents.errors import LimitExceeded, PdfError
from mssgate.documents.limits import DocumentLimits
from mssgate.ins import is_valid_value

PDF_MAGIC: Final = b"%PDF-"

# An INS counts only after a label: a bare 15-digit number can be anything (an order number,
# a phone list), and a report may cite other people's numbers without a label.
_LABEL: Final = (
    r"(?:matricule\s+INS|n(?:°|o|º|um(?:éro|ero)?)\.?\s*(?:d['\u2019]?\s*)?INS|INS[-\s]?NIR|INS[-\s]?NIA"
    r"|INS|NIR|NIA)"
)
_INS_NUMBER: Final = (
    r"([0-9]\s?[0-9]{2}\s?[0-9]{2}\s?(?:[0-9]{2}|2[AB])\s?[0-9]{3}\s?[0-9]{3}\s?[0-9]{2})"
)
_LABELLED_INS_RE: Final = re.compile(
    rf"(?<![A-Za-z]){_LABEL}(?![A-Za-z])\s*(?:\((?:NIR|NIA)\)\s*)?[:=]?\s*{_INS_NUMBER}(?![0-9])",
    re.IGNORECASE,
)


# Longer than any labelled INS the pattern matches ("matricule INS (NIR) : " and 15 digits
# with their spaces): the text of earlier pages searched again with a new one.
_LABELLED_SPAN: Final = 120


class PdfInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    page_count: int
    # Pages whose text was extracted, from the first: bounded by `pdf_ins_pages`,
    # `max_pdf_pages`, and the page where the first labelled INS was found.
    pages_read: int
    # That page (1-based), or None when the pages read carry no labelled valid INS.
    ins_page: int | None = None
    text: str
    metadata: dict[str, str]
    encrypted: bool
    # Distinct INS values that appear after a label and whose key checks.
    labelled_ins: tuple[str, ...]
    # Labelled numbers with a failing key: reported, never used as an identity.
    rejected_ins_candidates: int
    # A hard cap cut the text short: more pages than `max_pdf_pages`, or the text cap.
    truncated: bool

    @property
    def unread_pages(self) -> int:
        return self.page_count - self.pages_read


def looks_like_pdf(data: bytes) -> bool:
    # ISO 32000 tolerates bytes before the header; readers accept it within the first 1 KiB.
    return PDF_MAGIC in data[:1024]


def find_labelled_ins(text: str) -> tuple[tuple[str, ...], int]:
    """(valid labelled INS values in order of appearance, number of labelled bad keys)."""
    found: dict[str, None] = {}
    rejected = 0
    for match in _LABELLED_INS_RE.finditer(text):
        value = "".join(match.group(1).split()).upper()
        if is_valid_value(value):
            found.setdefault(value, None)
        else:
            rejected += 1
    return tuple(found), rejected


def _metadata(reader: pypdf.PdfReader) -> dict[str, str]:
    raw = reader.metadata
    if raw is None:
        return {}
    kept: dict[str, str] = {}
    for key, value in raw.items():
        text = str(value)
        kept[str(key).lstrip("/")] = text[:1000]
        if len(kept) >= 32:
            break
    return kept


def read_pdf(data: bytes, limits: DocumentLimits) -> PdfInfo:
    """Parse a PDF and extract its text within `limits`. Raises `PdfError`/`LimitExceeded`."""
    if len(data) > limits.max_pdf_bytes:
        raise LimitExceeded("PDF larger than allowed")
    if not looks_like_pdf(data):
        raise PdfError("not a PDF (no %PDF- header)")
    started = time.monotonic()
    try:
        return _read(data, limits, started)
    except (PdfError, LimitExceeded):
        raise
    except RecursionError as exc:
        raise PdfError("PDF structure too deep") from exc
    except Exception as exc:
        raise PdfError("PDF cannot be parsed") from exc


def _read(data: bytes, limits: DocumentLimits, started: float) -> PdfInfo:
    reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
    encrypted = reader.is_encrypted
    if encrypted and reader.decrypt("") == pypdf.PasswordType.NOT_DECRYPTED:
        raise PdfError("PDF is encrypted with a user password")
    page_count = len(reader.pages)
    if page_count == 0:
        raise PdfError("PDF has no page")
    texts: list[str] = []
    chars = 0
    pages_read = 0
    ins_page: int | None = None
    tail = ""
    truncated = page_count > limits.max_pdf_pages
    for index in range(min(page_count, limits.max_pdf_pages, limits.pdf_ins_pages)):
        if time.monotonic() - started > limits.pdf_time_budget_seconds:
            raise LimitExceeded("PDF text extraction exceeded its time budget")
        page_text = reader.pages[index].extract_text() or ""
        pages_read += 1
        kept = page_text[: limits.max_pdf_text_chars - chars]
        texts.append(kept)
        chars += len(kept)
        # With the end of the text before it: a label may end one page and its number open
        # the next. Only a valid INS stops the reading (a bad key is no identity).
        window = f"{tail}\n{kept}"
        if find_labelled_ins(window)[0]:
            ins_page = pages_read
        if len(kept) < len(page_text):
            truncated = True
            break
        if ins_page is not None:
            break
        tail = window[-_LABELLED_SPAN:]
    if time.monotonic() - started > limits.pdf_time_budget_seconds:
        raise LimitExceeded("PDF text extraction exceeded its time budget")
    text = "\n".join(texts)
    labelled, rejected = find_labelled_ins(text)
    return PdfInfo(
        page_count=page_count,
        pages_read=pages_read,
        ins_page=ins_page,
        text=text,
        metadata=_metadata(reader),
        encrypted=encrypted,
        labelled_ins=labelled,
        rejected_ins_candidates=rejected,
        truncated=truncated,
    )
