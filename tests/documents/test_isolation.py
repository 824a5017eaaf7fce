"""The pipeline in killable worker processes (issue 12 item 13): a message whose parse runs
over its budget is stopped at the budget, its worker killed and replaced, and the next
message is served by the new worker."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from mssgate.documents.isolation import Failed, Finished, PipelinePool
from mssgate.documents.pipeline import process_message
from mssgate.documents.record import PipelineResult

from .factory import make_mail, make_pdf
from .slow_pdf import make_slow_pdf


def test_a_slow_pdf_is_stopped_at_the_budget_and_the_worker_replaced(tmp_path: Path) -> None:
    slow = tmp_path / "slow.eml"
    slow.write_bytes(make_mail([("CR.pdf", make_slow_pdf(), "application/pdf")]))
    fine = tmp_path / "fine.eml"
    fine.write_bytes(make_mail([("CR.pdf", make_pdf(["Compte rendu"]), "application/pdf")]))
    pool = PipelinePool(1)
    pool.start()
    try:
        [first] = pool._all
        outcome = pool.run(process_message, slow, 2.0, allow_test_oids=True)
        assert isinstance(outcome, Failed) and outcome.timed_out, outcome
        assert "time budget of 2 s per message" in outcome.reason
        # Stopped at the budget, not waited for: the worker had not answered when the budget
        # ran out (timed_out), and it was killed, not left to finish the PDF's 27 s.
        assert first.process.exitcode == -signal.SIGKILL
        assert pool.replaced == 1
        after = pool.run(process_message, fine, 30.0, allow_test_oids=True)
        assert isinstance(after, Finished), after
        assert len(after.result.outcomes) == 1
    finally:
        pool.stop()


def test_a_failure_inside_the_worker_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    pool = PipelinePool(1)
    pool.start()
    try:
        outcome = pool.run(process_message, tmp_path / "gone.eml", 30.0)
        assert isinstance(outcome, Failed) and not outcome.timed_out
        assert "FileNotFoundError" in outcome.reason
        assert pool.replaced == 0
    finally:
        pool.stop()


def hog(raw: bytes, **_: object) -> PipelineResult:
    """A pipeline that wants 1 GiB at once (run in the worker by reference)."""
    return PipelineResult(outcomes=(), defects=(str(len(bytearray(1 << 30))),))


def test_a_worker_over_its_memory_cap_fails_the_message_not_the_gateway(tmp_path: Path) -> None:
    path = tmp_path / "any.eml"
    path.write_bytes(make_mail([]))
    pool = PipelinePool(1, memory_bytes=512 << 20)
    pool.start()
    try:
        outcome = pool.run(hog, path, 30.0)
        assert isinstance(outcome, Failed) and not outcome.timed_out
        assert "MemoryError" in outcome.reason or "died" in outcome.reason, outcome.reason
        after = pool.run(process_message, path, 30.0)
        assert isinstance(after, Finished)
    finally:
        pool.stop()


def test_a_library_warning_in_the_worker_is_a_json_line_with_the_queue_id(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A startxref pointing past its table: pypdf recovers, and warns through `logging`.
    pdf = make_pdf(["Compte rendu"])
    broken = re.sub(rb"startxref\s+(\d+)", lambda m: b"startxref\n%d" % (int(m[1]) + 7), pdf)
    path = tmp_path / "warns.eml"
    path.write_bytes(make_mail([("CR.pdf", broken, "application/pdf")]))
    pool = PipelinePool(1)
    pool.start()
    try:
        capfd.readouterr()
        outcome = pool.run(
            process_message, path, 30.0, log_context={"queue_id": "Q-1"}, allow_test_oids=True
        )
        assert isinstance(outcome, Finished), outcome
    finally:
        pool.stop()
    lines = [line for line in capfd.readouterr().err.splitlines() if "startxref" in line]
    assert lines, "pypdf said nothing about the broken startxref"
    for line in lines:
        record = json.loads(line)  # one JSON object, like every line the gateway writes
        assert record["queue_id"] == "Q-1" and record["logger"].startswith("pypdf")
        assert record["level"] == "warning"
