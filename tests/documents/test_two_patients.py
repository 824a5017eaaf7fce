"""A CDA naming two patients is held (issue 12 B.6): never filed under the first one."""

from __future__ import annotations

import pytest

from mssgate.documents import DocumentLimits, parse_cda, process_message
from mssgate.documents.errors import QuarantineCode, TwoPatientsError
from mssgate.documents.record import Quarantined
from tests.documents.factory import (
    CORSE,
    NESSI,
    PAT_TROIS,
    CdaSpec,
    EntrySpec,
    make_cda,
    make_mail,
    make_xdm,
    with_patient,
)
from tests.signed_mail import two_patients_cda

SECRETS = [
    value
    for p in (PAT_TROIS, NESSI, CORSE)
    for value in (p.ins, p.family, p.first_given, p.birth_time)
]


def _both(second: bytes | None = None) -> bytes:
    return two_patients_cda(make_cda(), second or make_cda(with_patient(CdaSpec(), NESSI)))


def test_two_record_targets_are_refused_by_the_parser() -> None:
    with pytest.raises(TwoPatientsError) as caught:
        parse_cda(_both(), DocumentLimits())
    assert caught.value.code is QuarantineCode.INS_MISMATCH
    assert str(caught.value) == (
        "CDA names 2 patients (recordTarget 1: INS-NIR (test) under 1.2.250.1.213.1.4.10;"
        " recordTarget 2: INS-NIR (test) under 1.2.250.1.213.1.4.10): a document has one patient"
    )


@pytest.mark.parametrize("in_xdm", [False, True])
def test_a_cda_naming_two_patients_is_held_904_without_their_values(in_xdm: bool) -> None:
    both = _both()
    if in_xdm:
        xdm = make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", both)])
        attachment = ("IHE_XDM.ZIP", xdm, "application/zip")
    else:
        attachment = ("CR.xml", both, "text/xml")
    result = process_message(make_mail([attachment]), allow_test_oids=True)
    [held] = result.outcomes
    assert isinstance(held, Quarantined)
    assert held.code is QuarantineCode.INS_MISMATCH
    assert "2 patients" in held.reason and "recordTarget 2" in held.reason
    for secret in SECRETS:
        assert secret not in held.reason


def test_the_same_patient_twice_is_held_too_and_said_so() -> None:
    # CI-SIS allows one recordTarget: a copy is a malformed document, not a second patient,
    # and the reason tells the operator which it is.
    reason = _hold_reason(_both(make_cda()))
    assert "recordTarget 2: INS-NIR (test) under 1.2.250.1.213.1.4.10, the same INS as" in reason


def test_many_patients_are_counted_not_listed() -> None:
    cda = make_cda()
    for patient in (NESSI, CORSE, NESSI, CORSE, NESSI):
        cda = two_patients_cda(cda, make_cda(with_patient(CdaSpec(), patient)))
    reason = _hold_reason(cda)
    assert reason.startswith("CDA names 6 patients (recordTarget 1:")
    assert "recordTarget 4:" in reason and "recordTarget 5" not in reason
    assert "; and 2 more)" in reason
    no_ins = make_cda(CdaSpec(include_ins=False))
    assert "recordTarget 2: no INS" in _hold_reason(two_patients_cda(make_cda(), no_ins))


def _hold_reason(cda: bytes) -> str:
    with pytest.raises(TwoPatientsError) as caught:
        parse_cda(cda, DocumentLimits())
    return str(caught.value)
