"""Encryption at rest through the real path: SMTP into `mssgate serve`, delivery to the
mailbox of a RIS that registered an OpenPGP key, the document pipeline, then the data folder
read file by file as a thief with a copy of the disk would read it."""

from __future__ import annotations

import base64
import email
import re
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.queue import DocumentQueue, QueueState
from tests.conftest import DOMAIN, Cli
from tests.documents.factory import CdaSpec, make_cda
from tests.queue.gpgkeys import KeyPair, key_pair
from tests.smtp.conftest import ALICE, PASSWORD, Gateway, free_env

RIS = f"ris@{DOMAIN}"
# Text of the CDA's body alone: no metadata field of the record carries it.
FINDING = "Opacite spiculee du lobe superieur droit de quatorze millimetres"
PATIENT = b"PAT-TROIS"
SECTIONS = (("55752-0", "Informations cliniques"), ("19005-8", FINDING))


def base64_forms(needle: bytes) -> list[bytes]:
    """`needle` as it reads inside any base64 text, at each of the three alignments (the
    first and last groups, which mix in the neighbouring bytes, are left out)."""
    forms = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + needle)
        forms.append(encoded[4 if shift else 0 : -4])
    return forms


def holders(data: Path, needle: bytes) -> list[str]:
    """Files under `data` holding `needle`, clear or base64 (line breaks removed)."""
    found = []
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        flat = re.sub(rb"\s", b"", raw)
        if needle in raw or any(form in flat for form in base64_forms(needle)):
            found.append(str(path.relative_to(data)))
    return found


def document_mail(good: bytes, held: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = RIS
    msg["Subject"] = "XDM/1.0/DDM+CR d'imagerie medicale PAT-TROIS DOMINIQUE 28/03/1979"
    msg["Message-ID"] = "<at-rest-1@hopital-a.test>"
    msg.set_content("Compte rendu ci-joint.")
    msg.add_attachment(good, maintype="text", subtype="xml", filename="CR.xml")
    msg.add_attachment(held, maintype="text", subtype="xml", filename="CR-sans-INS.xml")
    return msg.as_bytes(policy=policy.SMTP)


@pytest.fixture
def sealed_gateway(cli: Cli, datadir: Path, tmp_path: Path) -> Iterator[tuple[Gateway, KeyPair]]:
    with key_pair(f"RIS <{RIS}>") as keys:
        cli.ok("directory", "add", ALICE, "--name", "alice", "--rpps", "99700367909",
               "--password-stdin",
               stdin=PASSWORD + "\n")  # fmt: skip
        cli.ok("directory", "add", RIS, "--name", "RIS imagerie", "--kind", "application")
        public = tmp_path / "ris.pub.asc"
        public.write_text(keys.public)
        cli.ok("consumer", "add", "ris", "--mailbox", RIS, "--pgp-key", str(public))
        gateway = Gateway(data=datadir, env=free_env(datadir))
        gateway.env["MSSGATE_POLICY__ALLOW_TEST_INS"] = "true"
        gateway.start()
        try:
            yield gateway, keys
        finally:
            if gateway.proc is not None:
                gateway.stop()


def test_the_data_folder_holds_no_clear_document_for_a_ris_with_a_key(
    sealed_gateway: tuple[Gateway, KeyPair],
) -> None:
    gateway, keys = sealed_gateway
    good = make_cda(CdaSpec(sections=SECTIONS))
    held = make_cda(CdaSpec(doc_root="1.2.250.1.999.1.1.45.2", sections=SECTIONS,
                            include_ins=False))  # fmt: skip
    sent = document_mail(good, held)
    client = gateway.login()
    client.sendmail(ALICE, [RIS], sent)
    client.quit()
    [stored] = gateway.wait_delivered(RIS, 1)
    ingested = gateway.wait_event("documents.ingested", documents=2)
    # The spool's copy is gone once the delivery is recorded.
    gateway.wait_event("delivery.ok", queue_id=ingested["queue_id"])
    gateway.stop()

    config = load_config(gateway.data / "mssgate.toml")
    engine = open_engine(config.database_url)
    try:
        queue = DocumentQueue(engine, data_dir=gateway.data)
        [entry] = queue.entries()
        [quarantined] = queue.quarantine.entries()
    finally:
        engine.dispose()
    assert entry.state == QueueState.READY and entry.encrypted
    assert quarantined.code == 903 and quarantined.encrypted

    # A copy of the disk: no file holds the report's text, clear or base64 (the mail, the
    # HL7 message and the quarantined document all carry it in base64).
    assert holders(gateway.data, FINDING.encode()) == []
    assert holders(gateway.data, good[:200]) == []
    # The patient's name: only in the queue database, whose record metadata (INS, traits,
    # the subject) is kept in clear by design so that documents can be listed and queried.
    database = Path(config.database_url.removeprefix("sqlite:///"))
    outside = [
        name for name in holders(gateway.data, PATIENT)
        if not (gateway.data / name).name.startswith(database.name)
    ]  # fmt: skip
    assert outside == []
    assert holders(gateway.data, PATIENT), "the walk must see the database's clear metadata"

    # The mailbox copy is RFC 3156 PGP/MIME that the RIS's key opens to the message itself.
    mime = email.message_from_bytes(stored.read_bytes(), policy=policy.SMTP)
    assert mime.get_content_type() == "multipart/encrypted"
    assert mime.get_param("protocol") == "application/pgp-encrypted"
    assert mime["Message-ID"] == "<at-rest-1@hopital-a.test>" and mime["Subject"] == "..."
    version, payload = mime.iter_parts()
    assert version.get_content_type() == "application/pgp-encrypted"
    assert version.get_content().strip() == b"Version: 1"
    assert payload.get_content_type() == "application/octet-stream"
    armored = payload.get_payload(decode=True)
    assert isinstance(armored, bytes) and armored.startswith(b"-----BEGIN PGP MESSAGE-----")
    clear = keys.decrypt(armored)
    assert clear.startswith(b"Received: ") and clear.endswith(sent)
