"""Structured logs: one JSON object per line on stderr.

Events carry a name and fields (queue id, listener, peer, reason code). They never carry
passwords, tokens, message content or patient data: callers pass identifiers, not payloads,
and `event` drops any field whose name says it holds a secret.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

PROCESS_FIELDS: dict[str, Any] = {}
_SECRET_WORDS = ("password", "token", "secret", "authorization")
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        # Which acceptance process wrote it (`serve --workers`): they share one stderr.
        body.update(PROCESS_FIELDS)
        context = getattr(record, "context", None)
        if isinstance(context, dict):
            # What the record happened during (a document worker's message): a library's
            # own warning says nothing of which message it was about.
            body.update(context)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            body["event"] = record.getMessage()
            body.update(fields)
        else:
            body["message"] = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            # One line still: the exception's type and text, never a multi-line traceback.
            exc = record.exc_info[1]
            body["error"] = f"{type(exc).__name__}: {exc}" if exc else None
        line = json.dumps(body, ensure_ascii=False, default=str)
        # JSON leaves these raw outside ASCII, yet each breaks a line for Python's
        # splitlines, JavaScript and some shippers; a record may carry a document's text.
        return line.translate(_LINE_BREAKS)


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    clean = {k: v for k, v in fields.items() if not any(w in k.lower() for w in _SECRET_WORDS)}
    logger.log(level, name, extra={"fields": clean})


def configure(level: int = logging.INFO, *, worker: int | None = None) -> None:
    if worker is not None:
        PROCESS_FIELDS["worker"] = worker
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every command at INFO (and tracebacks for failed handshakes): our
    # protocol class logs what matters, once, as events.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
