"""X-MSS-NIL (ECO.2.4.3) goes on every message the gateway sends: the MDNs its queue writes
and the DSNs its relay writes, not only the client mail it relays."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.policy import default
from pathlib import Path

from sqlalchemy import Engine

from mssgate.config import Config
from mssgate.queue import DocumentQueue
from mssgate.queue.mdn import build_mdn
from mssgate.relay.dsn import RecipientFailure, build_dsn
from tests.queue.helpers import RIS_A, SENDER, add_consumer, add_mailboxes, cda, deliver, mail

ORIGINAL = (
    b"Return-Path: <dr.a@hopital.mssante.fr>\r\n"
    b"From: dr.a@hopital.mssante.fr\r\nTo: ris@clinique.mssante.fr\r\n"
    b"Subject: CR\r\nMessage-ID: <m-1@hopital.mssante.fr>\r\n"
    b"Disposition-Notification-To: dr.a@hopital.mssante.fr\r\n\r\nbody\r\n"
)


def _head(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def test_mdn_carries_x_mss_nil() -> None:
    mdn = build_mdn(
        ORIGINAL,
        outcome="error",
        code=905,
        reporting_ua="mx.test",
        our_address="ris@c.test",
        mss_nil="DEV935997",
    )
    assert email.message_from_bytes(mdn, policy=default)["X-MSS-NIL"] == "DEV935997"
    assert b"X-MSS-NIL: DEV935997\r\n" in _head(mdn)
    # Without a value (a caller outside the gateway), no empty field is written.
    bare = build_mdn(ORIGINAL, outcome="processed", reporting_ua="mx", our_address="ris@c.test")
    assert b"X-MSS-NIL" not in bare


def test_mdn_nil_cannot_open_a_header() -> None:
    mdn = build_mdn(
        ORIGINAL,
        outcome="processed",
        reporting_ua="mx",
        our_address="ris@c.test",
        mss_nil="DEV1\r\nBcc: x@evil.test",
    )
    assert b"\r\nBcc:" not in mdn


def test_dsn_carries_x_mss_nil() -> None:
    dsn = build_dsn(
        ORIGINAL,
        reporting_mta="mx.hopital-a.test",
        failures=[RecipientFailure("a@clinique-b.test", "5.1.1")],
        postmaster="mailer-daemon@hopital-a.test",
        arrival=datetime(2026, 3, 1, tzinfo=UTC),
        envelope_sender="alice@hopital-a.test",
        mss_nil="DEV935997\r\nBcc: x@evil.test",
    )
    message = email.message_from_bytes(dsn, policy=default)
    assert not message.defects
    assert str(message["X-MSS-NIL"]).startswith("DEV935997")
    assert b"\r\nBcc:" not in dsn
    assert message.get_content_type() == "multipart/report"


def test_queue_from_config_stamps_its_receipts(sqlite_engine: Engine, tmp_path: Path) -> None:
    add_mailboxes(sqlite_engine, RIS_A)
    consumer, _ = add_consumer(sqlite_engine, "ris-a", RIS_A)
    config = Config.model_validate(
        {
            "server": {"data_dir": tmp_path, "domain": "hopital-a.test"},
            "policy": {"mss_nil": "NIL42"},
        }
    )
    sent: list[tuple[bytes, str]] = []
    queue = DocumentQueue.from_config(
        config, sqlite_engine, on_receipt=lambda mdn, to: sent.append((mdn, to))
    )
    [doc_id] = deliver(queue, mail([cda(1)], receipt=True))
    [lease] = queue.lease(consumer)
    queue.ack(consumer, doc_id, lease.lease_id)
    [(mdn, to)] = sent
    assert to == SENDER
    assert b"X-MSS-NIL: NIL42\r\n" in _head(mdn)
