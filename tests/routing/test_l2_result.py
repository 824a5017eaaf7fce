"""Where an L2 result goes (mssgate.routing.l2_result): the pure decision over generated
forms and the ANS example, and the directory look-up over a real database."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import Engine

from mssgate.directory.domains import Domains
from mssgate.directory.models import NewProfessional
from mssgate.directory.professionals import Professionals
from mssgate.documents.d2lm import D2lmForm, read_d2lm
from mssgate.documents.d2lm_samples import GP, L1_READER, L2_READER, D2lmSpec, Reader, make_d2lm
from mssgate.documents.limits import DocumentLimits
from mssgate.routing.l2_result import (
    TAG_NO_GP,
    L2ResultRouting,
    Recipient,
    directory_lookup,
    is_l2_result,
    route_l2_result,
)
from tests.documents.conftest import ANSFORGE

LIMITS = DocumentLimits()
CRCDC = "crcdc@crcdc-idf.mssante.fr"
HERE = "cabinet.test"


RESULT = D2lmSpec(l2_right="ACR1", l2_left="ACR1")


def form(spec: D2lmSpec = RESULT) -> D2lmForm:
    read = read_d2lm(make_d2lm(spec), LIMITS)
    assert read is not None
    return read


def route(
    f: D2lmForm,
    *,
    sender: str = CRCDC,
    hosted: Sequence[str] = (),
    directory: dict[str, list[str]] | None = None,
    case_mailbox: str | None = None,
    anonymisation_error: str | None = None,
) -> L2ResultRouting | None:
    return route_l2_result(
        f,
        sender=sender,
        crcdc={CRCDC},
        hosted=lambda address: address in hosted,
        directory=(lambda rpps: (directory or {}).get(rpps, [])),
        case_mailbox=case_mailbox,
        anonymisation_error=anonymisation_error,
    )


def test_original_to_l1_and_anonymised_copy_to_the_gp() -> None:
    plan = route(form(), sender="CRCDC@crcdc-idf.mssante.fr ")
    assert plan == L2ResultRouting(
        recipients=(
            Recipient(role="l1", address=L1_READER.email or "", source="form", via="forward",
                      anonymised=False),
            Recipient(role="gp", address=GP.email or "", source="form", via="forward",
                      anonymised=True),
        ),
    )  # fmt: skip


def test_a_hosted_l1_mailbox_gets_a_copy_the_gp_always_a_forward() -> None:
    plan = route(form(), hosted=(L1_READER.email or "", GP.email or ""))
    assert plan is not None
    assert [(r.role, r.via) for r in plan.recipients] == [("l1", "copy-to"), ("gp", "forward")]


def test_only_a_crcdc_sender_makes_an_l2_result() -> None:
    assert route(form(), sender="ris@clinique.mssante.fr") is None
    fidd = form(D2lmSpec(kind="FIDD", workup_right="ACR1", workup_left="ACR1"))
    assert route(fidd) is None
    assert not is_l2_result(None, CRCDC, {CRCDC})
    assert is_l2_result(form(), CRCDC, {CRCDC})


def test_the_directory_finds_who_the_form_gives_no_address_for() -> None:
    l1 = Reader(L1_READER.rpps, L1_READER.family, L1_READER.given)  # no mailto
    gp = Reader("810000000454", GP.family, GP.given)
    spec = D2lmSpec(l1_reader=l1, gp=gp, l2_right="ACR1", l2_left="ACR1")
    directory = {l1.rpps: ["Boileau@Cabinet.test"], gp.rpps: ["parisi@medecin.test"]}
    plan = route(form(spec), directory=directory, hosted=("boileau@cabinet.test",))
    assert plan is not None
    assert [(r.role, r.address, r.source, r.via) for r in plan.recipients] == [
        ("l1", "boileau@cabinet.test", "directory", "copy-to"),
        ("gp", "parisi@medecin.test", "directory", "forward"),
    ]


def test_no_l1_mailbox_holds_the_result_and_says_why() -> None:
    l1 = Reader(L1_READER.rpps, L1_READER.family, L1_READER.given)
    plan = route(form(D2lmSpec(l1_reader=l1, l2_right="ACR1", l2_left="ACR1")))
    assert plan is not None and plan.recipients == ()
    assert plan.hold == (
        "L2 result: no mailbox found for the L1 radiologist (the L1 radiologist's RPPS "
        "801234567897 has no mailbox in the directory): an operator sends it on"
    )
    # Two mailboxes for one RPPS: not guessed either.
    two = {l1.rpps: ["a@cabinet.test", "b@cabinet.test"]}
    plan = route(form(D2lmSpec(l1_reader=l1, l2_right="ACR1", l2_left="ACR1")), directory=two)
    assert plan is not None and plan.hold is not None
    assert "has 2 mailboxes (a@cabinet.test, b@cabinet.test)" in plan.hold
    # The case's mailbox (where the L1 submission came to) needs no look-up.
    plan = route(
        form(D2lmSpec(l1_reader=l1, l2_right="ACR1", l2_left="ACR1")),
        directory=two,
        case_mailbox="RIS@cabinet.test",
        hosted=("ris@cabinet.test",),
    )
    assert plan is not None and plan.hold is None
    assert plan.recipients[0] == Recipient(
        role="l1", address="ris@cabinet.test", source="case", via="copy-to", anonymised=False
    )


def test_the_l1_submissions_mailbox_comes_before_the_forms_address() -> None:
    """Where this gateway saw the L1 form (its screening case) is the practice's RIS."""
    plan = route(form(), case_mailbox="ris@cabinet.test", hosted=("ris@cabinet.test",))
    assert plan is not None
    assert [(r.role, r.address, r.source, r.via) for r in plan.recipients] == [
        ("l1", "ris@cabinet.test", "case", "copy-to"),
        ("gp", GP.email, "form", "forward"),
    ]
    # A case's mailbox that is no address is passed over.
    plan = route(form(), case_mailbox="not an address")
    assert plan is not None and plan.recipients[0].source == "form"


