"""Dovecot's log lines (stderr of its processes) as structured events, bounded."""

from __future__ import annotations

import asyncio
import logging

from mssgate.logs import event

log = logging.getLogger("mssgate.dovecot")

MAX_LINE = 2048


def _level(line: str) -> int:
    if "Fatal:" in line or "Panic:" in line:
        return logging.ERROR
    if "Error:" in line or "Warning:" in line:
        return logging.WARNING
    return logging.INFO


async def pump(stream: asyncio.StreamReader, *, source: str) -> None:
    """Re-emits each line until EOF; an overlong line is cut, never buffered whole."""
    while True:
        try:
            raw = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raw = exc.partial
            if not raw:
                return
        except asyncio.LimitOverrunError as exc:
            raw = await stream.read(exc.consumed)
        line = raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r\n")
        if line:
            event(log, "dovecot.log", level=_level(line), source=source, line=line)
