"""Business acknowledgements leasable on the queue API (issue 15): each ZAM of a consumer's
outbound message is, once, an item of kind `ack` that `POST /v1/leases?kind=ack` offers,
with the documents' semantics (expiry offers it again, ack idempotent, another consumer's is
404); a lease without kind stays documents only. Over real HTTPS, with the real spool's
state changes, on SQLite and PostgreSQL; and a change whose ZAM was never made in line (a
crash) is made by the sweeper, once."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import hl7  # type: ignore[import-untyped]
import httpx
import pytest
from sqlalchemy import Engine, select

from mssgate.api.server import ApiServer, start_api
from mssgate.config import Config
from mssgate.db.schema import outbound_acks, outbound_recipients
from mssgate.db.tx import write
from mssgate.directory import Directory
from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from mssgate.outbound.service import Outbound
from mssgate.outbound.zamqueue import ZamQueue
from mssgate.queue import DocumentQueue, QueueSettings
from mssgate.smime.mailbox_keys import ensure_mailbox_key
from mssgate.spool import Spool
from tests.queue.helpers import RIS_A, RIS_B, add_consumer, add_mailboxes
from tests.smtp.test_outbound_gateway import mdm, mdn

READER = f"dr.reader@{RIS_A.rsplit('@', 1)[1]}"
HL7 = {"Content-Type": "application/hl7-v2"}


@dataclass
class Sending:
    config: Config
    engine: Engine
    spool: Spool
    outbound: Outbound
    api: httpx.Client  # consumer ris-a
    other: httpx.Client  # consumer ris-b

    def submit(self, control: str, *recipients: str) -> str:
        # This configuration takes no test INS: the production-OID patient.
        cda = make_cda(CdaSpec(patient=replace(PAT_TROIS, oid=OID_NIR)))
        body = mdm(control, recipients=recipients, cda=cda, oid=OID_NIR)
        response = self.api.post("/v1/outbound", content=body, headers=HL7)
        assert response.status_code == 202, response.text
        return response.headers["Location"].rsplit("/", 1)[1]

    def lease_acks(self, client: httpx.Client | None = None, **body: int) -> list[dict]:  # type: ignore[type-arg]
        response = (client or self.api).post("/v1/leases?kind=ack", json=body)
        assert response.status_code == 200, response.text
        return response.json()["leases"]  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", "postgresql"])
def sending(request: pytest.FixtureRequest, gateway: tuple[Config, Engine]) -> Iterator[Sending]:
    config, engine = gateway
    if request.param == "postgresql":
        engine = request.getfixturevalue("pg_engine")
        add_mailboxes(engine, RIS_A, RIS_B)
    add_mailboxes(engine, READER)
    ensure_mailbox_key(config, RIS_A, common_name="RIS A")
    _, token_a = add_consumer(engine, "ris-a", RIS_A)
    _, token_b = add_consumer(engine, "ris-b", RIS_B)
    spool = Spool(engine, config.server.data_dir / "spool")
    outbound = Outbound(config, Directory(engine, actor="test"), spool)
    queue = DocumentQueue(engine, settings=QueueSettings(), data_dir=config.server.data_dir)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server: ApiServer = asyncio.run_coroutine_threadsafe(
        start_api(config, engine, queue=queue, port=0, outbound=outbound), loop
    ).result(30)
    ca = ssl.create_default_context(cafile=str(config.server.data_dir / "certs" / "ca.crt.pem"))
    clients = [
        httpx.Client(base_url=f"https://127.0.0.1:{server.port}", verify=ca, timeout=30,
                     headers={"Authorization": f"Bearer {t}"})
        for t in (token_a, token_b)
    ]  # fmt: skip
    try:
        yield Sending(config, engine, spool, outbound, clients[0], clients[1])
    finally:
        for c in clients:
            c.close()
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _deliver(spool: Spool, recipient: str) -> None:
    [item] = [d for d in spool.due(route="local") if d.recipient == recipient]
    spool.delivered(item)


def _fail(spool: Spool, recipient: str) -> None:
    [item] = [d for d in spool.due(route="local") if d.recipient == recipient]
    spool.attempt_failed(item, error="5.1.1 550 5.1.1 No such user", permanent=True,
                         retry_in=__import__("datetime").timedelta(0))  # fmt: skip


def test_zams_are_leased_once_acked_and_offered_to_their_consumer_only(
    sending: Sending,
) -> None:
    s = sending
    outbound_id = s.submit("ZQ-1", RIS_B)
    # Nothing warrants a ZAM yet: the copy waits in the spool.
    assert s.lease_acks() == []
    _deliver(s.spool, RIS_B)

    [lease] = s.lease_acks(max=10)
    item = lease["ack"]
    assert item["id"] == f"{outbound_id}-1-Z02" and item["kind"] == "ack"
    assert item["message_type"] == "ZAM^Z02^ZAM_Z01" and item["code"] == "ACK_RECEPTION_MSS"
    assert item["accepted"] is True and item["recipient"] == RIS_B
    assert item["content_type"] == "application/hl7-v2" and item["attempts"] == 1
    zam = hl7.parse(item["content"])
    assert str(zam.segment("MSH")[10]) == item["id"]
    [reception, recipient] = zam.segments("OBX")
    assert str(reception[4]) == "ZQ-1" and str(reception[5]) == "Y^^expandedYes-NoIndicator"
    assert str(recipient[5]) == f"^^X.400^{RIS_B}"
    # Its ER7 as the item's content, and what /acks lists, byte for byte.
    content = s.api.get(f"/v1/acks/{item['id']}/content")
    assert content.status_code == 200
    assert content.headers["content-type"].startswith("application/hl7-v2")
    assert content.text == item["content"]
    assert s.api.get(f"/v1/outbound/{outbound_id}/acks").json() == [item["content"]]
    assert s.api.get(f"/v1/acks/{item['id']}").json()["state"] == "leased"

    # Another consumer: not offered, not readable, not acknowledgeable; all 404.
    assert s.lease_acks(s.other) == []
    assert s.other.get(f"/v1/acks/{item['id']}").status_code == 404
    assert s.other.get(f"/v1/acks/{item['id']}/content").status_code == 404
    refused = s.other.post(f"/v1/acks/{item['id']}/ack", json={"lease_id": lease["lease_id"]})
    assert refused.status_code == 404
    assert refused.headers["content-type"].startswith("application/problem+json")
    for bad in ("nope", "0A-1-Z02%00", f"{outbound_id}-1-Z04"):
        assert s.api.get(f"/v1/acks/{bad}").status_code in (404, 422)

    # A lease without kind stays documents only (none here); kind=document the same.
    assert s.api.post("/v1/leases", json={"max": 10}).json() == {"leases": []}
    assert s.api.post("/v1/leases?kind=document", json={}).json() == {"leases": []}
    for kind in ("zam", "ACK", "x" * 100, ""):
        unknown = s.api.post("/v1/leases", params={"kind": kind}, json={})
        assert unknown.status_code == 400, kind
        assert unknown.headers["content-type"].startswith("application/problem+json")

    acked = s.api.post(f"/v1/acks/{item['id']}/ack", json={"lease_id": lease["lease_id"]})
    assert acked.status_code == 200 and acked.json() == {"id": item["id"], "state": "done"}
    # A retried ack is harmless; the item is not offered again, nor made again.
    again = s.api.post(f"/v1/acks/{item['id']}/ack", json={"lease_id": lease["lease_id"]})
    assert again.status_code == 200
    assert s.lease_acks() == []
    assert s.outbound.zams.sweep() == 0
    assert s.outbound.zams.counts() == {"ready": 0, "leased": 0, "done": 1}

    # The recipient's read receipt: a ZAM^Z03 is leasable.
    copy_id = _copy_message_id(s, outbound_id, RIS_B)
    s.outbound.observe(RIS_A, mdn(copy_id, sender=RIS_B, to=RIS_A))
    [read] = s.lease_acks()
    assert read["ack"]["id"] == f"{outbound_id}-1-Z03"
    assert read["ack"]["code"] == "ACK_LECTURE_MSS"
    assert hl7.parse(read["ack"]["content"]).segment("MSH")[9][0][1][0] == "Z03"
    assert s.api.get(f"/v1/outbound/{outbound_id}/acks").json() == [
        item["content"],
        read["ack"]["content"],
    ]


def _copy_message_id(s: Sending, outbound_id: str, recipient: str) -> str:
    """The copy's Message-ID (its spool file is gone once delivered)."""
    with s.engine.connect() as conn:
        return str(
            conn.execute(
                select(outbound_recipients.c.message_id).where(
                    outbound_recipients.c.outbound_id == outbound_id,
                    outbound_recipients.c.recipient == recipient,
                )
            ).scalar_one()
        )