def test_a_gp_without_mailbox_or_copy_is_said_and_l1_still_gets_it() -> None:
    plan = route(form(D2lmSpec(gp=None, l2_right="ACR1", l2_left="ACR1")))
    assert plan is not None and [r.role for r in plan.recipients] == ["l1"]
    assert plan.problems == ("the form names no GP (participant PCP): no GP copy",)
    assert plan.tags == (TAG_NO_GP,)
    no_mail = Reader("810000000454", GP.family, GP.given)
    plan = route(form(D2lmSpec(gp=no_mail, l2_right="ACR1", l2_left="ACR1")))
    assert plan is not None and [r.role for r in plan.recipients] == ["l1"]
    assert plan.problems == ("the GP's RPPS 810000000454 has no mailbox in the directory",)
    plan = route(form(), anonymisation_error="the L2 reader's identifier is still in <title>")
    assert plan is not None and [r.role for r in plan.recipients] == ["l1"]
    assert plan.problems == (
        "no GP copy: the L2 reader could not be removed (the L2 reader's identifier is still "
        "in <title>)",
    )


def test_never_back_to_a_crcdc_nor_twice_to_one_mailbox() -> None:
    gp_is_crcdc = Reader("810000000454", GP.family, GP.given, CRCDC)
    plan = route(form(D2lmSpec(gp=gp_is_crcdc, l2_right="ACR1", l2_left="ACR1")))
    assert plan is not None and [r.role for r in plan.recipients] == ["l1"]
    assert plan.problems == (f"the GP's mailbox {CRCDC} is a CRCDC's: not sent back",)
    gp_is_l1 = Reader(L1_READER.rpps, "BOILEAU", "Charles", "autre@cabinet.test")
    plan = route(form(D2lmSpec(gp=gp_is_l1, l2_right="ACR1", l2_left="ACR1")))
    assert plan is not None and [r.role for r in plan.recipients] == ["l1"]
    assert plan.problems == ("the GP is the L1 radiologist: the original only",)
    l1_is_crcdc = Reader(L1_READER.rpps, "BOILEAU", "Charles", CRCDC)
    plan = route(form(D2lmSpec(l1_reader=l1_is_crcdc, l2_right="ACR1", l2_left="ACR1")))
    assert plan is not None and plan.hold is not None and "is a CRCDC's" in plan.hold


