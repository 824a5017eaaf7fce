"""MSSanté message conventions: X-MSS-CODECDA, X-MSS-INS and the CI-SIS "DDM" subject.

- `X-MSS-CODECDA` (Réf #2 ECO.2.4.1): the `ClinicalDocument/code/@code` of each CDA inside the
  IHE_XDM archive, comma-separated; absent when there is no CDA in an IHE_XDM.
- `X-MSS-INS` (ECO.2.4.2): `O` when the IHE_XDM carries a qualified INS, else `N`; only with a
  CDA. Qualified there means matricule, OID, birth name, first name, birth date and sex.
- Subject for machine integration: `XDM/1.0/DDM+<title> <NAME> <first name> <dd/mm/yyyy>`,
  prefixed by `[KO Intégration système !][<code>] ` on an integration error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Literal

from mssgate.documents.record import DdmSubject, DocumentRecord, PipelineResult

HEADER_CODECDA: Final = "X-MSS-CODECDA"
HEADER_INS: Final = "X-MSS-INS"
DDM_PREFIX: Final = "XDM/1.0/DDM+"
KO_PREFIX: Final = "[KO Intégration système !]"

_SUBJECT_RE: Final = re.compile(
    r"^\s*(?:\[KO Int[ée]gration syst[èe]me !\]\s*\[(?P<code>[0-9]{1,4})\]\s*)?"
    r"XDM/1\.0/DDM\+(?P<rest>.*?)\s+(?P<date>[0-9]{2}/[0-9]{2}/[0-9]{4})\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CODE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def x_mss_codecda(codes: Iterable[str]) -> str | None:
    """Header value for CDA type codes, in order, without repeats; None when there are none."""
    unique = [c for c in dict.fromkeys(code.strip() for code in codes) if c]
    for code in unique:
        # A comma or a line break would forge another value or header.
        if not _CODE_RE.fullmatch(code):
            raise ValueError("CDA code not usable in X-MSS-CODECDA")
    return ",".join(unique) if unique else None


def x_mss_ins(qualified: bool) -> Literal["O", "N"]:
    return "O" if qualified else "N"


def mss_headers(result: PipelineResult) -> dict[str, str]:
    """The two CDA-related MSSanté headers a message with this content should carry."""
    codecda = x_mss_codecda(result.xdm_cda_codes)
    if codecda is None:
        return {}
    return {HEADER_CODECDA: codecda, HEADER_INS: x_mss_ins(result.xdm_qualified_ins)}


def parse_ddm_subject(subject: str | None) -> DdmSubject | None:
    """Recognise `[KO…][code] XDM/1.0/DDM+<title> <NAME> <first name> <dd/mm/yyyy>`.

    The last three words are taken as name, first name and date; names with spaces cannot be
    told from the title and land in the title (the convention has no separator).
    """
    if not subject:
        return None
    match = _SUBJECT_RE.match(subject)
    if match is None:
        return None
    words = match.group("rest").split()
    if len(words) < 3:
        return None
    day, month, year = match.group("date").split("/")
    code = match.group("code")
    return DdmSubject(
        title=" ".join(words[:-2]),
        family=words[-2],
        given=words[-1],
        birth_date=f"{year}-{month}-{day}",
        error_code=int(code) if code else None,
    )


def with_ddm_subject(record: DocumentRecord) -> DocumentRecord:
    """The record with its subject read by the convention, or a note when it does not follow it.

    Only a note: the convention is for machine integration, and a message that ignores it
    still carries a valid document (the INS and traits come from the document itself).
    """
    parsed = parse_ddm_subject(record.subject)
    if parsed is not None:
        return record.model_copy(update={"ddm_subject": parsed})
    note = "subject does not follow XDM/1.0/DDM+<title> <NAME> <first name> <dd/mm/yyyy>"
    return record.model_copy(update={"ddm_subject": None, "notes": (*record.notes, note)})


def build_ddm_subject(
    title: str, family: str, given: str, birth_date: str, *, error_code: int | None = None
) -> str:
    """The subject line for a machine-integrable message (or its error MDN), on one line
    whatever the names hold: a CDA's <family> may be pretty-printed over several lines, and a
    line break in a header value is refused by the email package (or, written out, would
    start another header field)."""
    year, month, day = birth_date.split("-")[:3]
    family, given = _one_line(family).upper(), _one_line(given).upper()
    subject = f"{DDM_PREFIX}{_one_line(title)} {family} {given} "
    subject += f"{day}/{month}/{year}"
    if error_code is not None:
        subject = f"{KO_PREFIX}[{error_code}] {subject}"
    return subject


def _one_line(text: str) -> str:
    """Control characters and runs of whitespace (line breaks of every kind) as one space."""
    return " ".join(_CONTROL.sub(" ", text).split())
