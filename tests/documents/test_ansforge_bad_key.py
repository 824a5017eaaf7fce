"""Every real ANS CDA example under ../shared/fixtures/ansforge, with its INS key corrupted,
is held as 906 (an INS that is not one), never accepted and never mistaken for 903-905."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mssgate.documents import (
    Accepted,
    DocumentLimits,
    QuarantineCode,
    Quarantined,
    parse_cda,
    process_message,
)
from mssgate.documents.cda import is_cda
from mssgate.ins import is_valid_value

from .conftest import ANSFORGE, requires_shared
from .factory import make_mail

pytestmark = [pytest.mark.shared, requires_shared]


def _cda_examples() -> list[Path]:
    if not ANSFORGE.is_dir():
        return []
    return sorted(
        p for p in ANSFORGE.rglob("*") if p.suffix.lower() == ".xml" and is_cda(p.read_bytes())
    )


EXAMPLES = _cda_examples()


def _bad_key(value: str) -> str:
    matricule, key = value[:13], int(value[13:])
    for step in range(1, 97):
        candidate = f"{matricule}{(key + step) % 100:02d}"
        if not is_valid_value(candidate):
            return candidate
    raise AssertionError("no invalid key found")


def _with_corrupted_ins(data: bytes) -> tuple[bytes, int]:
    """The document with every recordTarget INS given a wrong key, and how many were changed.

    Only `extension="<INS>"` attributes change: the base64 body of an N1 (whose PDF may also
    state the INS) stays as it was, so the CDA header alone is wrong.
    """
    header = parse_cda(data, DocumentLimits()).header
    values = {i.extension for i in header.ins_ids if i.extension}
    assert values, "example without an INS in recordTarget"
    changed = 0
    for value in values:
        pattern = re.compile(rb"""extension\s*=\s*(["'])""" + re.escape(value.encode()) + rb"\1")
        bad = _bad_key(value).encode()
        data, count = pattern.subn(rb"extension=\g<1>" + bad + rb"\g<1>", data)
        changed += count
    return data, changed


@pytest.mark.parametrize(
    "path",
    EXAMPLES or [None],
    ids=lambda p: p.name if isinstance(p, Path) else "none",
)
def test_corrupted_ins_key_is_906(path: Path | None) -> None:
    if path is None:
        pytest.skip(f"no CDA example under {ANSFORGE}")
    data = path.read_bytes()
    # The untouched example passes: the 906 below comes from the key and nothing else.
    before = process_message(make_mail([("doc.xml", data, "text/xml")]), allow_test_oids=True)
    [first] = before.outcomes
    assert isinstance(first, Accepted), first
    corrupted, changed = _with_corrupted_ins(data)
    assert changed >= 1
    result = process_message(make_mail([("doc.xml", corrupted, "text/xml")]), allow_test_oids=True)
    [outcome] = result.outcomes
    assert isinstance(outcome, Quarantined), outcome
    assert outcome.code == QuarantineCode.OTHER == 906
    assert outcome.reason == "INS from cda: key mismatch"
    assert outcome.content == corrupted
    assert outcome.type_code == first.record.document.type_code
