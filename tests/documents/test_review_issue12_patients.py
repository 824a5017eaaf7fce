"""Review of issue 12 B.6: one recordTarget holding two patientRole elements names two
patients as surely as two recordTarget do; reading the first filed the document under it."""

from __future__ import annotations

import re

import pytest

from mssgate.documents import DocumentLimits, parse_cda, process_message
from mssgate.documents.errors import QuarantineCode, TwoPatientsError
from mssgate.documents.record import Quarantined
from tests.documents.factory import NESSI, PAT_TROIS, CdaSpec, make_cda, make_mail, with_patient


def _role(cda: bytes) -> bytes:
    found = re.search(rb"<patientRole>.*?</patientRole>", cda, re.DOTALL)
    assert found is not None
    return found.group(0)


@pytest.mark.parametrize("nessi_first", [False, True])
def test_two_patient_roles_in_one_record_target_are_held(nessi_first: bool) -> None:
    mine = make_cda()
    other = _role(make_cda(with_patient(CdaSpec(), NESSI)))
    roles = other + _role(mine) if nessi_first else _role(mine) + other
    hostile = mine.replace(_role(mine), roles)
    assert hostile.count(b"<recordTarget>") == 1
    with pytest.raises(TwoPatientsError) as caught:
        parse_cda(hostile, DocumentLimits())
    assert "2 patients" in str(caught.value)
    result = process_message(make_mail([("CR.xml", hostile, "text/xml")]), allow_test_oids=True)
    [held] = result.outcomes
    assert isinstance(held, Quarantined) and held.code is QuarantineCode.INS_MISMATCH
    for secret in (PAT_TROIS.ins, NESSI.ins, NESSI.family):
        assert secret not in held.reason


def test_two_patients_in_one_patient_role_are_held() -> None:
    mine = make_cda()
    found = re.search(
        rb"<patient[ >].*?</patient>", make_cda(with_patient(CdaSpec(), NESSI)), re.DOTALL
    )
    assert found is not None
    hostile = mine.replace(b"</patientRole>", found.group(0) + b"</patientRole>", 1)
    with pytest.raises(TwoPatientsError):
        parse_cda(hostile, DocumentLimits())
