"""The spool when storage fails: 451 with an enhanced code, nothing left behind, and the next
message accepted; recovery of orphan files; the Maildir store's duplicate check.

Faults are real where they can be: the spool folder replaced by a file (no write succeeds,
root or not), a database trigger that aborts the spool insert (the commit fails after the
file was written). Only the directory fsync's failure is simulated, the one fault that
neither root nor an unprivileged test can provoke on a healthy disk.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select

from mssgate.config import load_config
from mssgate.db import open_engine, upgrade
from mssgate.db.schema import spool_messages
from mssgate.errors import StorageError
from mssgate.mailstore import MaildirStore
from mssgate.spool import Spool, new_queue_id
from tests.smtp.conftest import ALICE, BOB, Gateway, message


def send(gateway: Gateway) -> tuple[int, bytes]:
    client = gateway.login()
    client.mail(ALICE)
    client.rcpt(BOB)
    reply = client.data(message())
    client.quit()
    return reply


def spool_files(gateway: Gateway) -> list[Path]:
    return sorted((gateway.data / "spool" / "msg").glob("*.eml"))


def test_spool_write_failure_answers_451_and_the_next_message_passes(gateway: Gateway) -> None:
    msg = gateway.data / "spool" / "msg"
    away = msg.with_name("msg.away")
    msg.rename(away)
    msg.write_bytes(b"")  # a file where the folder was: every create fails, even as root
    try:
        assert send(gateway) == (451, b"4.3.0 Temporary failure, please try again later")
    finally:
        msg.unlink()
        away.rename(msg)
    failed = gateway.wait_event("smtp.spool_failed")
    assert failed["session"] and failed["queue_id"] and failed["level"] == "error"
    assert spool_files(gateway) == []
    code, text = send(gateway)
    assert code == 250
    gateway.wait_queue_ids(BOB, {text.split()[-1].decode()})


def test_spool_commit_failure_removes_the_written_file(gateway: Gateway) -> None:
    db = sqlite3.connect(gateway.data / "mssgate.db")
    db.execute(
        "CREATE TRIGGER fail_spool BEFORE INSERT ON spool_messages"
        " BEGIN SELECT RAISE(ABORT, 'injected: disk full'); END"
    )
    db.commit()
    try:
        assert send(gateway) == (451, b"4.3.0 Temporary failure, please try again later")
    finally:
        db.execute("DROP TRIGGER fail_spool")
        db.commit()
        db.close()
    failed = gateway.wait_event("smtp.spool_failed")
    assert "commit failed" in str(failed["error"])
    # The file was written before the commit (the trigger fires inside it): it is gone.
    assert spool_files(gateway) == []
    code, text = send(gateway)
    assert code == 250
    gateway.wait_queue_ids(BOB, {text.split()[-1].decode()})


@pytest.fixture
def spool(datadir: Path) -> Spool:
    engine = open_engine(load_config(datadir / "mssgate.toml").database_url)
    upgrade(engine)
    return Spool(engine, datadir / "spool")


def accept(spool: Spool, queue_id: str) -> None:
    spool.accept(
        queue_id=queue_id,
        content=b"Subject: x\r\n\r\nbody\r\n",
        listener="submission",
        sender=ALICE,
        identity=ALICE,
        peer="127.0.0.1",
        recipients=[(BOB, "local")],
    )


def test_directory_fsync_failure_leaves_no_file(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fsync(_directory: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("mssgate.fsutil.fsync_dir", no_fsync)
    queue_id = new_queue_id()
    with pytest.raises(OSError):
        accept(spool, queue_id)
    assert not spool.path(queue_id).exists()
    monkeypatch.undo()
    accept(spool, new_queue_id())  # the spool still works


def test_existing_file_is_never_removed_by_a_failed_accept(spool: Spool) -> None:
    queue_id = new_queue_id()
    spool.path(queue_id).write_bytes(b"another message")
    with pytest.raises(FileExistsError):
        accept(spool, queue_id)
    assert spool.path(queue_id).read_bytes() == b"another message"


def test_commit_failure_is_a_storage_error_without_file(spool: Spool) -> None:
    queue_id = new_queue_id()
    accept(spool, queue_id)
    # The same id again, under another file name: the row insert fails (primary key).
    spool.path(queue_id).rename(spool.root / "keep")
    with pytest.raises(StorageError):
        accept(spool, queue_id)
    assert not spool.path(queue_id).exists()


def test_recover_removes_orphans_and_keeps_queued_messages(spool: Spool) -> None:
    queued, done = new_queue_id(), new_queue_id()
    accept(spool, queued)
    accept(spool, done)
    [item] = [d for d in spool.due(route="local") if d.spool_id == done]
    spool.delivered(item)
    # A crash before a commit (no row), and one between "done" and the unlink.
    orphan = spool.path(new_queue_id())
    orphan.write_bytes(b"never acknowledged")
    spool.path(done).write_bytes(b"already delivered")
    stray = spool.root / "msg" / "notes.txt"  # not a spool file: not ours to delete
    stray.write_bytes(b"")
    leftover = spool.root / "tmp" / "spill-123"
    leftover.write_bytes(b"half a message")

    assert spool.recover() == 2
    assert sorted(p.name for p in (spool.root / "msg").iterdir()) == sorted(
        [f"{queued}.eml", "notes.txt"]
    )
    assert not leftover.exists()
    with spool._engine.connect() as conn:  # the rows are untouched
        states = dict(conn.execute(select(spool_messages.c.id, spool_messages.c.state)).all())
    assert states == {queued: "queued", done: "done"}
    assert spool.recover() == 0


def test_maildir_delivery_id_makes_a_retry_a_no_op(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path / "mail")
    store.deliver(BOB, b"first copy\r\n", delivery_id="Q1", sender=ALICE)
    new = store.maildir(BOB) / "new"
    inode = next(new.iterdir()).stat().st_ino
    # A retry after a crash between the write and the bookkeeping: same id and bytes (the
    # spool file), not stored again.
    store.deliver(BOB, b"first copy\r\n", delivery_id="Q1", sender=ALICE)
    [only] = list(new.iterdir())
    assert only.name.startswith("Q1.")
    assert only.read_bytes() == f"Return-Path: <{ALICE}>\r\nfirst copy\r\n".encode()
    assert only.stat().st_ino == inode  # left alone, not written again over itself
    store.deliver(BOB, b"second\r\n", delivery_id="Q2", sender=ALICE)
    assert sorted(p.name.split(".")[0] for p in new.iterdir()) == ["Q1", "Q2"]
    assert list((store.maildir(BOB) / "tmp").iterdir()) == []
