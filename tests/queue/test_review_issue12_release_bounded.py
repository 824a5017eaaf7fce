"""Review of issue 12 D.13: `quarantine release` runs the pipeline under the message's budget.

A message held whole because its pipeline ran over `documents.time_budget_seconds` (or
killed its worker) was released by running the pipeline again inside the CLI process: no
time bound and no memory cap, on the machine that serves the gateway. It now runs in a
worker process like serve's, and a message still over its budget stays held."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mssgate.documents import isolation
from mssgate.documents.errors import QuarantineCode
from mssgate.documents.pipeline import hold_message
from tests.documents.factory import make_mail
from tests.documents.slow_pdf import make_slow_pdf
from tests.queue.helpers import RIS_A, SENDER, add_mailboxes
from tests.queue.test_cli import _queue


def test_releasing_a_message_over_its_time_budget_is_bounded_by_it(  # type: ignore[no-untyped-def]
    cli, datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = _queue(datadir)
    add_mailboxes(queue.engine, RIS_A)
    raw = make_mail([("CR.pdf", make_slow_pdf(), "application/pdf")])
    reason = "document processing exceeded its time budget of 2 s per message"
    [held] = hold_message(raw, QuarantineCode.OTHER, reason).outcomes
    held_id, _ = queue.quarantine.hold(
        held, message=raw, mailbox=RIS_A, sender=SENDER, message_id=None, subject=None,
        received_at=datetime.now(UTC),
    )  # fmt: skip
    monkeypatch.setenv("MSSGATE_DOCUMENTS__TIME_BUDGET_SECONDS", "2")
    # Each worker the release stops: had it answered (its job done) and how did it end. The
    # real kill runs; this only looks on.
    kills: list[tuple[bool, int | None]] = []
    real_kill = isolation._Worker.kill

    def kill(worker: isolation._Worker) -> None:
        answered = worker.conn.poll(0)
        real_kill(worker)
        kills.append((answered, worker.process.exitcode))

    monkeypatch.setattr(isolation._Worker, "kill", kill)
    refused = cli("quarantine", "release", held_id)
    assert refused.code == 1, refused.out
    assert "time budget of 2 s" in refused.err
    # The budget, not the PDF's 27 s: the worker was killed mid-parse, before it answered
    # (a parse run to its end, in the CLI or a worker, would have answered).
    assert kills and kills[0] == (False, -signal.SIGKILL), kills
    assert queue.quarantine.get(held_id).state.value == "held"
    assert queue.quarantine.entries() == [queue.quarantine.get(held_id)]
    queue.engine.dispose()