def test_a_failed_copy_gives_a_zam_with_err_and_an_expired_lease_offers_it_again(
    sending: Sending,
) -> None:
    s = sending
    outbound_id = s.submit("ZQ-2", RIS_B, READER)
    _fail(s.spool, RIS_B)
    [lease] = s.lease_acks(lease_seconds=1)
    item = lease["ack"]
    # Recipients in address order: dr.reader first, ris-b second.
    assert item["id"] == f"{outbound_id}-2-Z02N" and item["accepted"] is False
    zam = hl7.parse(item["content"])
    assert str(zam.segments("OBX")[0][5]).startswith("N^")
    assert str(zam.segment("ERR")[5]).startswith("550^")
    assert str(zam.segment("ERR")[5]).endswith("^SMTPERRORCODE")

    time.sleep(1.2)
    [again] = s.lease_acks(lease_seconds=60)
    assert again["ack"]["id"] == item["id"] and again["ack"]["attempts"] == 2
    assert again["lease_id"] != lease["lease_id"]
    assert again["ack"]["content"] == item["content"]
    stale = s.api.post(f"/v1/acks/{item['id']}/ack", json={"lease_id": lease["lease_id"]})
    assert stale.status_code == 409
    done = s.api.post(f"/v1/acks/{item['id']}/ack", json={"lease_id": again["lease_id"]})
    assert done.status_code == 200
    assert s.lease_acks() == []


