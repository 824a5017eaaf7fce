"""Only what the verified signature covers reaches the RIS (issue 12 B.4-B.6), on a live
gateway: documents hidden in the signature part, around the signed entity or in the inner
signature of a triple wrap are never read; opaque-signed mail is read like a detached
signature; a CDA naming two patients is held, and no log line names either of them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import DOMAIN, Cli
from tests.documents.factory import (
    NESSI,
    PAT_TROIS,
    CdaSpec,
    EntrySpec,
    make_cda,
    make_xdm,
    with_patient,
)
from tests.signed_mail import (
    in_preamble_and_epilogue,
    smuggle_in_signature,
    two_patients_cda,
    wrapped_in_mixed,
)
from tests.smtp.conftest import ALICE, Gateway
from tests.smtp.test_encryption import RIS, World, start


@pytest.fixture
def world(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> Iterator[World]:
    w = start(cli, gateway_setup, tmp_path, require_signature=True)
    yield w
    gateway_setup.stop()


def signed_cda(n: int, cda: bytes | None = None) -> bytes:
    """A mail for the RIS with one CDA of PAT-TROIS (a distinct document for each `n`)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ALICE, RIS, "CR d'imagerie"
    msg["Message-ID"] = f"<signed-only-{n}@{DOMAIN}>"
    msg.set_content("Compte rendu ci-joint.")
    document = cda or make_cda(CdaSpec(doc_root=f"1.2.250.1.999.1.1.12.{n}"))
    msg.add_attachment(document, maintype="text", subtype="xml", filename="CR.xml")
    return msg.as_bytes(policy=policy.SMTP)


def nessi_xdm() -> bytes:
    """An IHE XDM for another patient: what rides outside the signature."""
    cda = make_cda(with_patient(CdaSpec(doc_root="1.2.250.1.999.1.1.66"), NESSI))
    return make_xdm(NESSI, [EntrySpec("DOC0001.XML", cda)])


def wait_ingested(gateway: Gateway, count: int, timeout: float = 60) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [e for e in gateway.events() if e.get("event") == "documents.ingested"]
        if len(done) >= count:
            return done
        time.sleep(0.1)
    seen = [e for e in gateway.events() if not str(e.get("event")).startswith("smtp.")]
    raise AssertionError(f"{count} messages ingested expected, events: {seen}")


def queued(cli: Cli) -> list[dict[str, object]]:
    return list(cli.ok("queue", "list", "--json").json())


def held(cli: Cli) -> list[dict[str, object]]:
    return list(cli.ok("quarantine", "list", "--json").json())


def ins_of(row: dict[str, object]) -> str:
    record = row["record"]
    assert isinstance(record, dict)
    return str(record["ins"]["value"])


def test_documents_outside_the_signed_entity_never_reach_the_ris(world: World, cli: Cli) -> None:
    xdm = nessi_xdm()
    # The zip in an unsigned attribute of a valid SignedData, its part renamed IHE_XDM.ZIP.
    in_signature = smuggle_in_signature(world.sign(signed_cda(1)), xdm)
    # Whole MIME parts written in the preamble and the epilogue of the multipart/signed.
    around = in_preamble_and_epilogue(world.sign(signed_cda(2)), xdm)
    # A triple wrap whose inner signature part carries the zip: the outer signature covers
    # it, but a signature is never a document.
    triple = world.sign(
        world.encrypt(smuggle_in_signature(world.sign(signed_cda(3)), xdm), RIS), detached=False
    )
    for raw in (in_signature, around, triple):
        code, text = world.submit(raw, RIS)
        assert code == 250, text
    # A part next to the signed entity makes the message unsigned as a whole: refused.
    code, text = world.submit(wrapped_in_mixed(world.sign(signed_cda(4)), xdm), RIS)
    assert (code, text[:5]) == (550, b"5.7.1"), text
    wait_ingested(world.gateway, 3)
    rows = queued(cli)
    assert sorted(ins_of(r) for r in rows) == [PAT_TROIS.ins] * 3, rows
    assert held(cli) == []


def test_opaque_signed_mail_reaches_the_ris(world: World, cli: Cli) -> None:
    # What `openssl smime -sign -nodetach` sends: application/pkcs7-mime; signed-data.
    opaque = world.sign(signed_cda(5), detached=False)
    # Signed twice, the outer one opaque; the inner signature part carries a zip.
    nested = world.sign(
        smuggle_in_signature(world.sign(signed_cda(6)), nessi_xdm()), detached=False
    )
    for raw in (opaque, nested):
        code, text = world.submit(raw, RIS)
        assert code == 250, text
    done = wait_ingested(world.gateway, 2)
    assert [e["documents"] for e in done] == [1, 1]
    rows = queued(cli)
    assert sorted(ins_of(r) for r in rows) == [PAT_TROIS.ins] * 2, rows
    assert held(cli) == []


def test_a_cda_naming_two_patients_is_held_and_no_log_names_them(world: World, cli: Cli) -> None:
    both = two_patients_cda(
        make_cda(CdaSpec(doc_root="1.2.250.1.999.1.1.12.7")),
        make_cda(with_patient(CdaSpec(), NESSI)),
    )
    code, text = world.submit(world.sign(signed_cda(7, both)), RIS)
    assert code == 250, text
    wait_ingested(world.gateway, 1)
    assert queued(cli) == []
    [entry] = held(cli)
    assert entry["code"] == 904
    reason = str(entry["reason"])
    assert "2 patients" in reason and "recordTarget 1" in reason and "recordTarget 2" in reason
    logs = world.gateway.logs()
    for secret in (PAT_TROIS.ins, NESSI.ins, PAT_TROIS.family, NESSI.family, "19770714"):
        assert secret not in logs, secret
        assert secret not in reason, secret
