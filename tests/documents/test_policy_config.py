"""`policy.require_birthplace` and `policy.allow_test_ins` reach the pipeline where mail is
ingested: the delivery feed (`DocumentFeed`) of a real data folder, its queue and its spool."""

from __future__ import annotations

from pathlib import Path

import pytest

from mssgate.config import Config, load_config
from mssgate.db import open_engine, upgrade
from mssgate.directory import Directory
from mssgate.integration import DocumentFeed
from mssgate.queue import DocumentQueue
from mssgate.spool import PendingDelivery, Spool, new_queue_id
from tests.queue.helpers import RIS_A, SENDER, add_consumer, add_mailboxes

from .factory import make_mail
from .test_drimbox import XDM_TREE, zip_tree


def _feed(config: Config, raw: bytes) -> tuple[DocumentQueue, list[str]]:
    engine = open_engine(config.database_url)
    upgrade(engine)
    add_mailboxes(engine, RIS_A)
    add_consumer(engine, "ris-a", RIS_A)
    queue = DocumentQueue.from_config(config, engine)
    spool = Spool(engine, config.server.data_dir / "spool")
    queue_id = new_queue_id()
    spool.accept(
        queue_id=queue_id,
        content=raw,
        listener="mta",
        sender=SENDER,
        identity=None,
        peer=None,
        recipients=[(RIS_A, "local")],
    )
    item = PendingDelivery(spool_id=queue_id, recipient=RIS_A, route="local", attempts=0)
    DocumentFeed(queue, spool, Directory(engine, actor="test"), config)(item, raw)
    held = [e.id for e in queue.quarantine.entries()]
    return queue, held


def _drimbox_mail() -> bytes:
    # The DRIMbox KOS names its patient in XDS metadata only, and XDS has no PID-11 there.
    return make_mail([("IHE_XDM.ZIP", zip_tree(XDM_TREE), "application/zip")])


def test_birthplace_is_required_by_default() -> None:
    assert Config().policy.require_birthplace is True


def test_default_policy_holds_the_drimbox_kos(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSSGATE_POLICY__ALLOW_TEST_INS", "true")
    queue, held = _feed(load_config(datadir / "mssgate.toml"), _drimbox_mail())
    assert queue.entries() == []
    [entry] = queue.quarantine.entries()
    assert held == [entry.id]
    assert entry.code == 905 and "birthplace" in entry.reason
    queue.engine.dispose()


def test_require_birthplace_off_queues_the_drimbox_kos(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSSGATE_POLICY__ALLOW_TEST_INS", "true")
    monkeypatch.setenv("MSSGATE_POLICY__REQUIRE_BIRTHPLACE", "false")
    config = load_config(datadir / "mssgate.toml")
    assert config.policy.require_birthplace is False
    queue, held = _feed(config, _drimbox_mail())
    assert held == []
    [entry] = queue.entries()
    record = entry.record
    assert (record.ins.value, record.ins.source, record.ins.qualified) == (
        "162018885045327",
        "xdm",
        False,
    )
    queue.engine.dispose()


def test_test_ins_refused_unless_configured(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSSGATE_POLICY__REQUIRE_BIRTHPLACE", "false")
    queue, _ = _feed(load_config(datadir / "mssgate.toml"), _drimbox_mail())
    assert queue.entries() == []
    [entry] = queue.quarantine.entries()
    assert entry.code == 906
    queue.engine.dispose()