def test_a_change_whose_zam_was_not_made_in_line_is_made_by_the_sweeper_once(
    sending: Sending,
) -> None:
    """A crash between the status change (committed) and its ZAM: the change is all there
    is; a sweeper (another process after the restart) makes the ZAM, and only once however
    many sweep at the same time."""
    s = sending
    outbound_id = s.submit("ZQ-3", RIS_B)
    _deliver(s.spool, RIS_B)
    restarted = ZamQueue(s.engine, facility=s.config.server.hostname)
    assert restarted.due() == [outbound_id]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: restarted.sweep(), range(4)))
    with s.engine.connect() as conn:
        ids = conn.execute(select(outbound_acks.c.id)).scalars().all()
    assert ids == [f"{outbound_id}-1-Z02"]
    # Its copy is no longer looked at; making it again changes nothing.
    assert restarted.due() == []
    with write(s.engine) as conn:
        assert restarted.materialise(conn, outbound_id) == 0
    assert restarted.counts() == {"ready": 1, "leased": 0, "done": 0}
    [lease] = s.lease_acks()
    assert lease["ack"]["id"] == f"{outbound_id}-1-Z02"


def test_the_lease_kinds_are_published(sending: Sending, tmp_path: Path) -> None:
    schema = sending.api.get("/openapi.json").json()
    parameters = schema["paths"]["/v1/leases"]["post"]["parameters"]
    # kind (document or ack) and tag (issue 16's routing labels).
    assert [p["name"] for p in parameters] == ["kind", "tag"]
    for path in ("/v1/acks/{ack_id}", "/v1/acks/{ack_id}/content", "/v1/acks/{ack_id}/ack"):
        assert path in schema["paths"]


