"""PDF reading with pypdf: magic check, page and time caps, text, metadata, labelled INS.

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


class PdfInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    page_count: int
    pages_read: int
    text: str
    metadata: dict[str, str]
    encrypted: bool
    # Distinct INS values that appear after a label and whose key checks.
    labelled_ins: tuple[str, ...]
    # Labelled numbers with a failing key: reported, never used as an identity.
    rejected_ins_candidates: int
    truncated: bool


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
    truncated = page_count > limits.max_pdf_pages
    for index in range(min(page_count, limits.max_pdf_pages)):
        if time.monotonic() - started > limits.pdf_time_budget_seconds:
            raise LimitExceeded("PDF text extraction exceeded its time budget")
        page_text = reader.pages[index].extract_text() or ""
        pages_read += 1
        if chars + len(page_text) > limits.max_pdf_text_chars:
            texts.append(page_text[: limits.max_pdf_text_chars - chars])
            truncated = True
            break
        texts.append(page_text)
        chars += len(page_text)
    if time.monotonic() - started > limits.pdf_time_budget_seconds:
        raise LimitExceeded("PDF text extraction exceeded its time budget")
    text = "\n".join(texts)
    labelled, rejected = find_labelled_ins(text)
    return PdfInfo(
        page_count=page_count,
        pages_read=pages_read,
        text=text,
        metadata=_metadata(reader),
        encrypted=encrypted,
        labelled_ins=labelled,
        rejected_ins_candidates=rejected,
        truncated=truncated,
    )
