"""Durations given on the command line: `90s`, `30m`, `12h`, `7d`, or bare seconds."""

from __future__ import annotations

import re
from datetime import timedelta

from mssgate.errors import UsageFailed

_DURATION = re.compile(r"(\d{1,9})([smhd]?)", re.ASCII)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> timedelta:
    """A number with an optional unit (s, m, h, d). Anything else is a usage error naming
    `option`: one unit only, so that `1h30` cannot be read two ways."""
    found = _DURATION.fullmatch(text.strip().lower()) if len(text) <= 32 else None
    if found is None:
        raise UsageFailed(f"invalid {option} {text[:32]!r}: a number with s, m, h or d (e.g. 12h)")
    return timedelta(seconds=int(found[1]) * _UNIT_SECONDS[found[2]])
