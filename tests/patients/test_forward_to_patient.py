"""A routing rule's `forward` may not send to a patient's mailbox: a rule's address is fixed,
so every document it matches, whoever its patient, would reach that one patient. A patient's
copy is the RIS's DESTMSSANTEPAT one, addressed from the document's own INS (outbound/hl7in
refuses a PRT recipient at the patient domain for the same reason)."""

from __future__ import annotations

from mssgate.directory import Directory
from mssgate.outbound.forward import forward_issues
from mssgate.pki import create_dev_ca
from tests.routing import test_forward
from tests.routing.test_forward import Setup, cda, report, rule

# The routing forward tests' fixture (SQLite and PostgreSQL), used here by its name.
setup = test_forward.setup


OTHER_PATIENT = "279035121518989@patient.mssante.fr"


def _trust_patient_domain(setup: Setup) -> Directory:
    directory = Directory(setup.engine, actor="test")
    _, ca = create_dev_ca("patient operator CA")
    directory.domains.trust(setup.config.policy.patient_domain, relay="127.0.0.1:1", ca=ca)
    return directory


def test_a_forward_to_a_patients_mailbox_holds_the_document(setup: Setup) -> None:
    directory = _trust_patient_domain(setup)
    to_patient = rule("pat", f"forward {OTHER_PATIENT}")
    done = setup.run(report(cda(40), n=40), to_patient)
    assert done.forwards == [] and done.queued == [] and len(done.held) == 1
    [reason] = setup.held()
    assert f"routing rule 'pat' cannot forward to {OTHER_PATIENT}" in reason
    assert "patient" in reason and "DESTMSSANTEPAT" in reason
    assert setup.forwards() == 0 and list(setup.spool.entries()) == []
    # route add and `mssgate check` say it before any document is held.
    [(name, to, problem)] = forward_issues(setup.config, directory, [to_patient])
    assert (name, to) == ("pat", OTHER_PATIENT) and "DESTMSSANTEPAT" in problem
