from __future__ import annotations

import pytest

from mssgate.documents import build_ddm_subject, parse_ddm_subject, x_mss_codecda, x_mss_ins


def test_codecda() -> None:
    assert (
        x_mss_codecda(["34112-3", "PRESC-BIO", "15508-5", "34112-3"]) == "34112-3,PRESC-BIO,15508-5"
    )
    assert x_mss_codecda([]) is None
    with pytest.raises(ValueError):
        x_mss_codecda(["18748-4\r\nBcc: x"])
    with pytest.raises(ValueError):
        x_mss_codecda(["a,b"])


def test_ins_flag() -> None:
    assert x_mss_ins(True) == "O"
    assert x_mss_ins(False) == "N"


def test_ddm_subject_round_trip() -> None:
    subject = "XDM/1.0/DDM+CR d'examens de radiologie PAT-TROIS DOMINIQUE 07/08/2010"
    parsed = parse_ddm_subject(subject)
    assert parsed is not None
    assert (parsed.title, parsed.family, parsed.given, parsed.birth_date, parsed.error_code) == (
        "CR d'examens de radiologie",
        "PAT-TROIS",
        "DOMINIQUE",
        "2010-08-07",
        None,
    )
    assert build_ddm_subject(parsed.title, "PAT-TROIS", "Dominique", "2010-08-07") == subject


def test_ddm_error_variant() -> None:
    subject = "[KO Intégration système !][904] XDM/1.0/DDM+CR CORSE FIGATELLIX 12/10/1988"
    parsed = parse_ddm_subject(subject)
    assert parsed is not None and parsed.error_code == 904 and parsed.family == "CORSE"
    assert build_ddm_subject("CR", "CORSE", "FIGATELLIX", "1988-10-12", error_code=904) == subject


@pytest.mark.parametrize(
    "subject",
    [None, "", "Re: compte rendu", "XDM/1.0/DDM+CR 12/10/1988", "XDM/1.0/DDM+CR A B 1988"],
)
def test_not_ddm(subject: str | None) -> None:
    assert parse_ddm_subject(subject) is None
