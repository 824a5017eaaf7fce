"""Per-address counters: concurrent connections, and the AUTH failure penalty.

The penalty follows Dovecot's auth_penalty idea: after a few failures from one address,
every further attempt from it waits longer (doubling, capped), which makes guessing slow
without locking a practitioner out of their own mailbox.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from mssgate.config import SmtpConfig


@dataclass
class ConnectionLimiter:
    max_per_ip: int
    _counts: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    def acquire(self, ip: str) -> bool:
        if self._counts[ip] >= self.max_per_ip:
            return False
        self._counts[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self._counts[ip] -= 1
        if self._counts[ip] <= 0:
            del self._counts[ip]

    def active(self) -> int:
        return sum(self._counts.values())


@dataclass
class AuthPenalty:
    free_failures: int
    max_delay: float
    forget_after: float = 900.0  # smtp.auth_failure_forget_seconds (see from_config)
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, smtp: SmtpConfig) -> AuthPenalty:
        return cls(
            free_failures=smtp.auth_failures_before_delay,
            max_delay=smtp.auth_failure_delay_max_seconds,
            forget_after=smtp.auth_failure_forget_seconds,
        )

    def delay_for(self, ip: str) -> float:
        count, last = self._failures.get(ip, (0, 0.0))
        if count and time.monotonic() - last > self.forget_after:
            del self._failures[ip]
            return 0.0
        over = count - self.free_failures
        if over < 0:
            return 0.0
        return float(min(2.0**over, self.max_delay))

    def failed(self, ip: str) -> int:
        count, _ = self._failures.get(ip, (0, 0.0))
        self._failures[ip] = (count + 1, time.monotonic())
        if len(self._failures) > 100_000:  # bounded under a distributed attack
            oldest = min(self._failures.items(), key=lambda kv: kv[1][1])[0]
            del self._failures[oldest]
        return count + 1

    def succeeded(self, ip: str) -> None:
        self._failures.pop(ip, None)

    # What an SMTP session awaits: an acceptance child of `serve --workers` asks the parent,
    # which holds the one penalty of every process (mssgate.workers.RemotePenalty).
    async def wait_for(self, ip: str) -> float:
        return self.delay_for(ip)

    async def failure(self, ip: str) -> int:
        return self.failed(ip)

    async def success(self, ip: str) -> None:
        self.succeeded(ip)
