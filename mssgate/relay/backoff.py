"""When to try a peer again after a temporary failure."""

from __future__ import annotations

import random
from datetime import timedelta

from mssgate.config import RelayConfig


def retry_delay(attempts: int, config: RelayConfig, rng: random.Random) -> timedelta:
    """first * factor**attempts, capped, then shortened by up to `retry_jitter` of itself.

    Jitter only shortens, so the cap stays a promise; it spreads the retries of a batch that
    failed together (a peer down for an hour) instead of sending them all back at once.
    `attempts` counts the failures before this one (0 for the first).
    """
    delay = config.retry_first_seconds
    # A loop rather than factor**attempts: no float overflow, whatever the configuration.
    for _ in range(attempts):
        if delay >= config.retry_max_seconds:
            break
        delay *= config.retry_factor
    delay = min(delay, config.retry_max_seconds)
    return timedelta(seconds=delay * (1.0 - config.retry_jitter * rng.random()))
