"""PDF text is read only as far as the labelled INS needs (issue 17): the first pages, stopping
after the page that carries one. Counted in pages pypdf extracted, never in time."""

from __future__ import annotations

from collections.abc import Iterator

import pypdf
import pytest

from mssgate.documents import (
    Accepted,
    DocumentLimits,
    PipelineResult,
    QuarantineCode,
    Quarantined,
    process_message,
    read_pdf,
)

from .factory import NESSI, PAT_TROIS, CdaSpec, EntrySpec, make_cda, make_mail, make_pdf, make_xdm

REPORT = ["Compte rendu", "Lorem ipsum dolor sit amet."]


@pytest.fixture
def extracted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Pages whose text pypdf extracted: the real extraction runs, each call is counted."""
    calls: list[int] = []
    real = pypdf.PageObject.extract_text

    def counting(self: pypdf.PageObject, *args: object, **kwargs: object) -> str:
        calls.append(1)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pypdf.PageObject, "extract_text", counting)
    yield calls


def pages(first: list[str], count: int, **later: list[str]) -> bytes:
    """`count` pages: `first` on page 1, `later["p5"]` on page 5, REPORT elsewhere."""
    return make_pdf(
        [], page_lines=[first] + [later.get(f"p{n}", REPORT) for n in range(2, count + 1)]
    )


def run(raw: bytes) -> PipelineResult:
    return process_message(raw, allow_test_oids=True)


def n1_mail(pdf: bytes, *companions: bytes) -> bytes:
    archive = make_xdm(
        PAT_TROIS, [EntrySpec("DOC0001.XML", make_cda(CdaSpec(level="N1", pdf=pdf)))]
    )
    return make_mail(
        [("IHE_XDM.ZIP", archive, "application/zip")]
        + [(f"cr{i}.pdf", c, "application/pdf") for i, c in enumerate(companions)]
    )


def test_an_ins_on_page_1_of_500_costs_one_page(extracted: list[int]) -> None:
    pdf = pages([f"INS : {PAT_TROIS.ins}", *REPORT], 500)
    info = read_pdf(pdf, DocumentLimits())
    assert info.labelled_ins == (PAT_TROIS.ins,)
    assert (info.page_count, info.pages_read, info.ins_page) == (500, 1, 1)
    assert len(extracted) == 1


def test_500_pages_without_ins_cost_the_first_pages_only(extracted: list[int]) -> None:
    info = read_pdf(pages(REPORT, 500), DocumentLimits())
    assert (info.page_count, info.pages_read, info.ins_page) == (500, 3, None)
    assert info.labelled_ins == ()
    assert len(extracted) == 3
    assert info.truncated  # more pages than max_pdf_pages, as before


def test_reading_stops_after_the_page_carrying_the_ins(extracted: list[int]) -> None:
    pdf = make_pdf([], page_lines=[REPORT, [f"N° INS {PAT_TROIS.ins}"], [f"INS : {NESSI.ins}"]])
    info = read_pdf(pdf, DocumentLimits())
    assert (info.pages_read, info.ins_page, info.labelled_ins) == (2, 2, (PAT_TROIS.ins,))
    assert len(extracted) == 2


def test_a_label_ending_one_page_and_its_number_opening_the_next() -> None:
    pdf = make_pdf([], page_lines=[[*REPORT, "Matricule INS :"], [PAT_TROIS.ins], REPORT])
    info = read_pdf(pdf, DocumentLimits())
    assert (info.pages_read, info.ins_page, info.labelled_ins) == (2, 2, (PAT_TROIS.ins,))


def test_a_bad_key_does_not_stop_the_reading() -> None:
    bad = PAT_TROIS.ins[:-2] + f"{(int(PAT_TROIS.ins[-2:]) + 1) % 100:02d}"
    pdf = make_pdf([], page_lines=[[f"INS : {bad}"], [f"INS : {PAT_TROIS.ins}"], REPORT])
    info = read_pdf(pdf, DocumentLimits())
    assert (info.pages_read, info.ins_page, info.rejected_ins_candidates) == (2, 2, 1)


def test_the_window_is_a_limit() -> None:
    pdf = pages(REPORT, 10, p5=[f"INS : {PAT_TROIS.ins}"])
    assert read_pdf(pdf, DocumentLimits()).labelled_ins == ()
    info = read_pdf(pdf, DocumentLimits(pdf_ins_pages=6))
    assert (info.pages_read, info.ins_page, info.labelled_ins) == (5, 5, (PAT_TROIS.ins,))


# -- in the pipeline: what the bound changes for the INS comparison ------------------------------


def test_a_long_pdf_naming_another_patient_on_page_1_is_still_904(extracted: list[int]) -> None:
    outcome = run(n1_mail(pages([f"N° INS : {NESSI.ins}"], 500))).outcomes[0]
    assert isinstance(outcome, Quarantined) and outcome.code is QuarantineCode.INS_MISMATCH
    assert len(extracted) == 1


def test_two_patients_on_the_page_read_are_still_904() -> None:
    pdf = pages([f"INS : {PAT_TROIS.ins}", f"INS : {NESSI.ins}"], 50)
    outcome = run(n1_mail(pdf)).outcomes[0]
    assert isinstance(outcome, Quarantined) and outcome.code is QuarantineCode.INS_MISMATCH


def test_a_companion_naming_another_patient_on_page_1_of_500_holds_everything() -> None:
    companion = pages([f"INS : {NESSI.ins}"], 500)
    result = run(n1_mail(pages([f"INS : {PAT_TROIS.ins}"], 2), companion))
    assert result.accepted == ()
    assert {o.code for o in result.quarantined} == {QuarantineCode.INS_MISMATCH}


def test_another_patient_after_the_page_with_the_ins_is_not_read() -> None:
    """What the bound gives up: a second patient named only after the page that carries the
    document's own INS is not compared. The document is accepted on the pages read."""
    pdf = make_pdf([], page_lines=[[f"INS : {PAT_TROIS.ins}"], [f"INS : {NESSI.ins}"]])
    outcome = run(n1_mail(pdf)).outcomes[0]
    assert isinstance(outcome, Accepted)
    assert outcome.record.ins.value == PAT_TROIS.ins
    assert outcome.record.notes == ()


def test_an_ins_only_past_the_pages_read_is_not_compared_and_the_note_says_so() -> None:
    outcome = run(n1_mail(pages(REPORT, 8, p5=[f"INS : {NESSI.ins}"]))).outcomes[0]
    assert isinstance(outcome, Accepted)
    assert outcome.record.notes == (
        "embedded PDF text: no labelled INS on its first 3 of 8 pages; later pages not read",
    )
    assert NESSI.ins not in " ".join(outcome.record.notes)


def test_a_pdf_embedded_and_attached_beside_it_is_read_once(extracted: list[int]) -> None:
    pdf = pages([f"INS : {PAT_TROIS.ins}"], 4)
    result = run(n1_mail(pdf, pdf))
    assert len(result.accepted) == 1 and result.quarantined == ()
    assert len(extracted) == 1


def test_an_unreadable_pdf_twice_in_a_message_is_held_each_time() -> None:
    junk = b"%PDF-1.4 junk"
    archive = make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", make_cda())])
    result = run(
        make_mail(
            [
                ("IHE_XDM.ZIP", archive, "application/zip"),
                ("a.pdf", junk, "application/pdf"),
                ("b.pdf", junk, "application/pdf"),
            ]
        )
    )
    assert len(result.accepted) == 1
    assert [(q.code, q.content) for q in result.quarantined] == [(QuarantineCode.OTHER, junk)] * 2
