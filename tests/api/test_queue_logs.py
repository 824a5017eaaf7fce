"""Queue transitions made over the API (lease, ack, nack) are logged as structured events:
document id and consumer name, never the patient, the lease id or the RIS's free text."""

from __future__ import annotations

import json
import logging

import pytest

from mssgate.logs import JsonFormatter
from tests.api.conftest import Api
from tests.queue.helpers import cda, deliver, mail

# What the ingested CDA and the mail carry about the patient (tests/queue/helpers.py).
PATIENT = ("279035121518989", "PAT-TROIS", "DOMINIQUE", "19790328", "28/03/1979")


def test_lease_ack_and_nack_are_logged_without_patient_data(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mssgate.api")
    ids = deliver(api.queue, mail([cda(1), cda(2)]))
    reason = "IPP inconnu pour PAT-TROIS DOMINIQUE 279035121518989"
    with api.client(api.token_a) as client:
        leases = client.post("/v1/leases", json={"max": 2}).json()["leases"]
        assert sorted(x["document"]["id"] for x in leases) == sorted(ids)
        first, second = leases
        done = client.post(
            f"/v1/documents/{first['document']['id']}/ack", json={"lease_id": first["lease_id"]}
        )
        assert done.status_code == 200
        given_back = client.post(
            f"/v1/documents/{second['document']['id']}/nack",
            json={"lease_id": second["lease_id"], "code": 902, "reason": reason},
        )
        assert given_back.json()["state"] == "ready"

    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == "mssgate.api"]
    events = [json.loads(line) for line in lines]
    leased = [e for e in events if e["event"] == "queue.leased"]
    assert sorted(str(e["document_id"]) for e in leased) == sorted(ids)
    assert all(e["consumer"] == "ris-a" and e["level"] == "info" for e in leased)
    [acked] = [e for e in events if e["event"] == "queue.acked"]
    assert (acked["document_id"], acked["consumer"]) == (first["document"]["id"], "ris-a")
    [nacked] = [e for e in events if e["event"] == "queue.nacked"]
    assert nacked["document_id"] == second["document"]["id"]
    assert (nacked["consumer"], nacked["code"], nacked["state"]) == ("ris-a", 902, "ready")
    text = "\n".join(lines)
    for secret in (*PATIENT, reason, first["lease_id"], second["lease_id"], api.token_a):
        assert secret not in text
