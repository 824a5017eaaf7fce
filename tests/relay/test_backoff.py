"""The retry schedule: doubling from one minute, capped at one hour, jitter only shortens."""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from mssgate.config import Config, RelayConfig
from mssgate.relay.backoff import retry_delay


def test_default_schedule() -> None:
    config = RelayConfig(retry_jitter=0.0)
    minutes = [retry_delay(n, config, random.Random(1)) / timedelta(minutes=1) for n in range(9)]
    assert minutes == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert Config().relay.max_age_seconds == 5 * 86_400


@given(
    attempts=st.integers(min_value=0, max_value=10_000),
    factor=st.floats(min_value=1.0, max_value=1e6),
    jitter=st.floats(min_value=0.0, max_value=0.99),
    seed=st.integers(),
)
def test_always_within_bounds(attempts: int, factor: float, jitter: float, seed: int) -> None:
    config = RelayConfig(retry_factor=factor, retry_jitter=jitter)
    delay = retry_delay(attempts, config, random.Random(seed)).total_seconds()
    assert 0 < delay <= config.retry_max_seconds
    # Never sooner than the jittered first step, whatever the attempt count.
    assert delay >= config.retry_first_seconds * (1 - jitter) - 1e-9
