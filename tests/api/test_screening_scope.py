"""GET /v1/screening's scope (issue 16, section 2): a consumer reads the cases of its own
mailbox; the admin token, which the operator guide says opens nothing in the RIS API while
the console is off, reads every case only when [admin] enabled is true (a token kept for a
console nobody turned on must not list every woman's INS over the API port)."""

from __future__ import annotations

import ssl
from datetime import date

import httpx

from mssgate.directory.admin_token import AdminToken
from mssgate.screening.cases import NewCase, ScreeningCases
from tests.api.conftest import Api, Running
from tests.queue.helpers import RIS_A


def _case(api: Api) -> str:
    case_id, _ = ScreeningCases(api.engine).open(
        NewCase(mailbox=RIS_A, queue_document_id="q1", document_id="1.2.250.1.999.1",
                set_id=None, ins="279035121518989", ins_oid="1.2.250.1.213.1.4.10",
                exam_date=date(2026, 1, 1), exam_date_known=True, departement="75",
                crcdc="crcdc@hopital-a.test", l1_rpps=None, l1_email=None, gp_rpps=None,
                gp_email=None),
        actor="test",
    )  # fmt: skip
    return case_id


def test_consumers_see_their_mailbox_and_the_admin_token_only_with_the_console(
    api: Api,
) -> None:
    case_id = _case(api)
    admin, _ = AdminToken(api.engine, actor="test").rotate()
    with api.client(api.token_a) as a, api.client(api.token_b) as b, api.client(admin) as op:
        assert [c["id"] for c in a.get("/v1/screening").json()["cases"]] == [case_id]
        assert b.get("/v1/screening").json()["cases"] == []
        refused = op.get("/v1/screening")
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert "279035121518989" not in refused.text
    on = api.config.model_copy(
        update={"admin": api.config.admin.model_copy(update={"enabled": True})}
    )
    running = Running(on, api.engine, api.queue)
    try:
        url = f"https://127.0.0.1:{running.server.port}"
        ca: ssl.SSLContext = api.ca
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=url, verify=ca, headers=headers, timeout=30) as op:
            assert [c["id"] for c in op.get("/v1/screening").json()["cases"]] == [case_id]
    finally:
        running.stop()
