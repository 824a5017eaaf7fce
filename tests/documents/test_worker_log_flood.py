"""A document cannot flood the gateway's log through the warnings its libraries emit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mssgate.documents.isolation import Finished, PipelinePool
from mssgate.documents.pipeline import process_message

from .factory import make_mail


def _pdf_with_missing_pages(count: int) -> bytes:
    # A page tree of references to objects that do not exist, and a startxref that points
    # nowhere: pypdf warns once per missing object (2,000 lines for 22 kB here).
    kids = b" ".join(b"%d 0 R" % (100_000 + i) for i in range(count))
    return (
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids ["
        + kids
        + b"] /Count %d >>\nendobj\n" % count
        + b"xref\n0 1\n0000000000 65535 f \ntrailer\n<< /Root 1 0 R /Size 3 >>\n"
        b"startxref\n999999\n%%EOF\n"
    )


def test_a_pdf_cannot_flood_the_log_with_library_warnings(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Before: every warning pypdf emitted became a log line, 2,000 for this 22 kB file
    # (a 25 MB message: millions). Now a job logs a few, then one line counting the rest.
    path = tmp_path / "flood.eml"
    path.write_bytes(make_mail([("CR.pdf", _pdf_with_missing_pages(2_000), "application/pdf")]))
    pool = PipelinePool(1)
    pool.start()
    try:
        capfd.readouterr()
        outcome = pool.run(
            process_message, path, 60.0, log_context={"queue_id": "Q-9"}, allow_test_oids=True
        )
        assert isinstance(outcome, Finished), outcome
        # The next job starts counting afresh.
        again = pool.run(
            process_message, path, 60.0, log_context={"queue_id": "Q-10"}, allow_test_oids=True
        )
        assert isinstance(again, Finished), again
    finally:
        pool.stop()
    records = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    for queue_id in ("Q-9", "Q-10"):
        mine = [r for r in records if r.get("queue_id") == queue_id]
        assert 1 < len(mine) <= 21, len(mine)
        summary = mine[-1]
        assert summary["event"] == "documents.log_capped"
        assert summary["suppressed"] > 1_900 and summary["level"] == "warning"
