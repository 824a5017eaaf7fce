"""A RIS that only polls (issue 15): on a running `mssgate serve`, the ZAMs of what it sent
are leased from the queue API as items of kind `ack`: the ACK_RECEPTION_MSS once the copy
reached the practitioner, acked and not offered again, the ACK_LECTURE_MSS once the reader's
receipt came back; a lease without kind still returns documents only; another consumer of
the same mailbox sees none of them."""

from __future__ import annotations

import email
import time
from typing import Any

import hl7  # type: ignore[import-untyped]
import httpx
from sqlalchemy import select

from mssgate.db import open_engine
from mssgate.db.schema import outbound_acks
from tests.smtp.conftest import ALICE, BOB, Gateway
from tests.smtp.test_outbound_gateway import live, mdm, mdn, post  # noqa: F401  (the fixture)


def _lease_acks(api: httpx.Client, timeout: float = 30) -> list[dict[str, Any]]:
    """The next items of kind ack, waiting for the delivery that warrants them."""
    deadline = time.monotonic() + timeout
    while True:
        response = api.post("/v1/leases?kind=ack", json={"max": 10, "lease_seconds": 60})
        assert response.status_code == 200, response.text
        leases: list[dict[str, Any]] = response.json()["leases"]
        if leases or time.monotonic() > deadline:
            return leases
        time.sleep(0.2)


def _swept(gateway: Gateway, ack_id: str, timeout: float = 30) -> bool:
    engine = open_engine(f"sqlite:///{gateway.data / 'mssgate.db'}")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                query = select(outbound_acks.c.id).where(outbound_acks.c.id == ack_id)
                if conn.execute(query).first() is not None:
                    return True
            time.sleep(0.2)
        return False
    finally:
        engine.dispose()


def test_a_polling_ris_leases_its_zams_as_items_of_kind_ack(
    live: tuple[Gateway, httpx.Client, httpx.Client],  # noqa: F811
) -> None:
    gateway, api, other = live
    response, _ = post(api, mdm("POLL-1"))
    assert response.status_code == 202, response.text
    outbound_id = response.headers["Location"].rsplit("/", 1)[1]
    [delivered] = gateway.wait_delivered(ALICE, 1)
    # Nobody asks: serve's sweeper makes the ZAM all the same.
    assert _swept(gateway, f"{outbound_id}-1-Z02")

    [lease] = _lease_acks(api)
    item = lease["ack"]
    assert item["id"] == f"{outbound_id}-1-Z02" and item["code"] == "ACK_RECEPTION_MSS"
    zam = hl7.parse(item["content"])
    assert str(zam.segment("MSH")[9]) == "ZAM^Z02^ZAM_Z01"
    assert str(zam.segments("OBX")[0][4]) == "POLL-1"
    assert str(zam.segments("OBX")[1][5]) == f"^^X.400^{ALICE}"
    assert api.get(f"/v1/acks/{item['id']}/content").text == item["content"]
    # The same consumer's /acks lists the very same ZAM.
    assert api.get(f"/v1/outbound/{outbound_id}/acks").json() == [item["content"]]
    # Another consumer, even of the same mailbox: nothing offered, 404.
    assert other.post("/v1/leases?kind=ack", json={}).json() == {"leases": []}
    assert other.get(f"/v1/acks/{item['id']}").status_code == 404
    # A lease without kind: documents only, never a ZAM.
    for plain in api.post("/v1/leases", json={"max": 10}).json()["leases"]:
        assert "document" in plain and "ack" not in plain
    assert api.post("/v1/leases?kind=other", json={}).status_code == 400

    acked = api.post(f"/v1/acks/{item['id']}/ack", json={"lease_id": lease["lease_id"]})
    assert acked.status_code == 200, acked.text
    assert api.post("/v1/leases?kind=ack", json={}).json() == {"leases": []}

    # The practitioner's read receipt comes back to the RIS's mailbox: a ZAM^Z03.
    copy_id = email.message_from_bytes(delivered.read_bytes())["Message-ID"]
    smtp = gateway.login()
    smtp.sendmail(ALICE, [BOB], mdn(copy_id))
    smtp.quit()
    gateway.wait_event("outbound.read", timeout=30)
    [read] = _lease_acks(api)
    assert read["ack"]["id"] == f"{outbound_id}-1-Z03"
    assert read["ack"]["code"] == "ACK_LECTURE_MSS"
    assert str(hl7.parse(read["ack"]["content"]).segment("MSH")[9]) == "ZAM^Z03^ZAM_Z01"
    done = api.post(f"/v1/acks/{read['ack']['id']}/ack", json={"lease_id": read["lease_id"]})
    assert done.status_code == 200
    assert api.post("/v1/leases?kind=ack", json={}).json() == {"leases": []}