def test_a_result_sent_from_the_readers_own_mailbox_goes_to_l1_only() -> None:
    """The forward names its original sender: the GP would read the reader's address."""
    reader = Reader(L2_READER.rpps, L2_READER.family, L2_READER.given, "l2@crcdc-idf.mssante.fr")
    plan = route_l2_result(
        form(D2lmSpec(l2_reader=reader, l2_right="ACR1", l2_left="ACR1")),
        sender="L2@crcdc-idf.mssante.fr",
        crcdc={CRCDC, "l2@crcdc-idf.mssante.fr"},
        hosted=lambda a: False,
        directory=lambda rpps: [],
    )
    assert plan is not None and [r.role for r in plan.recipients] == ["l1"]
    assert plan.problems == ("no GP copy: the result was sent from the L2 reader's own mailbox",)


def test_a_hostile_mailto_is_no_address() -> None:
    bad = Reader(L1_READER.rpps, "BOILEAU", "Charles", "x@y@z\r\nBcc: a@b")
    plan = route(form(D2lmSpec(l1_reader=bad, l2_right="ACR1", l2_left="ACR1")),
                 directory={L1_READER.rpps: ["boileau@cabinet.test"]})  # fmt: skip
    assert plan is not None and plan.recipients[0].address == "boileau@cabinet.test"
    assert "the L1 radiologist's mailto: in the form is no address" in plan.problems


def test_the_ans_example_sent_back_by_a_crcdc() -> None:
    path = ANSFORGE / "TestContenuCDA-3-0" / "CANCER-D2LM-FIN_2022.01.xml"
    if not path.exists():
        pytest.skip("needs ../shared/fixtures")
    f = read_d2lm(path.read_bytes(), LIMITS)
    assert f is not None
    # The ANS GP has no mailto: the directory by RPPS 648238527 (an ADELI, bare).
    plan = route(f, directory={"648238527": ["stephane.parisi@medecin.test"]})
    assert plan is not None
    assert [(r.role, r.address, r.source, r.anonymised) for r in plan.recipients] == [
        ("l1", "charles.boileau@mssante.fr", "form", False),
        ("gp", "stephane.parisi@medecin.test", "directory", True),
    ]
    assert L2_READER.email not in {r.address for r in plan.recipients}


def test_directory_lookup_over_the_professionals_table(sqlite_engine: Engine) -> None:
    Domains(sqlite_engine, "test").add_local(HERE)
    people = Professionals(sqlite_engine, "test")
    people.add(NewProfessional(address=f"boileau@{HERE}", display_name="Dr Boileau",
                               idnat=L1_READER.rpps))  # fmt: skip
    people.add(NewProfessional(address=f"parisi@{HERE}", display_name="Dr Parisi",
                               idnat="10000000454"))  # fmt: skip
    people.add(NewProfessional(address=f"parisi2@{HERE}", display_name="Dr Parisi",
                               idnat="810000000454"))  # fmt: skip
    people.suspend(f"parisi2@{HERE}")
    lookup = directory_lookup(sqlite_engine)
    # The RPPS as documents write it (8-prefixed) or bare finds the IdNat the directory keeps.
    assert lookup("801234567897") == [f"boileau@{HERE}"]
    assert lookup("01234567897") == [f"boileau@{HERE}"]
    assert lookup("810000000454") == [f"parisi@{HERE}"]  # the suspended one is not
    assert lookup("899700367909") == []
    plan = route_l2_result(
        form(D2lmSpec(l1_reader=Reader(L1_READER.rpps, "BOILEAU", "Charles"),
                      l2_right="ACR1", l2_left="ACR2")),
        sender=CRCDC, crcdc={CRCDC}, hosted=lambda a: a.endswith(HERE), directory=lookup,
    )  # fmt: skip
    assert plan is not None
    assert plan.recipients[0] == Recipient(
        role="l1", address=f"boileau@{HERE}", source="directory", via="copy-to", anonymised=False
    )
