"""Local delivery and the success DSN NOTIFY=SUCCESS asks for (issue 15, review): the DSN is
a courtesy to the sender, the delivery is the message. A DSN that cannot be spooled (the
disk, the database) must not make the delivery happen again: the mail store (Dovecot over
LMTP) has no deduplication, and every pass wrote the message once more while the delivery
stayed due. Real LMTP server standing in for Dovecot, real spool on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session
from sqlalchemy import Engine

from mssgate.errors import StorageError
from mssgate.mailstore.lmtp import LmtpStore
from mssgate.smtp.dsnparams import RecipientDsn
from mssgate.spool import Spool, new_queue_id
from mssgate.spool.delivery import DeliveryWorker, Notifications

BOB = "bob@hopital-a.test"
SENDER = "alice@clinique-b.test"


class _Dovecot:
    def __init__(self) -> None:
        self.saved = 0

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        self.saved += 1
        return "250 2.0.0 saved"


class _Lmtp(Controller):
    def factory(self) -> LMTP:
        return LMTP(self.handler)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_success_dsn_that_cannot_be_spooled_does_not_deliver_again(
    sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(sqlite_engine, tmp_path / "spool")
    queue_id = new_queue_id()
    spool.accept(
        queue_id=queue_id, content=b"From: <alice@clinique-b.test>\r\nSubject: x\r\n\r\nx\r\n",
        listener="mta", sender=SENDER, identity=None, peer="127.0.0.1",
        recipients=[(BOB, "local")],
        rcpt_dsn={BOB: RecipientDsn(notify=frozenset({"SUCCESS"}))},
    )  # fmt: skip

    def full_disk(dsn: bytes, to: str) -> None:
        raise StorageError("cannot write the spool file: No space left on device")

    dovecot = _Dovecot()
    port = _free_port()
    server = _Lmtp(dovecot, hostname="127.0.0.1", port=port)
    server.start()
    try:
        worker = DeliveryWorker(
            spool,
            LmtpStore(f"127.0.0.1:{port}"),
            poll_seconds=0,
            notifications=Notifications(on_dsn=full_disk, hostname="a.test"),
        )
        for _ in range(3):  # three passes
            with contextlib.suppress(StorageError):
                asyncio.run(worker.run_once())
    finally:
        server.stop()
    assert dovecot.saved == 1
    assert spool.recipient_state(queue_id, BOB).state == "delivered"
    assert any("delivery.dsn_failed" in r.getMessage() for r in caplog.records)


class _Refusing(_Dovecot):
    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        return "550 5.1.1 no such mailbox"


def test_a_ris_copy_refused_here_gets_no_dsn_but_a_practitioners_does(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """A RIS's copy (listener api or mllp) that local delivery gives up on reaches the RIS as
    its status and ZAM; a DSN to its application mailbox said it again, as mail. A
    practitioner's message refused the same way still gets its DSN."""
    spool = Spool(sqlite_engine, tmp_path / "spool")
    ids = {}
    for listener in ("api", "mllp", "submission"):
        ids[listener] = new_queue_id()
        spool.accept(
            queue_id=ids[listener], content=b"From: <ris@hopital-a.test>\r\n\r\nx\r\n",
            listener=listener, sender="ris@hopital-a.test", identity="ris@hopital-a.test",
            peer=None, recipients=[(BOB, "local")],
        )  # fmt: skip
    reports: list[tuple[bytes, str]] = []
    port = _free_port()
    server = _Lmtp(_Refusing(), hostname="127.0.0.1", port=port)
    server.start()
    try:
        worker = DeliveryWorker(
            spool,
            LmtpStore(f"127.0.0.1:{port}"),
            poll_seconds=0,
            notifications=Notifications(
                on_dsn=lambda dsn, to: reports.append((dsn, to)), hostname="a.test"
            ),
        )
        asyncio.run(worker.run_once())
    finally:
        server.stop()
    assert {q: spool.recipient_state(q, BOB).state for q in ids.values()} == dict.fromkeys(
        ids.values(), "failed"
    )
    [(dsn, to)] = reports
    assert to == "ris@hopital-a.test" and b"Action: failed" in dsn
