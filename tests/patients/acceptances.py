"""Spool acceptances built by hand, for the tests that commit them in the group committer
directly (a FIN and a patient's reply in one group, or on two nodes at once)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mssgate.patients.conversations import PatientMessage
from mssgate.spool.store import _Acceptance, new_queue_id
from tests.patients.test_conversations import DR_X, INS


def acceptance(**kw: object) -> _Acceptance:
    """A message at the MTA port for DR_X (a patient's reply, given `patient_reply`);
    `kw` replaces any field."""
    fields: dict[str, Any] = {
        "queue_id": new_queue_id(), "stamp": datetime.now(UTC), "listener": "mta",
        "sender": "", "identity": None, "peer": None, "size": 1,
        "recipients": ((DR_X, "local"),),
    }  # fmt: skip
    fields.update(kw)
    return _Acceptance(**fields)


def fin_acceptance(message_id: str) -> _Acceptance:
    """DR_X's submission to the patient INS that ends their conversation."""
    return acceptance(
        listener="submission", sender=DR_X, identity=DR_X,
        recipients=((f"{INS.lower()}@patient.test", "relay"),),
        patients=(PatientMessage(message_id, INS, DR_X, ends_conversation=True),),
    )  # fmt: skip