def _dsn(*, envid: str, recipient: str, action: str, status: str, diagnostic: str) -> bytes:
    """A DSN (RFC 3464) from the recipient's domain's mail system."""
    domain = recipient.rsplit("@", 1)[1]
    lines = [
        f"From: mailer-daemon@{domain}", f"To: {RIS_A}", "Subject: Delivery report",
        "Message-ID: <dsn-1@mx.test>", "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"',
        "", "--b1", "Content-Type: text/plain", "", "Report.", "--b1",
        "Content-Type: message/delivery-status", "", f"Reporting-MTA: dns; mx.{domain}",
        f"Original-Envelope-Id: {envid}", "", f"Final-Recipient: rfc822; {recipient}",
        f"Action: {action}", f"Status: {status}", f"Diagnostic-Code: smtp; {diagnostic}",
        "", "--b1--", "",
    ]  # fmt: skip
    return "\r\n".join(lines).encode()


def test_a_failure_reported_by_dsn_after_the_reception_zam_is_a_zam_of_its_own(
    sending: Sending,
) -> None:
    """The copy was taken (a ZAM^Z02 Y, leased and acked), then the recipient's operator
    reports by DSN that it failed there: the RIS gets a ZAM^Z02 N as a new item (its own
    MSH-10), made in the DSN's transaction, and /acks lists both, Y first."""
    s = sending
    outbound_id = s.submit("ZQ-4", RIS_B)
    _deliver(s.spool, RIS_B)
    [first] = s.lease_acks()
    assert first["ack"]["accepted"] is True
    s.api.post(f"/v1/acks/{first['ack']['id']}/ack", json={"lease_id": first["lease_id"]})
    with s.engine.connect() as conn:
        spool_id = conn.execute(
            select(outbound_recipients.c.spool_id).where(
                outbound_recipients.c.outbound_id == outbound_id
            )
        ).scalar_one()
    report = _dsn(envid=spool_id, recipient=RIS_B, action="failed", status="5.2.2",
                  diagnostic="552 5.2.2 mailbox full")  # fmt: skip
    s.outbound.observe(RIS_A, report)
    # Made in line: no sweeper, no lease has run since.
    with s.engine.connect() as conn:
        ids = conn.execute(select(outbound_acks.c.id).order_by(outbound_acks.c.seq)).scalars()
        assert list(ids) == [f"{outbound_id}-1-Z02", f"{outbound_id}-1-Z02N"]
    [failure] = s.lease_acks()
    assert failure["ack"]["id"] == f"{outbound_id}-1-Z02N"
    assert failure["ack"]["accepted"] is False
    err = hl7.parse(failure["ack"]["content"]).segment("ERR")
    assert str(err[5]).startswith("552^") and str(err[5]).endswith("^SMTPERRORCODE")
    listed = s.api.get(f"/v1/outbound/{outbound_id}/acks").json()
    assert listed == [first["ack"]["content"], failure["ack"]["content"]]


