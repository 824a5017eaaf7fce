"""The log's promise: one JSON object per line, whatever text a record carries."""

from __future__ import annotations

import json
import logging

from mssgate.logs import JsonFormatter


def test_a_record_from_a_document_stays_one_line_for_every_line_splitter() -> None:
    # A document worker logs what pypdf or lxml warn about the file it reads (5ea4dfc): that
    # text comes from the document. json.dumps(ensure_ascii=False) left U+2028, U+2029 and
    # NEL (U+0085) as they are, and each is a line break to Python's splitlines, to
    # JavaScript and to some log shippers: a PDF could start a forged log line.
    forged = '{"level": "info", "event": "queue.acked"}'
    text = f"bad object /N\u2028{forged}\u2029{forged}\x85{forged}\n{forged}\r{forged}"
    record = logging.LogRecord("pypdf", logging.WARNING, __file__, 1, text, None, None)
    record.context = {"queue_id": "Q1"}
    line = JsonFormatter().format(record)
    assert line.splitlines() == [line]
    body = json.loads(line)
    assert body["message"] == text and body["queue_id"] == "Q1"
    assert "é" in JsonFormatter().format(
        logging.LogRecord("x", logging.INFO, __file__, 1, "Hôpital é", None, None)
    )  # other non-ASCII text stays readable
