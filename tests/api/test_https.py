"""The consumer API over real HTTPS: lease, read, ack, nack, expiry, isolation, auth."""

from __future__ import annotations

import asyncio
import time

import hl7
import pytest

from mssgate.queue.hl7mdm import parse_mdm
from tests.api.conftest import Api
from tests.queue.gpgkeys import key_pair
from tests.queue.helpers import RIS_A, RIS_B, add_consumer, cda, deliver, fill, mail

PROBLEM = "application/problem+json"


def test_lease_content_hl7_ack(api: Api) -> None:
    document = cda(1)
    [doc_id] = deliver(api.queue, mail([document]))
    with api.client(api.token_a) as client:
        assert client.get("/healthz").json() == {"status": "ok", "failing": {}, "nodes_down": {}}
        leased = client.post("/v1/leases", json={"max": 10, "lease_seconds": 60})
        assert leased.status_code == 200, leased.text
        [lease] = leased.json()["leases"]
        assert lease["document"]["id"] == doc_id and lease["document"]["state"] == "leased"
        assert lease["document"]["ins"]["value"] == "279035121518989"
        record = client.get(f"/v1/documents/{doc_id}").json()
        assert record["mailbox"] == RIS_A and record["sha256"] == lease["document"]["sha256"]
        content = client.get(f"/v1/documents/{doc_id}/content")
        assert content.content == document
        assert content.headers["content-type"] == "text/xml"
        message = client.get(f"/v1/documents/{doc_id}/hl7")
        assert message.headers["content-type"].startswith("x-application/hl7-v2+er7")
        parsed = parse_mdm(message.text)
        assert str(parsed.segment("PID")[3]).startswith("279035121518989^^^ASIP-SANTE-INS-NIR&")
        ack = client.post(f"/v1/documents/{doc_id}/ack", json={"lease_id": lease["lease_id"]})
        assert ack.json() == {"id": doc_id, "state": "done"}
        assert client.post("/v1/leases", json={"max": 10}).json() == {"leases": []}
        assert client.get(f"/v1/documents/{doc_id}").json()["state"] == "done"


def test_expired_lease_comes_back_and_late_ack_conflicts(api: Api) -> None:
    [doc_id] = fill(api.queue, 1)
    with api.client(api.token_a) as client:
        [first] = client.post("/v1/leases", json={"lease_seconds": 1}).json()["leases"]
        assert client.post("/v1/leases", json={}).json()["leases"] == []
        time.sleep(1.2)
        late = client.post(f"/v1/documents/{doc_id}/ack", json={"lease_id": first["lease_id"]})
        assert late.status_code == 409 and late.headers["content-type"] == PROBLEM
        assert late.json()["status"] == 409 and "expired" in late.json()["detail"]
        [again] = client.post("/v1/leases", json={"lease_seconds": 60}).json()["leases"]
        assert again["document"]["id"] == doc_id and again["lease_id"] != first["lease_id"]


def test_nack_counts_attempts_until_dead(api: Api) -> None:
    bad, good = fill(api.queue, 2)
    with api.client(api.token_a) as client:
        states = []
        for _ in range(3):
            [lease] = client.post("/v1/leases", json={"max": 1}).json()["leases"]
            assert lease["document"]["id"] == bad
            nack = client.post(
                f"/v1/documents/{bad}/nack",
                json={"lease_id": lease["lease_id"], "code": 902, "reason": "IPP inconnu"},
            )
            states.append(nack.json()["state"])
        assert states == ["ready", "ready", "dead"]
        [lease] = client.post("/v1/leases", json={"max": 5}).json()["leases"]
        assert lease["document"]["id"] == good
    assert api.queue.entry(bad).attempts == 3