def _gauges(s: Sending) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = s.api.get("/metrics").text
    return {
        (sample.name, sample.labels.get("state", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("mssgate_outbound_acks")
    }


def test_an_operator_sees_zams_piling_up_unacknowledged_in_the_metrics(sending: Sending) -> None:
    """A RIS that stopped taking its ZAMs must show somewhere before it complains: the items
    by state and how long the oldest ready one has waited, read at scrape time."""
    s = sending
    s.submit("ZQ-5", RIS_B, READER)
    _deliver(s.spool, RIS_B)
    _deliver(s.spool, READER)
    assert s.outbound.zams.sweep() == 1
    gauges = _gauges(s)
    assert gauges[("mssgate_outbound_acks", "ready")] == 2
    assert gauges[("mssgate_outbound_acks", "leased")] == 0
    assert gauges[("mssgate_outbound_acks", "done")] == 0
    assert gauges[("mssgate_outbound_acks_oldest_ready_age_seconds", "")] >= 0
    [lease] = s.lease_acks(max=1)
    s.api.post(f"/v1/acks/{lease['ack']['id']}/ack", json={"lease_id": lease["lease_id"]})
    gauges = _gauges(s)
    assert gauges[("mssgate_outbound_acks", "ready")] == 1
    assert gauges[("mssgate_outbound_acks", "done")] == 1


def test_making_zams_never_waits_for_a_consumer_taking_one_already_made(
    sending: Sending,
) -> None:
    """PostgreSQL: a lease or an ack updates its item, then takes the audit head; a maker of
    the message's ZAMs that inserted one item (and so holds the head) and then inserted one
    already recorded waited on the unique key for that lease to end: a deadlock (seen with
    sweepers, leases, acks and read receipts at once). Only the missing ZAMs are inserted."""
    if sending.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: no row locks to wait on")
    s = sending
    outbound_id = s.submit("ZQ-6", RIS_B, READER)
    _deliver(s.spool, READER)
    [taken] = s.lease_acks()
    _deliver(s.spool, RIS_B)
    # A consumer's transaction on the item already made, not committed yet.
    with s.engine.connect() as leaser:
        leaser.execute(
            outbound_acks.update()
            .where(outbound_acks.c.id == taken["ack"]["id"])
            .values(state="done")
        )
        with ThreadPoolExecutor(1) as pool:
            making = pool.submit(ZamQueue(s.engine, facility="x").sweep)
            try:
                assert making.result(timeout=10) == 1
            finally:
                leaser.rollback()
    with s.engine.connect() as conn:
        ids = conn.execute(select(outbound_acks.c.id).order_by(outbound_acks.c.seq)).scalars()
        assert list(ids) == [taken["ack"]["id"], f"{outbound_id}-2-Z02"]


def test_sweepers_leases_acks_and_read_receipts_at_once_each_zam_once(sending: Sending) -> None:
    """Two sweepers, two consumers' loops leasing and acking, and read receipts (whose ZAMs
    are made in their own transaction) with /acks reads, all at once: no error (on
    PostgreSQL no deadlock), every ZAM recorded once and leased by the RIS."""
    s = sending
    ids = [s.submit(f"ZQ-S{i}", RIS_B, READER) for i in range(8)]
    for item in s.spool.due(route="local", limit=1000):
        s.spool.delivered(item)
    copies = [(i, _copy_message_id(s, i, RIS_B), _copy_message_id(s, i, READER)) for i in ids]
    errors: list[BaseException] = []
    leased: list[str] = []
    stop = threading.Event()
    sweeper = ZamQueue(s.engine, facility=s.config.server.hostname)

    def sweep() -> None:
        while not stop.is_set():
            sweeper.sweep()

    def lease_and_ack() -> None:
        while not stop.is_set():
            for lease in s.lease_acks(max=5, lease_seconds=60):
                leased.append(lease["ack"]["id"])
                done = s.api.post(
                    f"/v1/acks/{lease['ack']['id']}/ack", json={"lease_id": lease["lease_id"]}
                )
                assert done.status_code == 200, done.text

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(w)) for w in (sweep, sweep, lease_and_ack)]
    threads.append(threading.Thread(target=guarded(lease_and_ack)))
    for t in threads:
        t.start()
    try:
        for outbound_id, to_b, to_reader in copies:
            s.outbound.observe(RIS_A, mdn(to_b, sender=RIS_B, to=RIS_A))
            s.outbound.observe(RIS_A, mdn(to_reader, sender=READER, to=RIS_A))
            assert s.api.get(f"/v1/outbound/{outbound_id}/acks").status_code == 200
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    leased += [x["ack"]["id"] for x in s.lease_acks(max=100)]
    assert not errors, errors
    with s.engine.connect() as conn:
        recorded = conn.execute(select(outbound_acks.c.id)).scalars().all()
    assert len(recorded) == len(ids) * 4  # per copy: reception and reading
    assert sorted(leased) == sorted(recorded)
