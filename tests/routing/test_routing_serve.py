"""Routing rules on a running gateway (issue 16, part 1): SMTP into `mssgate serve`, rules
added and removed with the CLI while it runs, the RIS consumers over the HTTPS API. A rule
applies to the next message without a restart: a copy reaches a second consumer, a tag
filters a lease, a hold quarantines with the rule's reason, and an XPath over its budget
holds the document instead of hanging its worker. `route test` says it all without doing
any of it."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DOMAIN, Cli
from tests.queue.test_resend_gateway import _wait_ingested as _ingested
from tests.queue.test_resend_gateway import report_mail
from tests.smtp.conftest import ALICE, PASSWORD, Gateway, free_env

RIS = f"ris@{DOMAIN}"
ARCHIVE = f"archive@{DOMAIN}"
# N^5 node visits over the sample CDA's ~90 nodes: about a minute of libxml2's C.
SLOW_XPATH = "count(//*[count(//*[count(//*[count(//*[count(//*) > 0]) > 0]) > 0]) > 0])"


@pytest.fixture
def gateway(cli: Cli, datadir: Path) -> Iterator[tuple[Gateway, str, str]]:
    cli.ok("directory", "add", ALICE, "--name", "alice", "--rpps", "99700367909",
           "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    cli.ok("directory", "add", RIS, "--name", "RIS imagerie", "--kind", "application")
    cli.ok("directory", "add", ARCHIVE, "--name", "Archive", "--kind", "application")
    ris = json.loads(cli.ok("consumer", "add", "ris", "--mailbox", RIS, "--json").out)
    archive = json.loads(cli.ok("consumer", "add", "archive", "--mailbox", ARCHIVE, "--json").out)
    gateway = Gateway(data=datadir, env=free_env(datadir))
    gateway.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
    gateway.env["MSSGATE_ROUTING__XPATH_SECONDS"] = "1"
    gateway.start()
    try:
        yield gateway, ris["token"], archive["token"]
    finally:
        if gateway.proc is not None:
            gateway.stop()


def _api(gateway: Gateway, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://127.0.0.1:{gateway.ports['api']}",
        verify=ssl.create_default_context(cafile=gateway.ca),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _send(gateway: Gateway, n: int) -> None:
    from tests.documents.factory import CdaSpec, make_cda

    cda = make_cda(CdaSpec(doc_root=f"1.2.250.1.999.1.1.77.{n}"))
    client = gateway.login()
    client.sendmail(ALICE, [RIS], report_mail(n, cda))
    client.quit()


def _held(cli: Cli) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(cli.ok("quarantine", "list", "--json").out)
    return rows


def test_rules_added_by_the_cli_apply_to_the_next_message(
    cli: Cli, gateway: tuple[Gateway, str, str], tmp_path: Path
) -> None:
    server, ris_token, archive_token = gateway
    with _api(server, ris_token) as ris, _api(server, archive_token) as archive:
        _send(server, 1)
        _ingested(server, 1)
        assert archive.post("/v1/leases", json={"max": 10}).json()["leases"] == []

        cli.ok("route", "add", "archive", "--match", "code=18748-4", "--match",
               "format=cda-n3", "--copy-to", ARCHIVE, "--tag", "imaging")  # fmt: skip
        _send(server, 2)
        [_, second] = _ingested(server, 2)
        assert second["copies"] == 1
        [copy] = archive.post("/v1/leases", json={"max": 10}).json()["leases"]
        assert copy["document"]["mailbox"] == ARCHIVE
        assert copy["document"]["tags"] == ["imaging"]
        tagged = ris.post("/v1/leases?tag=imaging", json={"max": 10}).json()["leases"]
        assert [x["document"]["tags"] for x in tagged] == [["imaging"]]
        assert tagged[0]["document"]["sha256"] == copy["document"]["sha256"]
        # The first report, sent before the rule, has no tag: only a plain lease gets it.
        [plain] = ris.post("/v1/leases", json={"max": 10}).json()["leases"]
        assert plain["document"]["tags"] == []
        bad = ris.post("/v1/leases?tag=no%20spaces", json={"max": 1})
        assert bad.status_code == 422
        decision = server.wait_event("routing.decision", rule="archive")
        assert decision["actions"] == [f"copy-to {ARCHIVE}", "tag imaging"]

        # An XPath over its budget: the worker is killed, the document held, not hung.
        cli.ok("route", "add", "slow", "--order", "1", "--match", f"xpath={SLOW_XPATH}",
               "--tag", "never")  # fmt: skip
        started = time.monotonic()
        _send(server, 3)
        _ingested(server, 3)
        assert time.monotonic() - started < 30
        [held] = _held(cli)
        assert held["reason"] == (
            "routing rule 'slow' could not be decided: the CDA's routing XPath ran over its"
            " budget of 1 s"
        )
        assert held["mailbox"] == RIS and held["code"] == 906
        cli.ok("route", "remove", "slow")

        cli.ok("route", "add", "check", "--order", "5", "--match", "format=cda-n3",
               "--hold", "screening forms are read first")  # fmt: skip
        _send(server, 4)
        _ingested(server, 4)
        reasons = [h["reason"] for h in _held(cli)]
        assert "held by routing rule 'check': screening forms are read first" in reasons
        # Held, so not copied either.
        assert archive.post("/v1/leases", json={"max": 10}).json()["leases"] == []

    audit = json.loads(cli.ok("audit", "--json").out)
    actions = [e["action"] for e in audit]
    assert actions.count("routing.rule_add") == 3 and actions.count("routing.rule_remove") == 1
    decided = [e for e in audit if e["action"] == "routing.decision"]
    assert [e["detail"]["rule"] for e in decided] == ["archive", "slow", "check"]

    # A dry run over a message file: what each rule would do, nothing done.
    from tests.documents.factory import CdaSpec, make_cda

    eml = tmp_path / "report.eml"
    eml.write_bytes(report_mail(9, make_cda(CdaSpec(doc_root="1.2.250.1.999.1.1.77.9"))))
    before = len(json.loads(cli.ok("queue", "list", "--json").out))
    out = cli.ok("route", "test", str(eml)).out
    assert f"message to {RIS} from {ALICE}: 1 document(s), 2 rule(s)" in out
    assert "rule check: matches: hold screening forms are read first" in out
    assert "rule archive: not reached" in out
    assert "=> held: held by routing rule 'check': screening forms are read first" in out
    cli.ok("route", "add", "check", "--order", "5", "--match", "format=cda-n3", "--disabled",
           "--hold", "x", "--replace")  # fmt: skip
    shown = json.loads(cli.ok("route", "test", str(eml), "--json").out)
    [document] = shown["documents"]
    assert document["rules"] == [
        {"name": "check", "outcome": "disabled"},
        {"name": "archive", "outcome": f"matches: copy-to {ARCHIVE}, tag imaging"},
    ]
    assert document["result"] == f"queued for {RIS}"
    assert document["tags"] == ["imaging"] and document["copies"] == [ARCHIVE]
    assert len(json.loads(cli.ok("queue", "list", "--json").out)) == before
