"""The d2lm preset on a running gateway (issue 16, section 2): written by the CLI while
`mssgate serve` runs, it applies to the next form received over SMTP: an eligible form
reaches the CRCDC's RIS, the case shows in GET /v1/screening (the RIS's own cases with its
token, all with the admin token; overdue by the `as_of` given) and in /metrics, and the
CRCDC's L2 result closes it and goes nowhere else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from mssgate.documents.d2lm_samples import D2lmSpec, make_d2lm
from tests.conftest import DOMAIN, Cli
from tests.queue.test_resend_gateway import _wait_ingested as _ingested
from tests.routing.test_d2lm_preset import l2_result
from tests.routing.test_routing_serve import _api
from tests.smtp.conftest import ALICE, PASSWORD, Gateway, free_env

RIS = f"ris@{DOMAIN}"
CRCDC = f"crcdc-idf@{DOMAIN}"


def _mail(sender: str, n: int, form: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = RIS
    msg["Subject"] = "Dépistage organisé: fiche d'interprétation"
    msg["Message-ID"] = f"<d2lm-{n}@{DOMAIN}>"
    msg.set_content("Fiche ci-jointe.")
    msg.add_attachment(form, maintype="text", subtype="xml", filename="FIN.xml")
    return msg.as_bytes(policy=policy.SMTP)


@pytest.fixture
def gateway(cli: Cli, datadir: Path) -> Iterator[tuple[Gateway, str, str]]:
    cli.ok("directory", "add", ALICE, "--name", "alice", "--rpps", "99700367909",
           "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    # The CRCDC's organisation mailbox, hosted here for the test (it logs in to send).
    cli.ok("directory", "add", CRCDC, "--name", "CRCDC", "--kind", "organisation",
           "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    cli.ok("directory", "add", RIS, "--name", "RIS imagerie", "--kind", "application")
    ris = json.loads(cli.ok("consumer", "add", "ris", "--mailbox", RIS, "--json").out)
    crcdc = json.loads(cli.ok("consumer", "add", "crcdc", "--mailbox", CRCDC, "--json").out)
    gateway = Gateway(data=datadir, env=free_env(datadir))
    gateway.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    # The operator reads every case with the admin token while the console is on.
    gateway.env["MSSGATE_ADMIN__ENABLED"] = "true"
    gateway.start()
    try:
        yield gateway, ris["token"], crcdc["token"]
    finally:
        if gateway.proc is not None:
            gateway.stop()


def test_the_preset_applies_live_and_cases_show_in_the_api(
    cli: Cli, gateway: tuple[Gateway, str, str]
) -> None:
    server, ris_token, crcdc_token = gateway
    form = make_d2lm(D2lmSpec(doc_root="1.2.250.1.999.1.1.27.8", exam_date="20260101"))
    with _api(server, ris_token) as ris, _api(server, crcdc_token) as crcdc:
        client = server.login(ALICE)
        client.sendmail(ALICE, [RIS], _mail(ALICE, 1, form))
        _ingested(server, 1)
        assert crcdc.post("/v1/leases", json={"max": 10}).json()["leases"] == []

        cli.ok("route", "preset", "d2lm", "--crcdc", f"75={CRCDC}", "--crcdc", f"77={CRCDC}")
        client.sendmail(ALICE, [RIS], _mail(ALICE, 2, form))
        client.quit()
        _ingested(server, 2)
        [copy] = crcdc.post("/v1/leases", json={"max": 10}).json()["leases"]
        assert copy["document"]["mailbox"] == CRCDC
        assert copy["document"]["tags"] == ["d2lm-l2"]
        server.wait_event("screening.case_open", crcdc=CRCDC, departement="75")

        [case] = ris.get("/v1/screening").json()["cases"]
        assert (case["crcdc"], case["departement"], case["exam_date"]) == (
            CRCDC, "75", "2026-01-01")  # fmt: skip
        assert ris.get("/v1/screening?overdue=true&as_of=2026-01-16").json()["cases"] == []
        [late] = ris.get("/v1/screening?overdue=true&as_of=2026-01-17").json()["cases"]
        assert (late["days_since_exam"], late["due"]) == (16, "overdue")
        # The CRCDC's consumer sees the cases of its own mailbox only: none.
        assert crcdc.get("/v1/screening").json()["cases"] == []
        admin = cli.ok("admin", "token", "--json").json()["token"]
        with _api(server, admin) as operator:
            assert [c["id"] for c in operator.get("/v1/screening").json()["cases"]] == [case["id"]]
        with _api(server, "not-a-token") as stranger:
            refused = stranger.get("/v1/screening")
            assert refused.status_code == 401
            assert refused.headers["content-type"] == "application/problem+json"
        assert ris.get("/v1/screening?as_of=soon").status_code == 422
        metrics = ris.get("/metrics").text
        # The mammogram was on 2026-01-01: past both marks by the real clock.
        assert 'mssgate_screening_cases_overdue{days="15"} 1.0' in metrics
        assert 'mssgate_screening_cases_overdue{days="10"} 1.0' in metrics

        # The L2 result comes back from the CRCDC: tagged, sent nowhere, the case closed.
        back = server.login(CRCDC)
        back.sendmail(CRCDC, [RIS], _mail(CRCDC, 3, l2_result(8, exam_date="20260101")))
        back.quit()
        _ingested(server, 3)
        assert crcdc.post("/v1/leases", json={"max": 10}).json()["leases"] == []
        server.wait_event("screening.l2_result")
        assert ris.get("/v1/screening").json()["cases"] == []
        [closed] = ris.get("/v1/screening?include_closed=true").json()["cases"]
        assert closed["state"] == "l2-result-received"
        tags = [
            x["document"]["tags"] for x in ris.post("/v1/leases", json={"max": 10}).json()["leases"]
        ]
        assert tags == [[], ["d2lm-l2"], ["d2lm-l2-result"]]
