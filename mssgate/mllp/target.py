"""Where a consumer's queue is pushed: `mllp://host:port`, checked where it is set."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mssgate.errors import ValidationFailed

_URL = re.compile(r"mllp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):(?P<port>\d{1,5})")


@dataclass(frozen=True)
class PushTarget:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mllp://{host}:{self.port}"


def parse_push_url(url: str) -> PushTarget:
    """`mllp://host:port` (an IPv6 address in brackets); ValidationFailed otherwise."""
    match = _URL.fullmatch(url.strip())
    port = int(match.group("port")) if match else 0
    if match is None or not 0 < port < 65536:
        raise ValidationFailed(f"invalid push address {url!r}: mllp://host:port")
    return PushTarget(match.group("host").strip("[]"), port)
