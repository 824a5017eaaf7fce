"""POST /v1/outbound reads and processes a bounded number of submissions at once (review of
issue 15): each holds its body and several times it while signing, so the server's 256
connections could do so together. Past the bound, after the wait, a 503 with Retry-After."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from mssgate.api.limits import Slots
from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda
from mssgate.outbound.service import Outbound
from mssgate.queue.service import DocumentQueue
from mssgate.smime.mailbox_keys import ensure_mailbox_key
from mssgate.spool import Spool
from tests.api.conftest import Running
from tests.queue.helpers import RIS_A, RIS_B, add_consumer, add_mailboxes
from tests.smtp.test_outbound_gateway import mdm

HL7 = {"Content-Type": "application/hl7-v2"}


@pytest.fixture
def running(gateway: tuple[Config, Engine]) -> Iterator[Running]:
    config, engine = gateway
    queue = DocumentQueue(engine, data_dir=config.server.data_dir)
    server = Running(config, engine, queue)
    try:
        yield server
    finally:
        server.stop()


def test_a_submission_past_the_bound_gets_503_until_a_slot_is_free(
    gateway: tuple[Config, Engine], running: Running, datadir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    config, engine = gateway
    ensure_mailbox_key(config, RIS_A, common_name="RIS A")
    _, token = add_consumer(engine, "ris-a", RIS_A)
    spool = Spool(engine, config.server.data_dir / "spool")
    outbound = Outbound(config, Directory(engine, actor="test"), spool)
    running.server.app.state.outbound = outbound
    running.server.app.state.outbound_slots = Slots(1, wait=0)

    inside, release = threading.Event(), threading.Event()
    accept = spool.accept

    def held(**kwargs: object) -> None:
        inside.set()
        assert release.wait(60)
        accept(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(spool, "accept", held)
    cda = make_cda(CdaSpec(patient=replace(PAT_TROIS, oid=OID_NIR)))

    def body(control: str) -> bytes:
        return mdm(control, recipients=(RIS_B,), cda=cda, oid=OID_NIR)

    ca = ssl.create_default_context(cafile=str(datadir / "certs" / "ca.crt.pem"))
    client = httpx.Client(base_url=f"https://127.0.0.1:{running.server.port}", verify=ca,
                          headers={"Authorization": f"Bearer {token}"}, timeout=60)  # fmt: skip
    with client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/outbound", content=body("SLOT-1"), headers=HL7)
        assert inside.wait(60)
        busy = client.post("/v1/outbound", content=body("SLOT-2"), headers=HL7)
        assert busy.status_code == 503, busy.text
        assert busy.headers["Retry-After"] == "5"
        release.set()
        assert first.result(60).status_code == 202
        # The slot is given back: the next one goes through.
        again = client.post("/v1/outbound", content=body("SLOT-2"), headers=HL7)
        assert again.status_code == 202, again.text
    assert len(list(spool.entries())) == 2


@pytest.mark.parametrize("path", ["%00", "A%00B", "..%2F..", "NOSUCHID"])
def test_an_outbound_id_that_is_none_of_ours_is_refused_before_the_database(
    gateway: tuple[Config, Engine], datadir: Path, pg_engine: Engine, path: str
) -> None:
    """On PostgreSQL a NUL in the id reached the query (DataError, a 500)."""
    config, _ = gateway
    add_mailboxes(pg_engine, RIS_A, RIS_B)
    _, token = add_consumer(pg_engine, "ris-a", RIS_A)
    server = Running(config, pg_engine, DocumentQueue(pg_engine, data_dir=config.server.data_dir))
    try:
        spool = Spool(pg_engine, config.server.data_dir / "spool")
        server.server.app.state.outbound = Outbound(
            config, Directory(pg_engine, actor="test"), spool
        )
        ca = ssl.create_default_context(cafile=str(datadir / "certs" / "ca.crt.pem"))
        base = f"https://127.0.0.1:{server.server.port}"
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, verify=ca, headers=auth, timeout=60) as client:
            for suffix in ("", "/acks"):
                response = client.get(f"/v1/outbound/{path}{suffix}")
                assert response.status_code == 404, response.text
    finally:
        server.stop()
