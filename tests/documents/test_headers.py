from __future__ import annotations

import unicodedata
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def subject_line(subject: str) -> bytes:
    """The Subject field as the outbound message writes it (mssgate.outbound.compose)."""
    message = EmailMessage()
    message["Subject"] = subject
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def test_a_family_name_with_a_line_break_is_folded_into_the_subject() -> None:
    # A CDA written by hand or by a pretty-printer: <family>PAT-\n  TROIS</family>.
    subject = build_ddm_subject("CR", "PAT-\r\n  TROIS", "Domi\nnique", "1979-03-28")
    assert subject == "XDM/1.0/DDM+CR PAT- TROIS DOMI NIQUE 28/03/1979"
    assert subject_line(subject).startswith(b"Subject: XDM/1.0/DDM+CR PAT- TROIS")


_NAME = st.text(st.characters(codec="utf-8"), max_size=40)
_WORD = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=20
).filter(lambda w: len(w.split()) == 1 and len(w.upper().split()) == 1)


@given(title=_NAME, family=_NAME, given_name=_NAME)
def test_any_names_make_a_one_line_subject(title: str, family: str, given_name: str) -> None:
    subject = build_ddm_subject(title, family, given_name, "1979-03-28", error_code=904)
    assert not any(unicodedata.category(c) == "Cc" for c in subject)
    assert subject.splitlines() == [subject]
    subject_line(subject)  # the email package takes it as a header value


@given(title=_NAME.filter(lambda t: any(c.isalnum() for c in t)), family=_WORD, given_name=_WORD)
def test_one_word_names_read_back(title: str, family: str, given_name: str) -> None:
    parsed = parse_ddm_subject(build_ddm_subject(title, family, given_name, "1979-03-28"))
    assert parsed is not None
    assert (parsed.family, parsed.given, parsed.birth_date) == (
        family.upper(),
        given_name.upper(),
        "1979-03-28",
    )
