"""One submission to many recipients holds one signed copy at a time, not one per recipient
(review of issue 15): each copy carries the whole document twice (in IHE_XDM.ZIP and as the
PDF), so 50 recipients of a message near the size limit held 50 of them at once."""

from __future__ import annotations

import os
import tracemalloc
from dataclasses import replace

from sqlalchemy import Engine

from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.documents.samples import OID_NIR, PAT_TROIS, CdaSpec, make_cda, make_pdf
from mssgate.outbound.service import Outbound
from mssgate.smime.mailbox_keys import ensure_mailbox_key
from mssgate.spool import Spool
from tests.queue.helpers import DOMAIN, RIS_A, add_consumer, add_mailboxes
from tests.smtp.test_outbound_gateway import mdm

FEW, MANY = 2, 12


def test_copies_are_built_one_at_a_time(gateway: tuple[Config, Engine]) -> None:
    config, engine = gateway
    ensure_mailbox_key(config, RIS_A, common_name="RIS A")
    consumer, _ = add_consumer(engine, "ris-a", RIS_A)
    readers = tuple(f"dr{n}@{DOMAIN}" for n in range(MANY))
    add_mailboxes(engine, *readers)
    spool = Spool(engine, config.server.data_dir / "spool")
    outbound = Outbound(config, Directory(engine, actor="test"), spool)
    # Random bytes after the PDF header: little compresses, each copy carries them whole.
    pdf = make_pdf(["Compte rendu"]) + b"\n%" + os.urandom(500_000).hex().encode()
    cda = make_cda(CdaSpec(patient=replace(PAT_TROIS, oid=OID_NIR)))

    def peak(control: str, count: int) -> int:
        body = mdm(control, recipients=readers[:count], cda=cda, oid=OID_NIR, pdf=pdf)
        tracemalloc.start()
        try:
            answer = outbound.submit(consumer, body)
            _, top = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert answer.status == 202, answer.ack
        return top

    few, many = peak("MEM-FEW", FEW), peak("MEM-MANY", MANY)
    entries = list(spool.entries())
    assert len(entries) == FEW + MANY
    one_copy = max(e.size for e in entries)
    # Every copy held at once: 10 more recipients peak 10 copies higher. One at a time: the
    # same peak give or take a copy, whatever the number of recipients.
    assert many - few < 2 * one_copy, (few, many, one_copy)
