"""`mssgate spool bounce` and RFC 3461 (issue 15, review): the DSN reports only the
recipients whose NOTIFY asks for failures, with their ORCPT and the message's ENVID; when none
asks, the message is bounced (its deliveries fail) and no DSN is sent. Before: NOTIFY=NEVER
was ignored and the DSN named neither ORCPT nor ENVID."""

from __future__ import annotations

import json
from pathlib import Path

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.smtp.dsnparams import MessageDsn, RecipientDsn
from mssgate.spool import Spool, new_queue_id
from tests.conftest import DOMAIN, Cli
from tests.test_cli_ids_spool_audit import fail_once, run

NEVER = "dr.never@clinique-b.test"
TOLD = "dr.told@clinique-b.test"


def _spool(datadir: Path, notify: dict[str, frozenset[str]]) -> str:
    engine = open_engine(load_config(datadir / "mssgate.toml").database_url)
    queue_id = new_queue_id()
    Spool(engine, datadir / "spool").accept(
        queue_id=queue_id, content=f"From: dr.x@{DOMAIN}\r\nSubject: x\r\n\r\nx\r\n".encode(),
        listener="submission", sender=f"dr.x@{DOMAIN}", identity=f"dr.x@{DOMAIN}",
        peer="127.0.0.1", recipients=[(r, "relay") for r in notify],
        dsn=MessageDsn(ret="HDRS", envid="Case+Id"),
        rcpt_dsn={r: RecipientDsn(n, ("rfc822", r.upper())) for r, n in notify.items()},
    )  # fmt: skip
    engine.dispose()
    fail_once(datadir, queue_id, "421 4.7.0 try later")
    return queue_id


def test_a_bounce_reports_only_whom_notify_asks_for(datadir: Path, cli: Cli) -> None:
    cli.ok("directory", "add", f"dr.x@{DOMAIN}", "--name", "X", "--kind", "organisation")
    queue_id = _spool(datadir, {NEVER: frozenset({"NEVER"}), TOLD: frozenset({"FAILURE"})})
    bounced = run(datadir, "spool", "bounce", queue_id)
    assert bounced.returncode == 0, bounced.stderr
    dsn_id = bounced.stdout.split("(DSN ", 1)[1].split(")", 1)[0]
    dsn = (datadir / "spool" / "msg" / f"{dsn_id}.eml").read_bytes().decode()
    assert NEVER not in dsn
    assert f"Original-Recipient: rfc822;{TOLD.upper()}\r\nFinal-Recipient: rfc822; {TOLD}" in dsn
    assert "Original-Envelope-Id: Case+2BId\r\n" in dsn
    assert "2 recipient(s) not delivered" in bounced.stdout


def test_a_bounce_nobody_asked_to_hear_of_sends_no_dsn(datadir: Path, cli: Cli) -> None:
    cli.ok("directory", "add", f"dr.x@{DOMAIN}", "--name", "X", "--kind", "organisation")
    queue_id = _spool(datadir, {NEVER: frozenset({"NEVER"}), TOLD: frozenset({"SUCCESS"})})
    bounced = run(datadir, "spool", "bounce", queue_id)
    assert bounced.returncode == 0, bounced.stderr
    assert bounced.stdout.startswith(f"bounced {queue_id}: no DSN (NOTIFY asks for none)")
    assert json.loads(run(datadir, "spool", "list", "--json").stdout) == []
    [entry] = json.loads(run(datadir, "audit", "--action", "spool.bounce", "--json").stdout)
    assert entry["subject"] == queue_id