def test_consumers_never_see_each_other(api: Api) -> None:
    [doc_a] = fill(api.queue, 1, mailbox=RIS_A)
    [doc_b] = fill(api.queue, 1, mailbox=RIS_B, start=5)
    with api.client(api.token_a) as a, api.client(api.token_b) as b:
        [lease_b] = b.post("/v1/leases", json={"max": 10}).json()["leases"]
        assert lease_b["document"]["id"] == doc_b
        [lease_a] = a.post("/v1/leases", json={"max": 10}).json()["leases"]
        assert lease_a["document"]["id"] == doc_a
        missing = a.get(f"/v1/documents/{'0' * 32}")
        for response in (
            a.get(f"/v1/documents/{doc_b}"),
            a.get(f"/v1/documents/{doc_b}/content"),
            a.get(f"/v1/documents/{doc_b}/hl7"),
            a.post(f"/v1/documents/{doc_b}/ack", json={"lease_id": lease_b["lease_id"]}),
        ):
            assert response.status_code == 404
            body = response.json()
            # Indistinguishable from an id that does not exist.
            assert (body["title"], body["detail"]) == (
                missing.json()["title"],
                missing.json()["detail"],
            )
    assert api.queue.entry(doc_b).state.value == "leased"


def test_tokens(api: Api, cli) -> None:  # type: ignore[no-untyped-def]
    with api.client() as anonymous:
        response = anonymous.post("/v1/leases", json={})
        assert response.status_code == 401 and response.headers["content-type"] == PROBLEM
        assert response.headers["www-authenticate"].startswith("Bearer")
    with api.client("mssg_not-a-real-token") as wrong:
        assert wrong.post("/v1/leases", json={}).status_code == 401
    with api.client(api.token_a) as client:
        assert client.post("/v1/leases", json={}).status_code == 200
        cli.ok("consumer", "revoke", "ris-a")
        assert client.post("/v1/leases", json={}).status_code == 401


def test_bad_requests_are_problems(api: Api) -> None:
    [doc_id] = fill(api.queue, 1)
    with api.client(api.token_a) as client:
        [lease] = client.post("/v1/leases", json={}).json()["leases"]
        for body in (
            {"lease_id": lease["lease_id"], "code": 901, "reason": ""},
            {"lease_id": lease["lease_id"], "code": 902, "extra": 1},
            {},
        ):
            response = client.post(f"/v1/documents/{doc_id}/nack", json=body)
            assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
        too_big = client.post("/v1/leases", content=b"{" + b" " * 100_000 + b"}")
        assert too_big.status_code == 413
        assert client.post("/v1/leases", json={"max": 0}).status_code == 422
        assert client.get("/nowhere").status_code == 404


def test_concurrent_leasers_never_share(api: Api) -> None:
    ids = fill(api.queue, 40)

    async def leaser() -> list[str]:
        got: list[str] = []
        async with api.async_client(api.token_a) as client:
            while True:
                response = await client.post("/v1/leases", json={"max": 2, "lease_seconds": 60})
                assert response.status_code == 200, response.text
                leases = response.json()["leases"]
                if not leases:
                    return got
                got += [x["document"]["id"] for x in leases]

    async def run() -> list[list[str]]:
        return await asyncio.gather(*(leaser() for _ in range(8)))

    taken = [doc for batch in asyncio.run(run()) for doc in batch]
    assert sorted(taken) == sorted(ids) and len(set(taken)) == len(taken)


def test_encrypted_consumer_gets_ciphertext(api: Api) -> None:
    with key_pair("RIS C <ris-c@hopital-a.test>") as keys:
        from tests.queue.helpers import add_mailboxes

        box = "ris-c@hopital-a.test"
        add_mailboxes(api.engine, box)
        _, token = add_consumer(api.engine, "ris-c", box, pgp_key=keys.public)
        document = cda(9)
        [doc_id] = deliver(api.queue, mail([document]), mailbox=box)
        with api.client(token) as client:
            content = client.get(f"/v1/documents/{doc_id}/content")
            assert content.headers["content-type"] == "application/pgp-encrypted"
            assert content.headers["x-original-content-type"] == "text/xml"
            assert document not in content.content
            assert keys.decrypt(content.content) == document
            hl7_text = keys.decrypt(client.get(f"/v1/documents/{doc_id}/hl7").content)
            assert isinstance(hl7.parse(hl7_text.decode()), hl7.Message)


@pytest.mark.parametrize("path", ["/openapi.json", "/metrics"])
def test_public_endpoints(api: Api, path: str) -> None:
    with api.client() as client:
        assert client.get(path).status_code == 200
