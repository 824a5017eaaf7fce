"""A consumer's token is good only while its mailbox is active (issue 12 C.10): suspended,
the API refuses it with a 401 problem; removed, its consumers are revoked for good."""

from __future__ import annotations

from mssgate import audit
from mssgate.directory import Directory
from mssgate.directory.models import MailboxKind, NewProfessional
from tests.api.conftest import Api
from tests.queue.helpers import RIS_A, RIS_B


def lease_status(api: Api, token: str) -> tuple[int, dict[str, object]]:
    with api.client(token) as client:
        response = client.post("/v1/leases", json={"max": 1, "lease_seconds": 30})
    if response.status_code == 401:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["www-authenticate"].startswith("Bearer")
    return response.status_code, response.json()


def test_suspended_mailbox_refuses_its_token_until_reactivated(api: Api) -> None:
    directory = Directory(api.engine, actor="test")
    assert lease_status(api, api.token_a)[0] == 200
    directory.professionals.suspend(RIS_A)
    status, problem = lease_status(api, api.token_a)
    assert status == 401
    assert problem["status"] == 401 and "suspended" in str(problem["detail"])
    assert lease_status(api, api.token_b)[0] == 200  # another mailbox's consumer is not touched
    directory.professionals.reactivate(RIS_A)
    assert lease_status(api, api.token_a)[0] == 200


def test_removing_a_mailbox_revokes_its_consumers(api: Api) -> None:
    directory = Directory(api.engine, actor="test")
    directory.professionals.remove(RIS_B)
    status, problem = lease_status(api, api.token_b)
    assert status == 401 and problem["detail"] == "a valid consumer token is required"
    [ris_b] = [c for c in directory.consumers.list() if c.name == "ris-b"]
    assert not ris_b.active
    revoked = [e for e in audit.entries(api.engine) if e.action == "consumer.revoke"]
    assert [(e.subject, e.detail) for e in revoked] == [
        ("ris-b", {"reason": "mailbox removed", "mailbox": RIS_B})
    ]
    # The same address hosted again is a new mailbox: the old token stays dead.
    directory.professionals.add(
        NewProfessional(address=RIS_B, display_name="RIS B", kind=MailboxKind.APP)
    )
    assert lease_status(api, api.token_b)[0] == 401
    assert lease_status(api, api.token_a)[0] == 200
